//! The `axum_server` example, tested: its app on 127.0.0.1:0 answers plain HTTP routes and
//! serves RPC calls and streams through the WebSocket mounted at `/rpc`.

#[allow(dead_code)]
#[path = "../../examples/src/bin/axum_server.rs"]
mod axum_server;

use std::net::SocketAddr;
use std::time::Duration;

use examples::{UsersClient, UsersImpl, UsersServer};
use futures::{SinkExt, StreamExt};
use rpc_core::RpcKernel;
use rpc_ws::RpcWebSocketClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn start() -> (SocketAddr, RpcKernel, tokio::sync::oneshot::Sender<()>) {
    let kernel = RpcKernel::new();
    kernel.register(UsersServer::new(UsersImpl::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(axum_server::run(listener, kernel.clone(), async move {
        let _ = stopped.await;
    }));
    (addr, kernel, stop)
}

/// A plain HTTP/1.1 GET; returns the status line and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response.lines().next().unwrap_or_default().to_string();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_through_the_mounted_route_next_to_http_routes() {
    let (addr, kernel, _stop) = start().await;

    let (status, body) = http_get(addr, "/health").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");
    // /rpc without an upgrade is an ordinary HTTP error, not a crash.
    let (status, _) = http_get(addr, "/rpc").await;
    assert!(status.contains(" 4"), "{status}");

    let client = RpcWebSocketClient::connect(format!("ws://{addr}/rpc")).await.unwrap();
    let users = client.controller::<UsersClient>();
    assert_eq!(users.hello("axum".into()).await.unwrap(), "Hello axum");
    assert_eq!(users.get_user(1).await.unwrap().first_name, "Ada");
    let ticks: Vec<u64> = users.ticks(1, 5).await.unwrap().map(|t| t.unwrap()).collect().await;
    assert_eq!(ticks, [0, 1, 2, 3, 4]);

    let connections = kernel.connections();
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0].transport().kind, "ws");
    assert!(connections[0].remote_addr().is_some_and(|a| a.ip().is_loopback()));
}

#[tokio::test]
async fn text_message_through_axum_closes_with_1003() {
    let (addr, _kernel, _stop) = start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/rpc")).await.unwrap();
    ws.send(Message::text("not a frame")).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                other => panic!("expected Close, got {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(CloseCode::Unsupported));
}
