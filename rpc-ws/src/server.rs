//! [`RpcWebSocketServer`] and [`serve_upgraded`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{Sink, Stream};
use rpc_core::transport::TransportInfo;
use rpc_core::{Connection, RpcError, RpcKernel};
use rpc_tcp::tls::{ALPN_HTTP1, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use crate::socket::WsSocket;
use crate::transport::{WsTransport, max_message_size, websocket_config};

/// Serves a kernel over WebSocket (`ws://`), or over WebSocket on TLS (`wss://`,
/// [`RpcWebSocketServer::bind_tls`]). Any request path is accepted.
///
/// The TLS handshake and the HTTP upgrade together must finish within the kernel's
/// `Limits::handshake_timeout` (default 10 s) from accept; tungstenite's own bounds on the
/// upgrade request (64 KiB, 512 reads) apply too. The WebSocket limits are those of
/// [`websocket_config`](crate::websocket_config). When the kernel is at capacity
/// (`Limits::max_connections` or `max_handshakes`), the upgrade is refused with HTTP 503,
/// and a `wss://` socket is closed before its TLS handshake.
///
/// ```no_run
/// use rpc_core::RpcKernel;
/// use rpc_ws::RpcWebSocketServer;
///
/// # async fn run() -> std::io::Result<()> {
/// let kernel = RpcKernel::new();
/// let server = RpcWebSocketServer::bind("127.0.0.1:8082", kernel).await?;
/// println!("ws://{}", server.local_addr()?);
/// server.serve().await
/// # }
/// ```
pub struct RpcWebSocketServer {
    listener: TcpListener,
    kernel: RpcKernel,
    tls: Option<TlsAcceptor>,
    shutdown_timeout: Duration,
}

impl RpcWebSocketServer {
    /// Binds `addr` for `ws://` (port 0 picks a free port; see
    /// [`RpcWebSocketServer::local_addr`]).
    pub async fn bind(
        addr: impl ToSocketAddrs,
        kernel: RpcKernel,
    ) -> io::Result<RpcWebSocketServer> {
        Ok(RpcWebSocketServer {
            listener: TcpListener::bind(addr).await?,
            kernel,
            tls: None,
            shutdown_timeout: Duration::from_secs(30),
        })
    }

    /// Binds `addr` for `wss://` with `config`. ALPN `"http/1.1"` is added to the config (as
    /// browsers expect) but not required; 0-RTT is off. If the config verifies client
    /// certificates, the verified identity is in
    /// `ctx.connection().transport().peer_identity`.
    ///
    /// ```no_run
    /// # async fn run(server_config: rustls::ServerConfig) -> std::io::Result<()> {
    /// let kernel = rpc_core::RpcKernel::new();
    /// let server = rpc_ws::RpcWebSocketServer::bind_tls("127.0.0.1:8443", kernel, server_config).await?;
    /// server.serve().await
    /// # }
    /// ```
    pub async fn bind_tls(
        addr: impl ToSocketAddrs,
        kernel: RpcKernel,
        config: rustls::ServerConfig,
    ) -> io::Result<RpcWebSocketServer> {
        let mut server = RpcWebSocketServer::bind(addr, kernel).await?;
        server.tls = Some(TlsAcceptor::new(config, ALPN_HTTP1, false));
        Ok(server)
    }

    /// How long a graceful shutdown lets calls in flight finish. Default 30 s.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> RpcWebSocketServer {
        self.shutdown_timeout = timeout;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the process ends.
    pub async fn serve(self) -> io::Result<()> {
        self.serve_with_shutdown(std::future::pending()).await
    }

    /// Accepts connections until `signal` resolves, then shuts down gracefully: stops
    /// accepting, lets calls in flight finish (up to
    /// [`RpcWebSocketServer::shutdown_timeout`]) and closes every connection it accepted.
    pub async fn serve_with_shutdown(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let RpcWebSocketServer { listener, kernel, tls, shutdown_timeout } = self;
        rpc_tcp::listener::serve_listener(listener, signal, shutdown_timeout, move |s, remote| {
            accept_ws(kernel.clone(), tls.clone(), s, remote)
        })
        .await
    }
}

/// One accepted socket: TLS (if any) and the upgrade within the handshake deadline, then the
/// protocol handshake.
async fn accept_ws(
    kernel: RpcKernel,
    tls: Option<TlsAcceptor>,
    stream: TcpStream,
    remote: SocketAddr,
) -> Result<Connection, RpcError> {
    let timeout = kernel.limits().handshake_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    // Counted from TCP accept, so slow TLS handshakes and upgrades hold one of
    // Limits::max_handshakes; without room, a plain upgrade is answered 503.
    let counted = kernel.begin_handshake();
    let Some(tls) = tls else {
        let info = TransportInfo { remote_addr: Some(remote), kind: "ws", peer_identity: None };
        return upgrade(kernel, stream, info, deadline, timeout, counted).await;
    };
    let Some(counted) = counted else {
        return Err(RpcError::busy("server full: closed before the TLS handshake"));
    };
    let (stream, peer_identity) = tokio::time::timeout_at(deadline, tls.accept(stream))
        .await
        .map_err(|_| timed_out("TLS", timeout))?
        .map_err(|e| RpcError::disconnected(format!("TLS handshake failed: {e}")))?;
    let info = TransportInfo { remote_addr: Some(remote), kind: "wss", peer_identity };
    upgrade(kernel, stream, info, deadline, timeout, Some(counted)).await
}

async fn upgrade<S>(
    kernel: RpcKernel,
    stream: S,
    info: TransportInfo,
    deadline: tokio::time::Instant,
    timeout: Duration,
    counted: Option<rpc_core::HandshakeGuard>,
) -> Result<Connection, RpcError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = websocket_config(&kernel.limits());
    // Refuse with HTTP 503 before the upgrade when the kernel is full (no protocol byte
    // is exchanged; the client sees the status).
    let full = counted.is_none();
    // The error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let admit = move |_: &Request, response: Response| {
        if full {
            let mut refusal = ErrorResponse::new(Some(
                "server full (Limits::max_connections or max_handshakes)".into(),
            ));
            *refusal.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(refusal);
        }
        Ok(response)
    };
    let ws = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, admit, Some(config)),
    )
    .await
    .map_err(|_| timed_out("WebSocket upgrade", timeout))?
    .map_err(|e| RpcError::disconnected(format!("WebSocket upgrade failed: {e}")))?;
    match counted {
        Some(counted) => {
            // tungstenite did the upgrade; frames are ours to read and write (`socket`). A
            // client sends nothing before the upgrade's answer (RFC 6455 section 4.1), so
            // tungstenite holds no bytes of it here.
            let max_message = max_message_size(&kernel.limits());
            let transport = WsSocket::new(ws.into_inner(), info, true, max_message);
            kernel.accept_counted(transport, counted).await
        }
        None => Err(RpcError::busy("server full")),
    }
}

pub(crate) fn timed_out(what: &str, timeout: Duration) -> RpcError {
    RpcError::disconnected(format!(
        "the {what} handshake did not complete within {timeout:?} (Limits::handshake_timeout)"
    ))
}

/// Serves one WebSocket that another server already upgraded (axum, hyper, warp, ...):
/// runs the protocol handshake over it as the accepting side and returns the running
/// connection (which lives on after this returns; await
/// [`Connection::closed`](rpc_core::Connection::closed) to follow it).
///
/// `socket` is any stream and sink of tungstenite [`Message`]s, such as a
/// `tokio_tungstenite::WebSocketStream`; a WebSocket type of another crate needs a small
/// mapping of its message enum (the `axum_server` example has one for axum). Configure the
/// upgrading server with the values of [`websocket_config`](crate::websocket_config) so the
/// same limits hold. `info` is what handlers see as `ctx.connection().transport()`.
///
/// ```no_run
/// use rpc_core::RpcKernel;
/// use rpc_core::transport::TransportInfo;
///
/// # async fn run(upgraded: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Result<(), rpc_core::RpcError> {
/// let kernel = RpcKernel::new();
/// let info = TransportInfo { kind: "ws", ..Default::default() };
/// let connection = rpc_ws::serve_upgraded(&kernel, upgraded, info).await?;
/// connection.closed().await;
/// # Ok(()) }
/// ```
pub async fn serve_upgraded<S, E>(
    kernel: &RpcKernel,
    socket: S,
    info: TransportInfo,
) -> Result<Connection, RpcError>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    kernel.accept(WsTransport::new(socket, info)).await
}
