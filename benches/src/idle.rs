//! Server memory per idle connection: the server runs in a child process (so that its
//! resident set holds nothing of the clients'), the parent opens connections that each make
//! one call and then stay open, and the child's VmRSS growth is divided by their number.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;

use crate::harness;
use crate::systems::{self, System};

/// The child: serves `system` until killed.
pub fn child(system: System) {
    harness::raise_fd_limit();
    harness::runtime().block_on(async {
        let (addr, _keep) = systems::idle_server(system).await;
        println!("ADDR {addr}");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        std::future::pending::<()>().await;
    })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Bytes of server memory per idle connection, for each system that has a server.
pub fn measure(list: &[System], n: usize) -> Vec<(System, Result<f64, String>)> {
    let mut out = Vec::new();
    for &system in list {
        // In memory there is no server; the lean client's server is raw's.
        if matches!(system, System::OursMem | System::Lean) {
            continue;
        }
        eprintln!("[idle] {} x {n}", system.key());
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["__idle-server", system.key()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the idle server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr: SocketAddr = line.trim().strip_prefix("ADDR ").unwrap().parse().unwrap();
        let pid = child.id();
        let rt = harness::runtime();
        let per = rt.block_on(async {
            // A few first connections pay for lazily initialised state; not counted.
            let mut warm = Vec::new();
            for _ in 0..16 {
                warm.push(systems::idle_connection(system, addr).await);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = rss_kib(pid);
            let conns: Vec<_> = futures::stream::iter(0..n)
                .map(|_| systems::idle_connection(system, addr))
                .buffer_unordered(64)
                .collect()
                .await;
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let after = rss_kib(pid);
            eprintln!("    {before} KiB -> {after} KiB");
            let per = (after.saturating_sub(before)) as f64 * 1024.0 / conns.len() as f64;
            // The server goes first, so that its side holds the TIME_WAITs.
            let _ = child.kill();
            let _ = child.wait();
            drop(conns);
            drop(warm);
            per
        });
        drop(rt);
        out.push((system, Ok(per)));
    }
    out
}
