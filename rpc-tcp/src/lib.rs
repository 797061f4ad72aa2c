//! TCP transport for `rpc-core`: [`RpcTcpServer`] and [`RpcTcpClient`].
//!
//! Frames travel as `PROTOCOL.md` describes, with `TCP_NODELAY` set on every socket (the
//! connection's single writer already coalesces frames, so Nagle's delay would only add
//! latency).
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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rpc_core::client::BoxFuture;
use rpc_core::transport::{ByteStream, TransportInfo};
use rpc_core::{Connection, Connector, Limits, RpcClient, RpcError, RpcKernel};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

/// Serves a kernel over TCP.
pub struct RpcTcpServer {
    listener: TcpListener,
    kernel: RpcKernel,
    shutdown_timeout: Duration,
}

impl RpcTcpServer {
    /// Binds `addr` (port 0 picks a free port; see [`RpcTcpServer::local_addr`]).
    pub async fn bind(addr: impl ToSocketAddrs, kernel: RpcKernel) -> io::Result<RpcTcpServer> {
        Ok(RpcTcpServer {
            listener: TcpListener::bind(addr).await?,
            kernel,
            shutdown_timeout: Duration::from_secs(30),
        })
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
        let accepted: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let mut signal = std::pin::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                incoming = self.listener.accept() => match incoming {
                    Ok((stream, remote)) => self.start(stream, remote, &accepted),
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(self.listener);
        let connections = std::mem::take(&mut *accepted.lock());
        let deadline = self.shutdown_timeout;
        futures_join_all(
            connections.into_iter().map(|c| async move { c.shutdown(deadline).await }),
        )
        .await;
        Ok(())
    }

    fn start(&self, stream: TcpStream, remote: SocketAddr, accepted: &Arc<Mutex<Vec<Connection>>>) {
        let kernel = self.kernel.clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%remote, "TCP_NODELAY could not be set: {e}");
            }
            let (read, write) = stream.into_split();
            let info =
                TransportInfo { remote_addr: Some(remote), kind: "tcp", peer_identity: None };
            match kernel.accept(ByteStream::new(read, write, info)).await {
                Ok(conn) => {
                    let mut list = accepted.lock();
                    list.retain(|c| !c.is_closed());
                    list.push(conn);
                }
                Err(e) => tracing::debug!(%remote, "connection refused during the handshake: {e}"),
            }
        });
    }
}

async fn futures_join_all<F: Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    for f in set {
        f.await;
    }
}

struct TcpConnector<A> {
    addr: A,
    timeout: Duration,
}

impl<A: ToSocketAddrs + Clone + Send + Sync + 'static> Connector for TcpConnector<A> {
    fn connect(&self, kernel: RpcKernel) -> BoxFuture<'static, Result<Connection, RpcError>> {
        let addr = self.addr.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    RpcError::disconnected(format!("connecting timed out after {timeout:?}"))
                })?
                .map_err(|e| RpcError::disconnected(format!("could not connect: {e}")))?;
            stream.set_nodelay(true).map_err(|e| RpcError::disconnected(e.to_string()))?;
            let remote = stream.peer_addr().ok();
            let (read, write) = stream.into_split();
            let info = TransportInfo { remote_addr: remote, kind: "tcp", peer_identity: None };
            kernel.dial(ByteStream::new(read, write, info)).await
        })
    }
}

/// A client over TCP: an [`RpcClient`] (it derefs to one) that dials `addr`.
///
/// ```no_run
/// # async fn run() -> Result<(), rpc_core::RpcError> {
/// let client = rpc_tcp::RpcTcpClient::connect("127.0.0.1:8081").await?; // connected now
/// let lazy = rpc_tcp::RpcTcpClient::new("127.0.0.1:8081");              // on the first call
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
        RpcTcpClient { client: RpcClient::with_limits(TcpConnector { addr, timeout }, limits) }
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
