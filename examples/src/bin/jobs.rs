//! A job queue across transports: workers register as peers over TCP, a dispatcher hands
//! them jobs through the server's peer routing, and the server pushes progress to a
//! browser-like client on WebSocket through a controller that client offers (a
//! back-controller).
//!
//! ```text
//! cargo run -p examples --bin jobs
//! ```

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rpc_core::{Connection, Context, RpcError, RpcKernel, Security, Session, Token, controller};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};
use rpc_ws::{RpcWebSocketClient, RpcWebSocketServer};

/// Offered by each worker, reached through the server as peer `worker-N`.
#[controller("worker")]
pub trait Worker {
    /// Runs a job; returns its result.
    async fn run(&self, ctx: &Context, job: String) -> String;
}

/// Offered by the dashboard (the browser-like client): the server pushes progress here.
#[controller("dashboard")]
pub trait Dashboard {
    /// One job's state changed.
    async fn progress(&self, job: String, state: String);
}

/// On the server: the dispatcher submits jobs, dashboards subscribe to their progress.
#[controller("jobs")]
pub trait Jobs {
    /// Registers the calling connection as a dashboard to notify.
    async fn watch(&self, ctx: &Context);
    /// Records a job's state and pushes it to every dashboard.
    async fn report(&self, job: String, state: String) -> u32;
}

struct WorkerImpl {
    name: String,
}

impl Worker for WorkerImpl {
    async fn run(&self, ctx: &Context, job: String) -> String {
        // The server stamped who is calling; the dispatcher cannot claim to be someone else.
        let caller = ctx
            .peer_source()
            .and_then(|s| s.alias.clone().or_else(|| s.username.clone()))
            .unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(20)).await;
        format!("{job} done by {} for {caller}", self.name)
    }
}

#[derive(Default)]
struct JobsImpl {
    dashboards: Mutex<Vec<Connection>>,
}

impl Jobs for JobsImpl {
    async fn watch(&self, ctx: &Context) {
        self.dashboards.lock().push(ctx.connection().clone());
    }

    async fn report(&self, job: String, state: String) -> u32 {
        let dashboards: Vec<Connection> = {
            let mut list = self.dashboards.lock();
            list.retain(|c| !c.is_closed());
            list.clone()
        };
        let mut told = 0;
        for dashboard in dashboards {
            let ui = dashboard.controller::<DashboardClient>();
            if ui.progress(job.clone(), state.clone()).await.is_ok() {
                told += 1;
            }
        }
        told
    }
}

/// Workers may register as `worker-*`; the dispatcher may send to them. Everyone else is
/// anonymous and gets no peer rights.
struct Roles;
impl Security for Roles {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        match token.as_str() {
            Some(name) if name.starts_with("worker-") || name == "dispatcher" => {
                Ok(Session::new(name))
            }
            _ => Err(RpcError::unauthenticated("authentication failed")),
        }
    }
    async fn is_allowed_to_register_as_peer(&self, session: &Session, peer_id: &str) -> bool {
        session.username() == peer_id && peer_id.starts_with("worker-")
    }
    async fn is_allowed_to_send_to_peer(&self, session: &Session, peer_id: &str) -> bool {
        session.username() == "dispatcher" && peer_id.starts_with("worker-")
    }
}

struct DashboardImpl {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Dashboard for DashboardImpl {
    async fn progress(&self, job: String, state: String) {
        println!("dashboard  <- {job}: {state}");
        self.seen.lock().push(format!("{job}:{state}"));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One kernel, served over TCP and WebSocket at once.
    let kernel = RpcKernel::new();
    kernel.register(JobsServer::new(JobsImpl::default()));
    kernel.set_security(Roles);
    let tcp = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await?;
    let tcp_addr = tcp.local_addr()?;
    let ws = RpcWebSocketServer::bind("127.0.0.1:0", kernel.clone()).await?;
    let ws_url = format!("ws://{}", ws.local_addr()?);
    tokio::spawn(tcp.serve());
    tokio::spawn(ws.serve());

    // Two workers on TCP, each registered as a peer.
    let mut workers = Vec::new();
    for n in 1..=2 {
        let name = format!("worker-{n}");
        let worker = RpcTcpClient::new(tcp_addr);
        worker.set_token(&name);
        worker.register_controller(WorkerServer::new(WorkerImpl { name: name.clone() }));
        worker.register_as_peer(&name).await?;
        println!("{name} registered over TCP");
        workers.push(worker);
    }

    // A browser-like dashboard on WebSocket, offering the Dashboard controller.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dashboard = RpcWebSocketClient::connect(ws_url).await?;
    dashboard.register_controller(DashboardServer::new(DashboardImpl { seen: seen.clone() }));
    dashboard.controller::<JobsClient>().watch().await?;
    println!("dashboard watching over WebSocket");

    // The dispatcher hands out jobs round-robin through the server, reporting progress.
    let dispatcher = RpcTcpClient::new(tcp_addr);
    dispatcher.set_token("dispatcher");
    dispatcher.register_as_peer("dispatcher").await.expect_err("the policy denies it");
    let jobs = dispatcher.controller::<JobsClient>();
    let mut results = Vec::new();
    for (i, job) in ["resize", "encode", "upload", "notify"].into_iter().enumerate() {
        let worker = format!("worker-{}", i % 2 + 1);
        jobs.report(job.into(), format!("sent to {worker}")).await?;
        let result = dispatcher.peer(&worker).controller::<WorkerClient>().run(job.into()).await?;
        println!("dispatcher -> {worker}: {result}");
        jobs.report(job.into(), "done".into()).await?;
        results.push(result);
    }

    // A peer nobody registered fails at once rather than hanging.
    let missing = dispatcher.peer("worker-9").controller::<WorkerClient>().run("x".into()).await;
    println!("dispatcher -> worker-9: {:?}", missing.as_ref().map_err(|e| e.kind()));

    assert_eq!(results.len(), 4);
    assert_eq!(results[0], "resize done by worker-1 for dispatcher");
    assert_eq!(seen.lock().len(), 8, "every state change reached the dashboard");
    assert_eq!(missing.unwrap_err().kind(), rpc_core::ErrorKind::PeerNotFound);
    println!("all jobs done; {} progress messages pushed", seen.lock().len());
    Ok(())
}
