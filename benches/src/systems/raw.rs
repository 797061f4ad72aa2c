//! The physical baselines: raw tokio TCP with length-prefixed MessagePack, and raw
//! tokio-tungstenite with one MessagePack value per binary message.
//!
//! No framework: the server decodes each request and encodes the answer straight into one
//! output buffer and writes once per batch of input; the client pipelines with a fixed window.
//!
//! Wire (TCP): `u32 length (BE) | u8 op | MessagePack body`; on WebSocket the message is
//! `u8 op | MessagePack body`. Ops: 1 echo `Small`, 2 echo bytes, 3 stream `n` (answered by
//! `n` op-4 frames carrying a `u64`, then one op-5 frame). Ops 6 and 7 are ops 1 and 2 with a
//! `u32` call id (BE) before the body, echoed back before the answer's: the wire of the lean
//! multiplexing client (`lean.rs`), whose answers are matched by id, not by order.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Cfg, Latency, latency_of};
use crate::proto::{Small, payload, small};

const ECHO: u8 = 1;
const BYTES: u8 = 2;
const STREAM: u8 = 3;
const ITEM: u8 = 4;
const END: u8 = 5;
const ID_ECHO: u8 = 6;
const ID_BYTES: u8 = 7;

fn encode_body<T: Serialize + ?Sized>(out: &mut BytesMut, v: &T) {
    rmp_serde::encode::write_named(&mut out.writer(), v).expect("encode");
}

fn encode_frame<T: Serialize + ?Sized>(out: &mut BytesMut, op: u8, v: &T) {
    write_frame(out, op, None, v);
}

/// A frame of the ops that carry a call id (ops 6 and 7, the lean client's).
pub(crate) fn encode_id_frame<T: Serialize + ?Sized>(out: &mut BytesMut, op: u8, id: u32, v: &T) {
    write_frame(out, op, Some(id), v);
}

fn write_frame<T: Serialize + ?Sized>(out: &mut BytesMut, op: u8, id: Option<u32>, v: &T) {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(op);
    if let Some(id) = id {
        out.put_u32(id);
    }
    encode_body(out, v);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Cuts one whole frame off `buf`: (op, body).
pub(crate) fn next_frame(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    buf.advance(4);
    let mut frame = buf.split_to(len);
    let op = frame[0];
    frame.advance(1);
    Some((op, frame))
}

/// Answers one request into `out`; returns how many stream items to produce.
fn answer(op: u8, body: &[u8], out: &mut BytesMut) -> u64 {
    match op {
        ECHO => {
            let s: Small = rmp_serde::from_slice(body).expect("decode small");
            encode_frame(out, ECHO, &s);
            0
        }
        BYTES => {
            let b: &serde_bytes::Bytes = rmp_serde::from_slice(body).expect("decode bytes");
            encode_frame(out, BYTES, b);
            0
        }
        STREAM => rmp_serde::from_slice(body).expect("decode n"),
        ID_ECHO | ID_BYTES => {
            let (id, body) = body.split_at(4);
            let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            if op == ID_ECHO {
                let s: Small = rmp_serde::from_slice(body).expect("decode small");
                encode_id_frame(out, op, id, &s);
            } else {
                let b: &serde_bytes::Bytes = rmp_serde::from_slice(body).expect("decode bytes");
                encode_id_frame(out, op, id, b);
            }
            0
        }
        _ => panic!("raw server: unknown op {op}"),
    }
}

// ---------------------------------------------------------------------------------------
// TCP

pub async fn tcp_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(tcp_conn(stream));
        }
    });
    addr
}

async fn tcp_conn(mut stream: TcpStream) {
    stream.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = stream.split();
    let mut inb = BytesMut::with_capacity(8 << 10);
    let mut out = BytesMut::with_capacity(8 << 10);
    loop {
        inb.reserve(8 << 10);
        match rd.read_buf(&mut inb).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Some((op, body)) = next_frame(&mut inb) {
            let n = answer(op, &body, &mut out);
            if op == STREAM {
                for i in 0..n {
                    encode_frame(&mut out, ITEM, &i);
                    if out.len() >= 64 << 10 {
                        if wr.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
                encode_frame(&mut out, END, &());
            }
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

pub struct RawTcp {
    addr: SocketAddr,
}

impl RawTcp {
    pub fn new(addr: SocketAddr) -> RawTcp {
        RawTcp { addr }
    }

    async fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// One request, one answer, back to back.
    pub async fn unary(&self, cfg: &Cfg) -> Latency {
        let mut s = self.connect().await;
        let req = small();
        let mut out = BytesMut::new();
        let mut inb = BytesMut::with_capacity(8 << 10);
        let mut once = async || {
            out.clear();
            encode_frame(&mut out, ECHO, &req);
            s.write_all(&out).await.unwrap();
            loop {
                if let Some((_, body)) = next_frame(&mut inb) {
                    let r: Small = rmp_serde::from_slice(&body).unwrap();
                    debug_assert_eq!(r, req);
                    return;
                }
                inb.reserve(8 << 10);
                assert!(s.read_buf(&mut inb).await.unwrap() > 0);
            }
        };
        let warm_end = Instant::now() + cfg.warmup;
        while Instant::now() < warm_end {
            once().await;
        }
        let mut samples = Vec::with_capacity(1 << 16);
        let end = Instant::now() + cfg.duration;
        loop {
            let t = Instant::now();
            if t >= end {
                break;
            }
            once().await;
            samples.push(t.elapsed().as_nanos() as u64);
        }
        latency_of(&mut samples)
    }

    /// `k` requests in flight: each answer read lets one more request go (in one write per
    /// batch of answers). Calls per second.
    pub async fn pipelined(&self, k: usize, op: u8, cfg: &Cfg) -> f64 {
        let mut s = self.connect().await;
        let (mut rd, mut wr) = s.split();
        let req = small();
        let data = payload(cfg.payload);
        let encode = |out: &mut BytesMut| match op {
            ECHO => encode_frame(out, ECHO, &req),
            _ => encode_frame(out, BYTES, serde_bytes::Bytes::new(&data)),
        };
        let mut out = BytesMut::new();
        for _ in 0..k {
            encode(&mut out);
        }
        wr.write_all(&out).await.unwrap();
        let mut inb = BytesMut::with_capacity(64 << 10);
        let start = Instant::now();
        let measure_from = start + cfg.warmup;
        let end = measure_from + cfg.duration;
        let (mut count, mut c0, mut t0) = (0u64, None, start);
        loop {
            inb.reserve(64 << 10);
            assert!(rd.read_buf(&mut inb).await.unwrap() > 0);
            out.clear();
            while let Some((rop, body)) = next_frame(&mut inb) {
                match rop {
                    ECHO => {
                        let r: Small = rmp_serde::from_slice(&body).unwrap();
                        debug_assert_eq!(r, req);
                    }
                    _ => {
                        let b: &serde_bytes::Bytes = rmp_serde::from_slice(&body).unwrap();
                        assert_eq!(b.len(), data.len());
                    }
                }
                count += 1;
                encode(&mut out);
            }
            let now = Instant::now();
            if c0.is_none() && now >= measure_from {
                c0 = Some(count);
                t0 = now;
            }
            if now >= end {
                break;
            }
            wr.write_all(&out).await.unwrap();
        }
        (count - c0.unwrap()) as f64 / t0.elapsed().as_secs_f64()
    }

    /// The server pushes `n` items; items per second.
    pub async fn stream(&self, n: u64) -> u64 {
        let mut s = self.connect().await;
        let mut out = BytesMut::new();
        encode_frame(&mut out, STREAM, &n);
        s.write_all(&out).await.unwrap();
        let mut inb = BytesMut::with_capacity(64 << 10);
        let mut got = 0u64;
        loop {
            while let Some((op, body)) = next_frame(&mut inb) {
                match op {
                    ITEM => {
                        let v: u64 = rmp_serde::from_slice(&body).unwrap();
                        debug_assert_eq!(v, got);
                        got += 1;
                    }
                    END => return got,
                    _ => panic!("unexpected op {op}"),
                }
            }
            inb.reserve(64 << 10);
            assert!(s.read_buf(&mut inb).await.unwrap() > 0);
        }
    }

    /// `n` echo calls back to back on one connection.
    pub async fn calls(&self, n: u64) {
        let mut s = self.connect().await;
        let req = small();
        let (mut out, mut inb) = (BytesMut::new(), BytesMut::with_capacity(8 << 10));
        for _ in 0..n {
            out.clear();
            encode_frame(&mut out, ECHO, &req);
            s.write_all(&out).await.unwrap();
            loop {
                if let Some((_, body)) = next_frame(&mut inb) {
                    let r: Small = rmp_serde::from_slice(&body).unwrap();
                    assert_eq!(r.id, req.id);
                    break;
                }
                inb.reserve(8 << 10);
                assert!(s.read_buf(&mut inb).await.unwrap() > 0);
            }
        }
    }

    /// `n` echo calls with 64 in flight, as in `pipelined` but counted instead of timed
    /// (for callgrind).
    pub async fn pipelined_calls(&self, n: u64) {
        let mut s = self.connect().await;
        let (mut rd, mut wr) = s.split();
        let req = small();
        let mut out = BytesMut::new();
        let mut sent = 0u64;
        while sent < n.min(64) {
            encode_frame(&mut out, ECHO, &req);
            sent += 1;
        }
        wr.write_all(&out).await.unwrap();
        let mut inb = BytesMut::with_capacity(64 << 10);
        let mut got = 0u64;
        while got < n {
            inb.reserve(64 << 10);
            assert!(rd.read_buf(&mut inb).await.unwrap() > 0);
            out.clear();
            while let Some((_, body)) = next_frame(&mut inb) {
                let r: Small = rmp_serde::from_slice(&body).unwrap();
                assert_eq!(r.id, req.id);
                got += 1;
                if sent < n {
                    encode_frame(&mut out, ECHO, &req);
                    sent += 1;
                }
            }
            if !out.is_empty() {
                wr.write_all(&out).await.unwrap();
            }
        }
    }

    /// A connection that made one call, kept open (for the idle-memory workload).
    pub async fn idle_connection(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut out = BytesMut::new();
        encode_frame(&mut out, ECHO, &small());
        s.write_all(&out).await.unwrap();
        let mut inb = BytesMut::new();
        while next_frame(&mut inb).is_none() {
            inb.reserve(256);
            assert!(s.read_buf(&mut inb).await.unwrap() > 0);
        }
        s
    }
}

pub const OP_ECHO: u8 = ECHO;
pub const OP_BYTES: u8 = BYTES;
pub const OP_ID_ECHO: u8 = ID_ECHO;
pub const OP_ID_BYTES: u8 = ID_BYTES;

// ---------------------------------------------------------------------------------------
// WebSocket (tokio-tungstenite)

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

fn ws_message<T: Serialize + ?Sized>(op: u8, v: &T) -> Message {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(op);
    encode_body(&mut out, v);
    Message::Binary(out.freeze())
}

/// Answers one message; returns the stream length asked for, if any.
fn ws_answer(msg: &[u8]) -> (Option<Message>, u64) {
    let (op, body) = (msg[0], &msg[1..]);
    match op {
        ECHO => {
            let s: Small = rmp_serde::from_slice(body).expect("decode small");
            (Some(ws_message(ECHO, &s)), 0)
        }
        BYTES => {
            let b: &serde_bytes::Bytes = rmp_serde::from_slice(body).expect("decode bytes");
            (Some(ws_message(BYTES, b)), 0)
        }
        STREAM => (None, rmp_serde::from_slice(body).expect("decode n")),
        _ => panic!("raw ws server: unknown op {op}"),
    }
}

pub async fn ws_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.set_nodelay(true).unwrap();
                if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                    ws_conn(ws).await;
                }
            });
        }
    });
    addr
}

/// Echoes every message; answers to messages that arrived together leave in one flush.
async fn ws_conn(ws: Ws) {
    let (mut tx, mut rx) = ws.split();
    while let Some(Ok(msg)) = rx.next().await {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            if let Message::Binary(data) = msg {
                let (answer, n) = ws_answer(&data);
                if let Some(a) = answer {
                    if tx.feed(a).await.is_err() {
                        return;
                    }
                } else {
                    for i in 0..n {
                        if tx.feed(ws_message(ITEM, &i)).await.is_err() {
                            return;
                        }
                    }
                    if tx.feed(ws_message(END, &())).await.is_err() {
                        return;
                    }
                }
            }
            next = match rx.next().now_or_never() {
                Some(Some(Ok(m))) => Some(m),
                _ => None,
            };
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
}

pub struct RawWs {
    addr: SocketAddr,
}

impl RawWs {
    pub fn new(addr: SocketAddr) -> RawWs {
        RawWs { addr }
    }

    pub async fn connect(addr: SocketAddr) -> Ws {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (ws, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/"), s).await.expect("ws connect");
        ws
    }

    pub async fn unary(&self, cfg: &Cfg) -> Latency {
        let mut ws = Self::connect(self.addr).await;
        let req = small();
        let mut once = async || {
            ws.send(ws_message(ECHO, &req)).await.unwrap();
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    let r: Small = rmp_serde::from_slice(&b[1..]).unwrap();
                    debug_assert_eq!(r, req);
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        let warm_end = Instant::now() + cfg.warmup;
        while Instant::now() < warm_end {
            once().await;
        }
        let mut samples = Vec::with_capacity(1 << 16);
        let end = Instant::now() + cfg.duration;
        loop {
            let t = Instant::now();
            if t >= end {
                break;
            }
            once().await;
            samples.push(t.elapsed().as_nanos() as u64);
        }
        latency_of(&mut samples)
    }

    pub async fn pipelined(&self, k: usize, op: u8, cfg: &Cfg) -> f64 {
        let ws = Self::connect(self.addr).await;
        let (mut tx, mut rx) = ws.split();
        let req = small();
        let data = payload(cfg.payload);
        let make = || match op {
            ECHO => ws_message(ECHO, &req),
            _ => ws_message(BYTES, serde_bytes::Bytes::new(&data)),
        };
        let check = |m: Message| match m {
            Message::Binary(b) if b[0] == ECHO => {
                let r: Small = rmp_serde::from_slice(&b[1..]).unwrap();
                debug_assert_eq!(r, req);
            }
            Message::Binary(b) => {
                let r: &serde_bytes::Bytes = rmp_serde::from_slice(&b[1..]).unwrap();
                assert_eq!(r.len(), data.len());
            }
            other => panic!("unexpected {other:?}"),
        };
        for _ in 0..k {
            tx.feed(make()).await.unwrap();
        }
        tx.flush().await.unwrap();
        let start = Instant::now();
        let measure_from = start + cfg.warmup;
        let end = measure_from + cfg.duration;
        let (mut count, mut c0, mut t0) = (0u64, None, start);
        loop {
            let first = rx.next().await.unwrap().unwrap();
            check(first);
            count += 1;
            tx.feed(make()).await.unwrap();
            while let Some(Some(Ok(m))) = rx.next().now_or_never() {
                check(m);
                count += 1;
                tx.feed(make()).await.unwrap();
            }
            let now = Instant::now();
            if c0.is_none() && now >= measure_from {
                c0 = Some(count);
                t0 = now;
            }
            if now >= end {
                break;
            }
            tx.flush().await.unwrap();
        }
        (count - c0.unwrap()) as f64 / t0.elapsed().as_secs_f64()
    }

    pub async fn stream(&self, n: u64) -> u64 {
        let mut ws = Self::connect(self.addr).await;
        ws.send(ws_message(STREAM, &n)).await.unwrap();
        let mut got = 0;
        while let Some(Ok(Message::Binary(b))) = ws.next().await {
            match b[0] {
                ITEM => {
                    let v: u64 = rmp_serde::from_slice(&b[1..]).unwrap();
                    debug_assert_eq!(v, got);
                    got += 1;
                }
                END => return got,
                op => panic!("unexpected op {op}"),
            }
        }
        panic!("ws stream ended early")
    }

    /// `n` echo calls back to back on one connection.
    pub async fn calls(&self, n: u64) {
        let mut ws = Self::connect(self.addr).await;
        let req = small();
        for _ in 0..n {
            ws.send(ws_message(ECHO, &req)).await.unwrap();
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    let r: Small = rmp_serde::from_slice(&b[1..]).unwrap();
                    assert_eq!(r.id, req.id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// `n` echoes of a `len`-byte payload back to back on one connection.
    pub async fn bytes_calls(&self, n: u64, len: usize) {
        let mut ws = Self::connect(self.addr).await;
        let data = crate::proto::payload(len);
        for _ in 0..n {
            ws.send(ws_message(BYTES, serde_bytes::Bytes::new(&data))).await.unwrap();
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    let r: &serde_bytes::Bytes = rmp_serde::from_slice(&b[1..]).unwrap();
                    assert_eq!(r.len(), len);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    pub async fn idle_connection(addr: SocketAddr) -> Ws {
        let mut ws = Self::connect(addr).await;
        ws.send(ws_message(ECHO, &small())).await.unwrap();
        let _ = ws.next().await.unwrap().unwrap();
        ws
    }
}
