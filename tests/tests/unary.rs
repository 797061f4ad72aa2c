//! Unary calls (issue 2), each scenario run over every transport by `transport_tests!`:
//! serde types of every shape, concurrency on one connection, errors (not found, bad
//! arguments, panics), cancellation, timeouts, disconnects, shutdown and lazy reconnects.
//!
//! Server-side effects are observed through counters and drop guards in the handlers. The
//! scenario reaches the controller's [`State`] through a thread-local that `setup` fills: the
//! harness calls `setup` and runs the scenario in the same future, on the test's own thread.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use rpc_core::{Blob, ConnectionState, ErrorKind, RpcError, RpcKernel, controller};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tests::{TransportKind, eventually, transport_tests};
use tokio::time::{Instant, timeout};

// ---------------------------------------------------------------------------------------
// The contract.

/// Every serde shape in one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Everything {
    pub name: String,
    pub flag: bool,
    pub small: i8,
    pub wide: u128,
    pub signed_wide: i128,
    pub ratio: f64,
    pub maybe: Option<u32>,
    pub nothing: Option<String>,
    pub list: Vec<i64>,
    pub ordered: BTreeMap<String, Vec<u16>>,
    pub hashed: HashMap<u64, String>,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    pub shapes: Vec<Shape>,
    pub pair: (u8, String),
    pub unit: (),
    pub nested: Option<Box<Everything>>,
}

/// Every kind of enum variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    Point,
    Circle(f64),
    Line(i32, i32),
    Rect { w: u32, h: u32 },
}

#[controller("unary")]
pub trait Unary {
    async fn echo(&self, value: Everything) -> Everything;
    /// The value as the server sees it (`Debug`), to catch symmetric encoding errors.
    async fn describe(&self, value: Everything) -> String;
    async fn shape(&self, shape: Shape) -> Shape;
    async fn option(&self, value: Option<String>) -> Option<String>;
    async fn list(&self, items: Vec<Shape>) -> Vec<Shape>;
    async fn map(&self, map: BTreeMap<String, u64>) -> BTreeMap<String, u64>;
    async fn bytes(&self, bytes: ByteBuf) -> ByteBuf;
    /// All but the first byte (a view of the argument, no copy).
    async fn blob(&self, data: Blob) -> Blob;
    async fn wide(&self, a: u128, b: i128) -> (u128, i128);
    async fn float(&self, x: f64) -> f64;
    async fn unit(&self, u: ());
    async fn many(&self, a: u8, b: String, c: Option<bool>, d: Vec<u8>) -> String;
    async fn add(&self, a: u64, b: u64) -> u64;
    /// Sleeps `ms`; counts starts and finishes, a drop guard counts every end.
    async fn sleep(&self, ms: u64) -> u64;
    /// Counts its runs (to prove a handler did not run).
    async fn typed(&self, count: u32) -> u32;
    async fn panics(&self, message: String) -> u32;
}

/// The `unary` controller as a client built against a different version sees it.
#[controller("unary")]
pub trait UnaryWrongType {
    async fn typed(&self, count: String) -> u32;
    async fn missing_action(&self) -> u32;
}

#[controller("unary")]
pub trait UnaryTooFew {
    async fn typed(&self) -> u32;
}

#[controller("unary")]
pub trait UnaryTooMany {
    async fn typed(&self, count: u32, extra: u32) -> u32;
}

#[controller("no-such-controller")]
pub trait Nowhere {
    async fn anything(&self) -> u32;
}

// ---------------------------------------------------------------------------------------
// The server.

#[derive(Default)]
struct State {
    started: AtomicUsize,
    finished: AtomicUsize,
    dropped: AtomicUsize,
    typed_runs: AtomicUsize,
}

/// Counts into its counter when dropped.
struct OnDrop(Arc<State>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, SeqCst);
    }
}

struct UnaryImpl {
    state: Arc<State>,
}

impl Unary for UnaryImpl {
    async fn echo(&self, value: Everything) -> Everything {
        value
    }

    async fn describe(&self, value: Everything) -> String {
        canonical(&value)
    }

    async fn shape(&self, shape: Shape) -> Shape {
        shape
    }

    async fn option(&self, value: Option<String>) -> Option<String> {
        value.map(|v| format!("{v}!"))
    }

    async fn list(&self, mut items: Vec<Shape>) -> Vec<Shape> {
        items.reverse();
        items
    }

    async fn map(&self, map: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        map.into_iter().map(|(k, v)| (k.to_uppercase(), v * 2)).collect()
    }

    async fn bytes(&self, bytes: ByteBuf) -> ByteBuf {
        ByteBuf::from(bytes.iter().map(|b| b.wrapping_add(1)).collect::<Vec<u8>>())
    }

    async fn blob(&self, data: Blob) -> Blob {
        Blob::from(data.as_bytes().slice(1.min(data.len())..))
    }

    async fn wide(&self, a: u128, b: i128) -> (u128, i128) {
        (a, b)
    }

    async fn float(&self, x: f64) -> f64 {
        x
    }

    async fn unit(&self, _u: ()) {
        self.state.typed_runs.fetch_add(0, SeqCst);
    }

    async fn many(&self, a: u8, b: String, c: Option<bool>, d: Vec<u8>) -> String {
        format!("{a}|{b}|{c:?}|{d:?}")
    }

    async fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }

    async fn sleep(&self, ms: u64) -> u64 {
        let _guard = OnDrop(self.state.clone());
        self.state.started.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.state.finished.fetch_add(1, SeqCst);
        ms
    }

    async fn typed(&self, count: u32) -> u32 {
        self.state.typed_runs.fetch_add(1, SeqCst);
        count + 1
    }

    async fn panics(&self, message: String) -> u32 {
        if !message.is_empty() {
            panic!("{message}");
        }
        0
    }
}

thread_local! {
    static STATE: RefCell<Option<Arc<State>>> = const { RefCell::new(None) };
}

fn setup() -> RpcKernel {
    let state = Arc::new(State::default());
    STATE.with(|s| *s.borrow_mut() = Some(state.clone()));
    let kernel = RpcKernel::new();
    kernel.register(UnaryServer::new(UnaryImpl { state }));
    kernel
}

/// The state `setup` made for this test.
fn state() -> Arc<State> {
    STATE.with(|s| s.borrow().clone()).expect("setup runs on the scenario's thread")
}

fn sample(depth: u32) -> Everything {
    Everything {
        name: format!("naïve ☃ {depth}"),
        flag: depth & 1 == 0,
        small: -128,
        wide: u128::MAX - u128::from(depth),
        signed_wide: i128::MIN + i128::from(depth),
        ratio: 0.1 + 0.2,
        maybe: Some(u32::MAX),
        nothing: None,
        list: vec![i64::MIN, -1, 0, 1, i64::MAX],
        ordered: [("a".to_string(), vec![1, 2]), ("".to_string(), vec![])].into_iter().collect(),
        hashed: [(1, "one".to_string()), (u64::MAX, "max".to_string())].into_iter().collect(),
        bytes: (0..=255).collect(),
        shapes: vec![
            Shape::Point,
            Shape::Circle(-2.5),
            Shape::Line(i32::MIN, i32::MAX),
            Shape::Rect { w: 3, h: 4 },
        ],
        pair: (7, "seven".into()),
        unit: (),
        nested: (depth > 0).then(|| Box::new(sample(depth - 1))),
    }
}

/// `Debug` of the value with its hash maps in key order (so both sides print it alike).
fn canonical(value: &Everything) -> String {
    fn strip(v: &mut Everything, maps: &mut Vec<BTreeMap<u64, String>>) {
        maps.push(std::mem::take(&mut v.hashed).into_iter().collect());
        if let Some(nested) = v.nested.as_mut() {
            strip(nested, maps);
        }
    }
    let mut v = value.clone();
    let mut maps = Vec::new();
    strip(&mut v, &mut maps);
    format!("{v:?} {maps:?}")
}

/// Awaits `f`, failing the test if it takes longer than `d`.
async fn within<F: std::future::Future>(d: Duration, what: &str, f: F) -> F::Output {
    match timeout(d, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {d:?}"),
    }
}

/// `n` calls that sleep 30 s, each in its own task, once the server runs all of them.
async fn running_calls(
    p: &UnaryClient,
    state: &State,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<u64, RpcError>>> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.sleep(30_000).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(2), || state.started.load(SeqCst) == n).await,
        "{n} calls running"
    );
    calls
}

fn kind_of<T: std::fmt::Debug>(r: &Result<T, RpcError>) -> Option<ErrorKind> {
    r.as_ref().err().map(|e| e.kind())
}

// ---------------------------------------------------------------------------------------
// The scenarios.

transport_tests! {
    setup = setup;

    async fn serde_types_round_trip(h: Harness) {
        let client = h.client();
        let p = client.controller::<UnaryClient>();

        let value = sample(3);
        assert_eq!(p.echo(value.clone()).await.unwrap(), value);
        assert_eq!(p.describe(value.clone()).await.unwrap(), canonical(&value));

        for shape in
            [Shape::Point, Shape::Circle(1.5), Shape::Line(-1, 1), Shape::Rect { w: 0, h: 9 }]
        {
            assert_eq!(p.shape(shape.clone()).await.unwrap(), shape);
        }
        assert_eq!(p.option(None).await.unwrap(), None);
        assert_eq!(p.option(Some("hi".into())).await.unwrap(), Some("hi!".into()));
        assert_eq!(p.option(Some(String::new())).await.unwrap(), Some("!".into()));
        assert_eq!(p.list(vec![]).await.unwrap(), vec![]);
        assert_eq!(
            p.list(vec![Shape::Point, Shape::Circle(0.0)]).await.unwrap(),
            vec![Shape::Circle(0.0), Shape::Point]
        );
        let map: BTreeMap<String, u64> =
            [("x".to_string(), 1), ("y".to_string(), u64::MAX / 2)].into();
        let doubled: BTreeMap<String, u64> =
            [("X".to_string(), 2), ("Y".to_string(), (u64::MAX / 2) * 2)].into();
        assert_eq!(p.map(map).await.unwrap(), doubled);
        assert_eq!(p.map(BTreeMap::new()).await.unwrap(), BTreeMap::new());

        let all: Vec<u8> = (0..=255).collect();
        let shifted: Vec<u8> = all.iter().map(|b| b.wrapping_add(1)).collect();
        assert_eq!(p.bytes(ByteBuf::from(all)).await.unwrap().into_vec(), shifted);
        assert_eq!(p.bytes(ByteBuf::new()).await.unwrap().into_vec(), Vec::<u8>::new());
        let big = vec![0xA5u8; 200_000];
        assert_eq!(p.bytes(ByteBuf::from(big)).await.unwrap().into_vec(), vec![0xA6u8; 200_000]);
        // Blob: the same bytes on the wire, shared with the frame on arrival; also above the
        // chunk size (reassembled) and empty.
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(&p.blob(Blob::from(all.clone())).await.unwrap()[..], &all[1..]);
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(&p.blob(Blob::from(big.clone())).await.unwrap()[..], &big[1..]);
        assert!(p.blob(Blob::new()).await.unwrap().is_empty());

        for (a, b) in [
            (0u128, 0i128),
            (u128::MAX, i128::MIN),
            (1 << 64, i128::MAX),
            (u128::from(u64::MAX) + 1, -1),
        ] {
            assert_eq!(p.wide(a, b).await.unwrap(), (a, b));
        }

        for x in [0.1 + 0.2, f64::MAX, f64::MIN_POSITIVE, -1e-300, f64::INFINITY, f64::NEG_INFINITY]
        {
            assert_eq!(p.float(x).await.unwrap().to_bits(), x.to_bits(), "{x}");
        }
        assert!(p.float(-0.0).await.unwrap().is_sign_negative());
        assert!(p.float(f64::NAN).await.unwrap().is_nan());

        p.unit(()).await.unwrap();
        assert_eq!(
            p.many(255, "b".into(), Some(false), vec![1, 2]).await.unwrap(),
            "255|b|Some(false)|[1, 2]"
        );
        assert_eq!(p.many(0, String::new(), None, vec![]).await.unwrap(), "0||None|[]");
    }

    async fn ten_thousand_concurrent_calls_on_one_connection(h: Harness) {
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        let calls = (0..10_000u64).map(|i| {
            let p = p.clone();
            async move { (i, p.add(i, 1_000_000).await) }
        });
        let results =
            within(Duration::from_secs(30), "10 000 calls", futures::future::join_all(calls)).await;
        assert_eq!(results.len(), 10_000);
        for (i, r) in results {
            assert_eq!(r.unwrap(), i + 1_000_000, "call {i}");
        }
        let stats = h.kernel.stats();
        assert_eq!(stats.total_connections, 1, "all calls shared one connection");
        assert!(stats.calls >= 10_000, "{stats:?}");
    }

    async fn slow_call_does_not_delay_quick_ones(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        client.connect().await.unwrap();

        let started = Instant::now();
        let slow = tokio::spawn({
            let p = p.clone();
            async move { p.sleep(1500).await }
        });
        assert!(eventually(Duration::from_secs(1), || state.started.load(SeqCst) == 1).await);

        let quick = (0..20u64).map(|i| {
            let p = p.clone();
            async move { p.add(i, i).await }
        });
        let results = futures::future::join_all(quick).await;
        let quick_done = started.elapsed();
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), 2 * i as u64);
        }
        assert!(quick_done < Duration::from_millis(1000), "quick calls took {quick_done:?}");
        assert!(!slow.is_finished(), "the slow call is still running when the quick ones are done");
        assert_eq!(state.finished.load(SeqCst), 0);

        let slow = within(Duration::from_secs(5), "the slow call", slow).await.unwrap();
        assert_eq!(slow.unwrap(), 1500);
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert!(quick_done + Duration::from_millis(500) < started.elapsed());
    }

    async fn unknown_controller_or_action_is_not_found(h: Harness) {
        let client = h.client();
        let err = client.controller::<NowhereClient>().anything().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("no-such-controller"), "names the controller: {err}");

        let err = client.controller::<UnaryWrongTypeClient>().missing_action().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("missing_action"), "names the action: {err}");

        // The connection is fine afterwards.
        assert_eq!(client.controller::<UnaryClient>().add(1, 2).await.unwrap(), 3);
        assert_eq!(h.kernel.stats().total_connections, 1);
    }

    async fn undecodable_arguments_are_bad_arguments_and_the_handler_does_not_run(h: Harness) {
        let state = state();
        let client = h.client();

        let err =
            client.controller::<UnaryWrongTypeClient>().typed("five".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");
        assert!(err.message().contains("count"), "names the argument: {err}");

        let err = client.controller::<UnaryTooFewClient>().typed().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");
        assert!(err.message().contains("count"), "names the missing argument: {err}");

        let err = client.controller::<UnaryTooManyClient>().typed(1, 2).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");

        assert_eq!(state.typed_runs.load(SeqCst), 0, "the handler never ran");
        // The counter works: a good call runs the handler once.
        assert_eq!(client.controller::<UnaryClient>().typed(41).await.unwrap(), 42);
        assert_eq!(state.typed_runs.load(SeqCst), 1);
    }

    async fn panicking_handler_is_internal_and_the_connection_goes_on(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        client.connect().await.unwrap();

        let slow = tokio::spawn({
            let p = p.clone();
            async move { p.sleep(500).await }
        });
        assert!(eventually(Duration::from_secs(1), || state.started.load(SeqCst) == 1).await);

        let err = p.panics("SECRET-panic-detail-7f3a".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        assert!(!err.to_string().contains("SECRET"), "the panic message leaked: {err}");
        assert!(!err.message().contains("7f3a"), "the panic message leaked: {err:?}");

        let slow = within(Duration::from_secs(5), "the concurrent slow call", slow).await.unwrap();
        assert_eq!(slow.unwrap(), 500, "a concurrent call survives the panic");
        assert_eq!(p.add(2, 2).await.unwrap(), 4, "later calls work");
        assert_eq!(p.panics(String::new()).await.unwrap(), 0);
        assert_eq!(h.kernel.stats().total_connections, 1, "the same connection throughout");
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_calls == 0).await);
    }

    async fn dropping_a_call_cancels_the_handler(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        client.connect().await.unwrap();

        let call = tokio::spawn({
            let p = p.clone();
            async move { p.sleep(30_000).await }
        });
        assert!(eventually(Duration::from_secs(2), || state.started.load(SeqCst) == 1).await);
        assert_eq!(h.kernel.stats().active_calls, 1);
        call.abort();
        assert!(
            eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 1).await,
            "the handler was not dropped within 1 s of the caller dropping the call"
        );
        assert_eq!(state.finished.load(SeqCst), 0);
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_calls == 0).await);
        // The connection is still good.
        assert_eq!(p.add(1, 1).await.unwrap(), 2);
        assert_eq!(h.kernel.stats().total_connections, 1);
    }

    async fn per_call_timeout(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        client.connect().await.unwrap();

        let started = Instant::now();
        let err = p.with_timeout(Duration::from_millis(200)).sleep(10_000).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(took >= Duration::from_millis(190), "timed out too early: {took:?}");
        assert!(took < Duration::from_secs(1), "timed out too late: {took:?}");
        assert!(
            eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 1).await,
            "the server stops the handler of a timed-out call"
        );
        assert_eq!(state.finished.load(SeqCst), 0);

        // A call within its timeout succeeds; the proxy without a timeout is unaffected.
        assert_eq!(p.with_timeout(Duration::from_secs(5)).sleep(10).await.unwrap(), 10);
        assert_eq!(p.sleep(250).await.unwrap(), 250);
    }

    async fn client_disconnect_mid_call_cleans_up_the_server(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        client.connect().await.unwrap();

        let calls = running_calls(&p, &state, 5).await;
        assert_eq!(h.kernel.stats().active_calls, 5);
        assert_eq!(h.kernel.stats().connections, 1);

        let disconnected = Instant::now();
        client.disconnect().await;
        for call in calls {
            let r = within(Duration::from_secs(1), "a call after disconnect", call).await.unwrap();
            assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
        }
        assert!(disconnected.elapsed() < Duration::from_secs(1));

        assert!(
            eventually(Duration::from_secs(2), || {
                let s = h.kernel.stats();
                s.active_calls == 0 && s.connections == 0
            })
            .await,
            "server still holds calls or connections: {:?}",
            h.kernel.stats()
        );
        assert_eq!(state.dropped.load(SeqCst), 5, "every handler was dropped");
        assert_eq!(state.finished.load(SeqCst), 0);
        assert!(h.kernel.connections().is_empty());

        // The server is fine: another client is served.
        let other = h.client();
        assert_eq!(other.controller::<UnaryClient>().add(20, 22).await.unwrap(), 42);
    }

    async fn server_shutdown_fails_pending_calls(h: Harness) {
        let state = state();
        let kind = h.kind;
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        client.connect().await.unwrap();

        let calls = running_calls(&p, &state, 3).await;

        let started = Instant::now();
        // A graceful shutdown lets calls run for the server's grace period (2 s in the
        // harness) before it closes; it must not wait for the 30 s calls.
        within(Duration::from_secs(5), "the shutdown", h.shutdown()).await;
        let shut = Instant::now();
        for call in calls {
            let r = within(Duration::from_secs(1), "a call after shutdown", call).await.unwrap();
            assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
        }
        assert!(
            shut.elapsed() < Duration::from_millis(500),
            "pending calls failed {:?} after the server was down",
            shut.elapsed()
        );
        assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
        assert_eq!(state.finished.load(SeqCst), 0);
        assert!(eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 3).await);

        if kind != TransportKind::Memory {
            // Nothing listens any more: the next call fails at once instead of hanging.
            let t = Instant::now();
            let r = within(Duration::from_secs(5), "a call to a stopped server", p.add(1, 1)).await;
            assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
            assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        }
    }

    async fn closed_connection_fails_pending_calls_at_once(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        client.connect().await.unwrap();

        let calls = running_calls(&p, &state, 3).await;

        let conns = h.kernel.connections();
        assert_eq!(conns.len(), 1);
        let closed = Instant::now();
        conns[0].close();
        for call in calls {
            let r = within(Duration::from_secs(1), "a call on a closed connection", call)
                .await
                .unwrap();
            assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
        }
        assert!(closed.elapsed() < Duration::from_millis(500), "took {:?}", closed.elapsed());
        assert!(eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 3).await);
        assert!(
            eventually(Duration::from_secs(1), || {
                matches!(*client.state().borrow(), ConnectionState::Disconnected(_))
            })
            .await,
            "the client sees the disconnect: {:?}",
            *client.state().borrow()
        );
    }

    async fn lazy_client_reconnects_after_disconnect(h: Harness) {
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        assert_eq!(*client.state().borrow(), ConnectionState::Idle);
        assert_eq!(h.kernel.stats().total_connections, 0, "lazy: no connection before a call");

        assert_eq!(p.add(1, 2).await.unwrap(), 3);
        assert_eq!(*client.state().borrow(), ConnectionState::Connected(1));

        client.disconnect().await;
        assert!(
            matches!(*client.state().borrow(), ConnectionState::Disconnected(_)),
            "{:?}",
            *client.state().borrow()
        );
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().connections == 0).await);

        assert_eq!(p.add(3, 4).await.unwrap(), 7);
        assert_eq!(*client.state().borrow(), ConnectionState::Connected(2));
        let stats = h.kernel.stats();
        assert_eq!(stats.total_connections, 2, "{stats:?}");
        assert_eq!(stats.connections, 1, "{stats:?}");
    }

    async fn dropping_the_last_client_handle_closes_the_connection(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<UnaryClient>();
        let call = tokio::spawn({
            let p = p.clone();
            async move { p.sleep(30_000).await }
        });
        assert!(eventually(Duration::from_secs(2), || state.started.load(SeqCst) == 1).await);
        assert_eq!(h.kernel.stats().connections, 1);
        call.abort();
        drop(p);
        drop(client);
        assert!(
            eventually(Duration::from_secs(1), || {
                let s = h.kernel.stats();
                s.connections == 0 && s.active_calls == 0
            })
            .await,
            "the server still holds the dropped client's connection: {:?}",
            h.kernel.stats()
        );
        assert_eq!(state.dropped.load(SeqCst), 1);
    }
}

/// Replies (and arguments) larger than what the pipe under TLS holds at once: the TLS layer
/// must hand every byte to the pipe, not keep the tail of a batch until the next write.
///
/// A 4 KiB in-memory pipe makes the back-pressure that a busy socket only shows sometimes
/// (the `two_hundred_streams_open_at_once::tls` scenario stalled this way once in ~100 runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_over_a_congested_pipe_does_not_stall() {
    use rpc_core::transport::{ByteStream, TransportInfo};

    let pki = tests::pki::TestPki::shared();
    let kernel = setup();
    let (client_end, server_end) = tokio::io::duplex(4 << 10);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config()));
    let info = TransportInfo { kind: "tls", ..Default::default() };

    let server = tokio::spawn({
        let info = info.clone();
        async move {
            let tls = acceptor.accept(server_end).await.expect("TLS accept");
            let (read, write) = tokio::io::split(tls);
            kernel.accept(ByteStream::new(read, write, info)).await.expect("accept")
        }
    });
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls =
        within(Duration::from_secs(5), "the TLS handshake", connector.connect(name, client_end))
            .await
            .expect("TLS connect");
    let (read, write) = tokio::io::split(tls);
    let conn = RpcKernel::new().dial(ByteStream::new(read, write, info)).await.expect("dial");
    let _server_conn = within(Duration::from_secs(5), "the accept", server).await.unwrap();

    let p = conn.controller::<UnaryClient>();
    for (round, size) in [50_000usize, 65_537, 200_000].into_iter().enumerate() {
        let reply = timeout(Duration::from_secs(5), p.bytes(ByteBuf::from(vec![1u8; size]))).await;
        match reply {
            Ok(reply) => assert_eq!(reply.unwrap().into_vec(), vec![2u8; size]),
            Err(_) => panic!("round {round}: a {size}-byte call over TLS stalled for 5 s"),
        }
    }
}
