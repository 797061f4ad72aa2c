//! Ours: the `#[controller]` macro, a kernel, and the TCP, WebSocket and in-memory clients.

use std::any::Any;
use std::net::SocketAddr;

use futures::StreamExt;
use rpc_core::{Blob, Limits, RpcKernel, RpcStream, Security, Session, controller};

use crate::proto::{Small, payload, small};
use crate::systems::Rpc;

#[controller("bench")]
pub trait Bench {
    async fn echo(&self, s: Small) -> Small;
    async fn echo_bytes(&self, data: Blob) -> Blob;
    async fn stream(&self, n: u64) -> RpcStream<u64>;
}

pub struct BenchImpl;

impl Bench for BenchImpl {
    async fn echo(&self, s: Small) -> Small {
        s
    }

    async fn echo_bytes(&self, data: Blob) -> Blob {
        data
    }

    async fn stream(&self, n: u64) -> RpcStream<u64> {
        RpcStream::new(futures::stream::iter(0..n))
    }
}

/// The server's limits: the default, except that 1024 calls may be in flight per connection
/// (the default of 100 would cap the 256-in-flight workload) and 20 000 connections may be
/// open (the default of 10 000 refuses the idle-memory workload's last ones); the peers'
/// limits are raised alike.
pub fn server_limits() -> Limits {
    Limits::default().max_calls_in_flight(1024).max_connections(20_000)
}

pub fn kernel() -> RpcKernel {
    let kernel = RpcKernel::with_limits(server_limits());
    kernel.register(BenchServer::new(BenchImpl));
    kernel
}

pub async fn tcp_server() -> (SocketAddr, Box<dyn Any>) {
    let server = rpc_tcp::RpcTcpServer::bind("127.0.0.1:0", kernel()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    (addr, Box::new(()))
}

pub async fn ws_server() -> (SocketAddr, Box<dyn Any>) {
    let server = rpc_ws::RpcWebSocketServer::bind("127.0.0.1:0", kernel()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    (addr, Box::new(()))
}

/// The client side of every workload, through the generated proxy.
pub struct OursRpc {
    pub bench: BenchClient,
    small: Small,
    data: Blob,
}

impl OursRpc {
    pub fn new(bench: BenchClient, payload_len: usize) -> OursRpc {
        OursRpc { bench, small: small(), data: Blob::from(payload(payload_len)) }
    }
}

impl Rpc for OursRpc {
    async fn echo(&self) {
        let r = self.bench.echo(self.small.clone()).await.unwrap();
        debug_assert_eq!(r, self.small);
    }

    async fn echo_bytes(&self) {
        let r = self.bench.echo_bytes(self.data.clone()).await.unwrap();
        assert_eq!(r.len(), self.data.len());
    }

    async fn stream(&self, n: u64) -> Option<u64> {
        let mut s = self.bench.stream(n).await.unwrap();
        let mut got = 0;
        while let Some(item) = s.next().await {
            let v = item.unwrap();
            debug_assert_eq!(v, got);
            got += 1;
        }
        Some(got)
    }
}

pub async fn tcp_client(addr: SocketAddr, payload_len: usize) -> OursRpc {
    let client = rpc_tcp::RpcTcpClient::connect(addr).await.unwrap();
    OursRpc::new(client.controller::<BenchClient>(), payload_len)
}

pub async fn ws_client(addr: SocketAddr, payload_len: usize) -> OursRpc {
    let client = rpc_ws::RpcWebSocketClient::connect(format!("ws://{addr}/")).await.unwrap();
    OursRpc::new(client.controller::<BenchClient>(), payload_len)
}

/// An in-memory client of `kernel` (same runtime, same protocol, no socket).
pub async fn memory_client(kernel: &RpcKernel, payload_len: usize) -> OursRpc {
    let client = rpc_core::RpcDirectClient::new(kernel);
    client.connect().await.unwrap();
    OursRpc::new(client.controller::<BenchClient>(), payload_len)
}

/// Lets any session register as a peer and call peers (the default denies both).
pub struct OpenPeers;

impl Security for OpenPeers {
    async fn is_allowed_to_register_as_peer(&self, _: &Session, _: &str) -> bool {
        true
    }

    async fn is_allowed_to_send_to_peer(&self, _: &Session, _: &str) -> bool {
        true
    }
}

/// A server for the peer workload: the bench controller, and peers allowed.
pub async fn peer_server() -> (SocketAddr, Box<dyn Any>) {
    let kernel = kernel();
    kernel.set_security(OpenPeers);
    let server = rpc_tcp::RpcTcpServer::bind("127.0.0.1:0", kernel).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    (addr, Box::new(()))
}

/// Two clients of a peer server: `b` calls the server's controller directly, and `a`'s
/// controller routed through the server. Returns (direct, routed) proxies and the clients.
pub async fn peer_clients(addr: SocketAddr) -> (BenchClient, BenchClient, Box<dyn Any>) {
    let a = rpc_tcp::RpcTcpClient::connect(addr).await.unwrap();
    a.register_controller(BenchServer::new(BenchImpl));
    a.register_as_peer("bench-peer").await.unwrap();
    let b = rpc_tcp::RpcTcpClient::connect(addr).await.unwrap();
    let direct = b.controller::<BenchClient>();
    let routed = b.peer("bench-peer").controller::<BenchClient>();
    (direct, routed, Box::new((a, b)))
}
