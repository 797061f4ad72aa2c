//! Security, sessions, context and errors (issue 7), each scenario run over every transport
//! by `transport_tests!`: authentication with `set_token` (valid, invalid, corrected,
//! replaced on an open connection, required before any call), sessions and their typed
//! extensions as handlers see them, the connection and action metadata in `Context`,
//! per-action access by group (calls and stream subscriptions, checked before the arguments
//! decode), hidden forbidden actions, declared errors travelling whole, undeclared errors and
//! panics reduced to `Internal` with a correlation id that is in the server's log,
//! `transform_error`, middleware (audit, reject, `Trace`), events and stats, and peer rights
//! (denied by default; the callee sees the caller's identity when allowed).
//!
//! Server-side effects are observed through counters the handlers and the policy keep in a
//! [`Fixture`]; the scenario reaches it through a thread-local that `setup` fills (the harness
//! calls `setup` and runs the scenario in the same future, on the test's own thread).
//! Server logs go to one in-memory buffer for the whole test binary ([`logs`]); scenarios
//! search it for values unique to them (correlation ids, random markers).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use rpc_core::{
    Context, ControllerAccess, Entity, ErrorKind, Event, Limits, Middleware, Next, Replied,
    RpcError, RpcKernel, RpcStream, Security, Session, Token, Trace, controller,
};
use serde::{Deserialize, Serialize};
use tests::{Harness, TransportKind, eventually, pki, transport_tests};
use tokio::time::timeout;

// ---------------------------------------------------------------------------------------
// The contract.

/// A typed, declared error with fields of several shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity, thiserror::Error)]
#[entity(name = "@error:insufficientFunds")]
#[error("insufficient funds on {account}: {needed} needed, {available} available")]
pub struct InsufficientFunds {
    pub account: String,
    pub needed: u64,
    pub available: u64,
    pub recent: Vec<i64>,
    pub note: Option<String>,
    pub limits: HashMap<String, u32>,
}

/// The same nominal name with another shape: what a client built against an older version
/// of the error has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "@error:insufficientFunds")]
pub struct InsufficientFundsV0 {
    pub account: u64,
}

/// Another declared error, to show `downcast` does not confuse names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity, thiserror::Error)]
#[entity(name = "@error:accountFrozen")]
#[error("account frozen")]
pub struct AccountFrozen {
    pub account: String,
}

/// What a handler sees of its call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    pub username: String,
    pub anonymous: bool,
    /// The session's `Roles` extension, if `authenticate` set one.
    pub roles: Option<Vec<String>>,
    pub connection: u64,
    pub remote_ip: Option<String>,
    pub transport: String,
    pub tls_identity: Option<String>,
    pub action: String,
    pub groups: Vec<String>,
    pub role_data: Option<String>,
}

#[controller("bank")]
pub trait Bank {
    async fn whoami(&self, ctx: &Context) -> Caller;
    /// Group-protected: callers need the role named in the action's data.
    #[action(group = "secret", data(role = "admin"))]
    async fn vault(&self, ctx: &Context, code: u32) -> Caller;
    /// A group-protected stream.
    #[action(group = "secret", data(role = "admin"))]
    async fn vault_ticks(&self, count: u32) -> RpcStream<u32>;
    /// Counts its runs.
    async fn public(&self) -> u32;
    async fn withdraw(&self, amount: u64) -> Result<u64, InsufficientFunds>;
    async fn io_failure(&self, detail: String) -> Result<u32, std::io::Error>;
    async fn string_failure(&self, detail: String) -> Result<u32, String>;
    /// Fails with `RpcError::internal(detail)` ("a failure the caller gets no detail about").
    async fn rpc_internal(&self, detail: String) -> Result<u32, RpcError>;
    async fn panics(&self, detail: String) -> u32;
    async fn sleep(&self, ms: u64) -> u64;
    /// Rejected by the middleware of `setup_middleware`.
    async fn blocked(&self) -> u32;
    /// Logs `marker` from inside the handler (to find the call's span in the log).
    async fn marker(&self, marker: String) -> u32;
}

/// The `bank` controller as a client of another version sees it.
#[controller("bank")]
pub trait BankOtherVersion {
    /// The real `vault` takes a `u32`.
    async fn vault(&self, code: String) -> Caller;
    /// No such action on the server.
    async fn missing(&self) -> u32;
}

/// Who called a peer, as the callee sees it through `ctx.peer_source()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub connection: u64,
    pub alias: Option<String>,
    pub username: Option<String>,
}

/// A controller a client offers to peers.
#[controller("desk")]
pub trait Desk {
    async fn who_called(&self, ctx: &Context) -> Option<Source>;
}

/// A typed, structured token (`set_token` takes any serde value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceToken {
    pub service: String,
    pub secret: String,
}

/// The typed session extension `authenticate` sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Roles(pub Vec<String>);

// ---------------------------------------------------------------------------------------
// What handlers, the policy, middleware and observers record.

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    username: String,
    controller: String,
    action: String,
    groups: Vec<String>,
    role: Option<String>,
}

/// (action, user name, outcome) as the audit middleware saw a call.
type Audited = (String, String, Result<(), ErrorKind>);

/// Sets one kind of token on a client.
type SetToken = Box<dyn Fn(&rpc_core::RpcClient)>;

#[derive(Default)]
struct Fixture {
    runs: Mutex<HashMap<&'static str, usize>>,
    accesses: Mutex<Vec<Seen>>,
    auth_calls: AtomicUsize,
    events: Mutex<Vec<Event>>,
    audit: Mutex<Vec<Audited>>,
}

impl Fixture {
    fn ran(&self, action: &'static str) {
        *self.runs.lock().unwrap().entry(action).or_default() += 1;
    }

    fn runs(&self, action: &str) -> usize {
        self.runs.lock().unwrap().get(action).copied().unwrap_or(0)
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn audit(&self) -> Vec<Audited> {
        self.audit.lock().unwrap().clone()
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Arc<Fixture>>> = const { RefCell::new(None) };
}

/// The fixture `setup` made for this test.
fn fixture() -> Arc<Fixture> {
    FIXTURE.with(|f| f.borrow().clone()).expect("setup runs on the scenario's thread")
}

// ---------------------------------------------------------------------------------------
// Server logs, captured for the whole binary.

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a global subscriber writing every event at `DEBUG` and above, with its
/// spans, to one buffer; returns the buffer.
fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer(Arc::new(Mutex::new(Vec::new())));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
        buffer
    })
}

/// The captured log lines that contain `needle`.
fn log_lines_with(needle: &str) -> Vec<String> {
    let bytes = logs().0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// A value no other test uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, SeqCst))
}

// ---------------------------------------------------------------------------------------
// The server.

struct BankImpl {
    fixture: Arc<Fixture>,
}

fn caller(ctx: &Context) -> Caller {
    let session = ctx.session();
    let connection = ctx.connection();
    let action = ctx.action();
    Caller {
        username: session.username().to_string(),
        anonymous: session.is_anonymous(),
        roles: session.get::<Roles>().map(|r| r.0.clone()),
        connection: connection.id(),
        remote_ip: connection.remote_addr().map(|a| a.ip().to_string()),
        transport: connection.transport().kind.to_string(),
        tls_identity: connection.transport().peer_identity.clone(),
        action: action.name.to_string(),
        groups: action.groups.iter().map(|g| g.to_string()).collect(),
        role_data: action.data.iter().find(|(k, _)| *k == "role").map(|(_, v)| v.to_string()),
    }
}

impl Bank for BankImpl {
    async fn whoami(&self, ctx: &Context) -> Caller {
        self.fixture.ran("whoami");
        caller(ctx)
    }

    async fn vault(&self, ctx: &Context, code: u32) -> Caller {
        self.fixture.ran("vault");
        assert_eq!(code, 7, "the test always sends 7");
        caller(ctx)
    }

    async fn vault_ticks(&self, count: u32) -> RpcStream<u32> {
        self.fixture.ran("vault_ticks");
        RpcStream::new(futures::stream::iter(0..count))
    }

    async fn public(&self) -> u32 {
        self.fixture.ran("public");
        self.fixture.runs("public") as u32
    }

    async fn withdraw(&self, amount: u64) -> Result<u64, InsufficientFunds> {
        self.fixture.ran("withdraw");
        if amount > 100 {
            return Err(InsufficientFunds {
                account: "ACC-1 ☃".into(),
                needed: amount,
                available: 100,
                recent: vec![-5, 0, i64::MAX],
                note: Some("try again after payday".into()),
                limits: [("daily".to_string(), 500)].into_iter().collect(),
            });
        }
        Ok(100 - amount)
    }

    async fn io_failure(&self, detail: String) -> Result<u32, std::io::Error> {
        self.fixture.ran("io_failure");
        Err(std::io::Error::other(detail))
    }

    async fn string_failure(&self, detail: String) -> Result<u32, String> {
        self.fixture.ran("string_failure");
        Err(detail)
    }

    async fn rpc_internal(&self, detail: String) -> Result<u32, RpcError> {
        self.fixture.ran("rpc_internal");
        Err(RpcError::internal(detail))
    }

    async fn panics(&self, detail: String) -> u32 {
        self.fixture.ran("panics");
        panic!("{detail}");
    }

    async fn sleep(&self, ms: u64) -> u64 {
        self.fixture.ran("sleep");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    async fn blocked(&self) -> u32 {
        self.fixture.ran("blocked");
        1
    }

    async fn marker(&self, marker: String) -> u32 {
        self.fixture.ran("marker");
        tracing::info!(%marker, "inside the handler");
        1
    }
}

struct DeskImpl {
    calls: Arc<AtomicUsize>,
}

impl Desk for DeskImpl {
    async fn who_called(&self, ctx: &Context) -> Option<Source> {
        self.calls.fetch_add(1, SeqCst);
        ctx.peer_source().map(|s| Source {
            connection: s.connection_id,
            alias: s.alias.clone(),
            username: s.username.clone(),
        })
    }
}

/// The sessions the test tokens stand for. Failures carry details that must never reach a
/// client.
async fn sessions(fixture: &Fixture, token: &Token) -> Result<Session, RpcError> {
    fixture.auth_calls.fetch_add(1, SeqCst);
    let with_roles = |name: &str, roles: &[&str]| {
        let mut session = Session::new(name);
        session.insert(Roles(roles.iter().map(|r| r.to_string()).collect()));
        session
    };
    match token.as_str() {
        Some("alice-token") => return Ok(with_roles("alice", &["admin"])),
        Some("bob-token") => return Ok(with_roles("bob", &["clerk"])),
        Some("carol-token") => return Ok(Session::new("carol")),
        Some("ghost-token") => {
            return Err(RpcError::unauthenticated("user ghost does not exist in LDAP"));
        }
        Some("broken-token") => {
            return Err(RpcError::internal("token store /var/lib/tokens.db is unreachable"));
        }
        _ => {}
    }
    match token.decode::<ServiceToken>() {
        Ok(t) if t.secret == "s3cret" => {
            Ok(with_roles(&format!("service:{}", t.service), &["admin", "service"]))
        }
        Ok(t) => Err(RpcError::unauthenticated(format!("wrong secret for {}", t.service))),
        Err(_) => Err(RpcError::unauthenticated("unknown token")),
    }
}

/// The policy of most scenarios, with switches for the others.
struct Policy {
    fixture: Arc<Fixture>,
    anonymous: bool,
    hide: bool,
    transform: bool,
    peers: bool,
}

impl Security for Policy {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        sessions(&self.fixture, token).await
    }

    async fn has_controller_access(
        &self,
        session: &Session,
        access: &ControllerAccess<'_>,
    ) -> bool {
        self.fixture.accesses.lock().unwrap().push(Seen {
            username: session.username().to_string(),
            controller: access.controller().to_string(),
            action: access.action().to_string(),
            groups: access.groups().iter().map(|g| g.to_string()).collect(),
            role: access.data("role").map(str::to_string),
        });
        if !access.groups().contains(&"secret") {
            return true;
        }
        let needed = access.data("role").unwrap_or("admin");
        session.get::<Roles>().is_some_and(|roles| roles.0.iter().any(|r| r == needed))
    }

    async fn is_allowed_to_register_as_peer(&self, session: &Session, _peer_id: &str) -> bool {
        self.peers && session.get::<Roles>().is_some_and(|r| r.0.iter().any(|r| r == "service"))
    }

    async fn is_allowed_to_send_to_peer(&self, session: &Session, _peer_id: &str) -> bool {
        self.peers && !session.is_anonymous()
    }

    fn transform_error(&self, error: RpcError) -> RpcError {
        if !self.transform {
            return error;
        }
        match error.kind() {
            ErrorKind::Internal => RpcError::internal("Unknown error occurred"),
            ErrorKind::AccessDenied => RpcError::access_denied("Access denied"),
            _ => error,
        }
    }

    fn allow_anonymous(&self) -> bool {
        self.anonymous
    }

    fn hide_forbidden_actions(&self) -> bool {
        self.hide
    }
}

/// A policy with a bug: its access check panics for `whoami`.
struct PanickingAccess;

impl Security for PanickingAccess {
    async fn has_controller_access(&self, _: &Session, access: &ControllerAccess<'_>) -> bool {
        if access.action() == "whoami" {
            panic!("policy bug");
        }
        true
    }
}

/// Overrides only `authenticate`: every other method keeps the trait's default.
struct TokensOnly(Arc<Fixture>);

impl Security for TokensOnly {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        sessions(&self.0, token).await
    }
}

/// Lets anyone register as a peer; sending keeps the trait's default.
struct RegisterOnly(Arc<Fixture>);

impl Security for RegisterOnly {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        sessions(&self.0, token).await
    }

    async fn is_allowed_to_register_as_peer(&self, _session: &Session, _peer_id: &str) -> bool {
        true
    }
}

/// Records every call's action, user and outcome (outermost layer).
struct Audit(Arc<Fixture>);

impl Middleware for Audit {
    async fn call(&self, ctx: Context, next: Next) -> Replied {
        let user = ctx.session().username().to_string();
        let replied = next.run().await;
        self.0.audit.lock().unwrap().push((ctx.action().name.to_string(), user, replied.outcome()));
        replied
    }
}

/// Rejects the `blocked` action without running it.
struct Gate;

impl Middleware for Gate {
    async fn call(&self, ctx: Context, next: Next) -> Replied {
        if ctx.action().name == "blocked" {
            return next.reject(RpcError::access_denied("blocked by the gate middleware"));
        }
        next.run().await
    }
}

/// A kernel with the bank controller, events recorded into a fresh fixture.
fn bank_kernel() -> (RpcKernel, Arc<Fixture>) {
    bank_kernel_with(Limits::default())
}

fn bank_kernel_with(limits: Limits) -> (RpcKernel, Arc<Fixture>) {
    logs();
    let fixture = Arc::new(Fixture::default());
    FIXTURE.with(|f| *f.borrow_mut() = Some(fixture.clone()));
    let kernel = RpcKernel::with_limits(limits);
    kernel.register(BankServer::new(BankImpl { fixture: fixture.clone() }));
    let events = fixture.clone();
    kernel.on_event(move |event| events.events.lock().unwrap().push(event.clone()));
    (kernel, fixture)
}

fn with_policy(anonymous: bool, hide: bool, transform: bool, peers: bool) -> RpcKernel {
    let (kernel, fixture) = bank_kernel();
    kernel.set_security(Policy { fixture, anonymous, hide, transform, peers });
    kernel
}

fn setup_open() -> RpcKernel {
    with_policy(true, false, false, true)
}

fn setup_closed() -> RpcKernel {
    with_policy(false, false, false, false)
}

/// Anonymous access refused, and authentication due within 300 ms of connecting.
fn setup_closed_fast() -> RpcKernel {
    let (kernel, fixture) = bank_kernel_with(Limits::default().auth_timeout(AUTH_TIMEOUT));
    kernel.set_security(Policy {
        fixture,
        anonymous: false,
        hide: false,
        transform: false,
        peers: false,
    });
    kernel
}

const AUTH_TIMEOUT: Duration = Duration::from_millis(300);

fn setup_hidden() -> RpcKernel {
    with_policy(true, true, false, false)
}

fn setup_transform() -> RpcKernel {
    with_policy(true, false, true, false)
}

fn setup_middleware() -> RpcKernel {
    let kernel = with_policy(true, false, false, false);
    kernel.add_middleware(Audit(fixture())).add_middleware(Gate).add_middleware(Trace);
    kernel
}

fn setup_panicking_access() -> RpcKernel {
    let (kernel, _) = bank_kernel();
    kernel.set_security(PanickingAccess);
    kernel
}

/// No policy at all: the kernel's defaults.
fn setup_no_policy() -> RpcKernel {
    bank_kernel().0
}

fn setup_tokens_only() -> RpcKernel {
    let (kernel, fixture) = bank_kernel();
    kernel.set_security(TokensOnly(fixture));
    kernel
}

fn setup_register_only() -> RpcKernel {
    let (kernel, fixture) = bank_kernel();
    kernel.set_security(RegisterOnly(fixture));
    kernel
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// Awaits `f`, failing the test if it takes longer than `d`.
async fn within<F: std::future::Future>(d: Duration, what: &str, f: F) -> F::Output {
    match timeout(d, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {d:?}"),
    }
}

/// The error of `r`, failing the test on success.
fn error_of<T: std::fmt::Debug>(r: Result<T, RpcError>, what: &str) -> RpcError {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

const SECOND: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(10);

fn bank(client: &rpc_core::RpcClient) -> BankClient {
    client.controller::<BankClient>()
}

/// The error text a failed authentication shows, whatever the cause.
fn assert_auth_failure(e: &RpcError, what: &str) {
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{what}: {e}");
    for leak in ["ghost", "LDAP", "tokens.db", "wrong secret", "unknown token"] {
        assert!(!e.to_string().contains(leak), "{what}: `{leak}` leaked in {e}");
    }
}

// ---------------------------------------------------------------------------------------
// The scenarios: authentication, sessions, context, access, errors, events, peers.

transport_tests! {
    setup = setup_open;

    async fn valid_token_session_and_context_seen_in_the_handler(h: Harness) {
        let f = fixture();
        let client = h.client();
        client.set_token("alice-token");
        let me = within(LONG, "whoami", bank(&client).whoami()).await.unwrap();
        assert_eq!(me.username, "alice");
        assert!(!me.anonymous);
        assert_eq!(me.roles, Some(vec!["admin".to_string()]), "the extension `authenticate` set");
        assert_eq!(me.transport, h.kind.name());
        assert_eq!(me.remote_ip.as_deref(), (h.kind != TransportKind::Memory).then_some("127.0.0.1"));
        assert_eq!(me.tls_identity, h.kind.is_tls().then(|| pki::CLIENT_IDENTITY.to_string()));
        assert_eq!(me.action, "whoami");
        assert_eq!(f.auth_calls.load(SeqCst), 1, "authenticated once, before the first call");

        // The action's metadata, in the handler and in the policy.
        let vault = bank(&client).vault(7).await.unwrap();
        assert_eq!((vault.action.as_str(), vault.groups.clone()), ("vault", vec!["secret".to_string()]));
        assert_eq!(vault.role_data.as_deref(), Some("admin"));
        assert_eq!(vault.connection, me.connection, "one connection for both calls");
        let seen = f.accesses.lock().unwrap().clone();
        assert!(
            seen.contains(&Seen {
                username: "alice".into(),
                controller: "bank".into(),
                action: "vault".into(),
                groups: vec!["secret".into()],
                role: Some("admin".into()),
            }),
            "{seen:?}"
        );
        assert_eq!(f.auth_calls.load(SeqCst), 1, "no authentication per call");

        // A structured token (any serde value), typed on the server with `Token::decode`.
        let service = h.client();
        service.set_token(&ServiceToken { service: "billing".into(), secret: "s3cret".into() });
        let me = bank(&service).whoami().await.unwrap();
        assert_eq!(me.username, "service:billing");
        assert_eq!(me.roles, Some(vec!["admin".to_string(), "service".to_string()]));

        // A client without a token is anonymous.
        let anon = h.client();
        let me = bank(&anon).whoami().await.unwrap();
        assert!(me.anonymous, "{me:?}");
        assert_eq!(me.roles, None);
        h.shutdown().await;
    }

    async fn parallel_first_calls_authenticate_once(h: Harness) {
        let f = fixture();
        let client = h.client();
        client.set_token("alice-token");
        let b = bank(&client);
        let (x, y, z) = within(LONG, "three first calls", async {
            tokio::join!(b.whoami(), b.whoami(), b.public())
        })
        .await;
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!((x.username.as_str(), y.username.as_str()), ("alice", "alice"));
        assert_eq!(x.connection, y.connection);
        assert_eq!(z.unwrap(), 1);
        assert_eq!(f.auth_calls.load(SeqCst), 1, "one authentication for the three calls");
        assert_eq!(h.kernel.stats().total_connections, 1);
        h.shutdown().await;
    }

    async fn invalid_token_is_unauthenticated_then_a_corrected_token_works(h: Harness) {
        let f = fixture();
        let client = h.client();
        client.set_token("wrong-token");
        let e = error_of(within(LONG, "public", bank(&client).public()).await, "wrong token");
        assert_auth_failure(&e, "wrong token");
        assert_eq!(f.runs("public"), 0, "the handler never ran");
        assert!(
            matches!(&*client.state().borrow(), rpc_core::ConnectionState::Disconnected(e) if e.kind() == ErrorKind::Unauthenticated),
            "{:?}",
            client.state().borrow()
        );
        assert!(eventually(LONG, || h.kernel.stats().connections == 0).await, "the failed connection closed");

        // The next call connects again with the current token.
        let e = error_of(bank(&client).public().await, "wrong token again");
        assert_auth_failure(&e, "wrong token again");
        assert_eq!(f.auth_calls.load(SeqCst), 2, "each call tried again");
        client.set_token("alice-token");
        assert_eq!(within(LONG, "public", bank(&client).public()).await.unwrap(), 1);
        assert_eq!(f.runs("public"), 1);
        h.shutdown().await;
    }

    async fn authentication_failures_look_the_same_whatever_the_cause(h: Harness) {
        let f = fixture();
        let mut texts = Vec::new();
        let tokens: Vec<SetToken> = vec![
            Box::new(|c| { c.set_token("wrong-token"); }),
            Box::new(|c| { c.set_token("ghost-token"); }),
            Box::new(|c| { c.set_token("broken-token"); }),
            Box::new(|c| { c.set_token(&42u64); }),
            Box::new(|c| { c.set_token(&ServiceToken { service: "billing".into(), secret: "guess".into() }); }),
        ];
        for (i, set) in tokens.iter().enumerate() {
            let client = h.client();
            set(&client);
            let e = error_of(within(LONG, "whoami", bank(&client).whoami()).await, "bad token");
            assert_auth_failure(&e, &format!("token #{i}"));
            texts.push(e.to_string());
        }
        assert!(texts.windows(2).all(|w| w[0] == w[1]), "one message for every cause: {texts:?}");

        // Tokens are secrets: never in the server's log.
        let secret = unique("wrong-token");
        let client = h.client();
        client.set_token(secret.as_str());
        assert_auth_failure(&error_of(bank(&client).whoami().await, "secret token"), "secret token");
        assert_eq!(log_lines_with(&secret), Vec::<String>::new(), "the token was logged");
        assert_eq!(f.runs("whoami"), 0);
        assert_eq!(f.auth_calls.load(SeqCst), 6);
        h.shutdown().await;
    }

    async fn anonymous_call_to_a_group_protected_action_is_denied(h: Harness) {
        let f = fixture();
        let anon = h.client();
        let e = error_of(within(LONG, "vault", bank(&anon).vault(7)).await, "anonymous vault");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        assert_eq!(f.runs("vault"), 0, "the handler never ran");

        // Checked before the arguments decode: wrong arguments still get AccessDenied.
        let other = anon.controller::<BankOtherVersionClient>();
        let e = error_of(other.vault("not a number".into()).await, "vault with bad arguments");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "access is decided before decoding: {e}");

        // A stream subscription is checked too.
        let e = error_of(bank(&anon).vault_ticks(3).await.map(|_| ()), "anonymous vault_ticks");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        assert_eq!(f.runs("vault_ticks"), 0);

        // The connection is kept, and public actions work for the anonymous session.
        assert_eq!(bank(&anon).public().await.unwrap(), 1);

        // An authenticated session without the role is denied too; with it, allowed.
        let bob = h.client();
        bob.set_token("bob-token");
        let e = error_of(bank(&bob).vault(7).await, "bob's vault");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        assert_eq!(f.runs("vault"), 0);
        let alice = h.client();
        alice.set_token("alice-token");
        assert_eq!(bank(&alice).vault(7).await.unwrap().username, "alice");
        let ticks: Vec<u32> = bank(&alice).vault_ticks(3).await.unwrap().map(|t| t.unwrap()).collect().await;
        assert_eq!(ticks, [0, 1, 2]);
        assert_eq!((f.runs("vault"), f.runs("vault_ticks")), (1, 1));

        // The policy ran for every call and every subscription, with the right facts.
        let seen = f.accesses.lock().unwrap().clone();
        let count = |user: &str, action: &str| {
            seen.iter().filter(|s| s.username == user && s.action == action).count()
        };
        assert_eq!(count("anonymous", "vault"), 2, "{seen:?}");
        assert_eq!(count("anonymous", "vault_ticks"), 1, "{seen:?}");
        assert_eq!(count("anonymous", "public"), 1, "{seen:?}");
        assert_eq!(count("bob", "vault"), 1, "{seen:?}");
        assert_eq!((count("alice", "vault"), count("alice", "vault_ticks")), (1, 1), "{seen:?}");
        h.shutdown().await;
    }

    async fn reauthentication_replaces_the_session_whole(h: Harness) {
        let f = fixture();
        let client = h.client();
        client.set_token("alice-token");
        let alice = within(LONG, "whoami", bank(&client).whoami()).await.unwrap();
        assert_eq!((alice.username.as_str(), alice.roles.clone()), ("alice", Some(vec!["admin".to_string()])));
        assert!(bank(&client).vault(7).await.is_ok());

        // Carol's session has no roles: nothing of Alice's may remain.
        client.set_token("carol-token");
        let carol = within(LONG, "whoami", bank(&client).whoami()).await.unwrap();
        assert_eq!(carol.username, "carol");
        assert!(!carol.anonymous);
        assert_eq!(carol.roles, None, "the old session's extension is gone");
        assert_eq!(carol.connection, alice.connection, "re-authenticated on the open connection");
        assert_eq!(h.kernel.stats().total_connections, 1);
        let e = error_of(bank(&client).vault(7).await, "carol's vault");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");

        // And back.
        client.set_token("alice-token");
        let again = bank(&client).whoami().await.unwrap();
        assert_eq!((again.username.as_str(), again.connection), ("alice", alice.connection));
        assert!(bank(&client).vault(7).await.is_ok());
        assert_eq!(f.auth_calls.load(SeqCst), 3);
        assert_eq!(f.runs("vault"), 2);

        // Without a new token there is no new authentication.
        bank(&client).whoami().await.unwrap();
        assert_eq!(f.auth_calls.load(SeqCst), 3);
        let authenticated: Vec<String> = f
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Authenticated { connection, username } if connection == alice.connection => Some(username),
                _ => None,
            })
            .collect();
        assert_eq!(authenticated, ["alice", "carol", "alice"], "an event per (re-)authentication");
        h.shutdown().await;
    }

    async fn failed_reauthentication_ends_the_connection_and_its_calls(h: Harness) {
        let f = fixture();
        let client = h.client();
        client.set_token("alice-token");
        let alice = within(LONG, "whoami", bank(&client).whoami()).await.unwrap();

        // A call in flight on the connection when the re-authentication fails.
        let slow = tokio::spawn({
            let b = bank(&client);
            async move { b.sleep(5_000).await }
        });
        assert!(eventually(LONG, || f.runs("sleep") == 1).await, "the slow call started");

        client.set_token("ghost-token");
        let e = error_of(within(LONG, "public", bank(&client).public()).await, "failed re-authentication");
        assert_auth_failure(&e, "failed re-authentication");
        assert_eq!(f.runs("public"), 0, "no call ran on the old session");
        let slow = within(Duration::from_secs(3), "the call in flight", slow).await.unwrap();
        let e = error_of(slow, "the call in flight");
        assert_eq!(e.kind(), ErrorKind::Unauthenticated, "the call in flight ends with the failure: {e}");

        // The next call connects again with the (corrected) current token.
        client.set_token("bob-token");
        let bob = within(LONG, "whoami", bank(&client).whoami()).await.unwrap();
        assert_eq!(bob.username, "bob");
        assert_ne!(bob.connection, alice.connection, "a new connection");
        h.shutdown().await;
    }

    async fn a_typed_errors_fields_survive_the_trip(h: Harness) {
        let client = h.client();
        let e = error_of(within(LONG, "withdraw", bank(&client).withdraw(1_000)).await, "withdraw");
        assert_eq!(e.kind(), ErrorKind::Remote);
        assert_eq!(e.name(), Some("@error:insufficientFunds"));
        assert!(e.is::<InsufficientFunds>());
        let typed = e.downcast::<InsufficientFunds>().expect("rebuilt as the declared type");
        assert_eq!(
            typed,
            InsufficientFunds {
                account: "ACC-1 ☃".into(),
                needed: 1_000,
                available: 100,
                recent: vec![-5, 0, i64::MAX],
                note: Some("try again after payday".into()),
                limits: [("daily".to_string(), 500)].into_iter().collect(),
            }
        );
        assert_eq!(e.to_string(), typed.to_string(), "Display is the error's own");
        assert_eq!(e.downcast::<AccountFrozen>(), None, "another name");
        assert_eq!(e.downcast::<InsufficientFundsV0>(), None, "same name, fields that do not decode");
        assert_eq!(bank(&client).withdraw(40).await.unwrap(), 60);
        h.shutdown().await;
    }

    async fn undeclared_errors_and_panics_are_internal_with_a_logged_correlation_id(h: Harness) {
        let f = fixture();
        let client = h.client();
        let b = bank(&client);
        let secret = unique("disk /srv/secret.db is full");
        let io = error_of(within(LONG, "io_failure", b.io_failure(secret.clone())).await, "io error");
        let text = unique("cannot parse /etc/passwd");
        let string = error_of(b.string_failure(text.clone()).await, "String error");
        let boom = unique("panic detail");
        let panic = error_of(b.panics(boom.clone()).await, "panic");
        assert_eq!(f.runs("panics"), 1);

        let mut ids = Vec::new();
        for (e, detail) in [(&io, &secret), (&string, &text), (&panic, &boom)] {
            assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
            assert!(!e.to_string().contains(detail.as_str()), "the detail leaked: {e}");
            assert!(!e.message().contains("/srv") && !e.message().contains("/etc"), "{e}");
            assert_eq!(e.name(), None);
            let id = e.correlation_id().expect("a correlation id").to_string();
            assert!(!id.is_empty());
            assert!(e.to_string().contains(&id), "Display shows the id: {e}");
            // The server's log line carries the same id and the detail.
            let lines = log_lines_with(&id);
            assert!(
                lines.iter().any(|l| l.contains(detail.as_str()) && l.contains("ERROR")),
                "no ERROR log line with id {id} and the detail: {lines:?}"
            );
            ids.push(id);
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "a distinct id per failure");

        // The connection and its other calls survive the panic.
        assert_eq!(b.public().await.unwrap(), 1);
        h.shutdown().await;
    }

    async fn events_report_connections_authentication_access_and_actions(h: Harness) {
        let f = fixture();
        let client = h.client();
        client.set_token("alice-token");
        let me = within(LONG, "whoami", bank(&client).whoami()).await.unwrap();
        let conn = me.connection;
        bank(&client).sleep(30).await.unwrap();
        assert!(
            eventually(LONG, || f.events().iter().any(|e| matches!(e, Event::ActionFinished { action: "sleep", .. }))).await,
            "ActionFinished for sleep: {:?}",
            f.events()
        );
        let mine: Vec<Event> = f.events().into_iter().filter(|e| event_connection(e) == Some(conn)).collect();
        let position = |want: &dyn Fn(&Event) -> bool| {
            mine.iter().position(want).unwrap_or_else(|| panic!("missing event in {mine:?}"))
        };
        let opened = position(&|e| matches!(e,
            Event::ConnectionOpened { transport, remote_addr, .. }
                if *transport == h.kind.name() && remote_addr.is_some() == (h.kind != TransportKind::Memory)));
        let authed = position(&|e| matches!(e, Event::Authenticated { username, .. } if username == "alice"));
        let decided = position(&|e| matches!(e,
            Event::AccessDecided { controller: "bank", action: "whoami", allowed: true, .. }));
        let started = position(&|e| matches!(e, Event::ActionStarted { controller: "bank", action: "whoami", .. }));
        let finished = position(&|e| matches!(e,
            Event::ActionFinished { controller: "bank", action: "whoami", outcome: Ok(()), .. }));
        assert!(opened < authed && authed < decided && decided < started && started < finished, "{mine:?}");
        let slept = mine.iter().find_map(|e| match e {
            Event::ActionFinished { action: "sleep", elapsed, outcome, .. } => Some((*elapsed, *outcome)),
            _ => None,
        });
        let (elapsed, outcome) = slept.expect("sleep finished");
        assert_eq!(outcome, Ok(()));
        assert!(elapsed >= Duration::from_millis(30), "timing covers the handler: {elapsed:?}");

        // A denied call: the decision is reported.
        let anon = h.client();
        let e = error_of(bank(&anon).vault(7).await, "anonymous vault");
        assert_eq!(e.kind(), ErrorKind::AccessDenied);
        let anon_conn = bank(&anon).whoami().await.unwrap().connection;
        let theirs: Vec<Event> = f.events().into_iter().filter(|e| event_connection(e) == Some(anon_conn)).collect();
        assert!(
            theirs.iter().any(|e| matches!(e, Event::AccessDecided { action: "vault", allowed: false, .. })),
            "{theirs:?}"
        );

        // A failed authentication, and the close of its connection.
        let bad = h.client();
        bad.set_token("wrong-token");
        assert!(bank(&bad).whoami().await.is_err());
        assert!(
            eventually(LONG, || f.events().iter().any(|e| matches!(e, Event::AuthenticationFailed { .. }))).await,
            "{:?}",
            f.events()
        );
        let failed = f.events().iter().find_map(|e| match e {
            Event::AuthenticationFailed { connection } => Some(*connection),
            _ => None,
        });
        assert!(
            eventually(LONG, || f.events().iter().any(|e| matches!(e, Event::ConnectionClosed { connection, .. } if Some(*connection) == failed))).await,
            "{:?}",
            f.events()
        );

        // Counters.
        let stats = h.kernel.stats();
        assert_eq!(stats.total_connections, 3, "{stats:?}");
        assert_eq!(stats.connections, 2, "{stats:?}");
        assert!(stats.calls >= 4, "{stats:?}");

        client.disconnect().await;
        assert!(
            eventually(LONG, || f.events().iter().any(|e| matches!(e, Event::ConnectionClosed { connection, .. } if *connection == conn))).await,
            "{:?}",
            f.events()
        );
        assert!(eventually(LONG, || h.kernel.stats().connections == 1).await);
        h.shutdown().await;
    }

    async fn allowed_peers_see_the_callers_identity(h: Harness) {
        // The policy: services may register; authenticated users may send.
        let calls = Arc::new(AtomicUsize::new(0));
        let desk = h.client();
        desk.set_token(&ServiceToken { service: "desk".into(), secret: "s3cret".into() });
        desk.register_controller(DeskServer::new(DeskImpl { calls: calls.clone() }));
        within(LONG, "register", desk.register_as_peer("desk-1")).await.unwrap();

        let alice = h.client();
        alice.set_token("alice-token");
        let alice_conn = bank(&alice).whoami().await.unwrap().connection;
        let source = within(LONG, "routed call", alice.peer("desk-1").controller::<DeskClient>().who_called())
            .await
            .unwrap()
            .expect("a routed call has a source");
        assert_eq!(source, Source { connection: alice_conn, alias: None, username: Some("alice".into()) });
        assert_eq!(calls.load(SeqCst), 1);

        // Anonymous callers may not send; users may not register.
        let anon = h.client();
        let e = error_of(anon.peer("desk-1").controller::<DeskClient>().who_called().await, "anonymous send");
        assert_eq!(e.kind(), ErrorKind::PeerNotFound, "{e}");
        let e = error_of(alice.register_as_peer("alice-desk").await, "user registers");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        assert_eq!(calls.load(SeqCst), 1, "the callee never ran for a denied caller");
        h.shutdown().await;
    }
}

fn event_connection(e: &Event) -> Option<u64> {
    match e {
        Event::ConnectionOpened { connection, .. }
        | Event::ConnectionClosed { connection, .. }
        | Event::Authenticated { connection, .. }
        | Event::AuthenticationFailed { connection }
        | Event::AccessDecided { connection, .. }
        | Event::ActionStarted { connection, .. }
        | Event::ActionFinished { connection, .. } => Some(*connection),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// allow_anonymous() = false.

transport_tests! {
    setup = setup_closed;

    async fn a_call_before_set_token_is_unauthenticated(h: Harness) {
        let f = fixture();
        let client = h.client();
        let e = error_of(within(LONG, "public", bank(&client).public()).await, "call before set_token");
        assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
        assert_eq!(f.runs("public"), 0, "the handler never ran");
        assert!(f.accesses.lock().unwrap().is_empty(), "not even the access check ran");

        // Authenticating (on the same or a new connection) opens the door.
        client.set_token("alice-token");
        assert_eq!(within(LONG, "public", bank(&client).public()).await.unwrap(), 1);
        assert_eq!(bank(&client).whoami().await.unwrap().username, "alice");

        // A bad token is refused as before.
        let bad = h.client();
        bad.set_token("wrong-token");
        assert_auth_failure(&error_of(bank(&bad).public().await, "bad token"), "bad token");
        assert_eq!(f.runs("public"), 1);
        h.shutdown().await;
    }

    async fn the_first_call_after_authenticating_may_be_large(h: Harness) {
        // Frames are held to 16 KiB until the policy accepts the token; the client sends its
        // first call as soon as the Auth reply is in, while the server's read loop already
        // waits for its next read: the call must meet the raised limit, not the pre-auth one.
        let client = h.client();
        client.set_token("alice-token");
        let large = "m".repeat(200 << 10);
        within(LONG, "a large first call", bank(&client).marker(large)).await.unwrap();
        assert_eq!(bank(&client).whoami().await.unwrap().username, "alice");
        h.shutdown().await;
    }

    async fn repeated_unauthenticated_calls_close_the_connection(h: Harness) {
        let f = fixture();
        let client = h.client();
        let first = error_of(bank(&client).public().await, "first");
        assert_eq!(first.kind(), ErrorKind::Unauthenticated);
        let second = error_of(within(LONG, "second", bank(&client).public()).await, "second");
        assert!(
            matches!(second.kind(), ErrorKind::Unauthenticated | ErrorKind::Disconnected),
            "{second}"
        );
        assert!(eventually(LONG, || h.kernel.stats().connections == 0).await, "closed after the second strike");
        assert_eq!(f.runs("public"), 0);
        h.shutdown().await;
    }
}

transport_tests! {
    setup = setup_closed_fast;

    async fn a_connection_that_never_authenticates_is_closed(h: Harness) {
        let client = h.client();
        within(LONG, "connect", client.connect()).await.unwrap();
        assert_eq!(h.kernel.stats().connections, 1);
        let started = tokio::time::Instant::now();
        assert!(
            eventually(AUTH_TIMEOUT * 10, || h.kernel.stats().connections == 0).await,
            "closed once Limits::auth_timeout passed"
        );
        assert!(started.elapsed() >= AUTH_TIMEOUT / 2, "not before the deadline: {:?}", started.elapsed());
        let mut state = client.state();
        within(LONG, "the client sees the close", state.wait_for(|s| matches!(s, rpc_core::ConnectionState::Disconnected(_))))
            .await
            .unwrap();

        // An authenticated connection outlives the deadline.
        let alice = h.client();
        alice.set_token("alice-token");
        let first = bank(&alice).whoami().await.unwrap();
        tokio::time::sleep(AUTH_TIMEOUT * 2).await;
        assert_eq!(bank(&alice).whoami().await.unwrap().connection, first.connection);
        h.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// hide_forbidden_actions() = true.

transport_tests! {
    setup = setup_hidden;

    async fn a_forbidden_action_looks_like_a_missing_one(h: Harness) {
        let f = fixture();
        let anon = h.client();
        let forbidden = error_of(within(LONG, "vault", bank(&anon).vault(7)).await, "forbidden");
        let missing = error_of(anon.controller::<BankOtherVersionClient>().missing().await, "missing");
        assert_eq!(forbidden.kind(), ErrorKind::NotFound, "{forbidden}");
        assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
        assert_eq!(
            forbidden.to_string().replace("vault", "X"),
            missing.to_string().replace("missing", "X"),
            "the same words for both"
        );
        assert_eq!(f.runs("vault"), 0);
        let stream = error_of(bank(&anon).vault_ticks(2).await.map(|_| ()), "forbidden stream");
        assert_eq!(stream.kind(), ErrorKind::NotFound, "{stream}");

        // A caller with access sees the action.
        let alice = h.client();
        alice.set_token("alice-token");
        assert_eq!(bank(&alice).vault(7).await.unwrap().username, "alice");
        h.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// transform_error.

transport_tests! {
    setup = setup_transform;

    async fn transform_error_output_is_what_the_client_sees(h: Harness) {
        let client = h.client();
        let b = bank(&client);
        for e in [
            error_of(within(LONG, "string_failure", b.string_failure("detail".into())).await, "String"),
            error_of(b.io_failure("detail".into()).await, "io"),
            error_of(b.panics("detail".into()).await, "panic"),
        ] {
            assert_eq!(e.kind(), ErrorKind::Internal);
            assert_eq!(e.message(), "Unknown error occurred");
            assert_eq!(e.correlation_id(), None, "the policy dropped it");
            assert_eq!(e.to_string(), "internal error: Unknown error occurred");
        }
        let denied = error_of(b.vault(7).await, "vault");
        assert_eq!((denied.kind(), denied.message()), (ErrorKind::AccessDenied, "Access denied"));
        // What the policy leaves alone travels as before.
        let typed = error_of(b.withdraw(500).await, "withdraw");
        assert_eq!(typed.downcast::<InsufficientFunds>().map(|e| e.needed), Some(500));
        h.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// Middleware.

transport_tests! {
    setup = setup_middleware;

    async fn middleware_sees_outcomes_and_can_reject(h: Harness) {
        let f = fixture();
        let client = h.client();
        client.set_token("bob-token");
        let b = bank(&client);
        assert_eq!(within(LONG, "public", b.public()).await.unwrap(), 1);
        let e = error_of(b.blocked().await, "blocked");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        assert!(e.to_string().contains("blocked by the gate middleware"), "{e}");
        assert_eq!(f.runs("blocked"), 0, "the handler never ran");
        assert_eq!(error_of(b.withdraw(1_000).await, "withdraw").kind(), ErrorKind::Remote);
        assert_eq!(error_of(b.string_failure("x".into()).await, "String").kind(), ErrorKind::Internal);

        assert!(eventually(LONG, || f.audit().len() >= 4).await, "{:?}", f.audit());
        let audit = f.audit();
        let bob = |action: &str, outcome| (action.to_string(), "bob".to_string(), outcome);
        assert_eq!(
            audit,
            vec![
                bob("public", Ok(())),
                bob("blocked", Err(ErrorKind::AccessDenied)),
                bob("withdraw", Err(ErrorKind::Remote)),
                bob("string_failure", Err(ErrorKind::Internal)),
            ]
        );
        // The events see the middleware's rejection as the call's outcome.
        assert!(
            eventually(LONG, || f.events().iter().any(|e| matches!(e,
                Event::ActionFinished { action: "blocked", outcome: Err(ErrorKind::AccessDenied), .. }))).await,
            "{:?}",
            f.events()
        );
        h.shutdown().await;
    }

    async fn trace_gives_each_call_a_span(h: Harness) {
        let client = h.client();
        let marker = unique("trace-marker");
        assert_eq!(within(LONG, "marker", bank(&client).marker(marker.clone())).await.unwrap(), 1);
        let lines = log_lines_with(&marker);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains("rpc.call{"), "the handler runs inside the call's span: {line}");
        let field = |name: &str, value: &str| {
            line.contains(&format!("{name}={value}")) || line.contains(&format!("{name}=\"{value}\""))
        };
        assert!(field("controller", "bank") && field("action", "marker"), "{line}");
        h.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// Defaults: no policy, or a policy that overrides only some methods.

transport_tests! {
    setup = setup_no_policy;

    async fn without_a_policy_anonymous_calls_pass_and_tokens_and_peers_are_refused(h: Harness) {
        let f = fixture();
        let anon = h.client();
        assert_eq!(within(LONG, "public", bank(&anon).public()).await.unwrap(), 1);
        assert_eq!(bank(&anon).vault(7).await.unwrap().groups, vec!["secret".to_string()], "anonymous calls are allowed");

        let e = error_of(anon.register_as_peer("desk-1").await, "register");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        let e = error_of(anon.peer("desk-1").controller::<DeskClient>().who_called().await, "send");
        assert_eq!(e.kind(), ErrorKind::PeerNotFound, "{e}");
        assert_eq!(h.kernel.stats().peers, 0);

        // Any token is refused (the default `authenticate`).
        let client = h.client();
        client.set_token("alice-token");
        let e = error_of(bank(&client).public().await, "token without a policy");
        assert_auth_failure(&e, "token without a policy");
        assert_eq!(f.auth_calls.load(SeqCst), 0, "no policy was asked");
        assert_eq!(f.runs("public"), 1);
        h.shutdown().await;
    }
}

transport_tests! {
    setup = setup_tokens_only;

    async fn default_peer_rights_deny_authenticated_sessions_too(h: Harness) {
        let alice = h.client();
        alice.set_token("alice-token");
        assert_eq!(within(LONG, "whoami", bank(&alice).whoami()).await.unwrap().username, "alice");
        let e = error_of(alice.register_as_peer("alice-desk").await, "register");
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        let e = error_of(alice.peer("alice-desk").controller::<DeskClient>().who_called().await, "send");
        assert_eq!(e.kind(), ErrorKind::PeerNotFound, "{e}");
        // Default access: every action, including group-protected ones.
        assert_eq!(bank(&alice).vault(7).await.unwrap().username, "alice");
        h.shutdown().await;
    }
}

transport_tests! {
    setup = setup_register_only;

    async fn sending_to_a_registered_peer_is_denied_by_default(h: Harness) {
        let calls = Arc::new(AtomicUsize::new(0));
        let desk = h.client();
        desk.register_controller(DeskServer::new(DeskImpl { calls: calls.clone() }));
        within(LONG, "register", desk.register_as_peer("desk-1")).await.unwrap();
        assert_eq!(h.kernel.stats().peers, 1);

        let alice = h.client();
        alice.set_token("alice-token");
        let existing = error_of(alice.peer("desk-1").controller::<DeskClient>().who_called().await, "send");
        let unknown = error_of(alice.peer("desk-2").controller::<DeskClient>().who_called().await, "unknown");
        assert_eq!(existing.kind(), ErrorKind::PeerNotFound, "{existing}");
        assert_eq!(
            existing.to_string().replace("desk-1", "X"),
            unknown.to_string().replace("desk-2", "X"),
            "a denied alias and an unknown one look the same"
        );
        assert_eq!(calls.load(SeqCst), 0);
        h.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// Behaviour the issue asks for that the library does not have yet. Each runs over every
// transport in one test, ignored until fixed (see the reasons).

/// Runs `scenario` over every transport with a kernel from `setup`.
async fn over_every_transport<F, Fut>(setup: fn() -> RpcKernel, scenario: F)
where
    F: Fn(Harness) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for kind in TransportKind::ALL {
        let kernel = setup();
        let harness = Harness::start(kind, kernel).await;
        within(Duration::from_secs(60), kind.name(), scenario(harness)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_finishes_with_access_denied_in_the_events() {
    over_every_transport(setup_open, |h| async move {
        let f = fixture();
        let anon = h.client();
        let e = error_of(bank(&anon).vault(7).await, "anonymous vault");
        assert_eq!(e.kind(), ErrorKind::AccessDenied);
        assert!(
            eventually(LONG, || f.events().iter().any(|e| matches!(
                e,
                Event::ActionFinished {
                    action: "vault",
                    outcome: Err(ErrorKind::AccessDenied),
                    ..
                }
            )))
            .await,
            "{:?}",
            f.events()
        );
        h.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_sees_a_panicking_call_as_internal() {
    over_every_transport(setup_middleware, |h| async move {
        let f = fixture();
        let client = h.client();
        let e = error_of(bank(&client).panics("boom".into()).await, "panic");
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(
            eventually(SECOND, || !f.audit().is_empty()).await,
            "the audit middleware saw nothing"
        );
        assert_eq!(
            f.audit(),
            vec![("panics".to_string(), "anonymous".to_string(), Err(ErrorKind::Internal))]
        );
        h.shutdown().await;
    })
    .await;
}

/// The access check runs before the handler, on the connection's read loop when the call
/// is small: its panic must become that call's `Internal` answer, not the connection's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_access_check_fails_only_its_call() {
    over_every_transport(setup_panicking_access, |h| async move {
        let client = h.client();
        let bank = bank(&client);
        let e = error_of(bank.whoami().await, "whoami under a panicking policy");
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(e.correlation_id().is_some(), "logged under a correlation id: {e}");
        let runs = bank.public().await.expect("the connection goes on");
        assert!(runs >= 1);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_token_fails_like_any_other() {
    over_every_transport(setup_open, |h| async move {
        let f = fixture();
        let reference = h.client();
        reference.set_token("wrong-token");
        let reference = error_of(bank(&reference).whoami().await, "wrong token").to_string();
        let client = h.client();
        client.set_token(&"x".repeat(10 << 10));
        let e = error_of(within(LONG, "whoami", bank(&client).whoami()).await, "oversized token");
        assert_auth_failure(&e, "oversized token");
        assert_eq!(e.to_string(), reference, "the same message as any failed authentication");
        assert_eq!(f.auth_calls.load(SeqCst), 1, "the policy never saw the oversized token");
        h.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_rpc_error_from_a_handler_hides_its_detail() {
    over_every_transport(setup_open, |h| async move {
        let client = h.client();
        let detail = unique("connection string postgres://admin:pw@db");
        let e = error_of(bank(&client).rpc_internal(detail.clone()).await, "rpc_internal");
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(!e.to_string().contains("postgres://"), "the detail leaked: {e}");
        let id = e.correlation_id().expect("a correlation id, as for other hidden failures");
        assert!(log_lines_with(id).iter().any(|l| l.contains(detail.as_str())));
        h.shutdown().await;
    })
    .await;
}
