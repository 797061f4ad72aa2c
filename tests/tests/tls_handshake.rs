//! TLS and handshake failures (ROBUSTNESS.md §8.5 A9–A11, §7.4): each fails cleanly on the
//! client within the handshake deadline, and the server goes on serving good clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{Context, ErrorKind, Limits, RpcKernel, controller};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};
use rpc_ws::{RpcWebSocketClient, RpcWebSocketServer};
use tests::pki::{self, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[controller("tls_probe")]
pub trait Probe {
    async fn who(&self, ctx: &Context) -> (String, Option<String>);
}

struct ProbeImpl;

impl Probe for ProbeImpl {
    async fn who(&self, ctx: &Context) -> (String, Option<String>) {
        let info = ctx.connection().transport();
        (info.kind.to_string(), info.peer_identity.clone())
    }
}

/// A short handshake deadline on both sides, so that a hang would show.
const DEADLINE: Duration = Duration::from_millis(500);

fn limits() -> Limits {
    Limits::default().handshake_timeout(DEADLINE)
}

fn kernel() -> RpcKernel {
    let kernel = RpcKernel::with_limits(limits());
    kernel.register(ProbeServer::new(ProbeImpl));
    kernel
}

async fn tls_server(config: rustls::ServerConfig) -> SocketAddr {
    let server = RpcTcpServer::bind_tls("127.0.0.1:0", kernel(), config).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    addr
}

async fn tcp_server() -> SocketAddr {
    let server = RpcTcpServer::bind("127.0.0.1:0", kernel()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    addr
}

fn tls_client(addr: SocketAddr, config: rustls::ClientConfig) -> RpcTcpClient {
    RpcTcpClient::with_limits_tls(addr, "127.0.0.1", config, limits())
}

/// Connects, expecting a `Disconnected` failure well within the deadline (plus slack).
async fn fails_cleanly(client: &rpc_core::RpcClient) -> String {
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(DEADLINE * 4, client.connect())
        .await
        .expect("the failure came within the handshake deadline")
        .expect_err("the connection must fail");
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert!(started.elapsed() < DEADLINE * 3, "took {:?}", started.elapsed());
    err.to_string()
}

async fn who(client: &rpc_core::RpcClient) -> (String, Option<String>) {
    client.controller::<ProbeClient>().who().await.expect("a good client is served")
}

#[tokio::test]
async fn untrusted_server_certificate_fails_at_once() {
    let pki = TestPki::shared();
    let addr = tls_server(pki.server_config()).await;
    let stranger = TestPki::generate("another CA");
    let bad = tls_client(addr, stranger.client_config());
    let reason = fails_cleanly(&bad).await;
    assert!(reason.contains("TLS"), "{reason}");
    let good = tls_client(addr, pki.client_config());
    assert_eq!(who(&good).await, ("tls".to_string(), None));
}

#[tokio::test]
async fn plain_client_on_the_tls_port_fails_cleanly() {
    let pki = TestPki::shared();
    let addr = tls_server(pki.server_config()).await;
    let plain = RpcTcpClient::with_limits(addr, limits());
    fails_cleanly(&plain).await;
    assert_eq!(who(&tls_client(addr, pki.client_config())).await.0, "tls");
}

#[tokio::test]
async fn tls_client_on_the_plain_port_fails_cleanly() {
    let pki = TestPki::shared();
    let addr = tcp_server().await;
    fails_cleanly(&tls_client(addr, pki.client_config())).await;
    assert_eq!(who(&RpcTcpClient::with_limits(addr, limits())).await.0, "tcp");
}

#[tokio::test]
async fn mutual_tls_identity_reaches_the_handler() {
    let pki = TestPki::shared();
    let addr = tls_server(pki.server_config_mtls()).await;
    let alice = pki.client_identity("alice");
    let client = tls_client(addr, pki.client_config_with(&alice));
    assert_eq!(who(&client).await, ("tls".to_string(), Some("alice".to_string())));
}

#[tokio::test]
async fn mutual_tls_refuses_no_certificate_and_a_foreign_one() {
    let pki = TestPki::shared();
    let addr = tls_server(pki.server_config_mtls()).await;
    // TLS 1.3: the client learns of the refusal when it reads, during the protocol handshake.
    fails_cleanly(&tls_client(addr, pki.client_config())).await;
    let stranger = TestPki::generate("another CA");
    let foreign = stranger.client_identity("mallory");
    fails_cleanly(&tls_client(addr, pki.client_config_with(&foreign))).await;
    assert_eq!(
        who(&tls_client(addr, pki.client_config_mtls())).await.1.as_deref(),
        Some(pki::CLIENT_IDENTITY)
    );
}

#[tokio::test]
async fn optional_client_certificates() {
    let pki = TestPki::shared();
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        Arc::new(roots)
    };
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, pki::provider())
            .allow_unauthenticated()
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.chain.clone(), pki.server.key())
        .unwrap();
    let addr = tls_server(config).await;
    assert_eq!(who(&tls_client(addr, pki.client_config())).await.1, None);
    assert_eq!(
        who(&tls_client(addr, pki.client_config_mtls())).await.1.as_deref(),
        Some(pki::CLIENT_IDENTITY)
    );
}

/// A raw TLS client with the given ALPN list; returns whether the server ever answered with
/// protocol bytes (it must not) and how the socket ended.
async fn raw_tls(addr: SocketAddr, alpn: Vec<Vec<u8>>) -> Result<usize, std::io::Error> {
    let pki = TestPki::shared();
    let mut config = pki.client_config();
    config.alpn_protocols = alpn;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    // A valid Hello would be answered; the server must drop us without a word instead.
    let hello = [0u8, 0, 0, 6, 0x01, 0, 0, 0, 0, 0];
    tls.write_all(&hello).await?;
    let mut buf = [0u8; 64];
    tokio::time::timeout(DEADLINE * 4, tls.read(&mut buf)).await.expect("closed in time")
}

#[tokio::test]
async fn alpn_is_required() {
    let pki = TestPki::shared();
    let kernel = kernel();
    let server =
        RpcTcpServer::bind_tls("127.0.0.1:0", kernel.clone(), pki.server_config()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());

    // No ALPN offered: rustls would accept it; the server's own check refuses it.
    let no_alpn = raw_tls(addr, Vec::new()).await;
    assert!(matches!(no_alpn, Ok(0) | Err(_)), "{no_alpn:?}");
    // Another protocol only: rustls refuses it during the handshake.
    let other = raw_tls(addr, vec![b"h2".to_vec()]).await;
    assert!(other.is_err(), "{other:?}");
    assert_eq!(kernel.stats().total_connections, 0);
    assert_eq!(who(&tls_client(addr, pki.client_config())).await.0, "tls");
}

#[tokio::test]
async fn silent_clients_are_dropped_at_the_deadline() {
    let pki = TestPki::shared();
    let tls_addr = tls_server(pki.server_config()).await;
    let ws = RpcWebSocketServer::bind("127.0.0.1:0", kernel()).await.unwrap();
    let ws_addr = ws.local_addr().unwrap();
    tokio::spawn(ws.serve());
    let wss =
        RpcWebSocketServer::bind_tls("127.0.0.1:0", kernel(), pki.server_config()).await.unwrap();
    let wss_addr = wss.local_addr().unwrap();
    tokio::spawn(wss.serve());
    for addr in [tls_addr, ws_addr, wss_addr] {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(DEADLINE * 4, socket.read(&mut buf))
            .await
            .expect("the server closed the silent socket");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() >= DEADLINE - Duration::from_millis(50));
    }
}

#[tokio::test]
async fn websocket_clients_on_the_wrong_port_fail_cleanly() {
    let pki = TestPki::shared();
    let ws = RpcWebSocketServer::bind("127.0.0.1:0", kernel()).await.unwrap();
    let ws_addr = ws.local_addr().unwrap();
    tokio::spawn(ws.serve());
    let wss =
        RpcWebSocketServer::bind_tls("127.0.0.1:0", kernel(), pki.server_config()).await.unwrap();
    let wss_addr = wss.local_addr().unwrap();
    tokio::spawn(wss.serve());
    let tcp_addr = tcp_server().await;

    // ws:// on the wss port, wss:// on the ws port, ws:// on a raw TCP port.
    let plain_on_tls = RpcWebSocketClient::with_limits(format!("ws://{wss_addr}/"), limits());
    fails_cleanly(&plain_on_tls).await;
    let tls_on_plain = RpcWebSocketClient::with_limits_tls(
        format!("wss://{ws_addr}/"),
        pki.client_config(),
        limits(),
    );
    fails_cleanly(&tls_on_plain).await;
    let ws_on_tcp = RpcWebSocketClient::with_limits(format!("ws://{tcp_addr}/"), limits());
    fails_cleanly(&ws_on_tcp).await;
    // An untrusted wss server.
    let stranger = TestPki::generate("another CA");
    let untrusted = RpcWebSocketClient::with_limits_tls(
        format!("wss://{wss_addr}/"),
        stranger.client_config(),
        limits(),
    );
    fails_cleanly(&untrusted).await;

    let good = RpcWebSocketClient::with_limits(format!("ws://{ws_addr}/"), limits());
    assert_eq!(who(&good).await.0, "ws");
    let good = RpcWebSocketClient::with_limits_tls(
        format!("wss://{wss_addr}/"),
        pki.client_config(),
        limits(),
    );
    assert_eq!(who(&good).await.0, "wss");
}

#[tokio::test]
async fn invalid_urls_fail_with_a_clear_error() {
    for url in ["http://127.0.0.1:1/", "not a url", "ws://"] {
        let client = RpcWebSocketClient::with_limits(url, limits());
        let err = client.connect().await.expect_err(url);
        assert_eq!(err.kind(), ErrorKind::Disconnected);
        assert!(err.to_string().contains("URL"), "{url}: {err}");
    }
}

#[tokio::test]
async fn wss_without_a_config_uses_the_public_roots() {
    // The test CA is not among the Mozilla roots, so the default wss:// client refuses it.
    let pki = TestPki::shared();
    let wss =
        RpcWebSocketServer::bind_tls("127.0.0.1:0", kernel(), pki.server_config()).await.unwrap();
    let addr = wss.local_addr().unwrap();
    tokio::spawn(wss.serve());
    let client = RpcWebSocketClient::with_limits(format!("wss://{addr}/"), limits());
    let reason = fails_cleanly(&client).await;
    assert!(reason.contains("TLS"), "{reason}");
}

#[tokio::test]
async fn full_tls_server_closes_new_sockets_before_the_handshake() {
    let pki = TestPki::shared();
    let kernel = RpcKernel::with_limits(limits().max_connections(1));
    kernel.register(ProbeServer::new(ProbeImpl));
    let server = RpcTcpServer::bind_tls("127.0.0.1:0", kernel, pki.server_config()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    let first = tls_client(addr, pki.client_config());
    assert_eq!(who(&first).await.0, "tls");
    fails_cleanly(&tls_client(addr, pki.client_config())).await;
    assert_eq!(who(&first).await.0, "tls");
}

/// Admits calls only from connections whose verified client certificate names `allowed`.
struct RequireIdentity {
    allowed: &'static str,
}

impl rpc_core::Middleware for RequireIdentity {
    async fn call(&self, ctx: Context, next: rpc_core::Next) -> rpc_core::Replied {
        let identity = ctx.connection().transport().peer_identity.clone();
        if identity.as_deref() != Some(self.allowed) {
            return next.reject(rpc_core::RpcError::access_denied(format!(
                "certificate {identity:?} may not call this server"
            )));
        }
        next.run().await
    }
}

#[tokio::test]
async fn certificate_identity_drives_an_access_rule() {
    let pki = TestPki::shared();
    let kernel = kernel();
    kernel.add_middleware(RequireIdentity { allowed: "alice" });
    let server =
        RpcTcpServer::bind_tls("127.0.0.1:0", kernel, pki.server_config_mtls()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());

    let alice = tls_client(addr, pki.client_config_with(&pki.client_identity("alice")));
    assert_eq!(who(&alice).await.1.as_deref(), Some("alice"));
    let bob = tls_client(addr, pki.client_config_with(&pki.client_identity("bob")));
    let err = bob.controller::<ProbeClient>().who().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
}
