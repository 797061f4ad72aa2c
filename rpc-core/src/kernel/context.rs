//! [`Context`]: what a handler may ask about the call it is serving.

use std::sync::Arc;

use crate::connection::Connection;
use crate::kernel::controller::ActionInfo;
use crate::kernel::security::Session;
use crate::protocol::message::RouteSource;

/// The call being served: its connection, session, action and (for routed calls) the caller.
///
/// A handler receives it by declaring a `ctx: &Context` parameter; the generated client
/// leaves that parameter out.
///
/// ```
/// use rpc_core::{controller, Context};
///
/// #[controller("me")]
/// pub trait Me {
///     async fn whoami(&self, ctx: &Context) -> String;
/// }
///
/// struct MeImpl;
/// impl Me for MeImpl {
///     async fn whoami(&self, ctx: &Context) -> String {
///         format!("{} on connection {}", ctx.session().username(), ctx.connection().id())
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    pub(crate) connection: Connection,
    pub(crate) session: Arc<Session>,
    pub(crate) controller: &'static str,
    pub(crate) action: &'static ActionInfo,
    pub(crate) call_id: u32,
    pub(crate) source: Option<Arc<RouteSource>>,
}

impl Context {
    /// The connection the call arrived on; it can call the client back.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The caller's session (for a routed call: the routing server's session of this
    /// connection; the original caller is in [`Context::peer_source`]).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The controller's wire name.
    pub fn controller(&self) -> &'static str {
        self.controller
    }

    /// The action being served, with its groups and data.
    pub fn action(&self) -> &'static ActionInfo {
        self.action
    }

    /// The call's id on this connection.
    pub fn call_id(&self) -> u32 {
        self.call_id
    }

    /// For a call routed from another peer: who called, as stamped by the routing server
    /// (the caller cannot forge it).
    pub fn peer_source(&self) -> Option<&RouteSource> {
        self.source.as_deref()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("connection", &self.connection.id())
            .field("controller", &self.controller)
            .field("action", &self.action.name)
            .field("call_id", &self.call_id)
            .finish()
    }
}
