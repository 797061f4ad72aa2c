//! Runs the example binaries so they cannot rot: each asserts its own outcomes and
//! must exit 0 within the deadline, printing the lines that say what it demonstrated.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `exe`, failing if it does not exit 0 within 30 s; returns its standard output.
fn run(exe: &str) -> String {
    let mut child = Command::new(exe)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{exe} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read stdout");
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    assert!(status.success(), "{exe} failed ({status}):\n{out}\n{err}");
    out
}

fn assert_lines(out: &str, expected: &[&str]) {
    for line in expected {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
}

#[test]
fn security_rbac() {
    let out = run(env!("CARGO_BIN_EXE_security_rbac"));
    assert_lines(
        &out,
        &[
            "alice: {\"invoices\": \"ok (30)\", \"secrets\": \"ok (launch codes (read by alice))\"",
            "carol: {\"invoices\": \"AccessDenied\", \"secrets\": \"AccessDenied\"",
            "intruder: status -> unauthenticated",
            "role-based access: every decision as expected",
        ],
    );
}

#[test]
fn security_service_tokens() {
    let out = run(env!("CARGO_BIN_EXE_security_service_tokens"));
    assert_lines(
        &out,
        &[
            "carol        purge -> access denied",
            "nightly job  purge -> \"purged orders older than 30 days for service nightly-cleanup\"",
            "forged key   list  -> unauthenticated",
            "olivia       purge -> \"purged orders older than 7 days for user olivia [\\\"operator\\\"]\"",
            "service tokens: every decision as expected",
        ],
    );
}

#[test]
fn security_peer_allowlist() {
    let out = run(env!("CARGO_BIN_EXE_security_peer_allowlist"));
    assert_lines(
        &out,
        &[
            "printer-1 log: print from alice",
            "bob: configure -> access denied: bob may not call printer.configure",
            "stranger: print -> peer not found",
            "peer allowlist: every decision as expected",
        ],
    );
}

#[test]
fn security_middleware() {
    let out = run(env!("CARGO_BIN_EXE_security_middleware"));
    assert_lines(
        &out,
        &[
            "alice: balance(3) -> Err(RpcError { kind: Busy",
            "audit: alice",
            "middleware: audit log has 6 records, 2 calls rate-limited",
        ],
    );
}

#[test]
fn hello() {
    let out = run(env!("CARGO_BIN_EXE_hello"));
    assert_lines(
        &out,
        &[
            "users.hello(\"World\")   = \"Hello World\"",
            "typed error CannotSaveUser { reason: \"no user 2\" }",
            "users.ticks(10, 5)       = [0, 1, 2, 3, 4]",
        ],
    );
}

#[test]
fn jobs() {
    let out = run(env!("CARGO_BIN_EXE_jobs"));
    assert_lines(
        &out,
        &[
            "worker-1 registered over TCP",
            "dashboard watching over WebSocket",
            "dispatcher -> worker-2: encode done by worker-2 for dispatcher",
            "dashboard  <- notify: done",
            "dispatcher -> worker-9: Err(PeerNotFound)",
            "all jobs done; 8 progress messages pushed",
        ],
    );
}
