//! The wire protocol, with no I/O: frames ([`frame`]), message bodies ([`message`]) and the
//! MessagePack rules every body obeys ([`codec`]), which encodes and decodes application
//! values with the crate's own serde MessagePack codec (the private `msgpack` module).
//!
//! `PROTOCOL.md` at the repository root is the specification; this module is its one
//! implementation. Nothing here touches a socket or a clock, so every rule is unit-tested
//! with plain byte slices.

pub mod chunk;
pub mod codec;
pub mod frame;
pub mod message;
pub(crate) mod msgpack;

pub use frame::{Frame, FrameDecoder, FrameError, Kind};
