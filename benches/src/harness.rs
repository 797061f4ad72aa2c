//! Threads, runtimes, pinning and the measurement loops shared by every system.
//!
//! Each side runs on its own `current_thread` runtime on its own OS thread, pinned to a core:
//! the server on `server_core`, the client on `client_core`. With both on one core the
//! numbers show per-call CPU cost; split, they include the cross-core wake-ups.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// Where the two sides run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Server on one core, client on the other.
    Split,
    /// Both on the same core.
    Same,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Split => "split (server core 0, client core 1)",
            Placement::Same => "same core (both on core 1)",
        }
    }

    /// (server core, client core)
    pub fn cores(self) -> (usize, usize) {
        match self {
            Placement::Split => (0, 1),
            Placement::Same => (1, 1),
        }
    }
}

/// How long and how hard to measure.
#[derive(Debug, Clone)]
pub struct Cfg {
    pub warmup: Duration,
    pub duration: Duration,
    pub stream_items: u64,
    pub payload: usize,
}

/// How measuring threads are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sched {
    /// SCHED_FIFO priority 10: nothing of normal priority (compilers, test runs of a shared
    /// machine) preempts a measuring thread; the two sides still block and wake as usual.
    Fifo,
    /// Normal scheduling at nice -20.
    Nice,
    /// Normal scheduling, default priority.
    Normal,
}

static SCHED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

pub fn set_sched(s: Sched) {
    SCHED.store(s as u8, std::sync::atomic::Ordering::Relaxed);
}

pub fn sched() -> Sched {
    match SCHED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Sched::Fifo,
        1 => Sched::Nice,
        _ => Sched::Normal,
    }
}

/// Applies `s` to the calling thread; false if not permitted.
fn apply_sched(s: Sched) -> bool {
    unsafe {
        match s {
            Sched::Fifo => {
                let param = libc::sched_param { sched_priority: 10 };
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
            }
            Sched::Nice => {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, -20) == 0
            }
            Sched::Normal => true,
        }
    }
}

/// Picks the requested policy if this process may use it, else the best one it may; call
/// once at start-up, before any measuring thread exists.
pub fn choose_sched(wanted: Sched) -> Sched {
    let chosen = std::thread::spawn(move || {
        for s in [Sched::Fifo, Sched::Nice, Sched::Normal] {
            if (s as u8) >= (wanted as u8) && apply_sched(s) {
                return s;
            }
        }
        Sched::Normal
    })
    .join()
    .unwrap();
    set_sched(chosen);
    chosen
}

/// Pins the calling thread to `core` and applies the chosen scheduling policy.
pub fn pin(core: usize) {
    let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    if !ok {
        eprintln!("warning: could not pin to core {core}");
    }
    apply_sched(sched());
}

/// The 1-minute load average: what else was running while this measured.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A server running on its own pinned thread and runtime; stopped (runtime dropped, every
/// task and socket with it) when this is dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start<F, Fut>(core: usize, setup: F) -> Server
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = (SocketAddr, Box<dyn std::any::Any>)>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                pin(core);
                let rt = runtime();
                rt.block_on(async move {
                    let (addr, keep) = setup().await;
                    addr_tx.send(addr).unwrap();
                    let _ = stop_rx.await;
                    drop(keep);
                });
                drop(rt);
            })
            .expect("spawn server thread");
        let addr = addr_rx.recv().expect("server failed to start");
        Server { addr, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `f` on a fresh pinned thread with its own current-thread runtime.
pub fn on_client<F, Fut, R>(core: usize, f: F) -> R
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            pin(core);
            let rt = runtime();
            let r = rt.block_on(f());
            drop(rt);
            r
        })
        .expect("spawn client thread")
        .join()
        .expect("client thread panicked")
}

/// Latency of one call in flight, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
}

pub fn latency_of(samples: &mut [u64]) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    Latency { p50: at(0.50) as f64 / 1e3, p99: at(0.99) as f64 / 1e3, mean: mean / 1e3 }
}

/// One call in flight, back to back: latency percentiles.
pub async fn unary_latency(cfg: &Cfg, call: impl AsyncFn()) -> Latency {
    let warm_end = Instant::now() + cfg.warmup;
    while Instant::now() < warm_end {
        call().await;
    }
    let mut samples = Vec::with_capacity(1 << 16);
    let end = Instant::now() + cfg.duration;
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        call().await;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    latency_of(&mut samples)
}

/// `k` loops calling back to back on one connection, all polled by the client's one task:
/// completed calls per second.
pub async fn concurrent_rate(k: usize, cfg: &Cfg, call: impl AsyncFn()) -> f64 {
    let count = Cell::new(0u64);
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut loops: FuturesUnordered<_> = (0..k)
        .map(|_| async {
            while Instant::now() < end {
                call().await;
                count.set(count.get() + 1);
            }
        })
        .collect();
    let measure = async {
        tokio::time::sleep_until(measure_from.into()).await;
        let (c0, t0) = (count.get(), Instant::now());
        tokio::time::sleep_until(end.into()).await;
        (count.get() - c0) as f64 / t0.elapsed().as_secs_f64()
    };
    let (rate, ()) = futures::join!(measure, async { while loops.next().await.is_some() {} });
    rate
}

/// A stream of `n` items, after a short warm-up stream: items per second.
pub async fn stream_rate(cfg: &Cfg, stream: impl AsyncFn(u64) -> u64) -> f64 {
    let warm = (cfg.stream_items / 10).max(1000);
    assert_eq!(stream(warm).await, warm, "warm-up stream lost items");
    let t = Instant::now();
    let got = stream(cfg.stream_items).await;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, cfg.stream_items, "stream lost items");
    got as f64 / secs
}

/// Raises the soft open-files limit to the hard one.
pub fn raise_fd_limit() -> u64 {
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            return lim.rlim_cur;
        }
    }
    0
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
