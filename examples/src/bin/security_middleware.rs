//! An audit log and a per-user rate limit, written as middleware, beside the built-in
//! `Trace` layer and kernel events.
//!
//! A middleware gets each call's `Context` (session, connection, action) and the `Next`
//! step: it may act before the call, reject it without running the handler
//! (`next.reject(error)`), or run it and look at the outcome. The first layer added is the
//! outermost, so the audit log (added first) also records the calls the rate limit rejects.
//!
//! ```text
//! cargo run -p examples --bin security_middleware
//! RUST_LOG=rpc_core=debug cargo run -p examples --bin security_middleware   # with Trace's spans
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_core::{
    Context, Entity, ErrorKind, Event, Middleware, Next, Replied, RpcError, RpcKernel, Security,
    Session, Token, Trace, controller,
};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};
use serde::{Deserialize, Serialize};

/// A declared error: it reaches the client whole, and the audit log sees `Remote`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity, thiserror::Error)]
#[entity(name = "@error:noSuchAccount")]
#[error("no account {id}")]
pub struct NoSuchAccount {
    pub id: u32,
}

#[controller("accounts")]
pub trait Accounts {
    async fn balance(&self, id: u32) -> Result<i64, NoSuchAccount>;
}

struct AccountsImpl {
    runs: Arc<AtomicU32>,
}

impl Accounts for AccountsImpl {
    async fn balance(&self, id: u32) -> Result<i64, NoSuchAccount> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        if id == 0 { Err(NoSuchAccount { id }) } else { Ok(i64::from(id) * 100) }
    }
}

/// One audit record.
#[derive(Debug, Clone)]
struct Record {
    user: String,
    connection: u64,
    action: String,
    outcome: Result<(), ErrorKind>,
    elapsed: Duration,
}

/// Records every call: who, what, how it ended, how long it took.
struct AuditLog {
    records: Arc<Mutex<Vec<Record>>>,
}

impl Middleware for AuditLog {
    async fn call(&self, ctx: Context, next: Next) -> Replied {
        let started = Instant::now();
        let replied = next.run().await;
        let record = Record {
            user: ctx.session().username().to_string(),
            connection: ctx.connection().id(),
            action: format!("{}.{}", ctx.controller(), ctx.action().name),
            outcome: replied.outcome(),
            elapsed: started.elapsed(),
        };
        println!(
            "  audit: {:<8} conn {} {} -> {:?} in {:?}",
            record.user, record.connection, record.action, record.outcome, record.elapsed
        );
        self.records.lock().unwrap().push(record);
        replied
    }
}

/// At most `limit` calls per user per `window`; the excess is refused with `Busy` and the
/// handler does not run.
struct RateLimit {
    limit: u32,
    window: Duration,
    used: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Middleware for RateLimit {
    async fn call(&self, ctx: Context, next: Next) -> Replied {
        let user = ctx.session().username().to_string();
        let over = {
            let mut used = self.used.lock().unwrap();
            let entry = used.entry(user.clone()).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= self.window {
                *entry = (Instant::now(), 0);
            }
            entry.1 += 1;
            entry.1 > self.limit
        };
        if over {
            return next.reject(RpcError::busy(format!(
                "rate limit: {} calls per {:?} for {user}",
                self.limit, self.window
            )));
        }
        next.run().await
    }
}

struct Users;

impl Security for Users {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        match token.as_str() {
            Some(name @ ("alice" | "bob")) => Ok(Session::new(name)),
            _ => Err(RpcError::unauthenticated("unknown token")),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let runs = Arc::new(AtomicU32::new(0));
    let records = Arc::new(Mutex::new(Vec::new()));
    let kernel = RpcKernel::new();
    kernel.register(AccountsServer::new(AccountsImpl { runs: runs.clone() }));
    kernel.set_security(Users);
    kernel
        .add_middleware(AuditLog { records: records.clone() })
        .add_middleware(RateLimit {
            limit: 3,
            window: Duration::from_secs(60),
            used: Mutex::new(HashMap::new()),
        })
        .add_middleware(Trace);
    // Events see the same outcomes, without writing a layer.
    let finished = Arc::new(Mutex::new(Vec::new()));
    let events = finished.clone();
    kernel.on_event(move |event| {
        if let Event::ActionFinished { action, outcome, .. } = event {
            events.lock().unwrap().push((*action, *outcome));
        }
    });

    let server = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = stopped.await;
    }));
    println!("server listening on {addr}; rate limit 3 calls per minute per user");

    let alice = RpcTcpClient::connect(addr).await?;
    alice.set_token("alice");
    let accounts = alice.controller::<AccountsClient>();
    let mut outcomes = Vec::new();
    for id in [1, 0, 2, 3, 4] {
        let outcome = accounts.balance(id).await;
        println!("alice: balance({id}) -> {outcome:?}");
        outcomes.push(outcome.map_err(|e| e.kind()));
    }
    assert_eq!(outcomes[0], Ok(100));
    assert_eq!(outcomes[1], Err(ErrorKind::Remote), "the declared error");
    assert_eq!(outcomes[2], Ok(200));
    assert_eq!(outcomes[3..], [Err(ErrorKind::Busy), Err(ErrorKind::Busy)], "over the limit");

    // Bob has his own budget.
    let bob = RpcTcpClient::connect(addr).await?;
    bob.set_token("bob");
    assert_eq!(bob.controller::<AccountsClient>().balance(5).await?, 500);
    println!("bob: balance(5) -> Ok(500)");

    assert_eq!(runs.load(Ordering::Relaxed), 4, "rejected calls never reached the handler");
    let records = records.lock().unwrap().clone();
    let summary: Vec<_> =
        records.iter().map(|r| (r.user.as_str(), r.action.as_str(), r.outcome)).collect();
    assert_eq!(
        summary,
        [
            ("alice", "accounts.balance", Ok(())),
            ("alice", "accounts.balance", Err(ErrorKind::Remote)),
            ("alice", "accounts.balance", Ok(())),
            ("alice", "accounts.balance", Err(ErrorKind::Busy)),
            ("alice", "accounts.balance", Err(ErrorKind::Busy)),
            ("bob", "accounts.balance", Ok(())),
        ]
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while finished.lock().unwrap().len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = finished.lock().unwrap().iter().filter(|(_, o)| *o == Err(ErrorKind::Busy)).count();
    assert_eq!(busy, 2, "events report the rejections too");
    println!("middleware: audit log has {} records, {busy} calls rate-limited", records.len());

    let _ = stop.send(());
    serving.await??;
    Ok(())
}
