//! ROBUSTNESS.md §8.2, MessagePack decoding: D1–D12 (D13, the fuzz corpora, is
//! `fuzz_corpus.rs`; the memory bounds of D2–D4 and D11 are in `robustness_memory.rs`).
//!
//! Not applicable: D10 and D11 as written — our protocol has no composite messages (one
//! frame carries one body, PROTOCOL.md §2). D11's closest analogue, a length inside the frame
//! that runs past its end (the route section's length), is tested below.

mod robustness_support;

use std::time::Duration;

use bytes::BytesMut;
use robustness_support::*;
use rpc_core::protocol::codec;
use rpc_core::protocol::frame::{self, Frame, FrameDecoder, Kind};
use rpc_core::protocol::message::{self, CallHead, GoAway, GoAwayCode, Hello, RouteSource};
use rpc_core::{ErrorKind, Limits, RpcError};

fn limits() -> Limits {
    Limits::default()
}

/// Sends a Call with raw `args` and returns the answer.
async fn call_args(peer: &mut RawPeer, id: u32, action: &str, args: &[u8]) -> Frame {
    peer.send(&call_raw(id, "robust", action, args)).await;
    peer.recv_answer().await.expect("an answer")
}

/// Asserts the connection still serves calls.
async fn assert_kept(peer: &mut RawPeer, id: u32) {
    assert_eq!(value_of::<String>(&peer.call(id, "echo", &("kept",)).await), "kept");
}

/// D1: 100 000 nested arrays (debug build, handler on a 2 MiB tokio worker): a per-call
/// error, no abort, connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_deep_nesting_is_bad_arguments() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let mut args = vec![0x91u8; 100_000];
    args.push(0xc0);
    for (id, action) in [(1, "any"), (3, "echo"), (5, "node")] {
        let answer = call_args(&mut peer, id, action, &args).await;
        assert_eq!(kind_of(&answer), ErrorKind::BadArguments);
        assert_eq!(answer.id, id);
    }
    // Just under the limit (64) decodes; just over does not.
    for (depth, ok) in [(62usize, true), (70, false)] {
        let mut args = vec![0x91u8; depth];
        args.push(0xc0);
        let answer = call_args(&mut peer, 7, "any", &args).await;
        assert_eq!(answer.kind == Kind::Reply, ok, "depth {depth}: {answer:?}");
    }
    assert_eq!(counters.runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_kept(&mut peer, 9).await;
}

/// D2: an array32 declaring 2^32−1 elements with 3 present: `BadArguments`.
#[tokio::test(start_paused = true)]
async fn d2_array32_declared_length_is_bad_arguments() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let mut args = vec![0x91u8];
    args.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    for action in ["list", "any"] {
        assert_eq!(kind_of(&call_args(&mut peer, 1, action, &args).await), ErrorKind::BadArguments);
    }
    assert_eq!(counters.runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_kept(&mut peer, 3).await;
}

/// The D3 bomb: `levels` × `[0x92, 0x00, 0xdd ff ff ff ff]`.
pub fn node_bomb(levels: usize) -> Vec<u8> {
    let mut args = vec![0x91u8];
    for _ in 0..levels {
        args.extend_from_slice(&[0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff]);
    }
    args
}

/// D3: the recursive-type bomb (600 levels, 4.2 KB) into a recursive argument type.
#[tokio::test(start_paused = true)]
async fn d3_recursive_type_bomb_is_bad_arguments() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let answer = call_args(&mut peer, 1, "node", &node_bomb(600)).await;
    assert_eq!(kind_of(&answer), ErrorKind::BadArguments);
    assert_eq!(counters.runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_kept(&mut peer, 3).await;
}

/// D4: bin32 / str32 declaring 4 GiB inside a 1 KiB frame.
#[tokio::test(start_paused = true)]
async fn d4_huge_declared_bin_and_str_are_bad_arguments() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    for (marker, action) in [(0xc6u8, "bytes"), (0xdb, "echo")] {
        let mut args = vec![0x91, marker, 0xff, 0xff, 0xff, 0xff];
        args.extend_from_slice(&[b'x'; 1000]);
        assert_eq!(kind_of(&call_args(&mut peer, 1, action, &args).await), ErrorKind::BadArguments);
    }
    assert_kept(&mut peer, 3).await;
}

/// D5: trailing data. Extra arguments, and bytes after the argument value inside the
/// array, are `BadArguments`; the connection is kept.
#[tokio::test(start_paused = true)]
async fn d5_trailing_data_is_bad_arguments() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let extra = codec::encode_value(&("x", 1u8, 2u8)).unwrap();
    assert_eq!(kind_of(&call_args(&mut peer, 1, "echo", &extra).await), ErrorKind::BadArguments);
    assert_eq!(counters.runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_kept(&mut peer, 3).await;
}

/// D5 (envelope): 3 bytes after the whole Call body must not be ignored silently.
#[tokio::test(start_paused = true)]
async fn d5_trailing_bytes_after_call_body_are_refused() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let args = codec::encode_value(&("x",)).unwrap();
    let mut body = call_body_raw("robust", "echo", &args, None);
    body.extend_from_slice(&[0xff, 0xff, 0xff]);
    peer.send(&frame_bytes(Kind::Call, 1, None, &body)).await;
    let answer = peer.recv_answer().await.unwrap();
    assert_eq!(answer.kind, Kind::Error, "{answer:?}");
    assert!(matches!(kind_of(&answer), ErrorKind::BadArguments | ErrorKind::Protocol));
    assert_eq!(counters.runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_kept(&mut peer, 3).await;
}

/// D6: a string argument with invalid UTF-8.
#[tokio::test(start_paused = true)]
async fn d6_invalid_utf8_is_bad_arguments() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let args = [0x91, 0xa2, 0xc3, 0x28];
    assert_eq!(kind_of(&call_args(&mut peer, 1, "echo", &args).await), ErrorKind::BadArguments);
    assert_eq!(counters.runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_kept(&mut peer, 3).await;
}

/// D7: a map where an array is expected, a wrong scalar type, a struct missing a field:
/// `BadArguments` on the call's id, handler not invoked, connection kept.
#[tokio::test(start_paused = true)]
async fn d7_wrong_types_are_bad_arguments() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let cases: [(&str, Vec<u8>); 4] = [
        ("echo", codec::encode_value(&std::collections::BTreeMap::from([("a", 1)])).unwrap()),
        ("echo", codec::encode_value(&(5u8,)).unwrap()),
        ("list", codec::encode_value(&(std::collections::BTreeMap::from([("a", 1)]),)).unwrap()),
        ("node", codec::encode_value(&(std::collections::BTreeMap::from([("v", 1)]),)).unwrap()),
    ];
    for (i, (action, args)) in cases.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        let answer = call_args(&mut peer, id, action, args).await;
        assert_eq!((answer.id, kind_of(&answer)), (id, ErrorKind::BadArguments), "{action}");
    }
    assert_eq!(counters.runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_kept(&mut peer, 11).await;
}

/// D8: an undecodable envelope gets one error reply on its id; a valid call then succeeds.
#[tokio::test(start_paused = true)]
async fn d8_bad_envelope_answered_and_kept() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&frame_bytes(Kind::Call, 1, None, &[0xc1, 0x00])).await;
    let answer = peer.recv_answer().await.unwrap();
    assert_eq!(answer.id, 1);
    assert!(matches!(kind_of(&answer), ErrorKind::Protocol | ErrorKind::BadArguments));
    assert_kept(&mut peer, 3).await;
}

/// D8: 101 undecodable envelopes exhaust the protocol-error budget (F9).
#[tokio::test(start_paused = true)]
async fn d8_bad_envelopes_count_toward_the_error_budget() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let flood: Vec<u8> =
        (0..200u32).flat_map(|i| frame_bytes(Kind::Call, 2 * i + 1, None, &[0xc1])).collect();
    peer.send(&flood).await;
    let closed = peer.closed_within(Duration::from_secs(1)).await;
    assert_goaway(&closed, GoAwayCode::TooManyErrors);
}

/// D9: 20 concurrent 1 MiB calls of 1 M fixints into a generic value, each held 1 s: calls
/// beyond 16 MiB of raw in-flight bytes get `Busy` at once; the accepted ones complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d9_inflight_byte_budget_refuses_with_busy() {
    let (kernel, _) = server(limits().max_frame_size(2 << 20), true);
    let mut peer = RawPeer::connect_with(&kernel, 4 << 20).await;
    let mut args = vec![0x92, 0xdd];
    args.extend_from_slice(&((1u32 << 20) - 16).to_be_bytes());
    args.extend(std::iter::repeat_n(0x01u8, (1 << 20) - 16));
    args.extend_from_slice(&codec::encode_value(&1000u64).unwrap());
    let frame = call_raw(0, "robust", "hold", &args);
    for i in 0..20u32 {
        let mut f = frame.clone();
        f[6..10].copy_from_slice(&(2 * i + 1).to_be_bytes());
        peer.send(&f).await;
    }
    let mut busy = 0;
    let mut ok = 0;
    for _ in 0..20 {
        let answer = peer.recv_answer().await.unwrap();
        match answer.kind {
            Kind::Reply => ok += 1,
            _ if kind_of(&answer) == ErrorKind::Busy => busy += 1,
            _ => panic!("{answer:?}"),
        }
    }
    assert!(busy >= 4 && ok + busy == 20, "busy {busy}, ok {ok}");
}

/// D11 analogue: a route length running past the end of the frame closes with a protocol
/// error, without buffering anything more.
#[tokio::test(start_paused = true)]
async fn d11_inner_length_past_frame_end_is_protocol_error() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&raw_frame(Kind::Call as u8, frame::FLAG_ROUTED, 1, &[0xff, 0xff, 0x91])).await;
    let closed = peer.closed_within(Duration::from_secs(1)).await;
    assert_goaway(&closed, GoAwayCode::ProtocolError);
}

// ---------------------------------------------------------------------------------------
// D12: properties over 10 000 generated cases (a seeded generator: no extra dependency).

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn string(&mut self) -> String {
        let len = self.below(40) as usize;
        (0..len).map(|_| char::from_u32(0x20 + self.below(0x2000) as u32).unwrap_or('x')).collect()
    }
    fn opt_string(&mut self) -> Option<String> {
        (self.below(2) == 0).then(|| self.string())
    }
    fn bytes(&mut self) -> Vec<u8> {
        let len = self.below(64) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// D12: decode(encode(m)) == m for every message type.
#[test]
fn d12_every_message_round_trips() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..10_000 {
        // Hello grows fields over time: generate one on the wire, then round-trip it.
        let wire = codec::encode_value(&(
            "rpc",
            rng.next() as u32,
            rng.next() as u32,
            rng.next(),
            rng.next() as u32,
            rng.next() as u32,
            rng.next() as u32,
        ))
        .unwrap();
        let h = Hello::decode(&wire).unwrap();
        let mut out = BytesMut::new();
        h.encode(&mut out);
        assert_eq!(Hello::decode(&out).unwrap(), h);

        let g = GoAway { code: GoAwayCode::from_u16(rng.below(14) as u16), reason: rng.string() };
        let mut out = BytesMut::new();
        g.encode(&mut out);
        assert_eq!(GoAway::decode(&out).unwrap(), g);

        let mut e = RpcError::new(ErrorKind::from_code(rng.below(14) as u8), rng.string());
        if let Some(c) = rng.opt_string() {
            e = e.with_correlation_id(c);
        }
        let mut out = BytesMut::new();
        message::encode_error(&mut out, &e);
        assert_eq!(message::decode_error(&out.freeze()).unwrap(), e);

        let s = RouteSource {
            connection_id: rng.next(),
            alias: rng.opt_string(),
            username: rng.opt_string(),
        };
        let mut out = BytesMut::new();
        s.encode(&mut out);
        assert_eq!(RouteSource::decode(&out).unwrap(), s);

        let n = rng.next();
        let mut out = BytesMut::new();
        message::encode_uint(&mut out, n);
        assert_eq!(message::decode_uint(&out).unwrap(), n);

        let (controller, action) = (rng.string(), rng.string());
        let args = codec::encode_value(&(rng.string(), rng.next(), rng.bytes())).unwrap();
        let timeout = (rng.below(2) == 0).then(|| rng.next());
        let window = rng.next() as u32;
        let mut out = BytesMut::new();
        CallHead::encode_start(&mut out, &controller, &action);
        out.extend_from_slice(&args);
        CallHead::encode_tail(&mut out, timeout, window);
        let head = CallHead::decode(&out, 64).unwrap();
        assert_eq!(
            (head.controller, head.action, head.args, head.timeout_ms, head.window),
            (controller.as_bytes(), action.as_bytes(), &args[..], timeout, window)
        );

        let kinds = [Kind::Call, Kind::Reply, Kind::Item, Kind::Chunk, Kind::Ping, Kind::GoAway];
        let f = Frame {
            kind: kinds[rng.below(kinds.len() as u64) as usize],
            id: rng.next() as u32,
            route: (rng.below(2) == 0).then(|| bytes::Bytes::from(rng.bytes())),
            body: bytes::Bytes::from(rng.bytes()),
        };
        let mut out = BytesMut::new();
        f.encode(&mut out);
        let mut d = FrameDecoder::new(1 << 20);
        d.buffer().extend_from_slice(&out);
        assert_eq!(d.next_frame().unwrap(), Some(f));
    }
}

/// Every decoder on `data`: none may panic.
fn decode_everything(data: &[u8]) {
    let bytes = bytes::Bytes::copy_from_slice(data);
    let _ = Hello::decode(data);
    let _ = CallHead::decode(data, 64);
    let _ = message::decode_error(&bytes);
    let _ = GoAway::decode(data);
    let _ = message::decode_uint(data);
    let _ = RouteSource::decode(data);
    let _ = message::decode_route_target(data);
    let _ = codec::prescan(data, 64);
    let _ = codec::decode_value::<serde::de::IgnoredAny>(data);
    let _ = frame::parse_frame(bytes);
}

/// D12: arbitrary bytes through every decoder never panic (10 000 random inputs, plus
/// every 1- and 2-byte input).
#[test]
fn d12_arbitrary_bytes_never_panic() {
    for a in 0..=255u8 {
        decode_everything(&[a]);
        for b in 0..=255u8 {
            decode_everything(&[a, b]);
        }
    }
    let mut rng = Rng(42);
    for _ in 0..10_000 {
        decode_everything(&rng.bytes());
    }
}

/// The ext-marker bug as a connection sees it: a Call whose argument holds a MessagePack
/// ext value must get `BadArguments` (or decode), not kill the connection's read loop.
#[tokio::test(start_paused = true)]
async fn d_ext_marker_in_arguments_is_answered() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    // fixext1: type 1, one data byte.
    peer.send(&call_raw(1, "robust", "any", &[0x91, 0xd4, 0x01, 0x00])).await;
    let answer = peer
        .recv_within(Duration::from_secs(5))
        .await
        .expect("no answer: the read loop died")
        .expect("the connection closed");
    assert!(answer.kind == Kind::Reply || kind_of(&answer) == ErrorKind::BadArguments);
    assert_kept(&mut peer, 3).await;
}

/// The same bug before authentication: an Auth token holding an ext value.
#[tokio::test(start_paused = true)]
async fn d_ext_marker_in_auth_token_closes_cleanly() {
    let (kernel, _) = server(limits(), false);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&frame_bytes(Kind::Auth, 1, None, &[0xd4, 0x01, 0x00])).await;
    let closed = peer.closed_within(Duration::from_secs(1)).await;
    assert_goaway(&closed, GoAwayCode::Unauthenticated);
    assert_baseline(&kernel, Duration::from_secs(1)).await;
}

/// Names that are not UTF-8 (the kernel looks names up as bytes and never checks them):
/// `NotFound`, the name shown lossily, the connection kept.
#[tokio::test(start_paused = true)]
async fn names_that_are_not_utf8_are_not_found() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let args = codec::encode_value(&("x",)).unwrap();
    let names: [(u32, &[u8], &[u8]); 2] =
        [(1, b"rob\xffust", b"echo"), (3, b"robust", b"ec\xc3ho")];
    for (id, controller, action) in names {
        let mut body = BytesMut::new();
        CallHead::encode_start(&mut body, controller, action);
        body.extend_from_slice(&args);
        CallHead::encode_tail(&mut body, None, 0);
        peer.send(&frame_bytes(Kind::Call, id, None, &body)).await;
        let answer = peer.recv_answer().await.expect("an answer");
        let error = error_of(&answer);
        assert_eq!((answer.id, error.kind()), (id, ErrorKind::NotFound), "{error}");
        assert!(error.message().contains('\u{fffd}'), "{error}");
    }
    assert_kept(&mut peer, 5).await;
}
