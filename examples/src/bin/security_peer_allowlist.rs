//! A target-owned allowlist for peer calls, with the caller's identity visible to the callee.
//!
//! A printer service connects as a client, registers as the peer `printer-1`, and offers a
//! `printer` controller. Users call it through the server's peer routing. The server's policy
//! decides who may register (services only) and who may send to peers at all (signed-in
//! users). The printer itself keeps the finer decision, *which caller may call which action*:
//! the routing server stamps every routed call with the caller's identity (its connection,
//! its peer alias if any, its user name), which the callee reads with `ctx.peer_source()` and
//! the caller cannot forge.
//!
//! ```text
//! cargo run -p examples --bin security_peer_allowlist
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rpc_core::{Context, ErrorKind, RpcError, RpcKernel, Security, Session, Token, controller};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};

#[controller("printer")]
pub trait Printer {
    async fn print(&self, ctx: &Context, doc: String) -> Result<u32, RpcError>;
    async fn configure(&self, ctx: &Context, dpi: u32) -> Result<(), RpcError>;
}

/// The printer: its allowlist (action → user names) and a log of who did what.
struct PrinterImpl {
    allowlist: HashMap<&'static str, Vec<&'static str>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl PrinterImpl {
    /// Admits the routed caller to `action` if the printer's own list names them.
    fn admit(&self, ctx: &Context, action: &str) -> Result<String, RpcError> {
        let source = ctx
            .peer_source()
            .ok_or_else(|| RpcError::access_denied("only routed calls are served here"))?;
        let user = source.username.clone().unwrap_or_else(|| "anonymous".into());
        let allowed =
            self.allowlist.get(action).is_some_and(|users| users.contains(&user.as_str()));
        let line = format!(
            "{action} from {user} (server connection {}) -> {}",
            source.connection_id,
            if allowed { "allowed" } else { "refused" }
        );
        println!("  printer-1 log: {line}");
        self.log.lock().unwrap().push(line);
        if allowed {
            Ok(user)
        } else {
            Err(RpcError::access_denied(format!("{user} may not call printer.{action}")))
        }
    }
}

impl Printer for PrinterImpl {
    async fn print(&self, ctx: &Context, doc: String) -> Result<u32, RpcError> {
        let user = self.admit(ctx, "print")?;
        println!("  printer-1: printing {doc:?} for {user}");
        Ok(doc.len() as u32 / 10 + 1)
    }

    async fn configure(&self, ctx: &Context, dpi: u32) -> Result<(), RpcError> {
        self.admit(ctx, "configure")?;
        println!("  printer-1: now at {dpi} dpi");
        Ok(())
    }
}

/// The server's part: who may register as a peer, and who may send to peers at all.
struct Routing;

impl Security for Routing {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        match token.as_str() {
            Some("printer-service-key") => Ok(Session::new("service:printer")),
            Some(user @ ("alice" | "bob")) => Ok(Session::new(user)),
            _ => Err(RpcError::unauthenticated("unknown token")),
        }
    }

    async fn is_allowed_to_register_as_peer(&self, session: &Session, peer_id: &str) -> bool {
        session.username() == "service:printer" && peer_id.starts_with("printer-")
    }

    async fn is_allowed_to_send_to_peer(&self, session: &Session, _peer_id: &str) -> bool {
        !session.is_anonymous()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let kernel = RpcKernel::new();
    kernel.set_security(Routing);
    let server = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = stopped.await;
    }));
    println!("server listening on {addr}");

    // The printer service: registers, and brings its own allowlist.
    let log = Arc::new(Mutex::new(Vec::new()));
    let printer_service = RpcTcpClient::connect(addr).await?;
    printer_service.set_token("printer-service-key");
    printer_service.register_controller(PrinterServer::new(PrinterImpl {
        allowlist: HashMap::from([("print", vec!["alice", "bob"]), ("configure", vec!["alice"])]),
        log: log.clone(),
    }));
    printer_service.register_as_peer("printer-1").await?;
    println!("printer service registered as peer `printer-1`");

    // Alice may print and configure.
    let alice = RpcTcpClient::connect(addr).await?;
    alice.set_token("alice");
    let printer = alice.peer("printer-1").controller::<PrinterClient>();
    let pages = printer.print("quarterly report".into()).await?;
    println!("alice: print -> {pages} page(s)");
    printer.configure(600).await?;
    println!("alice: configure -> ok");

    // Bob may print, but the printer's list refuses his configure.
    let bob = RpcTcpClient::connect(addr).await?;
    bob.set_token("bob");
    let printer = bob.peer("printer-1").controller::<PrinterClient>();
    assert_eq!(printer.print("memo".into()).await?, 1);
    let e = printer.configure(1200).await.unwrap_err();
    println!("bob: configure -> {e}");
    assert_eq!(e.kind(), ErrorKind::AccessDenied);
    assert!(e.to_string().contains("bob may not call printer.configure"));

    // Anonymous callers are stopped by the server: the printer never hears of them.
    let stranger = RpcTcpClient::connect(addr).await?;
    let e = stranger
        .peer("printer-1")
        .controller::<PrinterClient>()
        .print("spam".into())
        .await
        .unwrap_err();
    println!("stranger: print -> {e}");
    assert_eq!(e.kind(), ErrorKind::PeerNotFound);

    // Bob may not pose as a printer either.
    let e = bob.register_as_peer("printer-2").await.unwrap_err();
    println!("bob: register_as_peer(printer-2) -> {e}");
    assert_eq!(e.kind(), ErrorKind::AccessDenied);

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(log[0].starts_with("print from alice") && log[0].ends_with("allowed"));
    assert!(log[3].starts_with("configure from bob") && log[3].ends_with("refused"));
    println!("peer allowlist: every decision as expected");

    let _ = stop.send(());
    serving.await??;
    Ok(())
}
