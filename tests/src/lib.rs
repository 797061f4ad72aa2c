//! Test harness: every integration scenario runs over every transport from one definition.
//!
//! A scenario is an `async fn(Harness)`; [`transport_tests!`] expands it into one
//! `#[tokio::test]` per transport (in-memory, TCP, TLS, WebSocket, WebSocket over TLS), so a
//! new transport gets the whole suite by adding one variant to [`TransportKind`] and one line
//! to the macro. TLS certificates are generated at run time ([`pki`]).

pub mod alloc;
pub mod pki;

use std::net::SocketAddr;
use std::time::Duration;

use rpc_core::{Limits, RpcClient, RpcDirectClient, RpcKernel};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};
use rpc_ws::{RpcWebSocketClient, RpcWebSocketServer};

use crate::pki::TestPki;

/// The transports every scenario runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// In-process, no socket.
    Memory,
    /// Plain TCP on 127.0.0.1.
    Tcp,
    /// TCP with TLS, client certificates required (mutual TLS, identity
    /// [`pki::CLIENT_IDENTITY`]).
    Tls,
    /// WebSocket (`ws://127.0.0.1:port/rpc`).
    Ws,
    /// WebSocket over TLS (`wss://`), client certificates required as for [`TransportKind::Tls`].
    Wss,
}

impl TransportKind {
    /// Every transport, in the order the suite runs them.
    pub const ALL: [TransportKind; 5] = [
        TransportKind::Memory,
        TransportKind::Tcp,
        TransportKind::Tls,
        TransportKind::Ws,
        TransportKind::Wss,
    ];

    /// The name handlers see as `ctx.connection().transport().kind`.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Memory => "memory",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Ws => "ws",
            TransportKind::Wss => "wss",
        }
    }

    /// Whether the transport runs over TLS with a client certificate.
    pub fn is_tls(self) -> bool {
        matches!(self, TransportKind::Tls | TransportKind::Wss)
    }
}

/// A server kernel and a way to make clients of it over one transport.
pub struct Harness {
    /// The server's kernel.
    pub kernel: RpcKernel,
    /// The transport in use.
    pub kind: TransportKind,
    addr: Option<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Harness {
    /// Starts serving `kernel` over `kind`.
    pub async fn start(kind: TransportKind, kernel: RpcKernel) -> Harness {
        let mut h =
            Harness { kernel: kernel.clone(), kind, addr: None, shutdown: None, server: None };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            let _ = rx.await;
        };
        let grace = Duration::from_secs(2);
        let pki = TestPki::shared();
        let bound = match kind {
            TransportKind::Memory => return h,
            TransportKind::Tcp => {
                let server = RpcTcpServer::bind("127.0.0.1:0", kernel).await.expect("bind");
                let addr = server.local_addr().expect("local addr");
                (addr, tokio::spawn(server.shutdown_timeout(grace).serve_with_shutdown(signal)))
            }
            TransportKind::Tls => {
                let server =
                    RpcTcpServer::bind_tls("127.0.0.1:0", kernel, pki.server_config_mtls())
                        .await
                        .expect("bind");
                let addr = server.local_addr().expect("local addr");
                (addr, tokio::spawn(server.shutdown_timeout(grace).serve_with_shutdown(signal)))
            }
            TransportKind::Ws => {
                let server = RpcWebSocketServer::bind("127.0.0.1:0", kernel).await.expect("bind");
                let addr = server.local_addr().expect("local addr");
                (addr, tokio::spawn(server.shutdown_timeout(grace).serve_with_shutdown(signal)))
            }
            TransportKind::Wss => {
                let server =
                    RpcWebSocketServer::bind_tls("127.0.0.1:0", kernel, pki.server_config_mtls())
                        .await
                        .expect("bind");
                let addr = server.local_addr().expect("local addr");
                (addr, tokio::spawn(server.shutdown_timeout(grace).serve_with_shutdown(signal)))
            }
        };
        h.addr = Some(bound.0);
        h.server = Some(bound.1);
        h.shutdown = Some(tx);
        h
    }

    /// The server's address (none for [`TransportKind::Memory`]).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The URL a WebSocket client dials (for [`TransportKind::Ws`] and [`TransportKind::Wss`]).
    pub fn url(&self) -> Option<String> {
        let addr = self.addr?;
        match self.kind {
            TransportKind::Ws => Some(format!("ws://{addr}/rpc")),
            TransportKind::Wss => Some(format!("wss://{addr}/rpc")),
            _ => None,
        }
    }

    /// A new client (connects lazily) with default limits.
    pub fn client(&self) -> RpcClient {
        self.client_with(Limits::default())
    }

    /// A new client with `limits`.
    pub fn client_with(&self, limits: Limits) -> RpcClient {
        let pki = TestPki::shared();
        let addr = || self.addr.expect("server address");
        let url = || self.url().expect("server URL");
        match self.kind {
            TransportKind::Memory => {
                RpcDirectClient::with_limits(&self.kernel, limits).clone_client()
            }
            TransportKind::Tcp => RpcTcpClient::with_limits(addr(), limits).client().clone(),
            TransportKind::Tls => {
                let config = pki.client_config_mtls();
                RpcTcpClient::with_limits_tls(addr(), "127.0.0.1", config, limits).client().clone()
            }
            TransportKind::Ws => RpcWebSocketClient::with_limits(url(), limits).client().clone(),
            TransportKind::Wss => {
                let config = pki.client_config_mtls();
                RpcWebSocketClient::with_limits_tls(url(), config, limits).client().clone()
            }
        }
    }

    /// Shuts the server down gracefully and waits for it (memory: closes every connection).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        for conn in self.kernel.connections() {
            conn.close();
        }
    }
}

/// Turns an [`RpcDirectClient`] into the plain [`RpcClient`] it wraps.
pub trait CloneClient {
    /// The wrapped client.
    fn clone_client(&self) -> RpcClient;
}

impl CloneClient for RpcDirectClient {
    fn clone_client(&self) -> RpcClient {
        (**self).clone()
    }
}

/// Polls `check` every 10 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Expands each scenario `async fn name(h: Harness)` (whose kernel is built by `$setup`) into
/// a module with one test per transport.
///
/// ```ignore
/// transport_tests! {
///     setup = make_kernel;
///     async fn hello_works(h: Harness) { ... }
/// }
/// ```
#[macro_export]
macro_rules! transport_tests {
    (setup = $setup:path; $(async fn $name:ident($h:ident: Harness) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn scenario($h: $crate::Harness) $body

                async fn run(kind: $crate::TransportKind) {
                    let kernel = $setup();
                    let harness = $crate::Harness::start(kind, kernel).await;
                    tokio::time::timeout(std::time::Duration::from_secs(60), scenario(harness))
                        .await
                        .expect("scenario timed out after 60 s");
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() { run($crate::TransportKind::Memory).await }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn tcp() { run($crate::TransportKind::Tcp).await }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn tls() { run($crate::TransportKind::Tls).await }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn ws() { run($crate::TransportKind::Ws).await }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn wss() { run($crate::TransportKind::Wss).await }
            }
        )*
    };
}
