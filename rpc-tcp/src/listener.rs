//! The accept loop every TCP-based server of this workspace runs (plain TCP, TLS, and the
//! WebSocket servers of `rpc-ws`): accept, hand each socket to a handshake task, keep the
//! connections that came up, and shut them down gracefully on a signal.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rpc_core::{Connection, RpcError};
use tokio::net::{TcpListener, TcpStream};

/// The connections a server accepted; `None` once it shut down (a handshake that completes
/// after that closes its connection at once).
type Accepted = Arc<Mutex<Option<Vec<Connection>>>>;

/// Accepts connections on `listener` until `signal` resolves, running `handshake` for each
/// socket on its own task (`TCP_NODELAY` already set), then shuts down gracefully: stops
/// accepting, lets the calls in flight on every accepted connection finish for up to
/// `shutdown_timeout`, and closes them.
///
/// `handshake` turns a socket into a running connection, typically by a TLS or WebSocket
/// handshake under a deadline followed by [`RpcKernel::accept`](rpc_core::RpcKernel::accept).
/// A failed handshake is logged at debug level and affects nothing else.
///
/// ```no_run
/// use rpc_core::RpcKernel;
/// use rpc_core::transport::{ByteStream, TransportInfo};
///
/// # async fn run() -> std::io::Result<()> {
/// let kernel = RpcKernel::new();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// rpc_tcp::listener::serve_listener(
///     listener,
///     std::future::pending(),
///     std::time::Duration::from_secs(30),
///     move |stream, remote| {
///         let kernel = kernel.clone();
///         async move {
///             let (read, write) = stream.into_split();
///             let info = TransportInfo { remote_addr: Some(remote), kind: "tcp", ..Default::default() };
///             kernel.accept(ByteStream::new(read, write, info)).await
///         }
///     },
/// )
/// .await
/// # }
/// ```
pub async fn serve_listener<H, F>(
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send,
    shutdown_timeout: Duration,
    handshake: H,
) -> io::Result<()>
where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = Result<Connection, RpcError>> + Send + 'static,
{
    let accepted: Accepted = Arc::new(Mutex::new(Some(Vec::new())));
    let mut signal = std::pin::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            incoming = listener.accept() => match incoming {
                Ok((stream, remote)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%remote, "TCP_NODELAY could not be set: {e}");
                    }
                    let accepted = accepted.clone();
                    let handshake = handshake(stream, remote);
                    tokio::spawn(async move {
                        match handshake.await {
                            Ok(conn) => keep(&accepted, conn),
                            Err(e) => tracing::debug!(%remote, "connection refused during the handshake: {e}"),
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let connections = accepted.lock().take().unwrap_or_default();
    let mut shutdowns = tokio::task::JoinSet::new();
    for conn in connections {
        shutdowns.spawn(async move { conn.shutdown(shutdown_timeout).await });
    }
    while shutdowns.join_next().await.is_some() {}
    Ok(())
}

fn keep(accepted: &Accepted, conn: Connection) {
    let mut guard = accepted.lock();
    match guard.as_mut() {
        Some(list) => {
            list.retain(|c| !c.is_closed());
            list.push(conn);
        }
        None => {
            drop(guard);
            conn.close();
        }
    }
}
