//! Test harness: every integration scenario runs over every transport from one definition.
//!
//! A scenario is an `async fn(Harness)`; [`transport_tests!`] expands it into one
//! `#[tokio::test]` per transport, so a new transport gets the whole suite by adding one
//! variant to [`TransportKind`].

use std::time::Duration;

use rpc_core::{Limits, RpcClient, RpcDirectClient, RpcKernel};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};

/// The transports every scenario runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// In-process, no socket.
    Memory,
    /// Plain TCP on 127.0.0.1.
    Tcp,
}

/// A server kernel and a way to make clients of it over one transport.
pub struct Harness {
    /// The server's kernel.
    pub kernel: RpcKernel,
    /// The transport in use.
    pub kind: TransportKind,
    addr: Option<std::net::SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Harness {
    /// Starts serving `kernel` over `kind`.
    pub async fn start(kind: TransportKind, kernel: RpcKernel) -> Harness {
        let mut h =
            Harness { kernel: kernel.clone(), kind, addr: None, shutdown: None, server: None };
        if kind == TransportKind::Tcp {
            let server = RpcTcpServer::bind("127.0.0.1:0", kernel).await.expect("bind");
            h.addr = Some(server.local_addr().expect("local addr"));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            h.shutdown = Some(tx);
            let server = server.shutdown_timeout(Duration::from_secs(2));
            h.server = Some(tokio::spawn(server.serve_with_shutdown(async move {
                let _ = rx.await;
            })));
        }
        h
    }

    /// A new client (connects lazily) with default limits.
    pub fn client(&self) -> RpcClient {
        self.client_with(Limits::default())
    }

    /// A new client with `limits`.
    pub fn client_with(&self, limits: Limits) -> RpcClient {
        match self.kind {
            TransportKind::Memory => {
                RpcDirectClient::with_limits(&self.kernel, limits).clone_client()
            }
            TransportKind::Tcp => {
                RpcTcpClient::with_limits(self.addr.expect("tcp address"), limits).client().clone()
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
            }
        )*
    };
}
