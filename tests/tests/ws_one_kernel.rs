//! One kernel serves TCP, TLS, WS and WSS at once: a client on any of them calls the same
//! controller instance, and peers on different transports call each other through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rpc_core::{Context, RpcClient, RpcKernel, Security, Session, controller};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};
use rpc_ws::{RpcWebSocketClient, RpcWebSocketServer};
use tests::pki::TestPki;

#[controller("shared_counter")]
pub trait Counter {
    /// Adds one and returns the new total, with the caller's transport kind.
    async fn bump(&self, ctx: &Context) -> (u32, String);
}

struct CounterImpl(Arc<AtomicU32>);

impl Counter for CounterImpl {
    async fn bump(&self, ctx: &Context) -> (u32, String) {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        (n, ctx.connection().transport().kind.to_string())
    }
}

#[controller("one_kernel_peer")]
pub trait Greeter {
    async fn greet(&self, name: String) -> String;
}

struct GreeterImpl(&'static str);

impl Greeter for GreeterImpl {
    async fn greet(&self, name: String) -> String {
        format!("{name}, greetings from {}", self.0)
    }
}

/// Lets every connection register as a peer and call peers.
struct OpenPeers;

impl Security for OpenPeers {
    async fn is_allowed_to_register_as_peer(&self, _: &Session, _: &str) -> bool {
        true
    }

    async fn is_allowed_to_send_to_peer(&self, _: &Session, _: &str) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_kernel_serves_every_transport() {
    let pki = TestPki::shared();
    let count = Arc::new(AtomicU32::new(0));
    let kernel = RpcKernel::new();
    kernel.register(CounterServer::new(CounterImpl(count.clone())));
    kernel.set_security(OpenPeers);

    let tcp = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await.unwrap();
    let tls =
        RpcTcpServer::bind_tls("127.0.0.1:0", kernel.clone(), pki.server_config()).await.unwrap();
    let ws = RpcWebSocketServer::bind("127.0.0.1:0", kernel.clone()).await.unwrap();
    let wss = RpcWebSocketServer::bind_tls("127.0.0.1:0", kernel.clone(), pki.server_config())
        .await
        .unwrap();
    let clients: Vec<(RpcClient, &str)> = vec![
        (RpcTcpClient::new(tcp.local_addr().unwrap()).client().clone(), "tcp"),
        (
            RpcTcpClient::new_tls(tls.local_addr().unwrap(), "127.0.0.1", pki.client_config())
                .client()
                .clone(),
            "tls",
        ),
        (
            RpcWebSocketClient::new(format!("ws://{}/", ws.local_addr().unwrap())).client().clone(),
            "ws",
        ),
        (
            RpcWebSocketClient::new_tls(
                format!("wss://{}/", wss.local_addr().unwrap()),
                pki.client_config(),
            )
            .client()
            .clone(),
            "wss",
        ),
    ];
    tokio::spawn(tcp.serve());
    tokio::spawn(tls.serve());
    tokio::spawn(ws.serve());
    tokio::spawn(wss.serve());

    let mut totals = Vec::new();
    for (client, kind) in &clients {
        let (n, seen) = client.controller::<CounterClient>().bump().await.unwrap();
        assert_eq!(seen, *kind);
        totals.push(n);
    }
    assert_eq!(totals, [1, 2, 3, 4], "one controller instance behind every transport");
    assert_eq!(kernel.connections().len(), 4);

    // Peers on different transports call each other through the one kernel: each client
    // registers under its transport's name, then calls the next one's.
    for (client, kind) in &clients {
        client.register_controller(GreeterServer::new(GreeterImpl(kind)));
        client.register_as_peer(kind).await.unwrap();
    }
    for (i, (client, kind)) in clients.iter().enumerate() {
        let (_, next) = clients[(i + 1) % clients.len()];
        let greeter = client.peer(next).controller::<GreeterClient>();
        let reply = tokio::time::timeout(Duration::from_secs(5), greeter.greet(kind.to_string()))
            .await
            .expect("peer call answered")
            .unwrap();
        assert_eq!(reply, format!("{kind}, greetings from {next}"));
    }
}
