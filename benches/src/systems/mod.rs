//! The systems compared, and how each runs every workload.

pub mod jsonrpsee_sys;
pub mod lean;
pub mod ours;
pub mod raw;
pub mod tarpc_sys;
pub mod tonic_sys;

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;

use crate::harness::{
    Cfg, Latency, Placement, Server, concurrent_rate, on_client, stream_rate, unary_latency,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    Raw,
    RawWs,
    Lean,
    Tarpc,
    Jsonrpsee,
    Tonic,
    OursTcp,
    OursWs,
    OursMem,
}

pub const ALL: &[System] = &[
    System::Raw,
    System::RawWs,
    System::Lean,
    System::Tarpc,
    System::Jsonrpsee,
    System::Tonic,
    System::OursTcp,
    System::OursWs,
    System::OursMem,
];

impl System {
    pub fn key(self) -> &'static str {
        match self {
            System::Raw => "raw",
            System::RawWs => "raw-ws",
            System::Lean => "lean",
            System::Tarpc => "tarpc",
            System::Jsonrpsee => "jsonrpsee",
            System::Tonic => "tonic",
            System::OursTcp => "ours-tcp",
            System::OursWs => "ours-ws",
            System::OursMem => "ours-mem",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            System::Raw => "raw tokio TCP (msgpack)",
            System::RawWs => "raw tokio-tungstenite",
            System::Lean => "lean multiplexing client (raw's wire)",
            System::Tarpc => "tarpc TCP (bincode)",
            System::Jsonrpsee => "jsonrpsee WS (JSON)",
            System::Tonic => "tonic gRPC (HTTP/2)",
            System::OursTcp => "**ours TCP**",
            System::OursWs => "**ours WebSocket**",
            System::OursMem => "**ours in-memory**",
        }
    }

    pub fn parse(s: &str) -> Option<System> {
        ALL.iter().copied().find(|sys| sys.key() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Unary,
    T64,
    T256,
    Bytes,
    Stream,
    Peer,
}

pub const WORKLOADS: &[Workload] = &[
    Workload::Unary,
    Workload::T64,
    Workload::T256,
    Workload::Bytes,
    Workload::Stream,
    Workload::Peer,
];

impl Workload {
    pub fn key(self) -> &'static str {
        match self {
            Workload::Unary => "unary",
            Workload::T64 => "t64",
            Workload::T256 => "t256",
            Workload::Bytes => "bytes",
            Workload::Stream => "stream",
            Workload::Peer => "peer",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        WORKLOADS.iter().copied().find(|w| w.key() == s)
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub enum Value {
    Lat(Latency),
    /// Calls/s, MB/s or items/s depending on the workload.
    Rate(f64),
    /// Routed vs direct call latency.
    Peer {
        direct: Latency,
        routed: Latency,
    },
    Na(&'static str),
}

/// The client side of an RPC framework, as the generic workloads drive it.
pub trait Rpc {
    /// One small-struct echo call.
    async fn echo(&self);
    /// One payload echo call.
    async fn echo_bytes(&self);
    /// A server stream of `n` items, consumed whole; `None` if the system has no streams.
    async fn stream(&self, n: u64) -> Option<u64>;
}

async fn rpc_workloads<R: Rpc>(r: &R, workloads: &[Workload], cfg: &Cfg) -> Vec<(Workload, Value)> {
    let mut out = Vec::new();
    for &w in workloads {
        let v = match w {
            Workload::Unary => Value::Lat(unary_latency(cfg, async || r.echo().await).await),
            Workload::T64 => Value::Rate(concurrent_rate(64, cfg, async || r.echo().await).await),
            Workload::T256 => Value::Rate(concurrent_rate(256, cfg, async || r.echo().await).await),
            Workload::Bytes => Value::Rate(
                concurrent_rate(8, cfg, async || r.echo_bytes().await).await * cfg.payload as f64
                    / 1e6,
            ),
            Workload::Stream => match r.stream(10).await {
                None => Value::Na("n/a (no server streams)"),
                Some(_) => {
                    Value::Rate(stream_rate(cfg, async |n| r.stream(n).await.unwrap()).await)
                }
            },
            Workload::Peer => continue,
        };
        out.push((w, v));
    }
    out
}

/// Starts `server` on the server core and runs the workloads from a client on the client core.
fn run_rpc<S, SF, C, CF, R>(
    placement: Placement,
    workloads: &[Workload],
    cfg: &Cfg,
    server: S,
    client: C,
) -> Vec<(Workload, Value)>
where
    S: FnOnce() -> SF + Send + 'static,
    SF: Future<Output = (SocketAddr, Box<dyn Any>)>,
    C: FnOnce(SocketAddr) -> CF + Send + 'static,
    CF: Future<Output = R>,
    R: Rpc,
{
    let (server_core, client_core) = placement.cores();
    let server = Server::start(server_core, server);
    let addr = server.addr;
    let (workloads, cfg) = (workloads.to_vec(), cfg.clone());
    let out = on_client(client_core, move || async move {
        let r = client(addr).await;
        rpc_workloads(&r, &workloads, &cfg).await
    });
    drop(server);
    out
}

fn no_keep(addr: SocketAddr) -> (SocketAddr, Box<dyn Any>) {
    (addr, Box::new(()))
}

/// Runs `workloads` against `system` in `placement`.
pub fn measure(
    system: System,
    placement: Placement,
    workloads: &[Workload],
    cfg: &Cfg,
) -> Vec<(Workload, Value)> {
    let (server_core, client_core) = placement.cores();
    let mut out = match system {
        System::Raw | System::RawWs => {
            let ws = system == System::RawWs;
            let server = Server::start(server_core, move || async move {
                no_keep(if ws { raw::ws_server().await } else { raw::tcp_server().await })
            });
            let addr = server.addr;
            let (workloads, cfg) = (workloads.to_vec(), cfg.clone());
            let out = on_client(client_core, move || async move {
                let mut out = Vec::new();
                for w in workloads {
                    let v = if ws {
                        let c = raw::RawWs::new(addr);
                        match w {
                            Workload::Unary => Value::Lat(c.unary(&cfg).await),
                            Workload::T64 => Value::Rate(c.pipelined(64, raw::OP_ECHO, &cfg).await),
                            Workload::T256 => {
                                Value::Rate(c.pipelined(256, raw::OP_ECHO, &cfg).await)
                            }
                            Workload::Bytes => Value::Rate(
                                c.pipelined(8, raw::OP_BYTES, &cfg).await * cfg.payload as f64
                                    / 1e6,
                            ),
                            Workload::Stream => {
                                Value::Rate(stream_rate(&cfg, async |n| c.stream(n).await).await)
                            }
                            Workload::Peer => continue,
                        }
                    } else {
                        let c = raw::RawTcp::new(addr);
                        match w {
                            Workload::Unary => Value::Lat(c.unary(&cfg).await),
                            Workload::T64 => Value::Rate(c.pipelined(64, raw::OP_ECHO, &cfg).await),
                            Workload::T256 => {
                                Value::Rate(c.pipelined(256, raw::OP_ECHO, &cfg).await)
                            }
                            Workload::Bytes => Value::Rate(
                                c.pipelined(8, raw::OP_BYTES, &cfg).await * cfg.payload as f64
                                    / 1e6,
                            ),
                            Workload::Stream => {
                                Value::Rate(stream_rate(&cfg, async |n| c.stream(n).await).await)
                            }
                            Workload::Peer => continue,
                        }
                    };
                    out.push((w, v));
                }
                out
            });
            drop(server);
            out
        }
        System::Lean => {
            // Calls only: the lean client has no streams to compare.
            let calls: Vec<_> =
                workloads.iter().copied().filter(|&w| w != Workload::Stream).collect();
            let payload = cfg.payload;
            let server = || async { no_keep(raw::tcp_server().await) };
            let mut out = run_rpc(placement, &calls, cfg, server, move |addr| {
                lean::Lean::connect(addr, payload)
            });
            if workloads.contains(&Workload::Stream) {
                out.push((Workload::Stream, Value::Na("n/a (calls only)")));
            }
            out
        }
        System::Tarpc => {
            let payload = cfg.payload;
            run_rpc(placement, workloads, cfg, tarpc_sys::server, move |addr| {
                tarpc_sys::client(addr, payload)
            })
        }
        System::Jsonrpsee => {
            let (payload, items) = (cfg.payload, cfg.stream_items);
            run_rpc(placement, workloads, cfg, jsonrpsee_sys::server, move |addr| {
                jsonrpsee_sys::client(addr, payload, items)
            })
        }
        System::Tonic => {
            let payload = cfg.payload;
            run_rpc(placement, workloads, cfg, tonic_sys::server, move |addr| {
                tonic_sys::client(addr, payload)
            })
        }
        System::OursTcp => {
            let payload = cfg.payload;
            run_rpc(placement, workloads, cfg, ours::tcp_server, move |addr| {
                ours::tcp_client(addr, payload)
            })
        }
        System::OursWs => {
            let payload = cfg.payload;
            run_rpc(placement, workloads, cfg, ours::ws_server, move |addr| {
                ours::ws_client(addr, payload)
            })
        }
        System::OursMem => {
            // One runtime holds both ends: there is no second side to place.
            let (workloads, cfg) = (workloads.to_vec(), cfg.clone());
            on_client(client_core, move || async move {
                let kernel = ours::kernel();
                let r = ours::memory_client(&kernel, cfg.payload).await;
                rpc_workloads(&r, &workloads, &cfg).await
            })
        }
    };
    if workloads.contains(&Workload::Peer) {
        let v = if system == System::OursTcp {
            let server = Server::start(server_core, ours::peer_server);
            let addr = server.addr;
            let cfg = cfg.clone();
            let v = on_client(client_core, move || async move {
                let (direct, routed, _keep) = ours::peer_clients(addr).await;
                let d = unary_latency(&cfg, async || {
                    direct.echo(crate::proto::small()).await.unwrap();
                })
                .await;
                let r = unary_latency(&cfg, async || {
                    routed.echo(crate::proto::small()).await.unwrap();
                })
                .await;
                Value::Peer { direct: d, routed: r }
            });
            drop(server);
            v
        } else {
            Value::Na("n/a")
        };
        out.push((Workload::Peer, v));
    }
    out
}

// ------------------------------------------------------------------------------------------
// Idle connections and instruction counts.

/// The server of `system`, for the idle-memory child process.
pub async fn idle_server(system: System) -> (SocketAddr, Box<dyn Any>) {
    match system {
        System::Raw => no_keep(raw::tcp_server().await),
        System::RawWs => no_keep(raw::ws_server().await),
        System::Tarpc => tarpc_sys::server().await,
        System::Jsonrpsee => jsonrpsee_sys::server().await,
        System::Tonic => tonic_sys::server().await,
        System::OursTcp => ours::tcp_server().await,
        System::OursWs => ours::ws_server().await,
        _ => panic!("no idle server for {}", system.key()),
    }
}

/// One connection to `system`'s server at `addr` that made one call, kept open.
pub async fn idle_connection(system: System, addr: SocketAddr) -> Box<dyn Any> {
    match system {
        System::Raw => Box::new(raw::RawTcp::idle_connection(addr).await),
        System::RawWs => Box::new(raw::RawWs::idle_connection(addr).await),
        System::Tarpc => Box::new(tarpc_sys::idle_connection(addr).await),
        System::Jsonrpsee => Box::new(jsonrpsee_sys::idle_connection(addr).await),
        System::Tonic => Box::new(tonic_sys::idle_connection(addr).await),
        System::OursTcp => {
            let c = ours::tcp_client(addr, 16).await;
            c.echo().await;
            Box::new(c)
        }
        System::OursWs => {
            let c = ours::ws_client(addr, 16).await;
            c.echo().await;
            Box::new(c)
        }
        _ => panic!("no idle connection for {}", system.key()),
    }
}

/// What `__calls` repeats: small echoes, payload echoes, or stream items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Echo,
    Bytes,
    Stream,
    /// Small echoes, 64 in flight on the one connection (the throughput path).
    Pipelined,
    /// Small echoes, one at a time, from a spawned task instead of `block_on`'s own future
    /// (ours only): tokio's current-thread scheduler polls a woken `block_on` future only
    /// after one more poll of the I/O driver, which a task woken from its run queue skips.
    EchoSpawned,
}

thread_local! {
    static KIND: std::cell::Cell<CallKind> = const { std::cell::Cell::new(CallKind::Echo) };
}

pub fn set_call_kind(k: CallKind) {
    KIND.with(|c| c.set(k));
}

async fn n_calls<R: Rpc>(r: &R, n: u64) {
    match KIND.with(|c| c.get()) {
        CallKind::EchoSpawned => panic!("echo-spawned runs ours-tcp only"),
        CallKind::Echo => {
            for _ in 0..n {
                r.echo().await;
            }
        }
        CallKind::Bytes => {
            for _ in 0..n {
                r.echo_bytes().await;
            }
        }
        CallKind::Stream => {
            assert_eq!(r.stream(n).await, Some(n));
        }
        CallKind::Pipelined => {
            // The shape of the timed workload (`harness::throughput`): 64 call loops on
            // this one task, here sharing a count instead of a deadline.
            use futures::StreamExt;
            let left = std::cell::Cell::new(n);
            let loops: futures::stream::FuturesUnordered<_> = (0..64)
                .map(|_| async {
                    while left.get() > 0 {
                        left.set(left.get() - 1);
                        r.echo().await;
                    }
                })
                .collect();
            loops.collect::<()>().await;
        }
    }
}

/// `n` unary calls, client and server in this one runtime (for callgrind: the difference
/// between two counts gives the cost of one call, without the set-up).
pub async fn calls(system: System, n: u64) {
    match system {
        System::Raw => {
            let addr = raw::tcp_server().await;
            let c = raw::RawTcp::new(addr);
            match KIND.with(|k| k.get()) {
                CallKind::Stream => assert_eq!(c.stream(n).await, n),
                CallKind::Pipelined => c.pipelined_calls(n).await,
                _ => c.calls(n).await,
            }
        }
        System::RawWs => {
            let addr = raw::ws_server().await;
            let c = raw::RawWs::new(addr);
            match KIND.with(|k| k.get()) {
                CallKind::Bytes => c.bytes_calls(n, 64 << 10).await,
                _ => c.calls(n).await,
            }
        }
        System::Lean => {
            let addr = raw::tcp_server().await;
            let r = lean::Lean::connect(addr, 64 << 10).await;
            n_calls(&r, n).await;
        }
        System::Tarpc => {
            let (addr, _keep) = tarpc_sys::server().await;
            let r = tarpc_sys::client(addr, 64 << 10).await;
            n_calls(&r, n).await;
        }
        System::Jsonrpsee => {
            let (addr, _keep) = jsonrpsee_sys::server().await;
            let r = jsonrpsee_sys::client(addr, 64 << 10, 1 << 22).await;
            n_calls(&r, n).await;
        }
        System::Tonic => {
            let (addr, _keep) = tonic_sys::server().await;
            let r = tonic_sys::client(addr, 64 << 10).await;
            n_calls(&r, n).await;
        }
        System::OursTcp => {
            let (addr, _keep) = ours::tcp_server().await;
            let r = ours::tcp_client(addr, 64 << 10).await;
            if KIND.with(|k| k.get()) == CallKind::EchoSpawned {
                let (bench, small) = (r.bench.clone(), crate::proto::small());
                let calls = async move {
                    for _ in 0..n {
                        bench.echo(small.clone()).await.unwrap();
                    }
                };
                return tokio::spawn(calls).await.unwrap();
            }
            n_calls(&r, n).await;
        }
        System::OursWs => {
            let (addr, _keep) = ours::ws_server().await;
            let r = ours::ws_client(addr, 64 << 10).await;
            n_calls(&r, n).await;
        }
        System::OursMem => {
            let kernel = ours::kernel();
            let r = ours::memory_client(&kernel, 64 << 10).await;
            n_calls(&r, n).await;
        }
    }
}
