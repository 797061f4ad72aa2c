//! The bodies of the fuzz targets in `fuzz/`, as plain functions so that an ordinary
//! `cargo test` on stable Rust replays the saved corpora (`tests/tests/fuzz_corpus.rs`) through
//! exactly the code the fuzzers ran. Not part of the API: hidden, unstable, for tests only.
//!
//! | target | function | what it drives |
//! |---|---|---|
//! | `server_bytes` | [`server_bytes`] | a server connection whose socket delivers the input, cut into reads of fuzzer-chosen sizes |
//! | `message_decoders` | [`message_decoders`] | every body decoder, and decode → encode → decode round trips |
//! | `chunk_frames` | [`chunk_frames`] | the frame decoder under arbitrary read boundaries, and a reference chunk reassembler |
//! | `connection_ops` | [`connection_ops`] | a server connection driven by a sequence of structured operations |
//!
//! The async targets expect a current-thread runtime with paused time (tokio's `test-util`):
//! handlers that sleep and the connection's deadlines (auth 10 s, keepalive 90 s, write 10 s)
//! then take no real time, and every run is deterministic. The callers build that runtime;
//! this crate does not depend on `test-util`.
//!
//! Every target checks invariants besides "no panic": what the server writes is well-formed
//! frames, handlers never run before authentication when it is required, and once the
//! connection is gone every gauge (connections, running calls, open streams, peer aliases,
//! live tasks) is back to zero.
//!
//! Inputs are decoded with [`Input`], a small byte reader in the spirit of
//! `arbitrary::Unstructured` (running out of bytes yields zeros). It keeps the corpora
//! replayable without any extra dependency.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde::de::IgnoredAny;
use tokio::sync::mpsc;

use crate::protocol::chunk::{self, Reassembly};
use crate::protocol::codec::{self, ArgsReader};
use crate::protocol::frame::{self, Frame, FrameDecoder, FrameError, Kind};
use crate::protocol::message::{self, CallHead, GoAway, GoAwayCode, Hello, RouteSource};
use crate::transport::{Transport, TransportInfo, TransportReader, TransportWriter};
use crate::{
    ActionFuture, ActionInfo, ActionKind, CallTarget, Controller, ControllerAccess,
    ControllerClient, Event, Limits, Responder, RpcClient, RpcDirectClient, RpcError, RpcKernel,
    RpcStream, Security, Session, Token,
};

// ---------------------------------------------------------------------------------------
// Input decoding.

/// Reads fuzzer bytes as structured values; past the end every read yields zeros.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// A length-prefixed (one byte) byte string.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.bytes(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A xorshift generator: read sizes from a fuzzer-chosen seed without consuming the stream.
fn next_rand(state: &mut u32) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x
}

/// Cuts `stream` into reads of 1 ..= `max_read` bytes chosen by `seed`.
pub fn cut(stream: &[u8], seed: u32, max_read: usize) -> Vec<Bytes> {
    let mut state = seed | 1;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let n = 1 + next_rand(&mut state) as usize % max_read.max(1);
        let end = (pos + n).min(stream.len());
        out.push(Bytes::copy_from_slice(&stream[pos..end]));
        pos = end;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Wire helpers.

/// One frame's wire bytes.
pub fn frame_bytes(kind: Kind, id: u32, route: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let start = frame::begin_frame(&mut out, kind, id, route);
    out.extend_from_slice(body);
    frame::finish_frame(&mut out, start);
    out.to_vec()
}

/// A raw frame with any kind and flags byte (possibly invalid).
pub fn raw_frame(kind: u8, flags: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&((6 + body.len()) as u32).to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The dialer's Hello frame.
pub fn hello_frame(max_calls: u32) -> Vec<u8> {
    // ["rpc", min_version, max_version, connection_id, max_calls, max_streams]
    let body = codec::encode_value(&("rpc", 1u32, 1u32, 0u64, max_calls, 1024u32)).unwrap();
    frame_bytes(Kind::Hello, 0, None, &body)
}

/// Reassemblies a connection holds at once in [`chunk_frames`] (as `Limits::max_reassemblies`).
pub const MAX_REASSEMBLIES: usize = 4;

/// A Call body: `[controller, action, args, timeout_ms, window]` with `args` already encoded.
pub fn call_body(controller: &str, action: &str, args: &[u8], timeout_ms: Option<u64>) -> Vec<u8> {
    let mut body = BytesMut::new();
    CallHead::encode_start(&mut body, controller, action);
    body.extend_from_slice(args);
    CallHead::encode_tail(&mut body, timeout_ms, 0);
    body.to_vec()
}

/// An Auth frame body carrying a string token.
pub fn auth_body(token: &str) -> Vec<u8> {
    codec::encode_value(token).expect("a string encodes")
}

// ---------------------------------------------------------------------------------------
// The server every target talks to.

/// The actions of the `fuzz` controller, by index.
pub const ACTIONS: &[&str] =
    &["echo", "add", "any", "sleep", "count", "sum", "bidi", "callback", "fail", "secret"];

const fn info(name: &'static str, kind: ActionKind) -> ActionInfo {
    ActionInfo { name, groups: &[], data: &[], kind }
}

static FUZZ_ACTIONS: [ActionInfo; 10] = [
    info("echo", ActionKind::Unary),
    info("add", ActionKind::Unary),
    info("any", ActionKind::Unary),
    info("sleep", ActionKind::Unary),
    info("count", ActionKind::ServerStream),
    info("sum", ActionKind::ClientStream),
    info("bidi", ActionKind::Bidi),
    info("callback", ActionKind::Unary),
    info("fail", ActionKind::Unary),
    info("secret", ActionKind::Unary),
];

/// The client-side controller a `callback` call reaches (`back.double`).
struct BackClient(CallTarget);

impl ControllerClient for BackClient {
    const NAME: &'static str = "back";
    fn from_target(target: CallTarget) -> Self {
        BackClient(target)
    }
}

/// The `fuzz` controller: every exchange shape, sleeps, server→client calls, failures.
struct FuzzController {
    runs: Arc<AtomicUsize>,
}

impl Controller for FuzzController {
    fn name(&self) -> &'static str {
        "fuzz"
    }

    fn actions(&self) -> &'static [ActionInfo] {
        &FUZZ_ACTIONS
    }

    fn call(
        &self,
        action: usize,
        args: &[u8],
        responder: Responder,
    ) -> Result<ActionFuture, RpcError> {
        let mut reader = responder.args(args)?;
        let runs = self.runs.clone();
        let counted = move || {
            runs.fetch_add(1, Ordering::SeqCst);
        };
        Ok(match action {
            0 => {
                let text: String = reader.next("text")?;
                reader.finish()?;
                Box::pin(async move {
                    counted();
                    responder.reply_value(&text)
                })
            }
            1 => {
                let a: u64 = reader.next("a")?;
                let b: u64 = reader.next("b")?;
                reader.finish()?;
                Box::pin(async move {
                    counted();
                    responder.reply_value(&a.wrapping_add(b))
                })
            }
            2 => {
                let _: IgnoredAny = reader.next("value")?;
                reader.finish()?;
                Box::pin(async move {
                    counted();
                    responder.reply_value(&0u8)
                })
            }
            3 => {
                let ms: u64 = reader.next("ms")?;
                reader.finish()?;
                Box::pin(async move {
                    counted();
                    tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
                    responder.reply_value(&ms)
                })
            }
            4 => {
                let n: u32 = reader.next("n")?;
                reader.finish()?;
                Box::pin(async move {
                    counted();
                    let items = futures::stream::iter(0..n.min(256));
                    responder.reply_stream(RpcStream::new(items)).await
                })
            }
            5 => {
                reader.finish()?;
                let mut input = responder.arg_stream::<u64>()?;
                Box::pin(async move {
                    counted();
                    let mut total = 0u64;
                    while let Some(item) = input.next().await {
                        match item {
                            Ok(v) => total = total.wrapping_add(v),
                            Err(e) => return responder.reply_error(e),
                        }
                    }
                    responder.reply_value(&total)
                })
            }
            6 => {
                reader.finish()?;
                let input = responder.arg_stream::<u64>()?;
                Box::pin(async move {
                    counted();
                    responder.reply_stream(input).await
                })
            }
            7 => {
                let x: u32 = reader.next("x")?;
                reader.finish()?;
                let conn = responder.context().connection().clone();
                Box::pin(async move {
                    counted();
                    let back = conn.controller::<BackClient>();
                    let result: Result<u32, RpcError> = back
                        .0
                        .with_timeout(Duration::from_secs(5))
                        .call("back", "double", &(x,))
                        .await;
                    responder.reply_result(result)
                })
            }
            8 => {
                reader.finish()?;
                Box::pin(async move {
                    counted();
                    // An undeclared error: the caller must see only `Internal`.
                    responder.reply_error("failed reading /etc/secret.conf".to_string())
                })
            }
            _ => {
                reader.finish()?;
                Box::pin(async move {
                    counted();
                    responder.reply_value("secret")
                })
            }
        })
    }
}

/// The `back` controller a peer client serves (`double`).
struct BackController;

static BACK_ACTIONS: [ActionInfo; 1] = [info("double", ActionKind::Unary)];

impl Controller for BackController {
    fn name(&self) -> &'static str {
        "back"
    }

    fn actions(&self) -> &'static [ActionInfo] {
        &BACK_ACTIONS
    }

    fn call(
        &self,
        _action: usize,
        args: &[u8],
        responder: Responder,
    ) -> Result<ActionFuture, RpcError> {
        let mut reader = responder.args(args)?;
        let x: u32 = reader.next("x")?;
        reader.finish()?;
        Ok(Box::pin(async move { responder.reply_value(&x.wrapping_mul(2)) }))
    }
}

/// Tokens: `"ok"` (user `fuzz`) and `"admin"`; peers: aliases starting with `p` may register,
/// everyone may call every alias but `denied`; `secret` only for `admin`.
struct FuzzSecurity {
    require_auth: bool,
}

impl Security for FuzzSecurity {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        match token.as_str() {
            Some("ok") => Ok(Session::new("fuzz")),
            Some("admin") => Ok(Session::new("admin")),
            _ => Err(RpcError::unauthenticated("authentication failed")),
        }
    }

    async fn has_controller_access(
        &self,
        session: &Session,
        access: &ControllerAccess<'_>,
    ) -> bool {
        access.action() != "secret" || session.username() == "admin"
    }

    async fn is_allowed_to_register_as_peer(&self, _session: &Session, peer_id: &str) -> bool {
        peer_id.starts_with('p')
    }

    async fn is_allowed_to_send_to_peer(&self, _session: &Session, peer_id: &str) -> bool {
        peer_id != "denied"
    }

    fn allow_anonymous(&self) -> bool {
        !self.require_auth
    }
}

/// A kernel serving the `fuzz` controller, with what the targets observe of it.
pub struct FuzzServer {
    /// The kernel.
    pub kernel: RpcKernel,
    /// Handler invocations.
    pub runs: Arc<AtomicUsize>,
    /// Whether any connection authenticated.
    pub authenticated: Arc<AtomicBool>,
}

/// Limits small enough that a fuzzer reaches every one of them.
pub fn fuzz_limits() -> Limits {
    Limits::default()
        .max_frame_size(4 << 10)
        .max_preauth_frame_size(512)
        .max_calls_in_flight(8)
        .max_protocol_errors(10)
        .max_outbound_queue(64 << 10)
        .stream_window(4)
        .result_stream_window(4)
}

/// A server for the targets; with `require_auth`, connections must authenticate first.
pub fn fuzz_server(require_auth: bool, limits: Limits) -> FuzzServer {
    let kernel = RpcKernel::with_limits(limits);
    let runs = Arc::new(AtomicUsize::new(0));
    let authenticated = Arc::new(AtomicBool::new(false));
    kernel.register(FuzzController { runs: runs.clone() });
    kernel.set_security(FuzzSecurity { require_auth });
    let flag = authenticated.clone();
    kernel.on_event(move |event| {
        if let Event::Authenticated { .. } = event {
            flag.store(true, Ordering::SeqCst);
        }
    });
    FuzzServer { kernel, runs, authenticated }
}

// ---------------------------------------------------------------------------------------
// A scripted transport: reads come from a channel, writes are collected.

/// What the scripted peer does once its input is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// Closes its write direction (EOF at the server).
    Close,
    /// Stays connected and silent (the server's deadlines must end the connection).
    Hang,
}

/// The server's side of a scripted connection.
pub struct ScriptedTransport {
    rx: mpsc::UnboundedReceiver<Bytes>,
    at_end: AtEnd,
    out: Arc<Mutex<BytesMut>>,
    stalled: Arc<AtomicBool>,
}

/// The scripted peer's handle: push bytes, read what the server wrote, stop reading.
pub struct Script {
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    out: Arc<Mutex<BytesMut>>,
    stalled: Arc<AtomicBool>,
}

/// A transport and the handle that scripts it.
pub fn scripted(at_end: AtEnd) -> (ScriptedTransport, Script) {
    let (tx, rx) = mpsc::unbounded_channel();
    let out = Arc::new(Mutex::new(BytesMut::new()));
    let stalled = Arc::new(AtomicBool::new(false));
    (
        ScriptedTransport { rx, at_end, out: out.clone(), stalled: stalled.clone() },
        Script { tx: Some(tx), out, stalled },
    )
}

impl Script {
    /// Delivers `bytes` as one read (or several, if the server reserved less room).
    pub fn send(&self, bytes: impl Into<Bytes>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(bytes.into());
        }
    }

    /// Ends the input (what happens next depends on [`AtEnd`]).
    pub fn finish(&mut self) {
        self.tx = None;
    }

    /// Everything the server wrote so far.
    pub fn output(&self) -> Bytes {
        Bytes::copy_from_slice(&self.out.lock().expect("output lock"))
    }

    /// Makes the server's writes block (the peer stopped reading) or flow again.
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }
}

/// The read half of a [`ScriptedTransport`].
pub struct ScriptedReader {
    rx: mpsc::UnboundedReceiver<Bytes>,
    pending: Bytes,
    at_end: AtEnd,
}

/// The write half of a [`ScriptedTransport`].
pub struct ScriptedWriter {
    out: Arc<Mutex<BytesMut>>,
    stalled: Arc<AtomicBool>,
}

impl Transport for ScriptedTransport {
    type Reader = ScriptedReader;
    type Writer = ScriptedWriter;

    fn info(&self) -> TransportInfo {
        TransportInfo { kind: "fuzz", ..TransportInfo::default() }
    }

    fn split(self) -> (ScriptedReader, ScriptedWriter) {
        (
            ScriptedReader { rx: self.rx, pending: Bytes::new(), at_end: self.at_end },
            ScriptedWriter { out: self.out, stalled: self.stalled },
        )
    }
}

impl TransportReader for ScriptedReader {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if self.pending.is_empty() {
            match self.rx.recv().await {
                Some(bytes) => self.pending = bytes,
                None if self.at_end == AtEnd::Close => return Ok(0),
                None => std::future::pending::<()>().await,
            }
        }
        // Like a socket read into the caller's reserved space (tokio's `read_buf` also
        // makes 64 bytes of room when there is none).
        let room = (buf.capacity() - buf.len()).max(64);
        let n = room.min(self.pending.len());
        buf.put_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

impl TransportWriter for ScriptedWriter {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.out.lock().expect("output lock").extend_from_slice(&data);
        Ok(())
    }

    async fn close(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Invariants.

/// Lets every task run until idle, and (paused time) the clock move by `ms`.
pub async fn settle(ms: u64) {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(ms.max(1))).await;
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Waits (up to 60 simulated seconds) until the kernel's gauges and the runtime's live tasks
/// are back to zero; panics with the gauges otherwise.
pub async fn assert_baseline(kernel: &RpcKernel) {
    for _ in 0..600 {
        let s = kernel.stats();
        if s.connections == 0
            && s.active_calls == 0
            && s.active_streams == 0
            && s.peers == 0
            && alive_tasks() == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not back to baseline: {:?}, {} live tasks", kernel.stats(), alive_tasks());
}

/// What the server wrote, parsed: panics unless it is a sequence of well-formed frames.
pub fn parse_output(output: &[u8]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(16 << 20);
    decoder.buffer().extend_from_slice(output);
    let mut frames = Vec::new();
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(e) => panic!("the server wrote a malformed frame: {e}"),
        }
    }
    assert_eq!(decoder.buffered(), 0, "the server wrote a partial frame");
    for f in &frames {
        match f.kind {
            Kind::Error => {
                let e = message::decode_error(&f.body).expect("the server's Error frames decode");
                assert!(
                    !e.message().contains("/etc/secret.conf"),
                    "an undeclared error's detail reached the caller: {e}"
                );
            }
            Kind::GoAway => {
                GoAway::decode(&f.body).expect("the server's GoAway frames decode");
            }
            Kind::Hello => {
                Hello::decode(&f.body).expect("the server's Hello decodes");
            }
            Kind::Reply | Kind::Item | Kind::StreamOpen => {
                codec::prescan(&f.body, 64).expect("the server's values are well-formed");
            }
            _ => {}
        }
    }
    frames
}

// ---------------------------------------------------------------------------------------
// Target 1: bytes as the socket of a server connection.

/// Target `server_bytes`. Input: `flags: u8`, `seed: u16`, then the byte stream.
///
/// Flags: bit 0 requires authentication (token `"ok"`); bit 1 prepends a valid Hello; bit 2
/// keeps the peer connected and silent after the stream (deadlines must close it); bits 3..8
/// set the largest read (1 ..= 32 × 128 bytes), the seed the sizes of the reads.
pub async fn server_bytes(data: &[u8]) {
    {
        let mut input = Input::new(data);
        let flags = input.u8();
        let seed = input.u16() as u32;
        let require_auth = flags & 1 != 0;
        let at_end = if flags & 4 != 0 { AtEnd::Hang } else { AtEnd::Close };
        let max_read = 1 + (flags >> 3) as usize * 128;
        let mut stream = Vec::new();
        if flags & 2 != 0 {
            stream.extend_from_slice(&hello_frame(100));
        }
        stream.extend_from_slice(input.rest());

        let server = fuzz_server(require_auth, fuzz_limits());
        let (transport, mut script) = scripted(at_end);
        for read in cut(&stream, seed, max_read) {
            script.send(read);
        }
        script.finish();
        if let Ok(conn) = server.kernel.accept(transport).await {
            tokio::time::timeout(Duration::from_secs(3600), conn.closed())
                .await
                .expect("the connection outlived every deadline");
            assert_baseline(&server.kernel).await;
            assert_eq!(conn.calls_in_flight(), (0, 0), "pending tables not empty after close");
        } else {
            assert_baseline(&server.kernel).await;
        }
        let frames = parse_output(&script.output());
        if require_auth && !server.authenticated.load(Ordering::SeqCst) {
            assert_eq!(server.runs.load(Ordering::SeqCst), 0, "a handler ran before auth");
            assert!(
                !frames
                    .iter()
                    .any(|f| matches!(f.kind, Kind::Reply | Kind::StreamOpen | Kind::Item)),
                "answers before authentication"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Target 2: every body decoder.

#[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
struct Node {
    v: u8,
    kids: Vec<Node>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
enum Shape {
    Unit,
    Circle { r: f64 },
    Pair(u8, i16),
}

#[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
struct Typed {
    name: String,
    tags: Vec<String>,
    map: std::collections::BTreeMap<String, i64>,
    shape: Option<Shape>,
    wide: u128,
}

fn round_trip_typed<T>(body: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = codec::decode_value::<T>(body) {
        // The crate's MessagePack codec must read and write what `rmp_serde` does. (The
        // same value, encoded: two equal `HashMap`s may iterate in different orders.)
        let theirs: T = rmp_serde::from_slice(body).expect("rmp_serde reads what ours read");
        let again = codec::encode_value(&value).expect("a decoded value re-encodes");
        let their_bytes = rmp_serde::to_vec_named(&value).expect("rmp_serde encodes it");
        assert_eq!(again, their_bytes, "ours and rmp_serde write it differently");
        if theirs != value {
            // NaN floats are not equal to themselves: compare encodings then.
            assert_eq!(codec::encode_value(&theirs).unwrap(), again, "read differently");
        }
        let back = codec::decode_value::<T>(&again).expect("a re-encoded value decodes");
        // NaN floats are not equal to themselves: compare encodings then.
        if back != value {
            assert_eq!(codec::encode_value(&back).unwrap(), again, "round trip changed the value");
        }
    }
}

/// Target `message_decoders`. Input: `selector: u8`, then one body. Decoders must never
/// panic, and whatever decodes must survive encode → decode unchanged.
pub fn message_decoders(data: &[u8]) {
    let mut input = Input::new(data);
    let selector = input.u8();
    let body = input.rest();
    let bytes = Bytes::copy_from_slice(body);
    match selector % 12 {
        0 => {
            if let Ok(h) = Hello::decode(body) {
                let mut out = BytesMut::new();
                h.encode(&mut out);
                assert_eq!(Hello::decode(&out).unwrap(), h);
                let _ = h.negotiate();
            }
        }
        1 => {
            let depth = 1 + (body.first().copied().unwrap_or(0) as usize % 128);
            if let Ok(head) = CallHead::decode(body, depth) {
                codec::prescan(head.args, depth).expect("CallHead args are one prescanned value");
                let mut out = BytesMut::new();
                CallHead::encode_start(&mut out, head.controller, head.action);
                out.extend_from_slice(head.args);
                CallHead::encode_tail(&mut out, head.timeout_ms, head.window);
                let again = CallHead::decode(&out, depth).expect("re-encoded head decodes");
                assert_eq!(again, head);
                // The arguments as generated code reads them.
                if let Ok(mut reader) = ArgsReader::new(head.args, depth) {
                    for i in 0..reader.len().min(64) {
                        if reader.next::<IgnoredAny>(&format!("a{i}")).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        2 => {
            if let Ok(e) = message::decode_error(&bytes) {
                let mut out = BytesMut::new();
                message::encode_error(&mut out, &e);
                assert_eq!(message::decode_error(&out.freeze()).unwrap(), e);
            }
        }
        3 => {
            if let Ok(g) = GoAway::decode(body) {
                let mut out = BytesMut::new();
                g.encode(&mut out);
                let back = GoAway::decode(&out).unwrap();
                assert_eq!(back.reason, g.reason);
                assert_eq!(GoAwayCode::from_u16(back.code as u16), back.code);
            }
        }
        4 => {
            if let Ok(v) = message::decode_uint(body) {
                let mut out = BytesMut::new();
                message::encode_uint(&mut out, v);
                assert_eq!(message::decode_uint(&out).unwrap(), v);
            }
        }
        5 => {
            if let Ok(s) = RouteSource::decode(body) {
                let mut out = BytesMut::new();
                s.encode(&mut out);
                assert_eq!(RouteSource::decode(&out).unwrap(), s);
            }
            if let Ok(alias) = message::decode_route_target(body) {
                let mut out = BytesMut::new();
                message::encode_route_target(&mut out, alias);
                assert_eq!(message::decode_route_target(&out).unwrap(), alias);
            }
        }
        6 => {
            let _ = codec::decode_value::<IgnoredAny>(body);
            let depth = body.len() % 130;
            let _ = codec::value_len(body, depth);
            let _ = codec::prescan(body, depth);
        }
        7 => round_trip_typed::<Node>(body),
        8 => round_trip_typed::<Typed>(body),
        9 => {
            round_trip_typed::<Vec<u64>>(body);
            round_trip_typed::<std::collections::HashMap<u32, u32>>(body);
            round_trip_typed::<(String, Option<bool>, Vec<u8>)>(body);
        }
        10 => {
            let token = Token::from_raw(bytes.clone());
            let _ = token.as_str();
            let _ = token.decode::<(String, u32)>();
            let _ = format!("{token:?}");
        }
        _ => {
            if let Ok(mut reader) = ArgsReader::new(body, 64) {
                let _ = reader.next::<String>("s");
                let _ = reader.next::<Vec<Shape>>("shapes");
                let _ = reader.next::<Node>("node");
                let _ = reader.finish();
            }
        }
    }
    // Whatever the selector: the frame parser on the same bytes.
    let _ = frame::parse_frame(bytes);
}

// ---------------------------------------------------------------------------------------
// Target 3: framing under arbitrary read boundaries, and chunk reassembly.

fn decode_all(decoder: &mut FrameDecoder, reads: &[Bytes]) -> (Vec<Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    for read in reads {
        decoder.reserve_for_read();
        let before = decoder.buffer().capacity();
        decoder.buffer().extend_from_slice(read);
        let _ = before;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        // The receive buffer is bounded by what arrived plus one reservation (amortized
        // growth may double it), whatever a header declares.
        let (len, cap) = (decoder.buffered(), decoder.buffer().capacity());
        assert!(
            cap <= (2 * len).max(len + decoder.reservation()) + (8 << 10),
            "receive buffer of {cap} bytes for {len} received"
        );
    }
    (frames, None)
}

/// Target `chunk_frames`. Input: `limit: u16`, `seed: u16`, `max_read: u8`,
/// `chunk_size: u8`, then a byte stream.
///
/// Framing: the decoder must produce the same frames (and the same error) whatever the read
/// boundaries, keep its buffer bounded whatever a header declares, and round-trip every
/// frame. Chunks: every Chunk frame goes through the core's [`Reassembly`] (per call id, at
/// most [`MAX_REASSEMBLIES`] at once, as a connection does), which must never hold more than
/// it received nor complete a message above the limit or of a kind that cannot be chunked;
/// and every chunkable frame, cut into chunks of a fuzzer-chosen size, must reassemble to
/// itself.
pub fn chunk_frames(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = 6 + input.u16() as usize;
    let seed = input.u16() as u32;
    let max_read = 1 + input.u8() as usize;
    let chunk_size = 1 + input.u8() as usize;
    let stream = input.rest();

    let mut whole = FrameDecoder::new(limit);
    let expected = decode_all(&mut whole, &[Bytes::copy_from_slice(stream)]);
    let mut pieces = FrameDecoder::new(limit);
    pieces.set_reservation(1024);
    let got = decode_all(&mut pieces, &cut(stream, seed, max_read));
    assert_eq!(got, expected, "read boundaries changed the decoded frames");

    let max_message = limit * 4;
    let mut active: Vec<(u32, Reassembly)> = Vec::new();
    for f in &expected.0 {
        assert!(f.wire_len() - 4 <= limit, "a frame above the limit was accepted");
        let mut wire = BytesMut::new();
        f.encode(&mut wire);
        let mut d = FrameDecoder::new(limit);
        d.buffer().extend_from_slice(&wire);
        assert_eq!(d.next_frame().unwrap().as_ref(), Some(f), "frame round trip");

        if f.kind == Kind::Chunk {
            let index = active.iter().position(|(id, _)| *id == f.id);
            let outcome = match index {
                Some(i) => active[i].1.push(f.id, &f.body),
                None if active.len() >= MAX_REASSEMBLIES => continue,
                None => match Reassembly::start(&f.body, max_message) {
                    Ok(r) => {
                        active.push((f.id, r));
                        let last = active.len() - 1;
                        active[last].1.push(f.id, &f.body)
                    }
                    Err(_) => continue,
                },
            };
            let i = active.iter().position(|(id, _)| *id == f.id).expect("just used");
            match outcome {
                Ok(Some(message)) => {
                    assert!(chunk::is_chunkable(message.kind), "{:?} reassembled", message.kind);
                    assert_eq!(message.id, f.id);
                    let (_, r) = active.swap_remove(i);
                    assert!(r.total() <= max_message);
                    // The inner message is the frame without its length prefix and id.
                    let mut out = BytesMut::new();
                    message.encode(&mut out);
                    assert_eq!(out.len() - 8, r.total(), "reassembled size");
                }
                Ok(None) => {
                    let r = &active[i].1;
                    assert!(r.received() < r.total() && r.total() <= max_message);
                }
                Err(_) => {
                    active.swap_remove(i);
                }
            }
        } else if chunk::is_chunkable(f.kind) && f.route.is_none() {
            // Sending side: cut the frame into chunks and put it back together.
            let inner = chunk::inner_message(f.kind, &f.body);
            let mut r: Option<Reassembly> = None;
            let mut done = None;
            for (header, piece) in chunk::chunk_bodies(&inner, chunk_size) {
                let body = [&header[..], &piece[..]].concat();
                let reassembly = match &mut r {
                    Some(r) => r,
                    None => {
                        r.insert(Reassembly::start(&body, usize::MAX).expect("own chunks start"))
                    }
                };
                assert!(done.is_none(), "chunks after the message completed");
                done = reassembly.push(f.id, &body).expect("own chunks are consistent");
            }
            assert_eq!(done.as_ref(), Some(f), "a chunked frame reassembles to itself");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Target 4: the connection state machine, driven by structured operations.

/// One thing the scripted client does.
#[derive(Debug, Clone)]
pub enum Op {
    /// A Call frame for `fuzz.<action>` (or an unknown controller/action).
    Call {
        /// Call id.
        id: u32,
        /// Index into [`ACTIONS`] (past its end: unknown action; `0xff`: unknown controller).
        action: u8,
        /// Encoded argument array.
        args: Vec<u8>,
        /// Requested deadline.
        timeout_ms: Option<u64>,
    },
    /// A routed Call to peer `alias`.
    Routed {
        /// Call id.
        id: u32,
        /// Target alias.
        alias: &'static str,
    },
    /// Any frame of a known kind with a raw body.
    Frame {
        /// Kind.
        kind: Kind,
        /// Call id.
        id: u32,
        /// Body.
        body: Vec<u8>,
    },
    /// Any bytes at all (possibly an invalid frame).
    Raw(Vec<u8>),
    /// A frame answering the server's `n`th call to this client.
    Answer {
        /// Which server call (modulo the calls seen).
        nth: u8,
        /// Reply, Error, StreamOpen, Item, End, Credit.
        kind: Kind,
    },
    /// Lets simulated time pass.
    Wait(u64),
    /// Stops or resumes reading the server's writes.
    Stall(bool),
}

const ALIASES: &[&str] = &["p1", "p2", "x", "denied", "nobody"];
const TOKENS: &[&str] = &["ok", "admin", "bad", ""];

fn pick_id(input: &mut Input<'_>) -> u32 {
    match input.u8() {
        b @ 0..=0xef => (b as u32 % 16) * 2 + 1,
        0xf0..=0xf7 => (input.u8() as u32 % 8) * 2,
        _ => input.u32(),
    }
}

fn enc<T: serde::Serialize>(value: &T) -> Vec<u8> {
    codec::encode_value(value).expect("test values encode")
}

fn pick_args(input: &mut Input<'_>, action: u8) -> Vec<u8> {
    match input.u8() % 8 {
        0 => input.short_bytes().to_vec(),
        1 => codec::encode_value(&()).unwrap(),
        _ => match action as usize % ACTIONS.len() {
            0 => enc(&("text".to_string(),)),
            1 => enc(&(input.u32() as u64, input.u32() as u64)),
            2 => {
                // Nested arrays of a fuzzer-chosen depth inside the argument array.
                let depth = input.u8() as usize;
                let mut v = vec![0x91u8];
                v.extend(std::iter::repeat_n(0x91u8, depth));
                v.push(0xc0);
                v
            }
            3 => enc(&(input.u16() as u64 * 10,)),
            4 => enc(&(input.u8() as u32,)),
            7 => enc(&(input.u8() as u32,)),
            _ => enc(&crate::NoArgs),
        },
    }
}

/// Decodes a sequence of operations from fuzzer bytes.
pub fn decode_ops(input: &mut Input<'_>) -> Vec<Op> {
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < 256 {
        let op = match input.u8() % 16 {
            0..=3 => {
                let id = pick_id(input);
                let action = input.u8();
                let args = pick_args(input, action);
                let timeout_ms = match input.u8() {
                    0..=127 => None,
                    t => Some((t as u64 - 127) * 100),
                };
                Op::Call { id, action, args, timeout_ms }
            }
            4 => Op::Frame { kind: Kind::Cancel, id: pick_id(input), body: Vec::new() },
            5 => {
                let id = pick_id(input);
                match input.u8() % 4 {
                    0 => {
                        // An Items frame of one to four items.
                        let items: Vec<u64> = (0..1 + input.u8() % 4).map(u64::from).collect();
                        Op::Frame {
                            kind: Kind::Items,
                            id,
                            body: codec::encode_value(&items).unwrap(),
                        }
                    }
                    _ => {
                        let body = codec::encode_value(&(input.u8() as u64)).unwrap();
                        Op::Frame { kind: Kind::Item, id, body }
                    }
                }
            }
            6 => Op::Frame { kind: Kind::End, id: pick_id(input), body: Vec::new() },
            7 => {
                let id = pick_id(input);
                let body = codec::encode_value(&(input.u8() as u64)).unwrap();
                Op::Frame { kind: Kind::Credit, id, body }
            }
            8 => {
                let id = pick_id(input);
                let token = TOKENS[input.u8() as usize % TOKENS.len()];
                Op::Frame { kind: Kind::Auth, id, body: auth_body(token) }
            }
            9 => {
                let id = pick_id(input);
                if input.u8().is_multiple_of(3) {
                    Op::Frame { kind: Kind::PeerUnregister, id, body: enc(&()) }
                } else {
                    let mut body = BytesMut::new();
                    let alias = ALIASES[input.u8() as usize % ALIASES.len()];
                    message::encode_route_target(&mut body, alias);
                    Op::Frame { kind: Kind::PeerRegister, id, body: body.to_vec() }
                }
            }
            10 => Op::Routed {
                id: pick_id(input),
                alias: ALIASES[input.u8() as usize % ALIASES.len()],
            },
            11 => {
                let kinds = [
                    Kind::Reply,
                    Kind::Error,
                    Kind::StreamOpen,
                    Kind::Item,
                    Kind::End,
                    Kind::Credit,
                ];
                Op::Answer { nth: input.u8(), kind: kinds[input.u8() as usize % kinds.len()] }
            }
            12 => {
                let kind = Kind::from_u8(input.u8()).unwrap_or(Kind::Ping);
                let id = pick_id(input);
                Op::Frame { kind, id, body: input.short_bytes().to_vec() }
            }
            13 => Op::Raw(input.short_bytes().to_vec()),
            14 => Op::Wait(input.u16() as u64 * 10),
            _ => Op::Stall(input.u8().is_multiple_of(2)),
        };
        ops.push(op);
    }
    ops
}

/// Target `connection_ops`. Input: `flags: u8`, then operations ([`decode_ops`]).
///
/// Flags: bit 0 requires authentication; bit 1 adds a second client registered as peer `p1`
/// (serving `back.double`) so that routed calls have somewhere to go; bit 2 leaves the
/// connection hanging at the end instead of closing it.
pub async fn connection_ops(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let ops = decode_ops(&mut input);
    let require_auth = flags & 1 != 0;
    let server = fuzz_server(require_auth, fuzz_limits());

    let peer: Option<RpcClient> = if flags & 2 != 0 {
        let client = RpcDirectClient::new(&server.kernel);
        let client: RpcClient = (*client).clone();
        client.register_controller(BackController);
        if require_auth {
            client.set_token("ok");
        }
        client.register_as_peer("p1").await.expect("the peer registers");
        Some(client)
    } else {
        None
    };

    let at_end = if flags & 4 != 0 { AtEnd::Hang } else { AtEnd::Close };
    let (transport, mut script) = scripted(at_end);
    script.send(hello_frame(4));
    let accepting = server.kernel.accept(transport);
    let conn = accepting.await.expect("a valid Hello is accepted");

    let mut read = 0usize;
    let mut server_calls: Vec<u32> = Vec::new();
    let mut sent_ids: HashSet<u32> = HashSet::new();
    let mut pings: HashSet<u32> = HashSet::new();
    // Once raw bytes went out, frame boundaries and ids are the fuzzer's: stop checking ids.
    let mut raw_sent = false;
    for op in ops {
        if conn.is_closed() {
            break;
        }
        let bytes = match op {
            Op::Call { id, action, args, timeout_ms } => {
                sent_ids.insert(id);
                let (controller, action) = match action {
                    0xff => ("nope", "echo"),
                    a if (a as usize) < ACTIONS.len() * 2 => {
                        ("fuzz", ACTIONS[a as usize % ACTIONS.len()])
                    }
                    _ => ("fuzz", "nope"),
                };
                frame_bytes(Kind::Call, id, None, &call_body(controller, action, &args, timeout_ms))
            }
            Op::Routed { id, alias } => {
                sent_ids.insert(id);
                let mut route = BytesMut::new();
                message::encode_route_target(&mut route, alias);
                let args = codec::encode_value(&(21u32,)).unwrap();
                frame_bytes(Kind::Call, id, Some(&route), &call_body("back", "double", &args, None))
            }
            Op::Frame { kind, id, body } => {
                sent_ids.insert(id);
                if kind == Kind::Ping {
                    pings.insert(id);
                }
                frame_bytes(kind, id, None, &body)
            }
            Op::Raw(bytes) => {
                // Raw bytes may leave a partial frame: the rest of the script then lands
                // inside it, which is fine (the server must cope), but ids are unknown.
                raw_sent = true;
                bytes
            }
            Op::Answer { nth, kind } => {
                let Some(&id) = server_calls.get(nth as usize % server_calls.len().max(1)) else {
                    continue;
                };
                let body = match kind {
                    Kind::Reply => codec::encode_value(&(nth as u32)).unwrap(),
                    Kind::Error => {
                        let mut out = BytesMut::new();
                        message::encode_error(&mut out, &RpcError::busy("no"));
                        out.to_vec()
                    }
                    Kind::Item | Kind::Credit | Kind::StreamOpen => {
                        codec::encode_value(&1u32).unwrap()
                    }
                    _ => Vec::new(),
                };
                frame_bytes(kind, id, None, &body)
            }
            Op::Wait(ms) => {
                settle(ms).await;
                continue;
            }
            Op::Stall(stalled) => {
                script.stall(stalled);
                continue;
            }
        };
        script.send(bytes);
        settle(1).await;
        // What the server wrote since the last look.
        let output = script.output();
        let new = parse_output(&output[read..]);
        read = output.len();
        for f in new {
            match f.kind {
                Kind::Call => {
                    assert!(
                        f.id.is_multiple_of(2) && f.id != 0,
                        "server call id {} not even",
                        f.id
                    );
                    assert!(!server_calls.contains(&f.id), "server reused call id {}", f.id);
                    server_calls.push(f.id);
                }
                Kind::Pong if !raw_sent => {
                    assert!(pings.contains(&f.id), "Pong {} for no Ping", f.id)
                }
                Kind::Reply | Kind::StreamOpen | Kind::Item | Kind::End | Kind::Error
                    if f.id % 2 == 1 && !raw_sent =>
                {
                    assert!(sent_ids.contains(&f.id), "answer for call {} never made", f.id)
                }
                _ => {}
            }
        }
    }
    script.stall(false);
    script.finish();
    tokio::time::timeout(Duration::from_secs(3600), conn.closed())
        .await
        .expect("the connection outlived every deadline");
    if let Some(peer) = peer {
        peer.disconnect().await;
    }
    assert_baseline(&server.kernel).await;
    assert_eq!(conn.calls_in_flight(), (0, 0), "pending tables not empty after close");
    parse_output(&script.output());
    if require_auth && !server.authenticated.load(Ordering::SeqCst) {
        assert_eq!(server.runs.load(Ordering::SeqCst), 0, "a handler ran before auth");
    }
}
