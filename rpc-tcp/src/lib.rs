//! TCP transport for `rpc-core`: [`RpcTcpServer`] and [`RpcTcpClient`], plain or over TLS
//! ([`RpcTcpServer::bind_tls`], [`RpcTcpClient::connect_tls`]; see [`tls`]).
//!
//! Frames travel as `PROTOCOL.md` describes, with `TCP_NODELAY` set on every socket (the
//! connection's single writer already coalesces frames, so Nagle's delay would only add
//! latency).
//!
//! # Deadlines
//!
//! Every step before a connection is usable is bounded by
//! [`Limits::handshake_timeout`](rpc_core::Limits) (default 10 s): dialing and the TLS
//! handshake (one deadline from the start of the attempt), then the protocol's own Hello
//! exchange (a second deadline of the same length, enforced by the kernel). On the server the
//! TLS handshake is bounded by the server kernel's `handshake_timeout`, counted from accept.
//! A peer that speaks the wrong protocol (a plain client on a TLS port, a TLS client on a
//! plain port) fails at once with a clear error on both sides, and the server goes on.
//!
//! # Disconnects
//!
//! When a connection drops, calls in flight and open streams on it end at once with
//! `Disconnected`. The client's state ([`RpcClient::state`]) turns `Disconnected`; the next
//! call dials again. A reconnect restores nothing implicitly: use [`RpcClient::on_connect`]
//! to re-register peer aliases or re-subscribe.
//!
//! ```no_run
//! use rpc_core::RpcKernel;
//! use rpc_tcp::{RpcTcpClient, RpcTcpServer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let kernel = RpcKernel::new();
//! let server = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await?;
//! let addr = server.local_addr()?;
//! tokio::spawn(server.serve());
//!
//! let client = RpcTcpClient::connect(addr).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod listener;
pub mod tls;

pub use rustls;
pub use tokio_rustls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use rpc_core::client::BoxFuture;
use rpc_core::transport::{ByteStream, TransportInfo};
use rpc_core::{Connection, Connector, Limits, RpcClient, RpcError, RpcKernel};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

use crate::tls::{ALPN_RPC, TlsAcceptor, TlsConnector};

/// Serves a kernel over TCP, or over TLS ([`RpcTcpServer::bind_tls`]).
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let kernel = rpc_core::RpcKernel::new();
/// let server = rpc_tcp::RpcTcpServer::bind("127.0.0.1:8081", kernel).await?;
/// server.serve().await
/// # }
/// ```
pub struct RpcTcpServer {
    listener: TcpListener,
    kernel: RpcKernel,
    tls: Option<TlsAcceptor>,
    shutdown_timeout: Duration,
}

impl RpcTcpServer {
    /// Binds `addr` (port 0 picks a free port; see [`RpcTcpServer::local_addr`]).
    pub async fn bind(addr: impl ToSocketAddrs, kernel: RpcKernel) -> io::Result<RpcTcpServer> {
        Ok(RpcTcpServer {
            listener: TcpListener::bind(addr).await?,
            kernel,
            tls: None,
            shutdown_timeout: Duration::from_secs(30),
        })
    }

    /// Binds `addr` and serves TLS with `config`.
    ///
    /// The ALPN id [`tls::ALPN_RPC`] (`"rpc/1"`) is added to the config and required of
    /// every client; 0-RTT is off. If the config verifies client certificates (mutual TLS),
    /// the verified identity is in `ctx.connection().transport().peer_identity`. The TLS
    /// handshake must finish within the kernel's `Limits::handshake_timeout` (default 10 s).
    /// When the kernel is at capacity (`Limits::max_connections` or `max_handshakes`), a new
    /// socket is closed before its TLS handshake.
    ///
    /// ```no_run
    /// # async fn run(server_config: rustls::ServerConfig) -> std::io::Result<()> {
    /// let kernel = rpc_core::RpcKernel::new();
    /// let server = rpc_tcp::RpcTcpServer::bind_tls("127.0.0.1:8443", kernel, server_config).await?;
    /// server.serve().await
    /// # }
    /// ```
    pub async fn bind_tls(
        addr: impl ToSocketAddrs,
        kernel: RpcKernel,
        config: rustls::ServerConfig,
    ) -> io::Result<RpcTcpServer> {
        let mut server = RpcTcpServer::bind(addr, kernel).await?;
        server.tls = Some(TlsAcceptor::new(config, ALPN_RPC, true));
        Ok(server)
    }

    /// How long a graceful shutdown lets calls in flight finish. Default 30 s.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> RpcTcpServer {
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
    /// accepting, lets calls in flight finish (up to [`RpcTcpServer::shutdown_timeout`]) and
    /// closes every connection it accepted.
    pub async fn serve_with_shutdown(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let RpcTcpServer { listener, kernel, tls, shutdown_timeout } = self;
        listener::serve_listener(listener, signal, shutdown_timeout, move |stream, remote| {
            accept_tcp(kernel.clone(), tls.clone(), stream, remote)
        })
        .await
    }
}

/// One accepted socket: the TLS handshake (if any) within the handshake deadline, then the
/// protocol handshake.
async fn accept_tcp(
    kernel: RpcKernel,
    tls: Option<TlsAcceptor>,
    stream: TcpStream,
    remote: SocketAddr,
) -> Result<Connection, RpcError> {
    let Some(tls) = tls else {
        let (read, write) = stream.into_split();
        let info = TransportInfo { remote_addr: Some(remote), kind: "tcp", peer_identity: None };
        return kernel.accept(ByteStream::new(read, write, info)).await;
    };
    // Counted from TCP accept: a slow TLS handshake holds one of Limits::max_handshakes.
    let Some(counted) = kernel.begin_handshake() else {
        // Refusing before the TLS handshake costs nothing; the client sees the socket close.
        return Err(RpcError::busy("server full: closed before the TLS handshake"));
    };
    let deadline = kernel.limits().handshake_timeout;
    let (tls_stream, peer_identity) = tokio::time::timeout(deadline, tls.accept(stream))
        .await
        .map_err(|_| handshake_timed_out("TLS", deadline))?
        .map_err(|e| RpcError::disconnected(format!("TLS handshake failed: {e}")))?;
    let (read, write) = tokio::io::split(tls_stream);
    let info = TransportInfo { remote_addr: Some(remote), kind: "tls", peer_identity };
    kernel.accept_counted(ByteStream::new(read, write, info), counted).await
}

fn handshake_timed_out(what: &str, deadline: Duration) -> RpcError {
    RpcError::disconnected(format!(
        "the {what} handshake did not complete within {deadline:?} (Limits::handshake_timeout)"
    ))
}

struct TcpConnector<A> {
    addr: A,
    timeout: Duration,
    tls: Option<(TlsConnector, String)>,
}

impl<A: ToSocketAddrs + Clone + Send + Sync + 'static> Connector for TcpConnector<A> {
    fn connect(&self, kernel: RpcKernel) -> BoxFuture<'static, Result<Connection, RpcError>> {
        let addr = self.addr.clone();
        let timeout = self.timeout;
        let tls = self.tls.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    RpcError::disconnected(format!(
                        "connecting timed out after {timeout:?} (Limits::handshake_timeout)"
                    ))
                })?
                .map_err(|e| RpcError::disconnected(format!("could not connect: {e}")))?;
            stream.set_nodelay(true).map_err(|e| RpcError::disconnected(e.to_string()))?;
            let remote = stream.peer_addr().ok();
            let Some((connector, server_name)) = tls else {
                let (read, write) = stream.into_split();
                let info = TransportInfo { remote_addr: remote, kind: "tcp", peer_identity: None };
                return kernel.dial(ByteStream::new(read, write, info)).await;
            };
            let tls_stream =
                tokio::time::timeout_at(deadline, connector.connect(&server_name, stream))
                    .await
                    .map_err(|_| handshake_timed_out("TLS", timeout))?
                    .map_err(|e| RpcError::disconnected(format!("TLS handshake failed: {e}")))?;
            let (read, write) = tokio::io::split(tls_stream);
            let info = TransportInfo { remote_addr: remote, kind: "tls", peer_identity: None };
            kernel.dial(ByteStream::new(read, write, info)).await
        })
    }
}

/// A client over TCP or TLS: an [`RpcClient`] (it derefs to one) that dials `addr`.
///
/// ```no_run
/// # async fn run(client_config: rustls::ClientConfig) -> Result<(), rpc_core::RpcError> {
/// let client = rpc_tcp::RpcTcpClient::connect("127.0.0.1:8081").await?; // connected now
/// let lazy = rpc_tcp::RpcTcpClient::new("127.0.0.1:8081");              // on the first call
/// let tls = rpc_tcp::RpcTcpClient::connect_tls("127.0.0.1:8443", "localhost", client_config).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RpcTcpClient {
    client: RpcClient,
}

impl RpcTcpClient {
    /// Connects now (and fails if the server cannot be reached).
    pub async fn connect<A>(addr: A) -> Result<RpcTcpClient, RpcError>
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        let client = RpcTcpClient::new(addr);
        client.client.connect().await?;
        Ok(client)
    }

    /// A client that connects on its first call, and again on the next call after a
    /// disconnect.
    pub fn new<A>(addr: A) -> RpcTcpClient
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        RpcTcpClient::with_limits(addr, Limits::default())
    }

    /// As [`RpcTcpClient::new`], with the given limits (call timeout, frame size, ...).
    pub fn with_limits<A>(addr: A, limits: Limits) -> RpcTcpClient
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        let timeout = limits.handshake_timeout;
        RpcTcpClient {
            client: RpcClient::with_limits(TcpConnector { addr, timeout, tls: None }, limits),
        }
    }

    /// Connects over TLS now, verifying the server's certificate for `server_name` (a DNS
    /// name or an IP address) with `config`'s roots. The ALPN id `"rpc/1"` is added to the
    /// config and required of the server. For mutual TLS, give the config a client
    /// certificate (`with_client_auth_cert`).
    pub async fn connect_tls<A>(
        addr: A,
        server_name: impl Into<String>,
        config: rustls::ClientConfig,
    ) -> Result<RpcTcpClient, RpcError>
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        let client = RpcTcpClient::new_tls(addr, server_name, config);
        client.client.connect().await?;
        Ok(client)
    }

    /// As [`RpcTcpClient::connect_tls`], connecting on the first call.
    pub fn new_tls<A>(
        addr: A,
        server_name: impl Into<String>,
        config: rustls::ClientConfig,
    ) -> RpcTcpClient
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        RpcTcpClient::with_limits_tls(addr, server_name, config, Limits::default())
    }

    /// As [`RpcTcpClient::new_tls`], with the given limits. Dialing plus the TLS handshake
    /// must finish within `limits.handshake_timeout`.
    pub fn with_limits_tls<A>(
        addr: A,
        server_name: impl Into<String>,
        config: rustls::ClientConfig,
        limits: Limits,
    ) -> RpcTcpClient
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        let timeout = limits.handshake_timeout;
        let tls = Some((TlsConnector::new(config, ALPN_RPC, true), server_name.into()));
        RpcTcpClient { client: RpcClient::with_limits(TcpConnector { addr, timeout, tls }, limits) }
    }

    /// The underlying client.
    pub fn client(&self) -> &RpcClient {
        &self.client
    }
}

impl Deref for RpcTcpClient {
    type Target = RpcClient;

    fn deref(&self) -> &RpcClient {
        &self.client
    }
}
