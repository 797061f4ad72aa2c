//! Side-by-side benchmarks: ours (TCP, WebSocket, in-memory) against raw tokio, raw
//! tokio-tungstenite, tarpc, jsonrpsee, tonic and a lean multiplexing client on raw's wire,
//! in one process over 127.0.0.1.
//!
//! ```text
//! cd benches && cargo run --release                 # everything (about 7 minutes)
//! cargo run --release -- --quick                    # a fast smoke run
//! cargo run --release -- --systems raw,ours-tcp --workloads unary,t64 --placement same
//! cargo run --release -- --workloads idle           # server memory per idle connection
//! cargo run --release -- --workloads callgrind      # instructions per call (valgrind)
//! ```
//!
//! See BENCHMARKS.md at the repository root for the method and the results.

mod callgrind;
mod harness;
mod idle;
mod proto;
mod report;
mod systems;

use std::time::Duration;

use harness::{Cfg, Placement};
use systems::{System, Workload};

struct Args {
    cfg: Cfg,
    runs: usize,
    systems: Vec<System>,
    workloads: Vec<Workload>,
    idle: bool,
    callgrind: bool,
    placements: Vec<Placement>,
    idle_conns: usize,
    sched: harness::Sched,
}

fn usage() -> ! {
    eprintln!(
        "usage: rpc-benches [--quick] [--runs N] [--secs S] [--warmup S] [--systems a,b]\n\
         \x20                  [--workloads unary,t64,t256,bytes,stream,peer,idle,callgrind]\n\
         \x20                  [--placement split|same|both] [--idle-conns N] [--sched fifo|nice|normal]\n\
         systems: {}",
        systems::ALL.iter().map(|s| s.key()).collect::<Vec<_>>().join(",")
    );
    std::process::exit(2)
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        cfg: Cfg {
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(1000),
            stream_items: 200_000,
            payload: 64 << 10,
        },
        runs: 3,
        systems: systems::ALL.to_vec(),
        workloads: systems::WORKLOADS.to_vec(),
        idle: true,
        callgrind: true,
        placements: vec![Placement::Split, Placement::Same],
        idle_conns: 10_000,
        sched: harness::Sched::Fifo,
    };
    let secs = |v: Option<String>| {
        Duration::from_secs_f64(v.and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {
                a.runs = 1;
                a.cfg.warmup = Duration::from_millis(100);
                a.cfg.duration = Duration::from_millis(400);
                a.cfg.stream_items = 50_000;
                a.idle_conns = 1000;
            }
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--secs" => a.cfg.duration = secs(it.next()),
            "--warmup" => a.cfg.warmup = secs(it.next()),
            "--idle-conns" => {
                a.idle_conns = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage())
            }
            "--systems" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.systems =
                    v.split(',').map(|s| System::parse(s).unwrap_or_else(|| usage())).collect();
            }
            "--workloads" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.idle = false;
                a.callgrind = false;
                a.workloads.clear();
                for w in v.split(',') {
                    match w {
                        "idle" => a.idle = true,
                        "callgrind" => a.callgrind = true,
                        w => a.workloads.push(Workload::parse(w).unwrap_or_else(|| usage())),
                    }
                }
            }
            "--sched" => {
                a.sched = match it.next().as_deref() {
                    Some("fifo") => harness::Sched::Fifo,
                    Some("nice") => harness::Sched::Nice,
                    Some("normal") => harness::Sched::Normal,
                    _ => usage(),
                }
            }
            "--placement" => {
                a.placements = match it.next().as_deref() {
                    Some("split") => vec![Placement::Split],
                    Some("same") => vec![Placement::Same],
                    Some("both") => vec![Placement::Split, Placement::Same],
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    a
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    // Internal subcommands: a child process serving idle connections, and a call loop run
    // under valgrind.
    match args.peek().map(String::as_str) {
        Some("__idle-server") => {
            args.next();
            let system = System::parse(&args.next().unwrap()).unwrap();
            return idle::child(system);
        }
        Some("__calls") => {
            args.next();
            let system = System::parse(&args.next().unwrap()).unwrap();
            let n: u64 = args.next().unwrap().parse().unwrap();
            systems::set_call_kind(match args.next().as_deref() {
                None | Some("echo") => systems::CallKind::Echo,
                Some("bytes") => systems::CallKind::Bytes,
                Some("stream") => systems::CallKind::Stream,
                Some("t64") => systems::CallKind::Pipelined,
                Some("echo-spawned") => systems::CallKind::EchoSpawned,
                Some(other) => panic!("unknown call kind {other}"),
            });
            return harness::runtime().block_on(systems::calls(system, n));
        }
        _ => {}
    }
    let args = parse_args(args);
    harness::raise_fd_limit();
    let started = std::time::Instant::now();

    println!("{}", report::machine());
    let sched = harness::choose_sched(args.sched);
    println!(
        "Measuring threads: pinned, {}. Load average before: {}.",
        match sched {
            harness::Sched::Fifo => "SCHED_FIFO priority 10",
            harness::Sched::Nice => "nice -20",
            harness::Sched::Normal => "default priority",
        },
        harness::loadavg()
    );
    println!(
        "Settings: {} run(s) per figure (median shown), {:?} warm-up + {:?} measured per workload, \
         {} stream items, {} KiB payload.\n",
        args.runs,
        args.cfg.warmup,
        args.cfg.duration,
        args.cfg.stream_items,
        args.cfg.payload >> 10
    );

    let mut tables = Vec::new();
    if !args.workloads.is_empty() {
        for &placement in &args.placements {
            let mut results = report::Results::default();
            for run in 0..args.runs {
                for &system in &args.systems {
                    eprintln!("[{placement:?} run {}/{}] {}", run + 1, args.runs, system.key());
                    for (w, v) in systems::measure(system, placement, &args.workloads, &args.cfg) {
                        eprintln!("    {:>6}: {}", w.key(), report::brief(&v));
                        results.add(system, w, v);
                    }
                }
            }
            println!("{}", report::table(placement, &args.systems, &args.workloads, &results));
            tables.push((placement, results));
        }
    }

    let idle = if args.idle {
        let r = idle::measure(&args.systems, args.idle_conns);
        println!("{}", report::idle_table(&r, args.idle_conns));
        r
    } else {
        Vec::new()
    };

    let instructions = if args.callgrind {
        let r = callgrind::measure(&args.systems);
        println!("{}", report::callgrind_table(&r));
        r
    } else {
        Vec::new()
    };

    println!("{}", report::goals(&tables, &idle));
    println!("Load average after: {}.", harness::loadavg());
    let _ = instructions;
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
}
