//! ROBUSTNESS.md §8.5 (authentication and authorization, A1–A11) and §8.6 (peer routing and
//! server-to-client calls, P1–P12), against a scripted raw peer on paused time.
//!
//! Not applicable here: A9–A11 (TLS, owned by the TLS tests). `ActionType` (A5) does not
//! exist in this protocol: there is no reflection message, so only the call itself is checked.
//! P4/P5: the route section of a Call carries only the target alias (PROTOCOL.md §11); a
//! client has no source field to forge and no way to address another connection's call ids,
//! so the tests check that extra route fields are ignored and that stray replies reach
//! nobody.

mod robustness_support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use bytes::BytesMut;
use robustness_support::*;
use rpc_core::protocol::frame::Kind;
use rpc_core::protocol::message::{self, GoAwayCode};
use rpc_core::{ErrorKind, Limits, RpcKernel};
use tokio::time::Instant;

fn limits() -> Limits {
    Limits::default()
}

fn register(id: u32, alias: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    message::encode_route_target(&mut body, alias);
    frame_bytes(Kind::PeerRegister, id, None, &body)
}

fn routed(id: u32, route: &[u8], action: &str, args: &impl serde::Serialize) -> Vec<u8> {
    let body = call_body_raw(
        "robust",
        action,
        &rpc_core::protocol::codec::encode_value(args).unwrap(),
        None,
    );
    frame_bytes(Kind::Call, id, Some(route), &body)
}

fn target(alias: &str) -> Vec<u8> {
    let mut route = BytesMut::new();
    message::encode_route_target(&mut route, alias);
    route.to_vec()
}

/// A peer authenticated as `token`, registered as `alias` (if any), serving `robust` (a
/// routed call reaches the callee's own kernel, here the raw peer answers it by hand).
async fn authed(kernel: &RpcKernel, token: &str) -> RawPeer {
    let mut peer = RawPeer::connect(kernel).await;
    peer.send(&auth(1, token)).await;
    let answer = peer.recv_answer().await.unwrap();
    assert_eq!(answer.kind, Kind::Reply, "{answer:?}");
    peer
}

/// A1: a call before authentication gets `Unauthenticated`, no handler runs; a second
/// violation closes.
#[tokio::test(start_paused = true)]
async fn a1_call_before_auth_is_refused_then_closed() {
    let (kernel, counters) = server(limits(), false);
    let mut peer = RawPeer::connect(&kernel).await;
    let answer = peer.call(1, "echo", &("x",)).await;
    assert_eq!(kind_of(&answer), ErrorKind::Unauthenticated);
    peer.send(&call(3, "robust", "echo", &("x",))).await;
    let closed = peer.closed_within(Duration::from_secs(1)).await;
    assert_goaway(&closed, GoAwayCode::Unauthenticated);
    assert_eq!(counters.runs.load(SeqCst), 0);
}

/// A2: 10 000 unauthenticated calls from a peer that never reads: at most one reply, then
/// close; the outbound bytes stay tiny.
#[tokio::test(start_paused = true)]
async fn a2_unauthenticated_flood_gets_one_reply() {
    let (kernel, counters) = server(limits(), false);
    let mut peer = RawPeer::connect_with(&kernel, 16 << 10).await;
    let flood: Vec<u8> =
        (0..10_000u32).flat_map(|i| call(2 * i + 1, "robust", "echo", &("x",))).collect();
    peer.send(&flood[..(15 << 10)]).await;
    let closed = peer.closed_within(Duration::from_secs(1)).await;
    let errors = closed.frames.iter().filter(|f| f.kind == Kind::Error).count();
    assert!(errors <= 1, "{errors} replies");
    assert_goaway(&closed, GoAwayCode::Unauthenticated);
    let bytes: usize = closed.frames.iter().map(|f| f.wire_len()).sum();
    assert!(bytes <= 16 << 10, "{bytes} bytes sent to an unauthenticated peer");
    assert_eq!(counters.runs.load(SeqCst), 0);
}

/// A2 variant: Auth frames are allowed before authentication, so a flood of them each spawn
/// a policy check; they must be bounded (one at a time) like any other pre-auth traffic.
#[tokio::test(start_paused = true)]
async fn a2_auth_flood_is_bounded() {
    let kernel = RpcKernel::new();
    struct Slow;
    impl rpc_core::Security for Slow {
        async fn authenticate(
            &self,
            _t: &rpc_core::Token,
        ) -> Result<rpc_core::Session, rpc_core::RpcError> {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Err(rpc_core::RpcError::unauthenticated("authentication failed"))
        }
        fn allow_anonymous(&self) -> bool {
            false
        }
    }
    kernel.set_security(Slow);
    let mut peer = RawPeer::connect(&kernel).await;
    let flood: Vec<u8> = (0..10_000u32).flat_map(|i| auth(2 * i + 1, "x")).collect();
    peer.send(&flood).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    assert!(tasks < 100, "{tasks} tasks for one unauthenticated connection");
}

/// A3: bad and tampered tokens get the same answer and close the connection.
#[tokio::test(start_paused = true)]
async fn a3_failed_auth_is_vague_and_closes() {
    let (kernel, _) = server(limits(), false);
    let mut messages = Vec::new();
    for token in ["wrong", "alice ", "ALICE", ""] {
        let mut peer = RawPeer::connect(&kernel).await;
        peer.send(&auth(1, token)).await;
        let closed = peer.closed_within(Duration::from_secs(1)).await;
        let error = error_of(closed.frames.iter().find(|f| f.kind == Kind::Error).unwrap());
        assert_eq!(error.kind(), ErrorKind::Unauthenticated);
        messages.push(error.message().to_string());
        assert_goaway(&closed, GoAwayCode::Unauthenticated);
    }
    messages.dedup();
    assert_eq!(messages, vec!["authentication failed".to_string()]);
}

/// A4: a session that expires during the connection (its token's lifetime): at expiry the
/// connection is closed with GoAway `Unauthenticated` "authentication expired", and its
/// open stream ends with it.
#[tokio::test(start_paused = true)]
async fn a4_token_expiry_closes_the_connection() {
    let (kernel, _) = server(limits(), false);
    let mut peer = authed(&kernel, "brief").await;
    // Still valid: a call and an open stream.
    assert_eq!(value_of::<String>(&peer.call(3, "echo", &("before",)).await), "before");
    peer.send(&call(5, "robust", "ticks", &(1_000u64, 1_000_000u64))).await;
    let started = Instant::now();
    let closed = peer.closed_within(Duration::from_secs(3)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed too early: {:?}",
        started.elapsed()
    );
    assert_goaway(&closed, GoAwayCode::Unauthenticated);
    assert_eq!(closed.goaway.as_ref().map(|g| g.reason.as_str()), Some("authentication expired"));
    assert!(tests::eventually(Duration::from_secs(1), || kernel.stats().active_streams == 0).await);
}

/// A5: a session without permission: `AccessDenied`, handler not invoked, kept.
#[tokio::test(start_paused = true)]
async fn a5_forbidden_action_is_denied_and_kept() {
    let (kernel, counters) = server(limits(), false);
    let mut peer = authed(&kernel, "alice").await;
    let answer = peer.call(3, "secret", &rpc_core::NoArgs).await;
    assert_eq!(kind_of(&answer), ErrorKind::AccessDenied);
    assert_eq!(counters.runs.load(SeqCst), 0);
    assert_eq!(value_of::<String>(&peer.call(5, "echo", &("kept",)).await), "kept");
}

/// A6: with `hide_forbidden_actions`, a forbidden action and a missing one get the same
/// error code and message shape.
#[tokio::test(start_paused = true)]
async fn a6_forbidden_and_missing_look_alike_when_hidden() {
    let kernel = RpcKernel::new();
    kernel.register(RobustServer::new(RobustImpl(Default::default())));
    kernel.set_security(Tokens { anonymous: true, hide: true });
    let mut peer = RawPeer::connect(&kernel).await;
    let forbidden = error_of(&peer.call(1, "secret", &rpc_core::NoArgs).await);
    let missing = error_of(&peer.call(3, "secreu", &rpc_core::NoArgs).await);
    assert_eq!(forbidden.kind(), missing.kind());
    assert_eq!(
        forbidden.message().replace("secret", "X"),
        missing.message().replace("secreu", "X")
    );
}

// A6 by default (ROBUSTNESS.md §7.2) does not apply as written: API.md makes hiding
// forbidden actions the policy's choice (`Security::hide_forbidden_actions`, default false),
// and a6_forbidden_and_missing_look_alike_when_hidden covers the behaviour when chosen.

/// A7: a panicking handler and an undeclared error with a path: `Internal` + correlation id,
/// no detail, connection and other calls unaffected.
#[tokio::test(start_paused = true)]
async fn a7_internal_errors_hide_details() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&call(1, "robust", "sleep", &(100u64,))).await;
    for (id, action) in [(3, "panics"), (5, "leaks")] {
        let answer = peer.call(id, action, &rpc_core::NoArgs).await;
        let e = error_of(&answer);
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(e.correlation_id().is_some());
        assert!(!e.message().contains('/') && !e.message().contains(".rs"), "{e}");
    }
    let answer = peer.recv_answer().await.unwrap();
    assert_eq!((answer.id, value_of::<u64>(&answer)), (1, 100));
}

/// A8: re-authentication replaces the session whole; a failed one closes.
#[tokio::test(start_paused = true)]
async fn a8_reauth_replaces_session_and_failure_closes() {
    let (kernel, _) = server(limits(), false);
    let mut peer = authed(&kernel, "alice").await;
    assert_eq!(kind_of(&peer.call(3, "secret", &rpc_core::NoArgs).await), ErrorKind::AccessDenied);
    peer.send(&auth(5, "admin")).await;
    assert_eq!(peer.recv_answer().await.unwrap().kind, Kind::Reply);
    assert_eq!(value_of::<u32>(&peer.call(7, "secret", &rpc_core::NoArgs).await), 42);
    peer.send(&auth(9, "nope")).await;
    let closed = peer.closed_within(Duration::from_secs(1)).await;
    assert_goaway(&closed, GoAwayCode::Unauthenticated);
}

// ---------------------------------------------------------------------------------------
// Peer routing.

/// Answers one routed Call arriving at `callee` (a raw peer) with `value`; returns its frame.
async fn answer_routed(
    callee: &mut RawPeer,
    value: &impl serde::Serialize,
) -> rpc_core::protocol::Frame {
    let call = callee.recv_answer().await.expect("a routed call");
    assert_eq!(call.kind, Kind::Call);
    callee.send(&frame_bytes(Kind::Reply, call.id, None, &enc(value))).await;
    call
}

/// P1: a live alias cannot be taken; its holder still gets the traffic.
#[tokio::test(start_paused = true)]
async fn p1_alias_taken_is_already_registered() {
    let (kernel, _) = server(limits(), false);
    let mut a = authed(&kernel, "alice").await;
    a.send(&register(3, "a1")).await;
    assert_eq!(a.recv_answer().await.unwrap().kind, Kind::Reply);
    let mut b = authed(&kernel, "alice").await;
    b.send(&register(3, "a1")).await;
    assert_eq!(kind_of(&b.recv_answer().await.unwrap()), ErrorKind::AlreadyRegistered);
    b.send(&routed(5, &target("a1"), "echo", &("hi",))).await;
    answer_routed(&mut a, &"from a").await;
    assert_eq!(value_of::<String>(&b.recv_answer().await.unwrap()), "from a");
}

/// P2: the policy denies an alias: `AccessDenied`; the default policy denies every one.
#[tokio::test(start_paused = true)]
async fn p2_denied_alias_is_access_denied() {
    let (kernel, _) = server(limits(), false);
    let mut b = authed(&kernel, "alice").await;
    b.send(&register(3, "y")).await;
    assert_eq!(kind_of(&b.recv_answer().await.unwrap()), ErrorKind::AccessDenied);
    let plain = RpcKernel::new();
    let mut c = RawPeer::connect(&plain).await;
    c.send(&register(1, "anything")).await;
    assert_eq!(kind_of(&c.recv_answer().await.unwrap()), ErrorKind::AccessDenied);
}

/// P3: an alias is released when its connection closes.
#[tokio::test(start_paused = true)]
async fn p3_alias_released_on_disconnect() {
    let (kernel, _) = server(limits(), false);
    let mut a = authed(&kernel, "alice").await;
    a.send(&register(3, "a3")).await;
    assert_eq!(a.recv_answer().await.unwrap().kind, Kind::Reply);
    drop(a);
    assert!(tests::eventually(Duration::from_secs(1), || kernel.stats().peers == 0).await);
    let mut b = authed(&kernel, "alice").await;
    b.send(&register(3, "a3")).await;
    assert_eq!(b.recv_answer().await.unwrap().kind, Kind::Reply);
}

/// P4: the callee sees the caller's true connection id and alias whatever the route holds.
#[tokio::test(start_paused = true)]
async fn p4_source_is_stamped_by_the_server() {
    let (kernel, _) = server(limits(), false);
    let mut b = authed(&kernel, "alice").await;
    b.send(&register(3, "a4")).await;
    assert_eq!(b.recv_answer().await.unwrap().kind, Kind::Reply);
    let mut a = authed(&kernel, "alice").await;
    // A route with extra, forged-looking fields: [alias, connection id, alias].
    let forged = rpc_core::protocol::codec::encode_value(&("a4", 999_999u64, "mallory")).unwrap();
    a.send(&routed(5, &forged, "who", &rpc_core::NoArgs)).await;
    let call = b.recv_answer().await.unwrap();
    let source = message::RouteSource::decode(call.route.as_ref().expect("stamped")).unwrap();
    assert_eq!(source.connection_id, a.conn().id());
    assert_eq!(source.alias, None);
    assert_eq!(source.username.as_deref(), Some("alice"));
}

/// P5: a reply from a third party for a call it does not hold reaches nobody; the real
/// call still completes.
#[tokio::test(start_paused = true)]
async fn p5_stray_replies_reach_nobody() {
    let (kernel, _) = server(limits(), false);
    let mut b = authed(&kernel, "alice").await;
    b.send(&register(3, "a5")).await;
    assert_eq!(b.recv_answer().await.unwrap().kind, Kind::Reply);
    let mut a = authed(&kernel, "alice").await;
    a.send(&routed(5, &target("a5"), "echo", &("x",))).await;
    let call = b.recv_answer().await.unwrap();
    let mut c = authed(&kernel, "alice").await;
    // C guesses B's call id on its own connection (the only place it can write).
    for id in [call.id, 2, 4, 6] {
        c.send(&frame_bytes(Kind::Reply, id, None, &enc(&"forged"))).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    b.send(&frame_bytes(Kind::Reply, call.id, None, &enc(&"real"))).await;
    assert_eq!(value_of::<String>(&a.recv_answer().await.unwrap()), "real");
    assert_eq!(value_of::<String>(&c.call(7, "echo", &("c kept",)).await), "c kept");
}

/// P6: a denied target and a missing one answer the same; the target receives nothing.
#[tokio::test(start_paused = true)]
async fn p6_denied_and_missing_targets_look_alike() {
    let (kernel, _) = server(limits(), false);
    let mut a = authed(&kernel, "alice").await;
    a.send(&routed(3, &target("x-denied"), "echo", &("x",))).await;
    let denied = error_of(&a.recv_answer().await.unwrap());
    a.send(&routed(5, &target("a-missing"), "echo", &("x",))).await;
    let missing = error_of(&a.recv_answer().await.unwrap());
    assert_eq!(denied.kind(), missing.kind());
    assert_eq!(denied.kind(), ErrorKind::PeerNotFound);
}

/// P7: an unknown alias fails at once.
#[tokio::test(start_paused = true)]
async fn p7_unknown_peer_fails_at_once() {
    let (kernel, _) = server(limits(), false);
    let mut a = authed(&kernel, "alice").await;
    let started = Instant::now();
    a.send(&routed(3, &target("a-nobody"), "echo", &("x",))).await;
    assert_eq!(kind_of(&a.recv_answer().await.unwrap()), ErrorKind::PeerNotFound);
    assert!(started.elapsed() < Duration::from_millis(100));
}

/// P8: the callee disconnects mid-call: the caller gets `PeerNotFound` within 1 s and no
/// pending entry remains.
#[tokio::test(start_paused = true)]
async fn p8_callee_disconnect_fails_the_caller() {
    let (kernel, _) = server(limits(), false);
    let mut b = authed(&kernel, "alice").await;
    b.send(&register(3, "a8")).await;
    assert_eq!(b.recv_answer().await.unwrap().kind, Kind::Reply);
    let mut a = authed(&kernel, "alice").await;
    a.send(&routed(5, &target("a8"), "echo", &("x",))).await;
    b.recv_answer().await.unwrap();
    drop(b);
    let answer = a.recv_within(Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(kind_of(&answer), ErrorKind::PeerNotFound);
    assert_eq!(a.conn().calls_in_flight(), (0, 0));
    assert_eq!(kernel.stats().peers, 0);
}

/// P9: the callee stops reading; the caller floods it: the caller gets `Busy` beyond the
/// callee's advertised calls, and the server does not buffer without bound.
#[tokio::test(start_paused = true)]
async fn p9_slow_callee_makes_callers_busy() {
    let (kernel, _) = server(limits(), false);
    let mut b = authed(&kernel, "alice").await; // advertised max_calls: 1000
    b.send(&register(3, "a9")).await;
    assert_eq!(b.recv_answer().await.unwrap().kind, Kind::Reply);
    let mut a = RawPeer::connect_with(&kernel, 8 << 20).await;
    a.send(&auth(1, "alice")).await;
    assert_eq!(a.recv_answer().await.unwrap().kind, Kind::Reply);
    let flood: Vec<u8> =
        (0..10_000u32).flat_map(|i| routed(2 * i + 3, &target("a9"), "echo", &("x",))).collect();
    a.send(&flood).await;
    let mut busy = 0;
    while busy < 100 {
        let f = a.recv_answer().await.expect("answers");
        if kind_of(&f) == ErrorKind::Busy {
            busy += 1;
        }
    }
    // The caller's own call budget (100) bounds what is forwarded.
    assert!(a.conn().calls_in_flight().1 <= 100);
}

/// P10: the same id twice while the first is in flight: protocol error, the callee gets the
/// call once.
#[tokio::test(start_paused = true)]
async fn p10_duplicate_id_in_flight_is_protocol_error() {
    let (kernel, _) = server(limits(), false);
    let mut b = authed(&kernel, "alice").await;
    b.send(&register(3, "a10")).await;
    assert_eq!(b.recv_answer().await.unwrap().kind, Kind::Reply);
    let mut a = authed(&kernel, "alice").await;
    a.send(&routed(5, &target("a10"), "echo", &("x",))).await;
    a.send(&routed(5, &target("a10"), "echo", &("x",))).await;
    assert_eq!(kind_of(&a.recv_answer().await.unwrap()), ErrorKind::Protocol);
    b.recv_answer().await.unwrap();
    assert!(b.recv_within(Duration::from_millis(100)).await.is_err(), "callee got it twice");
    // The local variant.
    a.send(&call(7, "robust", "sleep", &(100u64,))).await;
    a.send(&call(7, "robust", "sleep", &(100u64,))).await;
    assert_eq!(kind_of(&a.recv_answer().await.unwrap()), ErrorKind::Protocol);
}

/// P11: a server→client call the client never answers times out at 30 s; the pending table
/// is empty again.
#[tokio::test(start_paused = true)]
async fn p11_unanswered_server_call_times_out() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&call(1, "robust", "ask_back", &(2u32,))).await;
    let back = peer.recv_answer().await.unwrap();
    assert_eq!(back.kind, Kind::Call);
    assert_eq!(peer.conn().calls_in_flight().0, 1);
    let started = Instant::now();
    let answer = peer.recv_answer().await.unwrap();
    let answer =
        if answer.kind == Kind::Cancel { peer.recv_answer().await.unwrap() } else { answer };
    assert_eq!(kind_of(&answer), ErrorKind::Timeout);
    assert!((Duration::from_secs(29)..=Duration::from_secs(31)).contains(&started.elapsed()));
    assert_eq!(peer.conn().calls_in_flight(), (0, 0));
}

/// A server→client call with a short deadline, made while one with a long deadline is
/// outstanding, still times out at its own deadline (the connection's one deadline timer is
/// moved earlier), and the long one at its own.
#[tokio::test(start_paused = true)]
async fn a_shorter_deadline_registered_later_fires_first() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let started = Instant::now();
    peer.send(&call(1, "robust", "ask_back_within", &(1u32, 20_000u64))).await;
    assert_eq!(peer.recv_answer().await.unwrap().kind, Kind::Call);
    peer.send(&call(3, "robust", "ask_back_within", &(2u32, 1_000u64))).await;
    assert_eq!(peer.recv_answer().await.unwrap().kind, Kind::Call);
    let mut timed_out = Vec::new();
    while timed_out.len() < 2 {
        let f = peer.recv_answer().await.unwrap();
        if f.kind == Kind::Error {
            assert_eq!(kind_of(&f), ErrorKind::Timeout);
            timed_out.push((f.id, started.elapsed()));
        }
    }
    assert_eq!(timed_out[0].0, 3, "the 1 s call first: {timed_out:?}");
    assert!((Duration::from_millis(1_000)..Duration::from_millis(1_100)).contains(&timed_out[0].1));
    assert_eq!(timed_out[1].0, 1);
    assert!((Duration::from_secs(20)..Duration::from_millis(20_100)).contains(&timed_out[1].1));
    assert_eq!(peer.conn().calls_in_flight(), (0, 0));
}

/// P11: the 65th concurrent server→client call is `Busy`.
#[tokio::test(start_paused = true)]
async fn p11_server_call_65_is_busy() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let burst: Vec<u8> =
        (0..65u32).flat_map(|i| call(2 * i + 1, "robust", "ask_back", &(i,))).collect();
    peer.send(&burst).await;
    let mut busy = 0;
    for _ in 0..65 {
        let f = peer.recv_answer().await.unwrap();
        if f.kind == Kind::Error && kind_of(&f) == ErrorKind::Busy {
            busy += 1;
        }
    }
    assert_eq!(busy, 1);
}

/// P12: a reply with an unknown server-call id is ignored, no panic, connection kept.
#[tokio::test(start_paused = true)]
async fn p12_unknown_reply_id_is_ignored() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    for id in [2u32, 4, 1 << 30, u32::MAX - 1] {
        peer.send(&frame_bytes(Kind::Reply, id, None, &enc(&1u32))).await;
        peer.send(&frame_bytes(Kind::Error, id, None, &[0xc1])).await;
    }
    assert_eq!(value_of::<String>(&peer.call(1, "echo", &("kept",)).await), "kept");
}
