//! Role-based access by action groups (Deepkit's `@rpc.action().group('secret')`).
//!
//! Actions declare groups (and data) with `#[action(group = "...", data(role = "..."))]`; the
//! kernel's `Security` policy turns a token into a session carrying the user's roles (a typed
//! session extension) and decides, before any argument is decoded, whether that session may
//! call the action. Handlers read the same session through `ctx.session()`.
//!
//! ```text
//! cargo run -p examples --bin security_rbac
//! ```

use std::collections::BTreeMap;

use rpc_core::{
    Context, ControllerAccess, ErrorKind, RpcError, RpcKernel, Security, Session, Token, controller,
};
use rpc_tcp::{RpcTcpClient, RpcTcpServer};

#[controller("admin")]
pub trait Admin {
    /// Open to everyone, anonymous callers included.
    async fn status(&self) -> String;
    /// Members of the `secret` group only (the admin role).
    #[action(group = "secret", data(role = "admin"))]
    async fn secrets(&self, ctx: &Context) -> Vec<String>;
    /// The `billing` group: the role named in the action's data.
    #[action(group = "billing", data(role = "accountant"))]
    async fn invoices(&self, month: u8) -> u32;
}

struct AdminImpl;

impl Admin for AdminImpl {
    async fn status(&self) -> String {
        "all systems nominal".into()
    }

    async fn secrets(&self, ctx: &Context) -> Vec<String> {
        // The handler sees the session the policy let in.
        let user = ctx.session().username().to_string();
        vec![format!("launch codes (read by {user})")]
    }

    async fn invoices(&self, month: u8) -> u32 {
        u32::from(month) * 10
    }
}

/// The roles of a session, set by `authenticate`, read by `has_controller_access`.
#[derive(Debug, Clone)]
struct Roles(Vec<&'static str>);

/// Users and their roles: a stand-in for a user database.
const USERS: &[(&str, &str, &[&str])] = &[
    ("alice-token", "alice", &["admin", "accountant"]),
    ("bob-token", "bob", &["accountant"]),
    ("carol-token", "carol", &[]),
];

struct RoleBasedAccess;

impl Security for RoleBasedAccess {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        let (_, name, roles) = USERS
            .iter()
            .find(|(t, _, _)| Some(*t) == token.as_str())
            .ok_or_else(|| RpcError::unauthenticated("unknown token"))?;
        let mut session = Session::new(*name);
        session.insert(Roles(roles.to_vec()));
        Ok(session)
    }

    async fn has_controller_access(
        &self,
        session: &Session,
        access: &ControllerAccess<'_>,
    ) -> bool {
        if access.groups().is_empty() {
            return true;
        }
        // Every grouped action names the role it needs; without one, only admins.
        let needed = access.data("role").unwrap_or("admin");
        session.get::<Roles>().is_some_and(|roles| roles.0.contains(&needed))
    }
}

/// What one user may do: `ok` or the kind of error each call got.
async fn try_everything(client: &RpcTcpClient) -> BTreeMap<&'static str, String> {
    let admin = client.controller::<AdminClient>();
    let outcome = |r: Result<String, RpcError>| match r {
        Ok(v) => format!("ok ({v})"),
        Err(e) => format!("{:?}", e.kind()),
    };
    let mut seen = BTreeMap::new();
    seen.insert("status", outcome(admin.status().await));
    seen.insert("secrets", outcome(admin.secrets().await.map(|s| s.join(", "))));
    seen.insert("invoices", outcome(admin.invoices(3).await.map(|n| n.to_string())));
    seen
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let kernel = RpcKernel::new();
    kernel.register(AdminServer::new(AdminImpl));
    kernel.set_security(RoleBasedAccess);
    let server = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = stopped.await;
    }));
    println!(
        "server listening on {addr}; `secrets` needs group secret (admin), `invoices` group billing (accountant)"
    );

    let mut table = BTreeMap::new();
    for (user, token) in [
        ("anonymous", None),
        ("alice", Some("alice-token")),
        ("bob", Some("bob-token")),
        ("carol", Some("carol-token")),
    ] {
        let client = RpcTcpClient::connect(addr).await?;
        if let Some(token) = token {
            client.set_token(token);
        }
        let seen = try_everything(&client).await;
        println!("{user:>9}: {seen:?}");
        table.insert(user, seen);
    }

    let denied = format!("{:?}", ErrorKind::AccessDenied);
    let is_ok = |user: &str, action: &str| table[user][action].starts_with("ok");
    assert!(["anonymous", "alice", "bob", "carol"].iter().all(|u| is_ok(u, "status")));
    assert!(is_ok("alice", "secrets") && is_ok("alice", "invoices"));
    assert!(table["alice"]["secrets"].contains("read by alice"));
    assert!(is_ok("bob", "invoices"));
    for (user, action) in [
        ("anonymous", "secrets"),
        ("anonymous", "invoices"),
        ("bob", "secrets"),
        ("carol", "secrets"),
        ("carol", "invoices"),
    ] {
        assert_eq!(table[user][action], denied, "{user} {action}");
    }

    // A wrong token never gets as far as the access check.
    let intruder = RpcTcpClient::connect(addr).await?;
    intruder.set_token("guessed-token");
    let e = intruder.controller::<AdminClient>().status().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    println!("  intruder: status -> {e}");

    println!("role-based access: every decision as expected");
    let _ = stop.send(());
    serving.await??;
    Ok(())
}
