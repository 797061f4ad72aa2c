//! Both directions and peers (issue 5), each scenario run over every transport by
//! `transport_tests!`: the server calling controllers a client offers (inside an action and
//! later, through a kept `Connection`), and clients calling each other through the server's
//! peer routing (aliases, policy, errors, cancellation, caller identity, streams).
//!
//! The server's controller keeps its [`ServerState`] in a thread-local that `setup` fills
//! (the harness calls `setup` and runs the scenario in the same future, on the test's own
//! thread). Client-side controllers get their state directly from the scenario.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rpc_core::protocol::codec;
use rpc_core::protocol::frame::{Frame, FrameDecoder, Kind};
use rpc_core::protocol::message::{
    CallHead, Hello, PROTOCOL_VERSION, RouteSource, encode_route_target,
};
use rpc_core::transport::{Transport, TransportReader, TransportWriter, memory};
use rpc_core::{
    Connection, Context, ErrorKind, NoArgs, RpcClient, RpcDirectClient, RpcError, RpcKernel,
    RpcStream, Security, Session, controller,
};
use tests::{CloneClient, eventually, transport_tests};
use tokio::time::{Instant, timeout};

// ---------------------------------------------------------------------------------------
// The contract.

/// Offered by clients, called by the server.
#[controller("ui")]
pub trait Ui {
    async fn progress(&self, percent: u8) -> String;
    /// Waits `ms`; counts starts, a drop guard counts every end.
    async fn wait(&self, ms: u64) -> u64;
}

/// Served by the server; calls back into the client's `ui`.
#[controller("jobs")]
pub trait Jobs {
    /// Calls the caller's `ui.progress(percent)` and returns its answer.
    async fn run(&self, ctx: &Context, percent: u8) -> Result<String, RpcError>;
    /// Starts (in a task of its own) a call of the caller's `ui.wait(ms)` and returns; the
    /// outcome lands in the server state.
    async fn start_back_call(&self, ctx: &Context, ms: u64);
    /// Keeps the caller's connection for later; returns its id.
    async fn remember(&self, ctx: &Context) -> u64;
    /// The caller's connection id on the server.
    async fn my_connection_id(&self, ctx: &Context) -> u64;
}

/// Offered by clients to their peers.
#[controller("printer")]
pub trait Printer {
    async fn print(&self, doc: String) -> String;
    /// Who called, as the routing server stamped it.
    async fn source(&self, ctx: &Context) -> Option<(u64, Option<String>, Option<String>)>;
    /// Waits `ms`; counts starts, a drop guard counts every end.
    async fn hold(&self, ms: u64) -> u64;
    async fn count(&self, n: u64) -> RpcStream<u64>;
    async fn sum(&self, input: RpcStream<u64>) -> Result<u64, RpcError>;
    /// An endless stream, one item every `every_ms`; counts starts, a drop guard counts its end.
    async fn ticks(&self, every_ms: u64) -> RpcStream<u64>;
}

// ---------------------------------------------------------------------------------------
// Counters and drop guards.

/// A `std` mutex that treats poisoning (a panicked test) as fatal.
#[derive(Default)]
struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().expect("a test panicked while holding the lock")
    }
}

#[derive(Default)]
struct Counters {
    started: AtomicUsize,
    finished: AtomicUsize,
    dropped: AtomicUsize,
}

struct OnDrop(Arc<Counters>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, SeqCst);
    }
}

impl Counters {
    async fn wait(self: &Arc<Self>, ms: u64) -> u64 {
        let _guard = OnDrop(self.clone());
        self.started.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.finished.fetch_add(1, SeqCst);
        ms
    }
}

// ---------------------------------------------------------------------------------------
// Client-side controllers.

struct UiImpl {
    counters: Arc<Counters>,
}

impl Ui for UiImpl {
    async fn progress(&self, percent: u8) -> String {
        format!("{percent}%")
    }

    async fn wait(&self, ms: u64) -> u64 {
        self.counters.wait(ms).await
    }
}

/// What a printer saw of its callers.
type Sources = Arc<Mutex<Vec<RouteSource>>>;

struct PrinterImpl {
    name: String,
    counters: Arc<Counters>,
    sources: Sources,
}

impl Printer for PrinterImpl {
    async fn print(&self, doc: String) -> String {
        format!("{} printed {doc}", self.name)
    }

    async fn source(&self, ctx: &Context) -> Option<(u64, Option<String>, Option<String>)> {
        let source = ctx.peer_source()?.clone();
        self.sources.lock().push(source.clone());
        Some((source.connection_id, source.alias, source.username))
    }

    async fn hold(&self, ms: u64) -> u64 {
        self.counters.wait(ms).await
    }

    async fn count(&self, n: u64) -> RpcStream<u64> {
        RpcStream::new(futures::stream::iter(0..n))
    }

    async fn sum(&self, mut input: RpcStream<u64>) -> Result<u64, RpcError> {
        let mut sum = 0;
        while let Some(item) = input.next().await {
            sum += item?;
        }
        Ok(sum)
    }

    async fn ticks(&self, every_ms: u64) -> RpcStream<u64> {
        self.counters.started.fetch_add(1, SeqCst);
        let guard = OnDrop(self.counters.clone());
        RpcStream::new(futures::stream::iter(0u64..).then(move |i| {
            let _alive = &guard;
            async move {
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
                i
            }
        }))
    }
}

/// A client offering a printer named `name`.
struct PrinterPeer {
    client: RpcClient,
    counters: Arc<Counters>,
    sources: Sources,
}

fn printer_peer(client: RpcClient, name: &str) -> PrinterPeer {
    let counters = Arc::new(Counters::default());
    let sources = Sources::default();
    client.register_controller(PrinterServer::new(PrinterImpl {
        name: name.into(),
        counters: counters.clone(),
        sources: sources.clone(),
    }));
    PrinterPeer { client, counters, sources }
}

// ---------------------------------------------------------------------------------------
// The server.

/// The outcome of a server-to-client call started by `start_back_call`.
struct BackCall {
    result: Result<u64, RpcError>,
    ended: Instant,
}

#[derive(Default)]
struct ServerState {
    kept: Mutex<HashMap<u64, Connection>>,
    back_call: Mutex<Option<BackCall>>,
}

struct JobsImpl {
    state: Arc<ServerState>,
}

impl Jobs for JobsImpl {
    async fn run(&self, ctx: &Context, percent: u8) -> Result<String, RpcError> {
        let ui = ctx.connection().controller::<UiClient>();
        Ok(format!("ui said {}", ui.progress(percent).await?))
    }

    async fn start_back_call(&self, ctx: &Context, ms: u64) {
        let ui = ctx.connection().controller::<UiClient>();
        let state = self.state.clone();
        tokio::spawn(async move {
            let result = ui.wait(ms).await;
            *state.back_call.lock() = Some(BackCall { result, ended: Instant::now() });
        });
    }

    async fn remember(&self, ctx: &Context) -> u64 {
        let conn = ctx.connection().clone();
        let id = conn.id();
        self.state.kept.lock().insert(id, conn);
        id
    }

    async fn my_connection_id(&self, ctx: &Context) -> u64 {
        ctx.connection().id()
    }
}

/// Anyone may register as and call any peer.
struct OpenPeers;

impl Security for OpenPeers {
    async fn is_allowed_to_register_as_peer(&self, _session: &Session, _peer: &str) -> bool {
        true
    }

    async fn is_allowed_to_send_to_peer(&self, _session: &Session, _peer: &str) -> bool {
        true
    }
}

thread_local! {
    static STATE: RefCell<Option<Arc<ServerState>>> = const { RefCell::new(None) };
}

fn kernel_with_jobs() -> RpcKernel {
    let state = Arc::new(ServerState::default());
    STATE.with(|s| *s.borrow_mut() = Some(state.clone()));
    let kernel = RpcKernel::new();
    kernel.register(JobsServer::new(JobsImpl { state }));
    kernel
}

/// A kernel whose policy allows peers.
fn setup() -> RpcKernel {
    let kernel = kernel_with_jobs();
    kernel.set_security(OpenPeers);
    kernel
}

/// A kernel with no policy: peers denied.
fn setup_default_policy() -> RpcKernel {
    kernel_with_jobs()
}

/// The server state `setup` made for this test.
fn state() -> Arc<ServerState> {
    STATE.with(|s| s.borrow().clone()).expect("setup runs on the scenario's thread")
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

fn kind_of<T: std::fmt::Debug>(r: &Result<T, RpcError>) -> Option<ErrorKind> {
    r.as_ref().err().map(|e| e.kind())
}

/// Registers `client` as `alias`, retrying (for up to 2 s) while the alias is still held
/// by a connection the server has not yet seen close.
async fn register_eventually(client: &RpcClient, alias: &str) -> Result<(), RpcError> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match client.register_as_peer(alias).await {
            Err(e) if e.kind() == ErrorKind::AlreadyRegistered && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// A connection to `kernel` driven frame by frame, to send what no client would.
struct RawConnection {
    reader: memory::MemoryReader,
    writer: memory::MemoryWriter,
    decoder: FrameDecoder,
    /// The id the server gave this connection.
    id: u64,
}

impl RawConnection {
    async fn open(kernel: &RpcKernel) -> RawConnection {
        let (client_end, server_end) = memory::pair();
        let kernel = kernel.clone();
        let accepting = tokio::spawn(async move { kernel.accept(server_end).await });
        let (reader, writer) = client_end.split();
        let mut raw = RawConnection { reader, writer, decoder: FrameDecoder::new(1 << 20), id: 0 };
        // Hello as the oldest dialer sends it: `["rpc", min, max, connection_id, max_calls]`.
        let hello = codec::encode_value(&("rpc", PROTOCOL_VERSION, PROTOCOL_VERSION, 0u64, 100u32))
            .unwrap();
        raw.send(Frame::new(Kind::Hello, 0, hello.into())).await;
        let answer = raw.recv().await;
        assert_eq!(answer.kind, Kind::Hello);
        raw.id = Hello::decode(&answer.body).unwrap().connection_id;
        within(Duration::from_secs(5), "the accept", accepting).await.unwrap().unwrap();
        raw
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.writer.write(out.freeze()).await.unwrap();
    }

    /// A Call of `controller.action(args)` with `route` as its route section.
    async fn call<A: serde::Serialize>(
        &mut self,
        id: u32,
        route: Option<Bytes>,
        controller: &str,
        action: &str,
        args: &A,
    ) {
        let mut body = BytesMut::new();
        CallHead::encode_start(&mut body, controller, action);
        codec::encode_into(&mut body, args).unwrap();
        CallHead::encode_tail(&mut body, Some(5_000), 0);
        let mut frame = Frame::new(Kind::Call, id, body.freeze());
        frame.route = route;
        self.send(frame).await;
    }

    /// The next frame (Pings are answered), within 5 s.
    async fn recv(&mut self) -> Frame {
        within(Duration::from_secs(5), "a frame from the server", async {
            loop {
                if let Some(frame) = self.decoder.next_frame().unwrap() {
                    if frame.kind == Kind::Ping {
                        self.send(Frame::new(Kind::Pong, frame.id, Bytes::new())).await;
                        continue;
                    }
                    return frame;
                }
                self.decoder.reserve_for_read();
                let n = self.reader.read(self.decoder.buffer()).await.unwrap();
                assert!(n > 0, "the server closed the raw connection");
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Server-to-client calls.

transport_tests! {
    setup = setup;

    async fn server_calls_the_clients_controller_inside_an_action(h: Harness) {
        let client = h.client();
        let counters = Arc::new(Counters::default());
        client.register_controller(UiServer::new(UiImpl { counters }));
        let jobs = client.controller::<JobsClient>();
        assert_eq!(jobs.run(42).await.unwrap(), "ui said 42%");
        // Many at once, each with its own answer.
        let runs = (0..50u8).map(|i| {
            let jobs = jobs.clone();
            async move { (i, jobs.run(i).await) }
        });
        for (i, r) in
            within(Duration::from_secs(10), "50 runs", futures::future::join_all(runs)).await
        {
            assert_eq!(r.unwrap(), format!("ui said {i}%"));
        }
        assert_eq!(h.kernel.stats().total_connections, 1);
    }

    async fn back_call_to_an_unregistered_controller_is_not_found(h: Harness) {
        let client = h.client();
        let err = client.controller::<JobsClient>().run(1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("ui"), "names the controller: {err}");
    }

    async fn client_disconnect_fails_a_server_to_client_call_at_once(h: Harness) {
        let state = state();
        let client = h.client();
        let counters = Arc::new(Counters::default());
        client.register_controller(UiServer::new(UiImpl { counters: counters.clone() }));
        client.controller::<JobsClient>().start_back_call(30_000).await.unwrap();
        assert!(eventually(Duration::from_secs(2), || counters.started.load(SeqCst) == 1).await);

        let disconnected = Instant::now();
        client.disconnect().await;
        assert!(
            eventually(Duration::from_secs(1), || state.back_call.lock().is_some()).await,
            "the server's call to the client did not end within 1 s of the disconnect"
        );
        let outcome = state.back_call.lock().take().unwrap();
        assert_eq!(kind_of(&outcome.result), Some(ErrorKind::Disconnected), "{:?}", outcome.result);
        assert!(outcome.ended - disconnected < Duration::from_secs(1));
        // The client's handler was dropped with its connection.
        assert!(eventually(Duration::from_secs(1), || counters.dropped.load(SeqCst) == 1).await);
        assert_eq!(counters.finished.load(SeqCst), 0);
    }

    async fn kept_connection_is_used_later_and_fails_once_closed(h: Harness) {
        let state = state();
        let client = h.client();
        let counters = Arc::new(Counters::default());
        client.register_controller(UiServer::new(UiImpl { counters: counters.clone() }));
        let id = client.controller::<JobsClient>().remember().await.unwrap();

        // Later, outside any action: from the handler's map and from kernel.connections().
        let kept = state.kept.lock().get(&id).cloned().expect("the handler kept the connection");
        let listed = h.kernel.connections().into_iter().find(|c| c.id() == id).expect("listed");
        assert_eq!(kept.controller::<UiClient>().progress(7).await.unwrap(), "7%");
        assert_eq!(listed.controller::<UiClient>().progress(8).await.unwrap(), "8%");

        // A call in flight when the client leaves fails at once.
        let pending = tokio::spawn({
            let ui = kept.controller::<UiClient>();
            async move { ui.wait(30_000).await }
        });
        assert!(eventually(Duration::from_secs(2), || counters.started.load(SeqCst) == 1).await);
        let disconnected = Instant::now();
        client.disconnect().await;
        let r = within(Duration::from_secs(1), "the pending call", pending).await.unwrap();
        assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
        assert!(disconnected.elapsed() < Duration::from_secs(1));

        // Once closed, calls on the kept handle fail at once.
        assert!(eventually(Duration::from_secs(1), || kept.is_closed()).await);
        let t = Instant::now();
        let r = within(
            Duration::from_secs(1),
            "a call on a closed connection",
            kept.controller::<UiClient>().progress(9),
        )
        .await;
        assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
        let r = listed.controller::<UiClient>().progress(9).await;
        assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
        assert!(t.elapsed() < Duration::from_millis(100), "took {:?}", t.elapsed());
        assert!(h.kernel.connections().iter().all(|c| c.id() != id));
    }

    async fn server_closing_a_kept_connection(h: Harness) {
        let state = state();
        let client = h.client();
        let counters = Arc::new(Counters::default());
        client.register_controller(UiServer::new(UiImpl { counters: counters.clone() }));
        let id = client.controller::<JobsClient>().remember().await.unwrap();
        let kept = state.kept.lock().get(&id).cloned().unwrap();

        let pending = tokio::spawn({
            let ui = kept.controller::<UiClient>();
            async move { ui.wait(30_000).await }
        });
        assert!(eventually(Duration::from_secs(2), || counters.started.load(SeqCst) == 1).await);
        let closed = Instant::now();
        kept.close();
        within(Duration::from_secs(1), "closed()", kept.closed()).await;
        let r = within(Duration::from_secs(1), "the pending call", pending).await.unwrap();
        assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
        let r = kept.controller::<UiClient>().progress(1).await;
        assert_eq!(kind_of(&r), Some(ErrorKind::Disconnected), "{r:?}");
        assert!(closed.elapsed() < Duration::from_millis(500), "took {:?}", closed.elapsed());
        // The client's handler is dropped, and the client reconnects on its next call.
        assert!(eventually(Duration::from_secs(1), || counters.dropped.load(SeqCst) == 1).await);
        let new_id = client.controller::<JobsClient>().my_connection_id().await.unwrap();
        assert_ne!(new_id, id);
    }

    // -----------------------------------------------------------------------------------
    // Peers.

    async fn duplicate_alias_is_refused_and_freed_on_disconnect(h: Harness) {
        let a = printer_peer(h.client(), "A");
        let b = printer_peer(h.client(), "B");
        let caller = h.client();

        a.client.register_as_peer("printer-1").await.unwrap();
        let err = b.client.register_as_peer("printer-1").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyRegistered, "{err}");
        assert_eq!(h.kernel.stats().peers, 1);
        // Registering the same alias again on the same connection is fine.
        a.client.register_as_peer("printer-1").await.unwrap();

        let printer = caller.peer("printer-1").controller::<PrinterClient>();
        assert_eq!(printer.print("x".into()).await.unwrap(), "A printed x");

        a.client.disconnect().await;
        register_eventually(&b.client, "printer-1").await.unwrap();
        assert_eq!(printer.print("y".into()).await.unwrap(), "B printed y");
        assert_eq!(h.kernel.stats().peers, 1);

        // Unregistering frees it too.
        b.client.unregister_as_peer().await.unwrap();
        let err = printer.print("z".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerNotFound, "{err}");
        assert_eq!(h.kernel.stats().peers, 0);
    }

    async fn unknown_alias_is_peer_not_found_at_once(h: Harness) {
        let caller = h.client();
        caller.connect().await.unwrap();
        let printer = caller.peer("nobody-here").controller::<PrinterClient>();
        let t = Instant::now();
        let err = printer.print("x".into()).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_millis(100), "took {:?}", t.elapsed());
        assert_eq!(err.kind(), ErrorKind::PeerNotFound, "{err}");
        let stream = caller.peer("nobody-here").controller::<PrinterClient>().count(3).await;
        assert_eq!(kind_of(&stream), Some(ErrorKind::PeerNotFound));
    }

    async fn callee_leaving_mid_call_fails_the_caller(h: Harness) {
        let a = printer_peer(h.client(), "A");
        a.client.register_as_peer("printer-1").await.unwrap();
        let caller = h.client();
        let printer = caller.peer("printer-1").controller::<PrinterClient>();
        let call = tokio::spawn({
            let printer = printer.clone();
            async move { printer.hold(30_000).await }
        });
        assert!(eventually(Duration::from_secs(2), || a.counters.started.load(SeqCst) == 1).await);

        let left = Instant::now();
        a.client.disconnect().await;
        let r = within(Duration::from_secs(1), "the caller's call after the callee left", call)
            .await
            .unwrap();
        let kind = kind_of(&r);
        assert!(matches!(kind, Some(ErrorKind::PeerNotFound | ErrorKind::Disconnected)), "{r:?}");
        assert!(left.elapsed() < Duration::from_secs(1));
        // The caller's own connection is fine.
        let err = printer.print("x".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerNotFound, "{err}");
        assert!(caller.controller::<JobsClient>().my_connection_id().await.is_ok());
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_calls == 0).await);
    }

    async fn caller_dropping_the_call_drops_the_callee_handler(h: Harness) {
        let a = printer_peer(h.client(), "A");
        a.client.register_as_peer("printer-1").await.unwrap();
        let caller = h.client();
        let printer = caller.peer("printer-1").controller::<PrinterClient>();
        let call = tokio::spawn({
            let printer = printer.clone();
            async move { printer.hold(30_000).await }
        });
        assert!(eventually(Duration::from_secs(2), || a.counters.started.load(SeqCst) == 1).await);
        call.abort();
        assert!(
            eventually(Duration::from_secs(1), || a.counters.dropped.load(SeqCst) == 1).await,
            "the callee's handler was not dropped within 1 s"
        );
        assert_eq!(a.counters.finished.load(SeqCst), 0);
        // Both ends go on.
        assert_eq!(printer.print("x".into()).await.unwrap(), "A printed x");
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_calls == 0).await);
    }

    async fn callee_sees_the_real_caller(h: Harness) {
        let a = printer_peer(h.client(), "A");
        a.client.register_as_peer("printer-1").await.unwrap();

        let caller = h.client();
        caller.register_as_peer("caller-c").await.unwrap();
        let caller_id = caller.controller::<JobsClient>().my_connection_id().await.unwrap();
        let printer = caller.peer("printer-1").controller::<PrinterClient>();
        assert_eq!(
            printer.source().await.unwrap(),
            Some((caller_id, Some("caller-c".to_string()), None))
        );

        // A caller with no alias.
        let anonymous = h.client();
        let anonymous_id = anonymous.controller::<JobsClient>().my_connection_id().await.unwrap();
        let source =
            anonymous.peer("printer-1").controller::<PrinterClient>().source().await.unwrap();
        assert_eq!(source, Some((anonymous_id, None, None)));

        // Direct calls carry no source at all.
        let direct = a.client.controller::<JobsClient>();
        assert!(direct.my_connection_id().await.is_ok());

        // A raw connection tries to pass itself off as `caller-c`.
        let mut raw = RawConnection::open(&h.kernel).await;
        let forged = RouteSource {
            connection_id: caller_id,
            alias: Some("caller-c".into()),
            username: Some("admin".into()),
        };
        // 1. A route section shaped like a source instead of a target.
        let mut route = BytesMut::new();
        forged.encode(&mut route);
        raw.call(1, Some(route.freeze()), "printer", "source", &NoArgs).await;
        let answer = raw.recv().await;
        assert_eq!(answer.kind, Kind::Error, "{answer:?}");
        // 2. A target followed by a forged source in the same section.
        let mut route = BytesMut::new();
        {
            use bytes::BufMut;
            route.put_u8(0x94); // an array of 4: the alias, then the forged fields
            let mut target = BytesMut::new();
            encode_route_target(&mut target, "printer-1");
            route.extend_from_slice(&target[1..]);
            route.extend_from_slice(&codec::encode_value(&caller_id).unwrap());
            route.extend_from_slice(&codec::encode_value("caller-c").unwrap());
            route.extend_from_slice(&codec::encode_value("admin").unwrap());
        }
        raw.call(3, Some(route.freeze()), "printer", "source", &NoArgs).await;
        let answer = raw.recv().await;
        assert_eq!(answer.id, 3);
        if answer.kind == Kind::Reply {
            let seen: Option<(u64, Option<String>, Option<String>)> =
                codec::decode_value(&answer.body).unwrap();
            assert_eq!(seen, Some((raw.id, None, None)), "the callee sees the raw connection");
        }
        // 3. A plain routed call from the raw connection is stamped with its real id.
        let mut route = BytesMut::new();
        encode_route_target(&mut route, "printer-1");
        raw.call(5, Some(route.freeze()), "printer", "source", &NoArgs).await;
        let answer = raw.recv().await;
        assert_eq!((answer.id, answer.kind), (5, Kind::Reply), "{answer:?}");
        let seen: Option<(u64, Option<String>, Option<String>)> =
            codec::decode_value(&answer.body).unwrap();
        assert_eq!(seen, Some((raw.id, None, None)));

        for source in a.sources.lock().iter() {
            assert_ne!(source.username.as_deref(), Some("admin"), "a forged source got through");
            if source.alias.as_deref() == Some("caller-c") {
                assert_eq!(source.connection_id, caller_id, "{source:?}");
            } else {
                assert_ne!(source.connection_id, caller_id, "{source:?}");
            }
        }
    }

    async fn five_hundred_concurrent_calls_through_a_peer(h: Harness) {
        let a = printer_peer(h.client(), "A");
        a.client.register_as_peer("printer-1").await.unwrap();
        let caller = h.client();
        let printer = caller.peer("printer-1").controller::<PrinterClient>();
        let calls = (0..500).map(|i| {
            let printer = printer.clone();
            async move { (i, printer.print(format!("doc {i}")).await) }
        });
        let results =
            within(Duration::from_secs(20), "500 routed calls", futures::future::join_all(calls))
                .await;
        for (i, r) in results {
            assert_eq!(r.unwrap(), format!("A printed doc {i}"));
        }
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_calls == 0).await);
    }

    async fn stream_through_a_peer(h: Harness) {
        let a = printer_peer(h.client(), "A");
        a.client.register_as_peer("printer-1").await.unwrap();
        let caller = h.client();
        let printer = caller.peer("printer-1").controller::<PrinterClient>();
        let stream = printer.count(100).await.unwrap();
        let items: Vec<u64> = within(
            Duration::from_secs(10),
            "a routed stream",
            stream.map(|item| item.unwrap()).collect(),
        )
        .await;
        assert_eq!(items, (0..100).collect::<Vec<_>>());
        // Longer than the window the caller asks for (20 000 small items cost about 1.3 MB
        // of credit against 1 MiB): credit is routed too.
        let stream = printer.count(20_000).await.unwrap();
        let n = within(Duration::from_secs(10), "a long routed stream", stream.count()).await;
        assert_eq!(n, 20_000);
    }

    async fn client_stream_through_a_peer(h: Harness) {
        let a = printer_peer(h.client(), "A");
        a.client.register_as_peer("printer-1").await.unwrap();
        let caller = h.client();
        let printer = caller.peer("printer-1").controller::<PrinterClient>();
        let sum = within(
            Duration::from_secs(20),
            "a routed client stream",
            printer.sum(RpcStream::new(futures::stream::iter(0..10_000u64))),
        )
        .await
        .unwrap();
        assert_eq!(sum, (0..10_000u64).sum::<u64>());
    }

    async fn routed_stream_unsubscribe_and_callee_leaving(h: Harness) {
        let a = printer_peer(h.client(), "A");
        a.client.register_as_peer("printer-1").await.unwrap();
        let caller = h.client();
        let printer = caller.peer("printer-1").controller::<PrinterClient>();

        // The caller unsubscribes: the callee's producer is dropped.
        let mut ticks = printer.ticks(5).await.unwrap();
        for expected in 0..3u64 {
            let item = within(Duration::from_secs(5), "a routed item", ticks.next()).await;
            assert_eq!(item.unwrap().unwrap(), expected);
        }
        drop(ticks);
        assert!(
            eventually(Duration::from_secs(1), || a.counters.dropped.load(SeqCst) == 1).await,
            "the callee's producer was not dropped within 1 s of the unsubscribe"
        );

        // The callee leaves: the caller's stream ends with an error at once.
        let mut ticks = printer.ticks(5).await.unwrap();
        assert_eq!(
            within(Duration::from_secs(5), "an item", ticks.next()).await.unwrap().unwrap(),
            0
        );
        let left = Instant::now();
        a.client.disconnect().await;
        let mut error = None;
        for _ in 0..200 {
            match within(Duration::from_secs(1), "the routed stream's end", ticks.next()).await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    error = Some(e);
                    break;
                }
                None => break,
            }
        }
        let error = error.expect("a routed stream whose callee left ends with an error");
        assert!(
            matches!(error.kind(), ErrorKind::PeerNotFound | ErrorKind::Disconnected),
            "{error}"
        );
        assert!(left.elapsed() < Duration::from_secs(1), "took {:?}", left.elapsed());
        assert!(eventually(Duration::from_secs(1), || a.counters.dropped.load(SeqCst) == 2).await);
        assert!(
            eventually(Duration::from_secs(1), || {
                let s = h.kernel.stats();
                s.active_calls == 0 && s.active_streams == 0
            })
            .await,
            "{:?}",
            h.kernel.stats()
        );
    }

    async fn routed_call_timeout_stops_the_callee(h: Harness) {
        let a = printer_peer(h.client(), "A");
        a.client.register_as_peer("printer-1").await.unwrap();
        let caller = h.client();
        let printer = caller.peer("printer-1").controller::<PrinterClient>();
        let t = Instant::now();
        let err = printer.with_timeout(Duration::from_millis(300)).hold(30_000).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        assert_eq!(a.counters.started.load(SeqCst), 1);
        assert!(
            eventually(Duration::from_secs(1), || a.counters.dropped.load(SeqCst) == 1).await,
            "the callee's handler outlived the caller's deadline"
        );
        assert_eq!(a.counters.finished.load(SeqCst), 0);
        assert_eq!(printer.print("x".into()).await.unwrap(), "A printed x");
    }

    async fn server_to_client_timeout_stops_the_client_handler(h: Harness) {
        let state = state();
        let client = h.client();
        let counters = Arc::new(Counters::default());
        client.register_controller(UiServer::new(UiImpl { counters: counters.clone() }));
        let id = client.controller::<JobsClient>().remember().await.unwrap();
        let kept = state.kept.lock().get(&id).cloned().unwrap();
        let ui = kept.controller::<UiClient>().with_timeout(Duration::from_millis(300));
        let t = Instant::now();
        let err = ui.wait(30_000).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        assert!(
            eventually(Duration::from_secs(1), || counters.dropped.load(SeqCst) == 1).await,
            "the client's handler outlived the server's deadline"
        );
        assert_eq!(counters.finished.load(SeqCst), 0);
        assert_eq!(ui.progress(3).await.unwrap(), "3%");
    }
}

transport_tests! {
    setup = setup_default_policy;

    async fn peers_are_denied_by_default(h: Harness) {
        let a = printer_peer(h.client(), "A");
        let err = a.client.register_as_peer("printer-1").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
        assert_eq!(h.kernel.stats().peers, 0);

        let caller = h.client();
        let err = caller
            .peer("printer-1")
            .controller::<PrinterClient>()
            .print("x".into())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerNotFound, "{err}");
        // Nothing reached the would-be callee.
        assert_eq!(a.sources.lock().len(), 0);
        assert_eq!(a.counters.started.load(SeqCst), 0);
    }
}

/// A memory client and a TCP client of the same kernel call each other as peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_different_transports_reach_each_other() {
    let kernel = setup();
    let server = rpc_tcp::RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(server.serve());

    within(Duration::from_secs(20), "the scenario", async {
        let memory = printer_peer(RpcDirectClient::new(&kernel).clone_client(), "memory");
        let tcp_client = rpc_tcp::RpcTcpClient::connect(addr).await.unwrap();
        let tcp = printer_peer(tcp_client.client().clone(), "tcp");
        memory.client.register_as_peer("on-memory").await.unwrap();
        tcp.client.register_as_peer("on-tcp").await.unwrap();
        assert_eq!(kernel.stats().connections, 2);
        assert_eq!(kernel.stats().peers, 2);

        let from_memory = memory.client.peer("on-tcp").controller::<PrinterClient>();
        let from_tcp = tcp.client.peer("on-memory").controller::<PrinterClient>();
        assert_eq!(from_memory.print("a".into()).await.unwrap(), "tcp printed a");
        assert_eq!(from_tcp.print("b".into()).await.unwrap(), "memory printed b");

        let source = from_memory.source().await.unwrap().unwrap();
        assert_eq!(source.1.as_deref(), Some("on-memory"));
        let source = from_tcp.source().await.unwrap().unwrap();
        assert_eq!(source.1.as_deref(), Some("on-tcp"));

        let items: Vec<u64> =
            from_tcp.count(200).await.unwrap().map(|i| i.unwrap()).collect().await;
        assert_eq!(items, (0..200).collect::<Vec<_>>());
        let sum = from_memory.sum(RpcStream::new(futures::stream::iter(1..=100u64))).await.unwrap();
        assert_eq!(sum, 5050);

        // Concurrent calls both ways.
        let there = (0..100).map(|i| {
            let p = from_memory.clone();
            async move { p.print(format!("{i}")).await.unwrap() == format!("tcp printed {i}") }
        });
        let back = (0..100).map(|i| {
            let p = from_tcp.clone();
            async move { p.print(format!("{i}")).await.unwrap() == format!("memory printed {i}") }
        });
        let (there, back) =
            tokio::join!(futures::future::join_all(there), futures::future::join_all(back));
        assert!(there.into_iter().chain(back).all(|ok| ok));
        drop(tcp_client);
    })
    .await;
    serving.abort();
}
