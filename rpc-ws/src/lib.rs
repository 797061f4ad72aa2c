//! WebSocket transport for `rpc-core`: [`RpcWebSocketServer`] and [`RpcWebSocketClient`]
//! (`ws://` and `wss://`), [`serve_upgraded`] for a WebSocket another server upgraded (axum,
//! hyper), and [`WsTransport`] for any tungstenite WebSocket.
//!
//! # Who does what
//!
//! tokio-tungstenite does the HTTP upgrade everywhere. After it, [`RpcWebSocketServer`] and
//! [`RpcWebSocketClient`] read and write the WebSocket frames themselves (RFC 6455 §5, in the
//! `wire` and `socket` modules): received bytes land in a buffer that is never zero-filled,
//! payloads are unmasked in place and reach the kernel without a copy, and a writer batch
//! goes out in one write. tungstenite's frame layer zero-fills its read buffer before every
//! read and copies each outgoing message into a buffer of its own; on one core that made
//! 64 KiB echoes 0.7x as fast as over TCP (`BENCHMARKS.md`, session 11). [`WsTransport`]
//! (and so [`serve_upgraded`]) keeps tungstenite's frame layer, because the socket it is
//! given is a tungstenite or axum WebSocket, not a byte stream.
//!
//! # Wire rules (`PROTOCOL.md`)
//!
//! - Each **binary** message carries one or more whole frames; frames never span messages.
//!   A writer batch is sent as few messages as possible: small frames are packed together
//!   up to 4 KiB + 4 bytes (so any receiver's limit holds), a larger frame travels alone.
//! - A **text** message is a protocol error: the connection closes with code 1003.
//! - Close codes (RFC 6455): 1000 when the kernel closes the connection (after a GoAway
//!   frame that says why), 1003 for a text message, 1009 for a message above the limit,
//!   1002 for a WebSocket protocol error (an unmasked client frame, say).
//! - Messages may arrive fragmented; the fragments are joined. A WebSocket Ping is answered
//!   at once (only the latest, when several wait: a ping flood queues nothing); the
//!   kernel's own keepalive (Ping frames) runs inside binary messages as on every transport.
//! - A Close from the remote is answered with its own code.
//!
//! # Limits and deadlines
//!
//! A message is at most the frame limit + 4 bytes (1 MiB + 4 by default,
//! [`max_message_size`]); a larger one closes the connection with 1009 as its first header
//! arrives, before its payload is buffered, and memory for a frame is reserved as its bytes
//! come (at most 256 KiB ahead). Unmasked client frames are refused. TLS and the upgrade must
//! finish within `Limits::handshake_timeout` (default 10 s) on both sides. tungstenite's
//! limits for [`WsTransport`] are set from the same [`Limits`](rpc_core::Limits), see
//! [`websocket_config`].
//!
//! Until a connection authenticates (when the policy refuses anonymous calls), frames are
//! held to `Limits::max_preauth_frame_size` (16 KiB). [`RpcWebSocketServer`] refuses a
//! larger message as its header arrives (Close 1009), so an unauthenticated client cannot
//! make it buffer a message of the full limit first; a WebSocket another server upgraded
//! ([`serve_upgraded`]) is checked once tungstenite has buffered the message.
//!
//! ```no_run
//! use rpc_core::RpcKernel;
//! use rpc_ws::{RpcWebSocketClient, RpcWebSocketServer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let kernel = RpcKernel::new();
//! let server = RpcWebSocketServer::bind("127.0.0.1:0", kernel.clone()).await?;
//! let addr = server.local_addr()?;
//! tokio::spawn(server.serve());
//!
//! let client = RpcWebSocketClient::connect(format!("ws://{addr}/")).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
#[doc(hidden)]
pub mod fuzzing;
mod server;
mod socket;
mod transport;
mod wire;

pub use client::RpcWebSocketClient;
pub use server::{RpcWebSocketServer, serve_upgraded};
pub use transport::{WsReader, WsTransport, WsWriter, max_message_size, websocket_config};

pub use tokio_tungstenite;
pub use tokio_tungstenite::tungstenite::Message;
