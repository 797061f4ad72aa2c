//! Instructions per call under `valgrind --tool=callgrind`: the same binary runs N unary
//! calls (client and server in one current-thread runtime over loopback, or in memory); the
//! difference between two counts, divided by the difference in calls, is the cost of one
//! call (user space, client and server together), free of start-up costs.

use std::process::Command;

use crate::systems::System;

const N1: u64 = 2_000;
const N2: u64 = 12_000;

fn collected(system: System, n: u64) -> Result<u64, String> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .args(["__calls", system.key(), &n.to_string()])
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("valgrind failed: {}", stderr.lines().last().unwrap_or("")));
    }
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no `Collected` line in valgrind's output".to_string())
}

pub fn measure(list: &[System]) -> Vec<(System, Result<f64, String>)> {
    let have = Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    list.iter()
        .map(|&system| {
            if !have {
                return (system, Err("valgrind is not installed".to_string()));
            }
            eprintln!("[callgrind] {}", system.key());
            let r = collected(system, N1).and_then(|a| {
                collected(system, N2).map(|b| (b.saturating_sub(a)) as f64 / (N2 - N1) as f64)
            });
            (system, r)
        })
        .collect()
}
