#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod blob;
pub mod client;
pub mod connection;
pub mod entity;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod kernel;
pub mod limits;
pub mod protocol;
pub mod stream;
pub mod transport;

pub use blob::Blob;
pub use client::{
    CallTarget, ConnectionState, Connector, PeerHandle, Progress, RpcClient, RpcDirectClient,
    Transfer,
};
pub use connection::Connection;
pub use entity::{AnyEntity, DuplicateEntity, Entity, TypeRegistry};
pub use error::{ErrorKind, RpcError};
pub use kernel::context::Context;
pub use kernel::controller::{
    ActionError, ActionFuture, ActionInfo, ActionKind, Controller, ControllerClient,
    ControllerDescriptor, NoArgs,
};
pub use kernel::events::Event;
pub use kernel::middleware::{Middleware, Next, Trace};
pub use kernel::responder::{Replied, Responder};
pub use kernel::security::{ControllerAccess, Security, Session, Token};
pub use kernel::stats::Stats;
pub use kernel::{HandshakeGuard, RpcKernel};
pub use limits::Limits;
pub use protocol::codec::ArgsReader;
pub use rpc_macros::{Entity, action, controller};
pub use stream::RpcStream;
