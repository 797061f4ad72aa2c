//! The RPC endpoint mounted on an axum route, next to ordinary HTTP routes: `GET /` and
//! `GET /health` are plain HTTP, `GET /rpc` upgrades to a WebSocket that the kernel serves.
//!
//! ```text
//! cargo run -p examples --bin axum_server -- 127.0.0.1:8090
//! curl http://127.0.0.1:8090/health
//! # RPC clients: rpc_ws::RpcWebSocketClient::connect("ws://127.0.0.1:8090/rpc")
//! ```
//!
//! axum upgrades the socket; [`rpc_ws::serve_upgraded`] hands it to the kernel. axum's
//! `WebSocket` has its own message type, so [`adapt`] maps it to tungstenite's (a few lines),
//! and the upgrade is configured with the same limits the kernel's own WebSocket server uses
//! ([`rpc_ws::websocket_config`]).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use examples::{UsersClient, UsersImpl, UsersServer};
use futures::{Sink, SinkExt, Stream, StreamExt};
use rpc_core::RpcKernel;
use rpc_core::transport::TransportInfo;
use rpc_ws::Message;
use rpc_ws::tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;

/// The application: HTTP routes and the RPC endpoint at `/rpc`.
pub fn app(kernel: RpcKernel) -> Router {
    Router::new()
        .route("/", get(|| async { "An axum app. RPC over WebSocket at /rpc.\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .route("/rpc", get(rpc_endpoint))
        .with_state(kernel)
}

/// Serves [`app`] on `listener` until `signal` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    kernel: RpcKernel,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = app(kernel).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(signal).await
}

async fn rpc_endpoint(
    State(kernel): State<RpcKernel>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The same limits as rpc_ws's own server: message = frame limit + 4, small buffers.
    let config = rpc_ws::websocket_config(&kernel.limits());
    let max_message = rpc_ws::max_message_size(&kernel.limits());
    upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        .max_write_buffer_size(config.max_write_buffer_size)
        .accept_unmasked_frames(false)
        .on_upgrade(move |socket| async move {
            let info = TransportInfo { remote_addr: Some(remote), kind: "ws", peer_identity: None };
            match rpc_ws::serve_upgraded(&kernel, adapt(socket), info).await {
                Ok(connection) => connection.closed().await,
                Err(e) => tracing::debug!(%remote, "RPC handshake failed: {e}"),
            }
        })
}

/// axum's WebSocket as a stream and sink of tungstenite messages.
pub fn adapt(
    socket: WebSocket,
) -> impl Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> {
    socket
        .with(|message: Message| futures::future::ready(to_axum(message)))
        .map(|message| message.map(from_axum))
}

fn from_axum(message: ws::Message) -> Message {
    match message {
        ws::Message::Text(text) => Message::text(text.as_str()),
        ws::Message::Binary(data) => Message::Binary(data),
        ws::Message::Ping(data) => Message::Ping(data),
        ws::Message::Pong(data) => Message::Pong(data),
        ws::Message::Close(frame) => Message::Close(
            frame.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }),
        ),
    }
}

fn to_axum(message: Message) -> Result<ws::Message, axum::Error> {
    Ok(match message {
        Message::Text(text) => ws::Message::Text(text.as_str().into()),
        Message::Binary(data) => ws::Message::Binary(data),
        Message::Ping(data) => ws::Message::Ping(data),
        Message::Pong(data) => ws::Message::Pong(data),
        Message::Close(frame) => ws::Message::Close(
            frame.map(|f| ws::CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }),
        ),
        Message::Frame(_) => return Err(axum::Error::new("raw frames are not sent")),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".into());
    let kernel = RpcKernel::new();
    kernel.register(UsersServer::new(UsersImpl::new()));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(run(listener, kernel, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    println!("HTTP on http://{addr}/ and http://{addr}/health, RPC on ws://{addr}/rpc");

    // One call through the mounted route, to show it works.
    let client = rpc_ws::RpcWebSocketClient::connect(format!("ws://{addr}/rpc")).await?;
    let greeting = client.controller::<UsersClient>().hello("axum".into()).await?;
    println!("client -> users.hello(\"axum\") over ws://{addr}/rpc = {greeting:?}");
    client.disconnect().await;

    println!("serving until Ctrl-C");
    serving.await??;
    Ok(())
}
