//! [`RpcError`]: the one error type a caller sees, and [`ErrorKind`] to match on.
//!
//! Errors travel in two layers (see `PROTOCOL.md`, "Errors"): a framework kind a program can
//! match on, and, for [`ErrorKind::Remote`], an application error carried nominally (its
//! registered [`Entity`] name plus a MessagePack payload) that
//! [`RpcError::downcast`] rebuilds as the user's own type.

use std::fmt;

use bytes::Bytes;

use crate::entity::Entity;

/// What went wrong, as a program matches on it.
///
/// The numeric value is the error's code on the wire (`PROTOCOL.md`, "Error codes"); it never
/// changes once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum ErrorKind {
    /// The server failed and says no more; the server's log has the detail under the
    /// correlation id that [`RpcError::correlation_id`] gives.
    Internal = 0,
    /// A typed error the action declared; [`RpcError::name`] gives its nominal name and
    /// [`RpcError::downcast`] rebuilds it.
    Remote = 1,
    /// No controller or action of that name (or, if the security policy says so, one the
    /// caller may not see).
    NotFound = 2,
    /// The security policy denied the call.
    AccessDenied = 3,
    /// Authentication failed or is required.
    Unauthenticated = 4,
    /// The arguments did not decode into the action's parameter types; the message says which.
    BadArguments = 5,
    /// The call's deadline passed before an answer arrived.
    Timeout = 6,
    /// The call was cancelled (by the caller, or by an abort of a transfer).
    Cancelled = 7,
    /// The connection closed (or could not be made) before the call ended.
    Disconnected = 8,
    /// No peer is registered under that alias (or the policy forbids sending to it).
    PeerNotFound = 9,
    /// A message exceeds a size limit; the message names the limit.
    TooLarge = 10,
    /// The other side broke the protocol.
    Protocol = 11,
    /// A concurrency limit was reached (calls, streams, in-flight bytes); retry later.
    Busy = 12,
    /// The peer alias is already taken by a live connection.
    AlreadyRegistered = 13,
}

impl ErrorKind {
    /// The kind for a wire code; unknown codes (from a newer peer) become [`ErrorKind::Internal`].
    pub fn from_code(code: u8) -> ErrorKind {
        use ErrorKind::*;
        match code {
            1 => Remote,
            2 => NotFound,
            3 => AccessDenied,
            4 => Unauthenticated,
            5 => BadArguments,
            6 => Timeout,
            7 => Cancelled,
            8 => Disconnected,
            9 => PeerNotFound,
            10 => TooLarge,
            11 => Protocol,
            12 => Busy,
            13 => AlreadyRegistered,
            _ => Internal,
        }
    }

    /// The wire code of this kind.
    pub fn code(self) -> u8 {
        self as u8
    }

    fn describe(self) -> &'static str {
        use ErrorKind::*;
        match self {
            Internal => "internal error",
            Remote => "remote error",
            NotFound => "not found",
            AccessDenied => "access denied",
            Unauthenticated => "unauthenticated",
            BadArguments => "bad arguments",
            Timeout => "timed out",
            Cancelled => "cancelled",
            Disconnected => "disconnected",
            PeerNotFound => "peer not found",
            TooLarge => "too large",
            Protocol => "protocol error",
            Busy => "busy",
            AlreadyRegistered => "already registered",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The error of every call: a [`kind`](RpcError::kind) to match on and a sentence to show.
///
/// ```
/// use rpc_core::{ErrorKind, RpcError};
///
/// let e = RpcError::access_denied("only admins may save users");
/// assert_eq!(e.kind(), ErrorKind::AccessDenied);
/// assert_eq!(e.to_string(), "access denied: only admins may save users");
/// ```
#[derive(Clone, PartialEq)]
pub struct RpcError(Box<ErrorParts>);

/// What an [`RpcError`] holds. Boxed: errors are rare, and a one-pointer error keeps every
/// `Result<T, RpcError>` (each call's answer, each stream item) small to move around.
#[derive(Clone, PartialEq)]
struct ErrorParts {
    kind: ErrorKind,
    message: String,
    /// Nominal name of a [`ErrorKind::Remote`] error.
    name: Option<String>,
    /// MessagePack payload of a [`ErrorKind::Remote`] error.
    payload: Option<Bytes>,
    correlation_id: Option<String>,
}

// The constructors are `#[cold]`: the call paths build an error on every failure branch,
// and with the hint the compiler keeps that code off the success path. Measured with
// callgrind (`__calls ours-tcp N echo|t64`): 75 instructions more per successful call
// without it. Building an error is then a function call, which is nothing next to sending
// the error reply.
impl RpcError {
    /// An error of `kind` with a message saying what happened.
    #[cold]
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RpcError {
        RpcError(Box::new(ErrorParts {
            kind,
            message: message.into(),
            name: None,
            payload: None,
            correlation_id: None,
        }))
    }

    /// Authentication failed or is required (for [`Security::authenticate`](crate::Security)).
    #[cold]
    pub fn unauthenticated(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Unauthenticated, message)
    }

    /// The policy denies this.
    #[cold]
    pub fn access_denied(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::AccessDenied, message)
    }

    /// A failure the caller gets no detail about.
    #[cold]
    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Internal, message)
    }

    /// No controller, action or peer of that name.
    #[cold]
    pub fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::NotFound, message)
    }

    /// Arguments that did not decode.
    #[cold]
    pub fn bad_arguments(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::BadArguments, message)
    }

    /// The connection is gone.
    #[cold]
    pub fn disconnected(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Disconnected, message)
    }

    /// The other side broke the protocol.
    #[cold]
    pub fn protocol(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Protocol, message)
    }

    /// A limit was hit; `message` should name the limit.
    #[cold]
    pub fn too_large(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::TooLarge, message)
    }

    /// A concurrency limit was hit.
    #[cold]
    pub fn busy(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Busy, message)
    }

    /// A typed application error: its nominal name and fields travel to the caller, where
    /// [`RpcError::downcast`] rebuilds it.
    ///
    /// ```
    /// use rpc_core::{Entity, ErrorKind, RpcError};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize, Entity)]
    /// #[entity(name = "@error:outOfStock")]
    /// struct OutOfStock { item: String }
    ///
    /// let e = RpcError::remote(&OutOfStock { item: "tea".into() }, "out of stock: tea");
    /// assert_eq!(e.kind(), ErrorKind::Remote);
    /// assert_eq!(e.name(), Some("@error:outOfStock"));
    /// assert_eq!(e.downcast::<OutOfStock>(), Some(OutOfStock { item: "tea".into() }));
    /// ```
    pub fn remote<E: Entity + serde::Serialize>(error: &E, message: impl Into<String>) -> RpcError {
        match crate::protocol::codec::encode_value(error) {
            Ok(payload) => RpcError(Box::new(ErrorParts {
                kind: ErrorKind::Remote,
                message: message.into(),
                name: Some(E::ENTITY_NAME.to_string()),
                payload: Some(Bytes::from(payload)),
                correlation_id: None,
            })),
            Err(e) => RpcError::internal(format!(
                "the error `{}` could not be serialized: {e}",
                E::ENTITY_NAME
            )),
        }
    }

    /// Rebuilds an error from its wire parts (used by the protocol layer).
    pub(crate) fn from_parts(
        kind: ErrorKind,
        message: String,
        name: Option<String>,
        payload: Option<Bytes>,
        correlation_id: Option<String>,
    ) -> RpcError {
        RpcError(Box::new(ErrorParts { kind, message, name, payload, correlation_id }))
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The nominal name of a [`ErrorKind::Remote`] error.
    pub fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    /// The id under which the server logged the detail of an [`ErrorKind::Internal`] error.
    pub fn correlation_id(&self) -> Option<&str> {
        self.0.correlation_id.as_deref()
    }

    /// Attaches a correlation id (the server does this for hidden failures).
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> RpcError {
        self.0.correlation_id = Some(id.into());
        self
    }

    /// The MessagePack payload of a [`ErrorKind::Remote`] error.
    pub fn payload(&self) -> Option<&Bytes> {
        self.0.payload.as_ref()
    }

    /// Rebuilds the typed error `E` if this is a remote error of `E`'s nominal name.
    ///
    /// Returns `None` for any other error, including one whose name matches but whose
    /// fields do not decode (a version mismatch between the two sides).
    pub fn downcast<E: Entity + serde::de::DeserializeOwned>(&self) -> Option<E> {
        if self.0.kind != ErrorKind::Remote || self.0.name.as_deref() != Some(E::ENTITY_NAME) {
            return None;
        }
        let payload = self.0.payload.as_ref()?;
        crate::protocol::codec::decode_value::<E>(payload).ok()
    }

    /// Whether this is a remote error of `E`'s nominal name.
    pub fn is<E: Entity>(&self) -> bool {
        self.0.kind == ErrorKind::Remote && self.0.name.as_deref() == Some(E::ENTITY_NAME)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.name, self.0.message.is_empty()) {
            (Some(name), _) if self.0.kind == ErrorKind::Remote => {
                write!(f, "{}", self.0.message)?;
                if self.0.message.is_empty() {
                    write!(f, "remote error `{name}`")?;
                }
            }
            (_, true) => write!(f, "{}", self.0.kind)?,
            (_, false) => write!(f, "{}: {}", self.0.kind, self.0.message)?,
        }
        if let Some(id) = &self.0.correlation_id {
            write!(f, " (correlation id {id})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RpcError");
        d.field("kind", &self.0.kind).field("message", &self.0.message);
        if let Some(name) = &self.0.name {
            d.field("name", name);
        }
        if let Some(id) = &self.0.correlation_id {
            d.field("correlation_id", id);
        }
        d.finish()
    }
}

impl std::error::Error for RpcError {}

impl From<std::io::Error> for RpcError {
    fn from(e: std::io::Error) -> RpcError {
        RpcError::disconnected(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_pointer_so_results_stay_small() {
        assert_eq!(std::mem::size_of::<RpcError>(), std::mem::size_of::<usize>());
        assert_eq!(std::mem::size_of::<Result<u64, RpcError>>(), 16);
        let e = RpcError::new(ErrorKind::Busy, "try later").with_correlation_id("c-7");
        assert_eq!(e.clone(), e);
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(e.correlation_id(), Some("c-7"));
    }
}
