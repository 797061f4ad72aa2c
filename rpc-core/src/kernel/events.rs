//! [`Event`]: what a kernel reports to observers registered with
//! [`RpcKernel::on_event`](crate::RpcKernel::on_event).
//!
//! Events are built only when someone listens: a kernel without observers pays one atomic
//! load per call for this feature.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ErrorKind;

/// Something that happened in a kernel.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A connection completed its handshake.
    ConnectionOpened {
        /// Its id.
        connection: u64,
        /// The remote address, for network transports.
        remote_addr: Option<SocketAddr>,
        /// The transport's short name (`"tcp"`, `"ws"`, ...).
        transport: &'static str,
    },
    /// A connection closed.
    ConnectionClosed {
        /// Its id.
        connection: u64,
        /// Why, in one sentence.
        reason: String,
    },
    /// A connection authenticated (or re-authenticated).
    Authenticated {
        /// The connection.
        connection: u64,
        /// The session's user name.
        username: String,
    },
    /// A token was rejected; the connection is being closed.
    AuthenticationFailed {
        /// The connection.
        connection: u64,
    },
    /// The policy decided on a call.
    AccessDecided {
        /// The connection.
        connection: u64,
        /// The controller.
        controller: &'static str,
        /// The action.
        action: &'static str,
        /// Whether the call may proceed.
        allowed: bool,
    },
    /// A handler started.
    ActionStarted {
        /// The connection.
        connection: u64,
        /// The controller.
        controller: &'static str,
        /// The action.
        action: &'static str,
        /// The call's id on the connection.
        call_id: u32,
    },
    /// A handler finished (its answer, or its whole stream, was queued).
    ActionFinished {
        /// The connection.
        connection: u64,
        /// The controller.
        controller: &'static str,
        /// The action.
        action: &'static str,
        /// The call's id on the connection.
        call_id: u32,
        /// From the handler's start to its end.
        elapsed: Duration,
        /// `Ok`, or the kind of error the caller got.
        outcome: Result<(), ErrorKind>,
    },
}
