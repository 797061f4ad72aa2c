//! Service-to-service tokens with full access, beside user tokens with per-group access.
//!
//! `set_token` takes any serde value: here a `Credential` enum, decoded on the server with
//! `Token::decode`. A service credential becomes a service session (a typed `Principal`
//! extension) that may call everything; a user credential becomes a user session whose roles
//! decide per action group. Handlers see who calls through `ctx.session()`. Rotating a
//! token with `set_token` on a connected client authenticates again before the next call and
//! replaces the session whole.
//!
//! ```text
//! cargo run -p examples --bin security_service_tokens
//! ```

use rpc_core::{
    Context, ControllerAccess, ErrorKind, RpcError, RpcKernel, Security, Session, Token, controller,
};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};
use serde::{Deserialize, Serialize};

/// What a client presents: a user's password or a service's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Credential {
    /// A person.
    User { name: String, password: String },
    /// Another program.
    Service { id: String, key: String },
}

/// Who the session belongs to (a typed session extension).
#[derive(Debug, Clone, PartialEq)]
enum Principal {
    User { roles: Vec<&'static str> },
    Service { id: String },
}

#[controller("orders")]
pub trait Orders {
    /// Any signed-in user or service.
    async fn list(&self, ctx: &Context) -> Vec<String>;
    /// Maintenance: operators and services only.
    #[action(group = "maintenance", data(role = "operator"))]
    async fn purge(&self, ctx: &Context, older_than_days: u32) -> String;
}

struct OrdersImpl;

fn describe(ctx: &Context) -> String {
    let session = ctx.session();
    match session.get::<Principal>() {
        Some(Principal::Service { id }) => format!("service {id}"),
        Some(Principal::User { roles }) => format!("user {} {roles:?}", session.username()),
        None => "anonymous".into(),
    }
}

impl Orders for OrdersImpl {
    async fn list(&self, ctx: &Context) -> Vec<String> {
        vec![format!("order #1 (listed for {})", describe(ctx))]
    }

    async fn purge(&self, ctx: &Context, older_than_days: u32) -> String {
        format!("purged orders older than {older_than_days} days for {}", describe(ctx))
    }
}

struct Policy;

impl Security for Policy {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        let denied = || RpcError::unauthenticated("bad credential");
        match token.decode::<Credential>()? {
            Credential::Service { id, key } if key == format!("{id}-key") => {
                let mut session = Session::new(format!("service:{id}"));
                session.insert(Principal::Service { id });
                Ok(session)
            }
            Credential::User { name, password } if password == "hunter2" => {
                let roles = if name == "olivia" { vec!["operator"] } else { vec![] };
                let mut session = Session::new(name);
                session.insert(Principal::User { roles });
                Ok(session)
            }
            _ => Err(denied()),
        }
    }

    async fn has_controller_access(
        &self,
        session: &Session,
        access: &ControllerAccess<'_>,
    ) -> bool {
        match session.get::<Principal>() {
            // A service session: full access.
            Some(Principal::Service { .. }) => true,
            Some(Principal::User { roles }) => {
                access.groups().is_empty()
                    || access.data("role").is_some_and(|r| roles.contains(&r))
            }
            None => false,
        }
    }

    fn allow_anonymous(&self) -> bool {
        false
    }
}

fn user(name: &str) -> Credential {
    Credential::User { name: name.into(), password: "hunter2".into() }
}

fn service(id: &str) -> Credential {
    Credential::Service { id: id.into(), key: format!("{id}-key") }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let kernel = RpcKernel::new();
    kernel.register(OrdersServer::new(OrdersImpl));
    kernel.set_security(Policy);
    let server = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = stopped.await;
    }));
    println!("server listening on {addr}; anonymous calls are refused");

    // A user without the operator role: may list, may not purge.
    let carol = RpcTcpClient::new(addr);
    carol.set_token(&user("carol"));
    let orders = carol.controller::<OrdersClient>();
    let listed = orders.list().await?;
    println!("carol        list  -> {listed:?}");
    assert!(listed[0].contains("user carol"));
    let e = orders.purge(30).await.unwrap_err();
    println!("carol        purge -> {e}");
    assert_eq!(e.kind(), ErrorKind::AccessDenied);

    // A service token: full access, and the handler knows it is a service.
    let job = RpcTcpClient::new(addr);
    job.set_token(&service("nightly-cleanup"));
    let jobs = job.controller::<OrdersClient>();
    let purged = jobs.purge(30).await?;
    println!("nightly job  purge -> {purged:?}");
    assert!(purged.contains("service nightly-cleanup"));
    assert!(jobs.list().await?[0].contains("service nightly-cleanup"));

    // A service key that does not match: refused like any bad credential.
    let forged = RpcTcpClient::new(addr);
    forged.set_token(&Credential::Service { id: "nightly-cleanup".into(), key: "guess".into() });
    let e = forged.controller::<OrdersClient>().list().await.unwrap_err();
    println!("forged key   list  -> {e}");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);

    // No token at all: this kernel refuses anonymous calls.
    let nobody = RpcTcpClient::new(addr);
    let e = nobody.controller::<OrdersClient>().list().await.unwrap_err();
    println!("no token     list  -> {e}");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);

    // Rotating to an operator's token on the open connection: the next call runs as Olivia.
    carol.set_token(&user("olivia"));
    let purged = orders.purge(7).await?;
    println!("olivia       purge -> {purged:?} (same connection, new session)");
    assert!(purged.contains("user olivia"));
    assert_eq!(
        kernel.stats().total_connections,
        4,
        "olivia re-authenticated on carol's connection"
    );

    println!("service tokens: every decision as expected");
    let _ = stop.send(());
    serving.await??;
    Ok(())
}
