//! WebSocket transport for `rpc-core`: [`RpcWebSocketServer`] and [`RpcWebSocketClient`]
//! (`ws://` and `wss://`), [`serve_upgraded`] for a WebSocket another server upgraded (axum,
//! hyper), and [`WsTransport`] underneath, built on tokio-tungstenite.
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
//! - Pings and pongs are answered by tungstenite; the kernel's own keepalive (Ping frames)
//!   runs inside binary messages as on every transport.
//!
//! # Limits and deadlines
//!
//! tungstenite's limits are set from the kernel's [`Limits`](rpc_core::Limits), see
//! [`websocket_config`]: a message is at most the frame limit + 4 bytes (1 MiB + 4 by
//! default), read and write buffers are 16 KiB, the write buffer is bounded by
//! `Limits::max_outbound_queue`, unmasked client frames are refused. TLS and the upgrade must
//! finish within `Limits::handshake_timeout` (default 10 s) on both sides.
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
mod limit;
mod server;
mod transport;

pub use client::RpcWebSocketClient;
pub use server::{RpcWebSocketServer, serve_upgraded};
pub use transport::{WsReader, WsTransport, WsWriter, max_message_size, websocket_config};

pub use tokio_tungstenite;
pub use tokio_tungstenite::tungstenite::Message;
