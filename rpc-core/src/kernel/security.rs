//! The pluggable policy: who a connection is ([`Security::authenticate`]), what it may call
//! ([`Security::has_controller_access`]), which peer rights it has, and what its errors reveal.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::connection::Connection;
use crate::error::RpcError;
use crate::kernel::controller::ActionInfo;
use crate::protocol::codec;

/// Whatever the client passed to `set_token`, still encoded.
///
/// ```
/// use rpc_core::Token;
///
/// let token = Token::new(&"secret").unwrap();
/// assert_eq!(token.as_str(), Some("secret"));
/// let pair = Token::new(&("alice", 42u32)).unwrap();
/// assert_eq!(pair.decode::<(String, u32)>().unwrap(), ("alice".to_string(), 42));
/// assert_eq!(pair.as_str(), None);
/// ```
#[derive(Clone, PartialEq)]
pub struct Token {
    raw: Bytes,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: never printed.
        write!(f, "Token(<{} bytes>)", self.raw.len())
    }
}

impl Token {
    /// Encodes any serde value as a token.
    pub fn new<T: serde::Serialize + ?Sized>(value: &T) -> Result<Token, RpcError> {
        Ok(Token { raw: codec::encode_value(value)?.into() })
    }

    /// A token from its encoded form (as received).
    pub fn from_raw(raw: Bytes) -> Token {
        Token { raw }
    }

    /// The encoded form.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The token as a string, if the client set a string.
    pub fn as_str(&self) -> Option<&str> {
        match rmp::decode::read_str_from_slice(&self.raw[..]) {
            Ok((s, [])) => Some(s),
            _ => None,
        }
    }

    /// The token decoded as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        codec::decode_value(&self.raw)
            .map_err(|e| RpcError::unauthenticated(format!("the token does not decode: {e}")))
    }
}

/// Who is calling: a user name, whether anonymous, and typed extensions set by
/// [`Security::authenticate`].
///
/// ```
/// use rpc_core::Session;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Roles(Vec<String>);
///
/// let mut session = Session::new("alice");
/// session.insert(Roles(vec!["admin".into()]));
/// assert_eq!(session.username(), "alice");
/// assert!(!session.is_anonymous());
/// assert_eq!(session.get::<Roles>(), Some(&Roles(vec!["admin".into()])));
/// assert!(rpc_core::Session::anonymous().is_anonymous());
/// ```
#[derive(Default)]
pub struct Session {
    username: String,
    anonymous: bool,
    expires_at: Option<tokio::time::Instant>,
    extensions: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("username", &self.username)
            .field("anonymous", &self.anonymous)
            .field("extensions", &self.extensions.len())
            .finish()
    }
}

impl Session {
    /// An authenticated session for `username`.
    pub fn new(username: impl Into<String>) -> Session {
        Session {
            username: username.into(),
            anonymous: false,
            expires_at: None,
            extensions: HashMap::new(),
        }
    }

    /// The session of a connection that has not authenticated.
    pub fn anonymous() -> Session {
        Session {
            username: "anonymous".into(),
            anonymous: true,
            expires_at: None,
            extensions: HashMap::new(),
        }
    }

    /// The user name (`"anonymous"` for an anonymous session).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Whether the connection has not authenticated.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// Makes the session expire after `lifetime` (for example when the token does): the
    /// connection is then closed with GoAway `Unauthenticated` "authentication expired",
    /// its calls and streams end, and the client must authenticate again on its next call.
    ///
    /// ```
    /// use std::time::Duration;
    /// let session = rpc_core::Session::new("alice").expires_in(Duration::from_secs(3600));
    /// assert!(session.expires_at().is_some());
    /// ```
    #[must_use]
    pub fn expires_in(mut self, lifetime: std::time::Duration) -> Session {
        self.expires_at = Some(tokio::time::Instant::now() + lifetime);
        self
    }

    /// When the session expires, if it does.
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.expires_at
    }

    /// Stores a typed extension (one per type; a second insert replaces the first).
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.extensions.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// A typed extension.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.extensions.get(&TypeId::of::<T>()).and_then(|b| b.downcast_ref())
    }
}

/// What is being called, for [`Security::has_controller_access`].
#[derive(Debug, Clone, Copy)]
pub struct ControllerAccess<'a> {
    controller: &'a str,
    action: &'a ActionInfo,
    connection: &'a Connection,
}

impl<'a> ControllerAccess<'a> {
    pub(crate) fn new(
        controller: &'a str,
        action: &'a ActionInfo,
        connection: &'a Connection,
    ) -> Self {
        ControllerAccess { controller, action, connection }
    }

    /// The connection the call arrived on (remote address, TLS client identity, id).
    pub fn connection(&self) -> &'a Connection {
        self.connection
    }

    /// The controller's wire name.
    pub fn controller(&self) -> &str {
        self.controller
    }

    /// The action's wire name.
    pub fn action(&self) -> &str {
        self.action.name
    }

    /// The action's groups (`#[action(group = "...")]`).
    pub fn groups(&self) -> &'static [&'static str] {
        self.action.groups
    }

    /// A data value of the action (`#[action(data(role = "admin"))]`).
    pub fn data(&self, key: &str) -> Option<&'static str> {
        self.action.data.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// The security policy of a kernel. Every method has a secure default.
///
/// ```
/// use rpc_core::{ControllerAccess, RpcError, Security, Session, Token};
///
/// struct Tokens;
///
/// impl Security for Tokens {
///     async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
///         match token.as_str() {
///             Some("let-me-in") => Ok(Session::new("alice")),
///             _ => Err(RpcError::unauthenticated("authentication failed")),
///         }
///     }
///
///     async fn has_controller_access(&self, session: &Session, access: &ControllerAccess<'_>) -> bool {
///         !access.groups().contains(&"secret") || !session.is_anonymous()
///     }
/// }
/// ```
pub trait Security: Send + Sync + 'static {
    /// Turns a client's token into a session. Default: every token is rejected with
    /// `Unauthenticated` (a kernel without a policy accepts only anonymous connections).
    fn authenticate(
        &self,
        token: &Token,
    ) -> impl Future<Output = Result<Session, RpcError>> + Send {
        let _ = token;
        async { Err(RpcError::unauthenticated("authentication failed")) }
    }

    /// As [`Security::authenticate`], with the connection the token arrived on (its remote
    /// address and TLS client identity), for policies that bind a session to them. Default:
    /// [`Security::authenticate`].
    fn authenticate_connection(
        &self,
        token: &Token,
        connection: &Connection,
    ) -> impl Future<Output = Result<Session, RpcError>> + Send {
        let _ = connection;
        self.authenticate(token)
    }

    /// A session for a connection from its transport alone (for example its verified mTLS
    /// client identity, `connection.transport().peer_identity`), before any token. Runs
    /// once per accepted connection; `Some` makes the connection authenticated with that
    /// session, `Err` refuses the connection. Default: `None` (anonymous until a token).
    fn session_for_connection(
        &self,
        connection: &Connection,
    ) -> impl Future<Output = Result<Option<Session>, RpcError>> + Send {
        let _ = connection;
        async { Ok(None) }
    }

    /// Whether `session` may call the action. Runs before the arguments are decoded. Default:
    /// every action is allowed.
    fn has_controller_access(
        &self,
        session: &Session,
        access: &ControllerAccess<'_>,
    ) -> impl Future<Output = bool> + Send {
        let _ = (session, access);
        async { true }
    }

    /// Whether `session` may register as the peer `peer_id`. Default: denied.
    fn is_allowed_to_register_as_peer(
        &self,
        session: &Session,
        peer_id: &str,
    ) -> impl Future<Output = bool> + Send {
        let _ = (session, peer_id);
        async { false }
    }

    /// Whether `session` may call the peer `peer_id`. Default: denied.
    fn is_allowed_to_send_to_peer(
        &self,
        session: &Session,
        peer_id: &str,
    ) -> impl Future<Output = bool> + Send {
        let _ = (session, peer_id);
        async { false }
    }

    /// Rewrites an error before it is sent to a caller. Default: unchanged (undeclared
    /// errors are already reduced to `Internal` with a correlation id).
    fn transform_error(&self, error: RpcError) -> RpcError {
        error
    }

    /// Whether a connection may call actions without authenticating (as the anonymous
    /// session). Default: true. When false, a new connection may send only Auth and Ping
    /// frames of at most `Limits::max_preauth_frame_size` bytes until it authenticated, and
    /// must authenticate within `Limits::auth_timeout` or be closed.
    fn allow_anonymous(&self) -> bool {
        true
    }

    /// Whether a caller who may not call an action should be told `NotFound` instead of
    /// `AccessDenied`, so that actions cannot be enumerated. Default: false.
    fn hide_forbidden_actions(&self) -> bool {
        false
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`Security`] the kernel stores.
pub(crate) trait DynSecurity: Send + Sync + 'static {
    fn session_for_connection<'a>(
        &'a self,
        connection: &'a Connection,
    ) -> BoxFuture<'a, Result<Option<Session>, RpcError>>;
    fn authenticate_connection<'a>(
        &'a self,
        token: &'a Token,
        connection: &'a Connection,
    ) -> BoxFuture<'a, Result<Session, RpcError>>;
    fn has_controller_access<'a>(
        &'a self,
        session: &'a Session,
        access: &'a ControllerAccess<'a>,
    ) -> BoxFuture<'a, bool>;
    fn is_allowed_to_register_as_peer<'a>(
        &'a self,
        session: &'a Session,
        peer_id: &'a str,
    ) -> BoxFuture<'a, bool>;
    fn is_allowed_to_send_to_peer<'a>(
        &'a self,
        session: &'a Session,
        peer_id: &'a str,
    ) -> BoxFuture<'a, bool>;
    fn transform_error(&self, error: RpcError) -> RpcError;
    fn hide_forbidden_actions(&self) -> bool;
    fn allow_anonymous(&self) -> bool;
}

impl<S: Security> DynSecurity for S {
    fn session_for_connection<'a>(
        &'a self,
        connection: &'a Connection,
    ) -> BoxFuture<'a, Result<Option<Session>, RpcError>> {
        Box::pin(Security::session_for_connection(self, connection))
    }
    fn authenticate_connection<'a>(
        &'a self,
        token: &'a Token,
        connection: &'a Connection,
    ) -> BoxFuture<'a, Result<Session, RpcError>> {
        Box::pin(Security::authenticate_connection(self, token, connection))
    }
    fn has_controller_access<'a>(
        &'a self,
        session: &'a Session,
        access: &'a ControllerAccess<'a>,
    ) -> BoxFuture<'a, bool> {
        Box::pin(Security::has_controller_access(self, session, access))
    }
    fn is_allowed_to_register_as_peer<'a>(
        &'a self,
        session: &'a Session,
        peer_id: &'a str,
    ) -> BoxFuture<'a, bool> {
        Box::pin(Security::is_allowed_to_register_as_peer(self, session, peer_id))
    }
    fn is_allowed_to_send_to_peer<'a>(
        &'a self,
        session: &'a Session,
        peer_id: &'a str,
    ) -> BoxFuture<'a, bool> {
        Box::pin(Security::is_allowed_to_send_to_peer(self, session, peer_id))
    }
    fn transform_error(&self, error: RpcError) -> RpcError {
        Security::transform_error(self, error)
    }
    fn hide_forbidden_actions(&self) -> bool {
        Security::hide_forbidden_actions(self)
    }
    fn allow_anonymous(&self) -> bool {
        Security::allow_anonymous(self)
    }
}

/// The policy of a kernel nobody configured: anonymous calls allowed, tokens rejected,
/// peers denied.
pub(crate) struct DefaultSecurity;
impl Security for DefaultSecurity {}

pub(crate) type SharedSecurity = Arc<dyn DynSecurity>;
