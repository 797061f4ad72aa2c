//! Medians, tables (Markdown) and the goal check.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::process::Command;

use crate::harness::{Latency, Placement, median};
use crate::systems::{System, Value, Workload};

#[derive(Default)]
pub struct Results {
    map: BTreeMap<(System, Workload), Vec<Value>>,
}

impl Results {
    pub fn add(&mut self, s: System, w: Workload, v: Value) {
        self.map.entry((s, w)).or_default().push(v);
    }

    fn values(&self, s: System, w: Workload) -> &[Value] {
        self.map.get(&(s, w)).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn na(&self, s: System, w: Workload) -> Option<&'static str> {
        self.values(s, w)
            .iter()
            .find_map(|v| if let Value::Na(why) = v { Some(*why) } else { None })
    }

    pub fn lat(&self, s: System, w: Workload) -> Option<Latency> {
        let l: Vec<Latency> = self
            .values(s, w)
            .iter()
            .filter_map(|v| if let Value::Lat(l) = v { Some(*l) } else { None })
            .collect();
        med_lat(&l)
    }

    pub fn rate(&self, s: System, w: Workload) -> Option<f64> {
        let r: Vec<f64> = self
            .values(s, w)
            .iter()
            .filter_map(|v| if let Value::Rate(r) = v { Some(*r) } else { None })
            .collect();
        (!r.is_empty()).then(|| median(r))
    }

    pub fn peer(&self, s: System) -> Option<(Latency, Latency)> {
        let (d, r): (Vec<Latency>, Vec<Latency>) = self
            .values(s, Workload::Peer)
            .iter()
            .filter_map(|v| {
                if let Value::Peer { direct, routed } = v { Some((*direct, *routed)) } else { None }
            })
            .unzip();
        Some((med_lat(&d)?, med_lat(&r)?))
    }
}

fn med_lat(l: &[Latency]) -> Option<Latency> {
    if l.is_empty() {
        return None;
    }
    Some(Latency {
        p50: median(l.iter().map(|l| l.p50).collect()),
        p99: median(l.iter().map(|l| l.p99).collect()),
        mean: median(l.iter().map(|l| l.mean).collect()),
    })
}

pub fn brief(v: &Value) -> String {
    match v {
        Value::Lat(l) => format!("p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs", l.p50, l.p99, l.mean),
        Value::Rate(r) => format!("{r:.0}/s"),
        Value::Peer { direct, routed } => {
            format!("direct p50 {:.1} µs, routed p50 {:.1} µs", direct.p50, routed.p50)
        }
        Value::Na(why) => why.to_string(),
    }
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.0} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn machine() -> String {
    let lscpu = cmd("lscpu", &[]);
    let model = lscpu
        .lines()
        .find_map(|l| l.strip_prefix("Model name:"))
        .map(str::trim)
        .unwrap_or("?")
        .to_string();
    let hyper = lscpu
        .lines()
        .find_map(|l| l.strip_prefix("Hypervisor vendor:"))
        .map(str::trim)
        .unwrap_or("none");
    format!(
        "## Machine\n\n{} CPUs ({model}, hypervisor: {hyper}), Linux {}, {}, {}.\n",
        cmd("nproc", &[]),
        cmd("uname", &["-r"]),
        cmd("rustc", &["-V"]),
        cmd("sh", &["-c", "free -g | awk '/Mem:/ {print $2 \" GiB RAM\"}'"]),
    )
}

/// One placement's table: each system's figure and its ratio to raw tokio.
pub fn table(
    placement: Placement,
    systems: &[System],
    workloads: &[Workload],
    r: &Results,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Placement: {}\n", placement.name());
    let base = System::Raw;
    let mut header = vec!["system".to_string()];
    for w in workloads {
        match w {
            Workload::Unary => {
                header.extend(["unary p50 µs (×raw)".into(), "p99 µs".into(), "mean µs".into()])
            }
            Workload::T64 => header.push("64 in flight calls/s (×raw)".into()),
            Workload::T256 => header.push("256 in flight calls/s (×raw)".into()),
            Workload::Bytes => header.push("64 KiB echo ×8 MB/s (×raw)".into()),
            Workload::Stream => header.push("stream items/s (×raw)".into()),
            Workload::Peer => {}
        }
    }
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for &sys in systems {
        let mut row = vec![sys.label().to_string()];
        for &w in workloads {
            let na = || r.na(sys, w).unwrap_or("-").to_string();
            match w {
                Workload::Unary => match (r.lat(sys, w), r.lat(base, w)) {
                    (Some(l), b) => {
                        let ratio =
                            b.map(|b| format!(" ({:.2}×)", l.p50 / b.p50)).unwrap_or_default();
                        row.push(format!("{:.1}{ratio}", l.p50));
                        row.push(format!("{:.1}", l.p99));
                        row.push(format!("{:.1}", l.mean));
                    }
                    (None, _) => row.extend([na(), "-".into(), "-".into()]),
                },
                Workload::Peer => {}
                _ => match (r.rate(sys, w), r.rate(base, w)) {
                    (Some(v), b) => {
                        let ratio = b.map(|b| format!(" ({:.2}×)", v / b)).unwrap_or_default();
                        let shown = if w == Workload::Bytes { format!("{v:.0}") } else { rate(v) };
                        row.push(format!("{shown}{ratio}"));
                    }
                    (None, _) => row.push(na()),
                },
            }
        }
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    if workloads.contains(&Workload::Peer) {
        let _ = writeln!(
            s,
            "\nPeer-routed call (B → server → peer A → server → B) vs a direct call (B → server), ours over TCP:\n"
        );
        let _ = writeln!(s, "| call | p50 µs | p99 µs | mean µs |\n|---|---|---|---|");
        match r.peer(System::OursTcp) {
            Some((d, rt)) => {
                let _ = writeln!(s, "| direct | {:.1} | {:.1} | {:.1} |", d.p50, d.p99, d.mean);
                let _ = writeln!(
                    s,
                    "| routed | {:.1} ({:.2}× direct) | {:.1} | {:.1} |",
                    rt.p50,
                    rt.p50 / d.p50,
                    rt.p99,
                    rt.mean
                );
            }
            None => {
                let _ = writeln!(s, "| n/a (not measured in this run) | | | |");
            }
        }
    }
    s
}

pub fn idle_table(r: &[(System, Result<f64, String>)], n: usize) -> String {
    let mut s = format!(
        "## Server memory per idle connection\n\n{n} connections, each made one call and stays open; \
         growth of the server process's VmRSS divided by {n}.\n\n| system | bytes per connection |\n|---|---|\n"
    );
    for (sys, v) in r {
        let shown = match v {
            Ok(b) => format!("{:.0} ({:.1} KiB)", b, b / 1024.0),
            Err(e) => e.clone(),
        };
        let _ = writeln!(s, "| {} | {shown} |", sys.label());
    }
    s
}

pub fn callgrind_table(r: &[(System, Result<f64, String>)]) -> String {
    let mut s = String::from(
        "## Instructions per unary call (valgrind --tool=callgrind)\n\nClient and server in one \
         process on one current-thread runtime; user-space instructions of both sides per round trip \
         ((I(12 000 calls) − I(2 000 calls)) / 10 000).\n\n| system | instructions per call |\n|---|---|\n",
    );
    for (sys, v) in r {
        let shown = match v {
            Ok(i) => format!("{i:.0}"),
            Err(e) => e.clone(),
        };
        let _ = writeln!(s, "| {} | {shown} |", sys.label());
    }
    s
}

/// The issue's goals, checked against the same run's figures.
pub fn goals(tables: &[(Placement, Results)], idle: &[(System, Result<f64, String>)]) -> String {
    let mut s = String::from(
        "## Goals (ratios from the same run)\n\n| goal | placement | measured | met |\n|---|---|---|---|\n",
    );
    let mut row = |goal: &str, place: &str, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(s, "| {goal} | {place} | {measured} | {met} |");
    };
    let (o, raw, tarpc, jr, ows, rws) = (
        System::OursTcp,
        System::Raw,
        System::Tarpc,
        System::Jsonrpsee,
        System::OursWs,
        System::RawWs,
    );
    for (p, r) in tables {
        let place = match p {
            Placement::Split => "split",
            Placement::Same => "same core",
        };
        let lat = |sys, w| r.lat(sys, w).map(|l| l.p50);
        let rt = |sys, w| r.rate(sys, w);
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let show = |x: Option<f64>| x.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "-".into());

        let x = ratio(lat(o, Workload::Unary), lat(raw, Workload::Unary));
        row("unary p50 ≤ 1.10× raw", place, show(x), x.map(|x| x <= 1.10));
        let x = ratio(rt(o, Workload::T64), rt(raw, Workload::T64));
        row("64 in flight ≥ 0.8× raw pipelined", place, show(x), x.map(|x| x >= 0.8));
        let x = ratio(rt(o, Workload::T256), rt(raw, Workload::T256));
        row("256 in flight ≥ 0.9× raw", place, show(x), x.map(|x| x >= 0.9));
        for w in [Workload::T64, Workload::T256] {
            let x = ratio(rt(o, w), rt(tarpc, w));
            row(&format!("{} ≥ 5× tarpc", w.key()), place, show(x), x.map(|x| x >= 5.0));
        }
        let x = ratio(rt(o, Workload::Bytes), rt(raw, Workload::Bytes));
        row("64 KiB ≥ 0.8× raw MB/s", place, show(x), x.map(|x| x >= 0.8));
        let x = ratio(rt(o, Workload::Stream), rt(raw, Workload::Stream));
        row("streaming ≥ 0.75× raw", place, show(x), x.map(|x| x >= 0.75));

        // Ahead of jsonrpsee and tarpc on every workload (ours over TCP; ours over WebSocket
        // against jsonrpsee, also over WebSocket).
        let mut behind = Vec::new();
        let mut compared = 0;
        for (ours, peers) in [(o, vec![tarpc, jr]), (ows, vec![jr])] {
            for peer in peers {
                for w in [
                    Workload::Unary,
                    Workload::T64,
                    Workload::T256,
                    Workload::Bytes,
                    Workload::Stream,
                ] {
                    let ahead = if w == Workload::Unary {
                        lat(ours, w).zip(lat(peer, w)).map(|(a, b)| a < b)
                    } else {
                        rt(ours, w).zip(rt(peer, w)).map(|(a, b)| a > b)
                    };
                    if let Some(ahead) = ahead {
                        compared += 1;
                        if !ahead {
                            behind.push(format!("{} vs {} on {}", ours.key(), peer.key(), w.key()));
                        }
                    }
                }
            }
        }
        let measured = if behind.is_empty() {
            format!("ahead in all {compared} comparisons")
        } else {
            format!("behind: {}", behind.join(", "))
        };
        row(
            "ahead of jsonrpsee and tarpc everywhere",
            place,
            measured,
            (compared > 0).then_some(behind.is_empty()),
        );

        // WebSocket within 1.2× of raw tokio-tungstenite.
        let mut worst: Option<(f64, &str)> = None;
        for w in [Workload::Unary, Workload::T64, Workload::T256, Workload::Bytes, Workload::Stream]
        {
            let factor = if w == Workload::Unary {
                ratio(lat(ows, w), lat(rws, w))
            } else {
                ratio(rt(rws, w), rt(ows, w))
            };
            if let Some(f) = factor
                && worst.is_none_or(|(x, _)| f > x)
            {
                worst = Some((f, w.key()));
            }
        }
        match worst {
            Some((f, w)) => row(
                "WebSocket within 1.2× of raw tungstenite",
                place,
                format!("worst {f:.2}× ({w})"),
                Some(f <= 1.2),
            ),
            None => row(
                "WebSocket within 1.2× of raw tungstenite",
                place,
                "n/a (WebSocket systems not measured in this run)".into(),
                None,
            ),
        }

        match r.peer(o) {
            Some((d, routed)) => {
                let x = routed.p50 / d.p50;
                row("routed peer call ≤ 2.2× direct", place, format!("{x:.2}×"), Some(x <= 2.2))
            }
            None => row("routed peer call ≤ 2.2× direct", place, "n/a".into(), None),
        }
    }
    if let Some((_, v)) = idle.iter().find(|(sys, _)| *sys == System::OursTcp) {
        match v {
            Ok(b) => row(
                "idle connection ≤ 16 KiB",
                "-",
                format!("{:.1} KiB", b / 1024.0),
                Some(*b <= 16.0 * 1024.0),
            ),
            Err(e) => row("idle connection ≤ 16 KiB", "-", e.clone(), None),
        }
    }
    s
}
