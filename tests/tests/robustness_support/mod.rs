//! Shared by the `robustness_*` scenario tests (ROBUSTNESS.md §8): a scripted raw peer that
//! writes exact bytes and reads the server's frames, a test controller with counters, a
//! token policy, and baseline checks.
//!
//! The raw peer talks to `kernel.accept` over `tokio::io::duplex` through the same
//! `ByteStream` adapter TCP uses (so the server's reads honour its reservation, like a socket),
//! with no real socket: tests can run on tokio's paused clock.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc_core::protocol::codec;
use rpc_core::protocol::frame::{self, Frame, FrameDecoder, Kind};
use rpc_core::protocol::message::{self, CallHead, GoAway, GoAwayCode};
use rpc_core::transport::{ByteStream, TransportInfo};
use rpc_core::{
    Connection, ControllerAccess, ErrorKind, RpcError, RpcKernel, RpcStream, Security, Session,
    Token, controller,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

// ---------------------------------------------------------------------------------------
// Wire helpers.

/// One frame's bytes.
pub fn frame_bytes(kind: Kind, id: u32, route: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let start = frame::begin_frame(&mut out, kind, id, route);
    out.extend_from_slice(body);
    frame::finish_frame(&mut out, start);
    out.to_vec()
}

/// A frame with any kind byte, flags and body (possibly invalid).
pub fn raw_frame(kind: u8, flags: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((6 + body.len()) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The dialer's Hello: `["rpc", 1, 1, 0, max_calls, max_streams]`.
pub fn hello(max_calls: u32) -> Vec<u8> {
    let body = codec::encode_value(&("rpc", 1u32, 1u32, 0u64, max_calls, 1024u32)).unwrap();
    frame_bytes(Kind::Hello, 0, None, &body)
}

/// A Hello that also announces optional protocol `features` (`message::FEATURE_*`).
pub fn hello_with_features(max_calls: u32, features: u64) -> Vec<u8> {
    let body =
        codec::encode_value(&("rpc", 1u32, 1u32, 0u64, max_calls, 1024u32, 1u32 << 20, features))
            .unwrap();
    frame_bytes(Kind::Hello, 0, None, &body)
}

/// A Call body with already encoded arguments.
pub fn call_body_raw(
    controller: &str,
    action: &str,
    args: &[u8],
    timeout_ms: Option<u64>,
) -> Vec<u8> {
    let mut body = BytesMut::new();
    CallHead::encode_start(&mut body, controller, action);
    body.extend_from_slice(args);
    CallHead::encode_tail(&mut body, timeout_ms, 0);
    body.to_vec()
}

/// A Call frame with already encoded arguments.
pub fn call_raw(id: u32, controller: &str, action: &str, args: &[u8]) -> Vec<u8> {
    frame_bytes(Kind::Call, id, None, &call_body_raw(controller, action, args, None))
}

/// A Call frame.
pub fn call(id: u32, controller: &str, action: &str, args: &impl Serialize) -> Vec<u8> {
    call_raw(id, controller, action, &codec::encode_value(args).unwrap())
}

/// An Auth frame with a string token.
pub fn auth(id: u32, token: &str) -> Vec<u8> {
    frame_bytes(Kind::Auth, id, None, &codec::encode_value(token).unwrap())
}

/// The error an Error frame carries.
pub fn error_of(frame: &Frame) -> RpcError {
    assert_eq!(frame.kind, Kind::Error, "expected an Error frame, got {frame:?}");
    message::decode_error(&frame.body).expect("Error body decodes")
}

/// The value a Reply (or Item) frame carries.
pub fn value_of<T: serde::de::DeserializeOwned>(frame: &Frame) -> T {
    assert!(matches!(frame.kind, Kind::Reply | Kind::Item), "expected a value, got {frame:?}");
    codec::decode_value(&frame.body).expect("value decodes")
}

// ---------------------------------------------------------------------------------------
// The raw peer.

/// A client that writes exact bytes and reads the server's frames.
pub struct RawPeer {
    read: ReadHalf<DuplexStream>,
    write: WriteHalf<DuplexStream>,
    decoder: FrameDecoder,
    /// The server's side of the connection (once the handshake completed).
    pub conn: Option<Connection>,
}

/// The outcome of reading until the server closes.
#[derive(Debug, Default)]
pub struct Closed {
    /// Frames received before EOF.
    pub frames: Vec<Frame>,
    /// The GoAway among them, if any.
    pub goaway: Option<GoAway>,
}

impl RawPeer {
    /// Opens a connection to `kernel` without sending anything; `accept` runs in a task.
    /// `buffer` is the duplex pipe's capacity per direction.
    pub fn open(
        kernel: &RpcKernel,
        buffer: usize,
    ) -> (RawPeer, tokio::task::JoinHandle<Result<Connection, RpcError>>) {
        let (ours, theirs) = tokio::io::duplex(buffer);
        let (r, w) = tokio::io::split(theirs);
        let transport =
            ByteStream::new(r, w, TransportInfo { kind: "raw", ..TransportInfo::default() });
        let kernel = kernel.clone();
        let accept = tokio::spawn(async move { kernel.accept(transport).await });
        let (read, write) = tokio::io::split(ours);
        (RawPeer { read, write, decoder: FrameDecoder::new(64 << 20), conn: None }, accept)
    }

    /// Opens a connection and completes the handshake (Hello both ways).
    pub async fn connect(kernel: &RpcKernel) -> RawPeer {
        RawPeer::connect_with(kernel, 1 << 20).await
    }

    /// As [`RawPeer::connect`] with a duplex buffer of `buffer` bytes per direction.
    pub async fn connect_with(kernel: &RpcKernel, buffer: usize) -> RawPeer {
        RawPeer::connect_saying(kernel, buffer, &hello(1000)).await
    }

    /// As [`RawPeer::connect`], opening with the Hello frame `hello`.
    pub async fn connect_saying(kernel: &RpcKernel, buffer: usize, hello: &[u8]) -> RawPeer {
        let (mut peer, accept) = RawPeer::open(kernel, buffer);
        peer.send(hello).await;
        let conn = accept.await.expect("accept task").expect("handshake");
        let first = peer.recv().await.expect("server Hello");
        assert_eq!(first.kind, Kind::Hello);
        peer.conn = Some(conn);
        peer
    }

    /// The server's connection.
    pub fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("connected")
    }

    /// Writes `bytes` (ignores a closed pipe: the server may have closed first).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.write.write_all(bytes).await;
        let _ = self.write.flush().await;
    }

    /// Closes the write direction (FIN).
    pub async fn finish(&mut self) {
        let _ = self.write.shutdown().await;
    }

    /// The next frame, or `None` at EOF.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("the server wrote a malformed frame: {e}"),
            }
            let mut buf = [0u8; 16 << 10];
            match self.read.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.decoder.buffer().extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The next frame within `d`; `Err` if none came in time, `Ok(None)` at EOF.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Frame>, ()> {
        tokio::time::timeout(d, self.recv()).await.map_err(|_| ())
    }

    /// The next frame that is not a Ping (answering none), or `None` at EOF.
    pub async fn recv_answer(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await {
                Some(f) if f.kind == Kind::Ping => continue,
                other => return other,
            }
        }
    }

    /// Reads until EOF.
    pub async fn until_closed(&mut self) -> Closed {
        let mut closed = Closed::default();
        while let Some(f) = self.recv().await {
            if f.kind == Kind::GoAway {
                closed.goaway = Some(GoAway::decode(&f.body).expect("GoAway decodes"));
            }
            closed.frames.push(f);
        }
        closed
    }

    /// Reads until EOF within `d`; panics if the server keeps the connection open.
    pub async fn closed_within(&mut self, d: Duration) -> Closed {
        tokio::time::timeout(d, self.until_closed())
            .await
            .unwrap_or_else(|_| panic!("the server did not close the connection within {d:?}"))
    }

    /// Sends a call and returns its answer (the next non-Ping frame).
    pub async fn call(&mut self, id: u32, action: &str, args: &impl Serialize) -> Frame {
        self.send(&call(id, "robust", action, args)).await;
        self.recv_answer().await.expect("an answer")
    }
}

/// Asserts that the server closed with GoAway `code`.
pub fn assert_goaway(closed: &Closed, code: GoAwayCode) {
    let goaway = closed.goaway.as_ref().unwrap_or_else(|| panic!("no GoAway in {closed:?}"));
    assert_eq!(goaway.code, code, "GoAway {goaway:?}");
}

// ---------------------------------------------------------------------------------------
// The server under test.

/// Counters the test controller keeps.
#[derive(Default)]
pub struct Counters {
    /// Handler invocations (any action).
    pub runs: AtomicUsize,
    /// Handlers running now.
    pub running: AtomicUsize,
    /// Highest `running` seen.
    pub max_running: AtomicUsize,
    /// Stream items produced.
    pub produced: AtomicUsize,
}

/// Decrements `running` when a handler's future ends however it ends.
struct Running(Arc<Counters>);

impl Running {
    fn start(c: &Arc<Counters>) -> Running {
        c.runs.fetch_add(1, SeqCst);
        let now = c.running.fetch_add(1, SeqCst) + 1;
        c.max_running.fetch_max(now, SeqCst);
        Running(c.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

/// A generic MessagePack value (what `rmpv::Value` is), decoded with `deserialize_any`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Nil => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i128(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Bin(v) => s.serialize_bytes(v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Nil)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Nil)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Int(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_string()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
                Ok(Value::Bin(v.to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Value, A::Error> {
                // As a hand-written visitor would: trusting the declared length (capped the
                // way serde caps its own collections).
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A nested value for the recursive-type bomb (D3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub v: u8,
    pub kids: Vec<Node>,
}

#[controller("robust")]
pub trait Robust {
    async fn echo(&self, text: String) -> String;
    async fn add(&self, a: u64, b: u64) -> u64;
    async fn sleep(&self, ms: u64) -> u64;
    /// Takes any value (generic, like `rmpv::Value`).
    async fn any(&self, value: Value) -> u32;
    /// Holds a generic value for `ms` before answering.
    async fn hold(&self, value: Value, ms: u64) -> u32;
    async fn bytes(&self, data: serde_bytes::ByteBuf) -> u64;
    async fn node(&self, node: Node) -> u32;
    async fn list(&self, items: Vec<u64>) -> u64;
    /// Items every `every_ms`, up to `n`.
    async fn ticks(&self, n: u64, every_ms: u64) -> RpcStream<u64>;
    /// Big items as fast as credit allows.
    async fn blobs(&self, n: u64, size: u32) -> RpcStream<serde_bytes::ByteBuf>;
    async fn panics(&self) -> u32;
    /// An undeclared failure whose text holds a file path.
    async fn leaks(&self) -> Result<u32, std::io::Error>;
    #[action(group = "secret")]
    async fn secret(&self) -> u32;
    /// Calls the client's `back.double(x)` (server→client call, default deadline).
    async fn ask_back(&self, ctx: &rpc_core::Context, x: u32) -> Result<u32, RpcError>;
    /// `ask_back` with a deadline of `ms` for the server→client call.
    async fn ask_back_within(
        &self,
        ctx: &rpc_core::Context,
        x: u32,
        ms: u64,
    ) -> Result<u32, RpcError>;
    /// Who routed this call here, as the server stamped it.
    async fn who(&self, ctx: &rpc_core::Context) -> (u64, Option<String>);
}

/// What a client serves to the server (and to peers).
#[controller("back")]
pub trait Back {
    async fn double(&self, x: u32) -> u32;
}

/// The `back` controller.
pub struct BackImpl;

impl Back for BackImpl {
    async fn double(&self, x: u32) -> u32 {
        x * 2
    }
}

/// The `robust` controller.
pub struct RobustImpl(pub Arc<Counters>);

impl Robust for RobustImpl {
    async fn echo(&self, text: String) -> String {
        let _r = Running::start(&self.0);
        text
    }

    async fn add(&self, a: u64, b: u64) -> u64 {
        let _r = Running::start(&self.0);
        a.wrapping_add(b)
    }

    async fn sleep(&self, ms: u64) -> u64 {
        let _r = Running::start(&self.0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    async fn any(&self, _value: Value) -> u32 {
        let _r = Running::start(&self.0);
        1
    }

    async fn hold(&self, value: Value, ms: u64) -> u32 {
        let _r = Running::start(&self.0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        drop(value);
        1
    }

    async fn bytes(&self, data: serde_bytes::ByteBuf) -> u64 {
        let _r = Running::start(&self.0);
        data.len() as u64
    }

    async fn node(&self, node: Node) -> u32 {
        let _r = Running::start(&self.0);
        node.kids.len() as u32
    }

    async fn list(&self, items: Vec<u64>) -> u64 {
        let _r = Running::start(&self.0);
        items.len() as u64
    }

    async fn ticks(&self, n: u64, every_ms: u64) -> RpcStream<u64> {
        self.0.runs.fetch_add(1, SeqCst);
        let counters = self.0.clone();
        RpcStream::new(async_stream::stream! {
            for i in 0..n {
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
                counters.produced.fetch_add(1, SeqCst);
                yield i;
            }
        })
    }

    async fn blobs(&self, n: u64, size: u32) -> RpcStream<serde_bytes::ByteBuf> {
        self.0.runs.fetch_add(1, SeqCst);
        let counters = self.0.clone();
        RpcStream::new(async_stream::stream! {
            for _ in 0..n {
                counters.produced.fetch_add(1, SeqCst);
                yield serde_bytes::ByteBuf::from(vec![7u8; size as usize]);
            }
        })
    }

    async fn panics(&self) -> u32 {
        let _r = Running::start(&self.0);
        panic!("handler exploded in /home/build/src/secret.rs:42")
    }

    async fn leaks(&self) -> Result<u32, std::io::Error> {
        let _r = Running::start(&self.0);
        Err(std::io::Error::other("cannot open /etc/app/credentials.toml"))
    }

    async fn secret(&self) -> u32 {
        let _r = Running::start(&self.0);
        42
    }

    async fn ask_back(&self, ctx: &rpc_core::Context, x: u32) -> Result<u32, RpcError> {
        let _r = Running::start(&self.0);
        ctx.connection().controller::<BackClient>().double(x).await
    }

    async fn ask_back_within(
        &self,
        ctx: &rpc_core::Context,
        x: u32,
        ms: u64,
    ) -> Result<u32, RpcError> {
        let _r = Running::start(&self.0);
        let back = ctx.connection().controller::<BackClient>();
        back.with_timeout(std::time::Duration::from_millis(ms)).double(x).await
    }

    async fn who(&self, ctx: &rpc_core::Context) -> (u64, Option<String>) {
        let _r = Running::start(&self.0);
        match ctx.peer_source() {
            Some(s) => (s.connection_id, s.alias.clone()),
            None => (0, None),
        }
    }
}

/// Tokens `"alice"`, `"admin"`; peers: `alice` may register aliases starting with `a`,
/// anyone may call aliases starting with `a`; group `secret` only for `admin`.
pub struct Tokens {
    pub anonymous: bool,
    /// Answer forbidden actions as unknown ones.
    pub hide: bool,
}

impl Security for Tokens {
    async fn authenticate(&self, token: &Token) -> Result<Session, RpcError> {
        match token.as_str() {
            Some("alice") => Ok(Session::new("alice")),
            Some("admin") => Ok(Session::new("admin")),
            // A token that expires two seconds after authenticating (A4).
            Some("brief") => {
                Ok(Session::new("brief").expires_in(std::time::Duration::from_secs(2)))
            }
            _ => Err(RpcError::unauthenticated("authentication failed")),
        }
    }

    async fn has_controller_access(
        &self,
        session: &Session,
        access: &ControllerAccess<'_>,
    ) -> bool {
        !access.groups().contains(&"secret") || session.username() == "admin"
    }

    async fn is_allowed_to_register_as_peer(&self, session: &Session, peer_id: &str) -> bool {
        !session.is_anonymous() && peer_id.starts_with('a')
    }

    async fn is_allowed_to_send_to_peer(&self, _session: &Session, peer_id: &str) -> bool {
        peer_id.starts_with('a')
    }

    fn allow_anonymous(&self) -> bool {
        self.anonymous
    }

    fn hide_forbidden_actions(&self) -> bool {
        self.hide
    }
}

/// A kernel serving `robust` with `limits`; `anonymous = false` requires authentication.
pub fn server(limits: rpc_core::Limits, anonymous: bool) -> (RpcKernel, Arc<Counters>) {
    let kernel = RpcKernel::with_limits(limits);
    let counters = Arc::new(Counters::default());
    kernel.register(RobustServer::new(RobustImpl(counters.clone())));
    kernel.set_security(Tokens { anonymous, hide: false });
    (kernel, counters)
}

/// Waits (up to `within`) until the kernel has no connection, call, stream or peer alias.
pub async fn assert_baseline(kernel: &RpcKernel, within: Duration) {
    let ok = tests::eventually(within, || {
        let s = kernel.stats();
        s.connections == 0 && s.active_calls == 0 && s.active_streams == 0 && s.peers == 0
    })
    .await;
    assert!(ok, "not back to baseline within {within:?}: {:?}", kernel.stats());
}

/// The error kind of an Error frame.
pub fn kind_of(frame: &Frame) -> ErrorKind {
    error_of(frame).kind()
}

/// A body-less frame of a kind.
pub fn bare(kind: Kind, id: u32) -> Vec<u8> {
    frame_bytes(kind, id, None, &[])
}

/// Bytes of a value.
pub fn enc(value: &impl Serialize) -> Bytes {
    Bytes::from(codec::encode_value(value).unwrap())
}
