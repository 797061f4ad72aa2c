//! S10 over real sockets: many TCP connections making calls and holding streams, then
//! disconnecting. No failed call, resident memory flat over the second two thirds of the
//! run, every gauge back to baseline afterwards.
//!
//! The everyday run is short (6 s); the full soak of ROBUSTNESS.md (200 connections, 60 s)
//! is opt-in: `RPC_SOAK_SECS=60 cargo test -p tests --release --test soak -- --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rpc_core::{RpcKernel, RpcStream, controller};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};

#[controller("soak")]
pub trait Soak {
    async fn add(&self, a: u64, b: u64) -> u64;
    async fn ticks(&self, every_ms: u64) -> RpcStream<u64>;
}

struct SoakImpl;
impl Soak for SoakImpl {
    async fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }
    async fn ticks(&self, every_ms: u64) -> RpcStream<u64> {
        RpcStream::new(async_stream::stream! {
            let mut i = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
                yield i;
                i += 1;
            }
        })
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_connections_calls_and_streams_leave_nothing_behind() {
    let secs: u64 = std::env::var("RPC_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let connections = if secs >= 60 { 200 } else { 100 };
    let kernel = RpcKernel::new();
    kernel.register(SoakServer::new(SoakImpl));
    let server = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = stopped.await;
    }));
    let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();

    let calls = Arc::new(AtomicU64::new(0));
    let items = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let calls = calls.clone();
        let items = items.clone();
        clients.push(tokio::spawn(async move {
            let client = RpcTcpClient::connect(addr).await.expect("connect");
            let soak = client.controller::<SoakClient>();
            let mut ticks = soak.ticks(50).await.expect("subscribe");
            let mut i = 0u64;
            while Instant::now() < until {
                // 20 calls/s per connection, while the stream keeps flowing.
                assert_eq!(soak.add(i, 1).await.expect("no call fails"), i + 1);
                calls.fetch_add(1, Ordering::Relaxed);
                i += 1;
                while let Some(Some(item)) = ticks.next().now_or_never() {
                    item.expect("no stream error");
                    items.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(ticks);
            client.disconnect().await;
        }));
    }
    // Resident memory at one third and at the end of the run.
    tokio::time::sleep(Duration::from_secs(secs / 3)).await;
    let rss_early = rss_kib();
    for client in clients {
        client.await.expect("a client task failed");
    }
    let rss_late = rss_kib();
    let (calls, items) = (calls.load(Ordering::Relaxed), items.load(Ordering::Relaxed));
    println!(
        "soak: {connections} connections, {secs} s, {calls} calls, {items} stream items, \
         RSS {rss_early} KiB -> {rss_late} KiB"
    );
    assert!(calls >= connections as u64 * secs * 10, "too few calls: {calls}");
    assert!(items > 0);
    // Flat: allow 10% (plus 2 MiB of allocator slack on short runs).
    assert!(
        rss_late <= rss_early + rss_early / 10 + 2048,
        "RSS grew: {rss_early} -> {rss_late} KiB"
    );

    // Every gauge returns to its baseline once the clients are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = kernel.stats();
        if s.connections == 0 && s.active_calls == 0 && s.active_streams == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "gauges did not return to baseline: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::runtime::Handle::current().metrics().num_alive_tasks() > tasks_before {
        assert!(Instant::now() < deadline, "tasks left behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
