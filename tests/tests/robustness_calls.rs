//! ROBUSTNESS.md §8.4, concurrency, streaming, chunking and slow consumers (C1–C4, S1–S10),
//! and §8.7, faults and lifecycle (N1–N6), against a scripted raw peer on paused time.
//!
//! Scenario notes:
//! - S2 as written (`NotSubscribed` on a second unsubscribe) does not apply: a subscription
//!   is a streaming call and unsubscribing is Cancel, which PROTOCOL.md §8.4 makes
//!   idempotent (a Cancel for an id with nothing running is ignored). The test checks that.
//! - S5 has no topics in this framework (no broadcast primitive); approximated by many
//!   connections streaming at once, one of them stalled.
//! - N1–N3 and N6 name turmoil (simulated network partitions, latency, packet loss). It is
//!   not a dependency; what they check is approximated on the in-process pipe: N1 by a peer
//!   that goes silent (keepalive must detect it), N3 by the fuzz target `connection_ops`
//!   (every call ends or the connection closes, no hang), N6 by a fresh connection that must
//!   authenticate and register again. N2 (a 20 s stall below the keepalive window) is
//!   tested as a 20 s pause of the peer.

mod robustness_support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use robustness_support::*;
use rpc_core::protocol::codec;
use rpc_core::protocol::frame::Kind;
use rpc_core::protocol::message::{self, GoAwayCode};
use rpc_core::{ErrorKind, Limits};
use tokio::time::Instant;

fn limits() -> Limits {
    Limits::default()
}

fn credit(id: u32, n: u64) -> Vec<u8> {
    frame_bytes(Kind::Credit, id, None, &enc(&n))
}

/// C1: 101 calls at once to a 5 s handler: 100 complete, the 101st gets `Busy` at once.
#[tokio::test(start_paused = true)]
async fn c1_call_101_is_busy_at_once() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let burst: Vec<u8> =
        (0..101u32).flat_map(|i| call(2 * i + 1, "robust", "sleep", &(5000u64,))).collect();
    let started = Instant::now();
    peer.send(&burst).await;
    let first = peer.recv_answer().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!((first.id, kind_of(&first)), (201, ErrorKind::Busy));
    let mut done = 0;
    while done < 100 {
        let answer = peer.recv_answer().await.unwrap();
        assert_eq!(answer.kind, Kind::Reply);
        done += 1;
    }
    assert_eq!(counters.max_running.load(SeqCst), 100);
    assert_eq!(value_of::<String>(&peer.call(203, "echo", &("kept",)).await), "kept");
}

/// C2: with a limit of 1, a cancelled call keeps its slot until its handler has ended: the
/// next call, sent with the Cancel, is `Busy`; retried afterwards it succeeds.
#[tokio::test(start_paused = true)]
async fn c2_cancel_does_not_free_the_slot_early() {
    let (kernel, counters) = server(limits().max_calls_in_flight(1), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&call(1, "robust", "sleep", &(2000u64,))).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut both = bare(Kind::Cancel, 1);
    both.extend(call(3, "robust", "echo", &("b",)));
    peer.send(&both).await;
    let answer = peer.recv_answer().await.unwrap();
    assert_eq!((answer.id, kind_of(&answer)), (3, ErrorKind::Busy));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(value_of::<String>(&peer.call(5, "echo", &("b",)).await), "b");
    assert!(counters.max_running.load(SeqCst) <= 1);
}

/// C3: 10 000 call + cancel pairs: never more than 100 handlers running, nothing left over.
#[tokio::test(start_paused = true)]
async fn c3_rapid_reset_stays_bounded() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    for batch in 0..100u32 {
        let bytes: Vec<u8> = (0..100u32)
            .flat_map(|i| {
                let id = 2 * (batch * 100 + i) + 1;
                let mut v = call(id, "robust", "sleep", &(10_000u64,));
                v.extend(bare(Kind::Cancel, id));
                v
            })
            .collect();
        peer.send(&bytes).await;
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(counters.max_running.load(SeqCst) <= 100);
    assert!(tests::eventually(Duration::from_secs(1), || kernel.stats().active_calls == 0).await);
}

/// C3: more than 1024 cancels of unanswered calls close the connection.
#[tokio::test(start_paused = true)]

async fn c3_rapid_reset_closes_after_1024_cancels() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let bytes: Vec<u8> = (0..2000u32)
        .flat_map(|i| {
            let mut v = call(2 * i + 1, "robust", "sleep", &(10_000u64,));
            v.extend(bare(Kind::Cancel, 2 * i + 1));
            v
        })
        .collect();
    peer.send(&bytes).await;
    let closed = peer.closed_within(Duration::from_secs(1)).await;
    assert!(closed.goaway.is_some());
}

/// C4: 1025 open streams: the 1025th is `Busy`; ending one frees a slot.
#[tokio::test(start_paused = true)]
async fn c4_stream_1025_is_busy() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect_with(&kernel, 8 << 20).await;
    let burst: Vec<u8> = (0..1025u32)
        .flat_map(|i| call(2 * i + 1, "robust", "ticks", &(1_000_000u64, 60_000u64)))
        .collect();
    peer.send(&burst).await;
    let mut opened = 0;
    let mut busy = Vec::new();
    while opened + busy.len() < 1025 {
        let f = peer.recv_answer().await.unwrap();
        match f.kind {
            Kind::StreamOpen => opened += 1,
            Kind::Error => busy.push((f.id, kind_of(&f))),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(opened, 1024);
    assert_eq!(busy, vec![(2049, ErrorKind::Busy)]);
    peer.send(&bare(Kind::Cancel, 1)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    peer.send(&call(2051, "robust", "ticks", &(1u64, 1u64))).await;
    loop {
        let f = peer.recv_answer().await.unwrap();
        if f.id == 2051 {
            assert_eq!(f.kind, Kind::StreamOpen);
            break;
        }
    }
}

/// S1: a stream producing 1 item/ms stops within 100 ms of the Cancel; no item is produced
/// after that.
#[tokio::test(start_paused = true)]
async fn s1_unsubscribe_stops_the_producer() {
    let (kernel, counters) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&call(1, "robust", "ticks", &(1_000_000u64, 1u64))).await;
    peer.send(&credit(1, 1 << 20)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    peer.send(&bare(Kind::Cancel, 1)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let produced = counters.produced.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counters.produced.load(SeqCst), produced);
    assert!(tests::eventually(Duration::from_secs(1), || kernel.stats().active_streams == 0).await);
}

/// S2: unsubscribing twice, or an unknown id, is ignored; the connection is kept.
#[tokio::test(start_paused = true)]
async fn s2_double_and_unknown_unsubscribe_are_harmless() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&call(1, "robust", "ticks", &(1_000_000u64, 10u64))).await;
    assert_eq!(peer.recv_answer().await.unwrap().kind, Kind::StreamOpen);
    for id in [1, 1, 999] {
        peer.send(&bare(Kind::Cancel, id)).await;
    }
    assert_eq!(value_of::<String>(&peer.call(3, "echo", &("kept",)).await), "kept");
}

/// S3: 100 streams open; the client drops the connection: every producer ends within 1 s.
#[tokio::test(start_paused = true)]
async fn s3_disconnect_ends_every_producer() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let burst: Vec<u8> = (0..100u32)
        .flat_map(|i| call(2 * i + 1, "robust", "ticks", &(1_000_000u64, 5u64)))
        .collect();
    peer.send(&burst).await;
    assert!(
        tests::eventually(Duration::from_secs(1), || kernel.stats().active_streams == 100).await
    );
    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    assert!(tasks >= 100);
    drop(peer);
    assert_baseline(&kernel, Duration::from_secs(1)).await;
    assert!(
        tests::eventually(Duration::from_secs(1), || {
            tokio::runtime::Handle::current().metrics().num_alive_tasks() == 0
        })
        .await
    );
}

/// S4: a client that grants credit but stops reading: the connection is closed (write
/// deadline 10 s or the 8 MiB queue), other connections keep streaming.
#[tokio::test(start_paused = true)]
async fn s4_slow_consumer_is_closed() {
    let (kernel, _) = server(limits(), true);
    let mut other = RawPeer::connect(&kernel).await;
    let mut stalled = RawPeer::connect_with(&kernel, 64 << 10).await;
    stalled.send(&call(1, "robust", "blobs", &(1_000_000u64, 1024u32))).await;
    stalled.send(&credit(1, 1 << 20)).await;
    let started = Instant::now();
    let conn = stalled.conn().clone();
    let closed_at = async {
        conn.closed().await;
        started.elapsed()
    };
    let other_side = async {
        other.send(&call(1, "robust", "ticks", &(100u64, 10u64))).await;
        other.send(&credit(1, 1000)).await;
        let mut items = 0;
        while let Some(f) = other.recv_answer().await {
            match f.kind {
                Kind::Item => items += 1,
                Kind::End => break,
                _ => {}
            }
        }
        items
    };
    let (elapsed, items) = tokio::join!(closed_at, other_side);
    assert!(elapsed <= Duration::from_secs(11), "closed after {elapsed:?}");
    assert_eq!(items, 100);
    assert!(tests::eventually(Duration::from_secs(1), || kernel.stats().connections == 1).await);
}

/// S5 (approximation): 50 connections stream at once, one of them stalled: the 49 get
/// every item in order.
#[tokio::test(start_paused = true)]
async fn s5_one_stalled_subscriber_does_not_slow_the_others() {
    let (kernel, _) = server(limits(), true);
    let mut stalled = RawPeer::connect_with(&kernel, 16 << 10).await;
    stalled.send(&call(1, "robust", "blobs", &(100_000u64, 1024u32))).await;
    stalled.send(&credit(1, 1 << 20)).await;
    let mut peers = Vec::new();
    for _ in 0..49 {
        let mut p = RawPeer::connect(&kernel).await;
        p.send(&call(1, "robust", "ticks", &(200u64, 1u64))).await;
        p.send(&credit(1, 1000)).await;
        peers.push(p);
    }
    let started = Instant::now();
    for p in &mut peers {
        let mut next = 0u64;
        while let Some(f) = p.recv_answer().await {
            match f.kind {
                Kind::Item => {
                    assert_eq!(value_of::<u64>(&f), next);
                    next += 1;
                }
                Kind::End => break,
                _ => {}
            }
        }
        assert_eq!(next, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

/// Items that are ready together travel in Items frames, but only to a peer whose Hello
/// says it reads them; either way every item arrives, in order, within the credit.
#[tokio::test(start_paused = true)]
async fn items_frames_go_only_to_peers_that_read_them() {
    let (kernel, _) = server(limits(), true);
    for batching in [false, true] {
        let hello = match batching {
            true => hello_with_features(1000, message::FEATURE_ITEM_BATCHES),
            false => hello(1000),
        };
        let mut peer = RawPeer::connect_saying(&kernel, 1 << 20, &hello).await;
        peer.send(&call(1, "robust", "blobs", &(500u64, 8u32))).await;
        peer.send(&credit(1, 1 << 20)).await;
        let (mut items, mut frames, mut batches) = (0u64, 0u64, 0u64);
        while let Some(f) = peer.recv_answer().await {
            match f.kind {
                Kind::Item => {
                    let item: serde_bytes::ByteBuf = value_of(&f);
                    assert_eq!(item.len(), 8);
                    items += 1;
                    frames += 1;
                }
                Kind::Items => {
                    let mut batch = message::ItemBatch::new(&f.body).unwrap();
                    while let Some(item) = batch.next_item(64).unwrap() {
                        let item: serde_bytes::ByteBuf = codec::decode_value(item).unwrap();
                        assert_eq!(item.len(), 8);
                        items += 1;
                    }
                    assert!(batch.rest().is_empty(), "nothing after the last item");
                    frames += 1;
                    batches += 1;
                }
                Kind::End => break,
                _ => {}
            }
        }
        assert_eq!(items, 500, "batching {batching}");
        match batching {
            true => assert!(batches > 0 && frames < 100, "{frames} frames, {batches} batches"),
            false => assert_eq!(batches, 0, "Items frames to a peer that did not ask for them"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Chunked messages (PROTOCOL.md §14).

/// The Chunk frames of a Call of `robust.bytes` carrying `len` bytes, cut in `piece`s.
fn chunked_call(id: u32, len: usize, piece: usize) -> Vec<Vec<u8>> {
    let body = call_body_raw(
        "robust",
        "bytes",
        &codec::encode_value(&(serde_bytes::ByteBuf::from(vec![5u8; len]),)).unwrap(),
        None,
    );
    let mut inner = vec![Kind::Call as u8, 0];
    inner.extend(body);
    let total = (inner.len() as u32).to_be_bytes();
    inner
        .chunks(piece)
        .map(|p| frame_bytes(Kind::Chunk, id, None, &[&total[..], p].concat()))
        .collect()
}

/// S6: with 2 reassemblies allowed and 2 in progress, a 3rd chunked message is `Busy`; the
/// 2 complete.
#[tokio::test(start_paused = true)]
async fn s6_third_concurrent_chunked_upload_is_busy() {
    let (kernel, _) = server(limits().max_reassemblies(2), true);
    let mut peer = RawPeer::connect_with(&kernel, 8 << 20).await;
    let uploads: Vec<_> =
        [1u32, 3, 5].iter().map(|&id| chunked_call(id, 200_000, 64 << 10)).collect();
    for u in &uploads {
        peer.send(&u[0]).await;
    }
    let mut busy = None;
    while busy.is_none() {
        let f = peer.recv_answer().await.unwrap();
        if f.kind == Kind::Error {
            busy = Some((f.id, kind_of(&f)));
        }
    }
    assert_eq!(busy, Some((5, ErrorKind::Busy)));
    for u in &uploads[..2] {
        for c in &u[1..] {
            peer.send(c).await;
        }
    }
    let mut replies = 0;
    while replies < 2 {
        let f = peer.recv_answer().await.unwrap();
        if f.kind == Kind::Reply {
            assert_eq!(value_of::<u64>(&f), 200_000);
            replies += 1;
        }
    }
}

/// S7b: a chunked message refused on the id of a call still running (a large item of its
/// argument stream, or a caller reusing the id) ends that call: the caller hears why, the
/// handler stops and frees its slot, and the connection lives on. Fuzzing found the
/// handler left running with its table entry gone, out of reach even of the connection's
/// close.
#[tokio::test(start_paused = true)]
async fn s7b_refused_chunked_message_stops_the_running_call_it_names() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&call(1, "robust", "ticks", &(1_000u64, 100u64))).await;
    let open = peer.recv_answer().await.unwrap();
    assert_eq!((open.id, open.kind), (1, Kind::StreamOpen));
    // A chunk whose header announces a 4 GiB message: beyond Limits::max_message_size.
    let mut chunk = u32::MAX.to_be_bytes().to_vec();
    chunk.extend_from_slice(&[Kind::Item as u8, 0, 0x01]);
    peer.send(&frame_bytes(Kind::Chunk, 1, None, &chunk)).await;
    let refused = loop {
        let f = peer.recv_answer().await.unwrap();
        if f.id == 1 && f.kind == Kind::Error {
            break f;
        }
    };
    assert_eq!(kind_of(&refused), ErrorKind::TooLarge);
    let stopped = tests::eventually(Duration::from_secs(5), || {
        let s = kernel.stats();
        s.active_calls == 0 && s.active_streams == 0
    })
    .await;
    assert!(stopped, "the stream's handler still runs: {:?}", kernel.stats());
    let reply = peer.call(3, "list", &(vec![1u64, 2, 3],)).await;
    assert_eq!((reply.id, reply.kind), (3, Kind::Reply));
    peer.finish().await;
    assert_baseline(&kernel, Duration::from_secs(5)).await;
}

/// S7: a chunked upload that stops after 3 chunks is dropped after 30 s idle; its caller
/// gets an error and the reassembly slot is free again.
#[tokio::test(start_paused = true)]
async fn s7_abandoned_upload_is_dropped_after_30s() {
    let (kernel, _) = server(limits().max_reassemblies(1), true);
    let mut peer = RawPeer::connect_with(&kernel, 8 << 20).await;
    let upload = chunked_call(1, 200_000, 16 << 10);
    for c in &upload[..3] {
        peer.send(c).await;
    }
    let answer = tokio::time::timeout(Duration::from_secs(31), async {
        loop {
            let f = peer.recv_answer().await.unwrap();
            if f.kind == Kind::Error {
                return f;
            }
        }
    })
    .await
    .expect("the abandoned upload was never failed");
    assert_eq!(answer.id, 1);
    // The slot is free: another chunked message is accepted.
    let next = chunked_call(3, 20_000, 16 << 10);
    for c in &next {
        peer.send(c).await;
    }
    loop {
        let f = peer.recv_answer().await.unwrap();
        // ChunkCredit frames for the upload come first; the answer follows.
        if f.id == 3 && f.kind != Kind::ChunkCredit {
            assert_eq!(f.kind, Kind::Reply);
            break;
        }
    }
}

/// S8: a first chunk declaring 2^32−1 bytes is refused on that chunk (`TooLarge`).
#[tokio::test(start_paused = true)]
async fn s8_first_chunk_declaring_4gib_is_refused() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    let mut body = vec![0xff, 0xff, 0xff, 0xff, Kind::Call as u8, 0];
    body.extend_from_slice(&[0x95; 100]);
    peer.send(&frame_bytes(Kind::Chunk, 1, None, &body)).await;
    let answer = peer.recv_answer().await.unwrap();
    let answer =
        if answer.kind == Kind::ChunkCredit { peer.recv_answer().await.unwrap() } else { answer };
    assert_eq!((answer.id, kind_of(&answer)), (1, ErrorKind::TooLarge));
    assert_eq!(value_of::<String>(&peer.call(3, "echo", &("kept",)).await), "kept");
}

/// S9: a chunked reply to a client that never grants ChunkCredit: the sender gives up at
/// 30 s, the caller gets an error and the encoded reply is freed. (Today the handler's slot
/// is released at once and a detached task holds the whole encoded reply, waiting for
/// credit that never comes — so a client can make the server hold `max_message_size` per
/// call, outside every budget.)
#[tokio::test(start_paused = true)]
async fn s9_chunk_sender_without_credit_times_out() {
    let (kernel, _) = server(limits().chunk_size(4 << 10).chunk_window(4 << 10), true);
    let mut peer = RawPeer::connect_with(&kernel, 8 << 20).await;
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let idle = tasks();
    peer.send(&call(1, "robust", "echo", &("x".repeat(100_000),))).await;
    let failed = tokio::time::timeout(Duration::from_secs(31), async {
        loop {
            let f = peer.recv_answer().await.expect("connection open");
            if f.kind == Kind::Error && f.id == 1 {
                return f;
            }
        }
    })
    .await
    .expect("the chunk sender never gave up");
    assert_eq!(failed.id, 1);
    assert!(tests::eventually(Duration::from_secs(1), || tasks() <= idle).await);
}

/// S10 (CI-bounded soak, simulated time): 100 connections × 10 calls/s + 1 stream each for
/// 20 s: no failed call, live tasks stable, everything released after disconnect.
#[tokio::test(start_paused = true)]
async fn s10_soak_is_stable_and_leaves_nothing() {
    let (kernel, _) = server(limits(), true);
    let mut peers = Vec::new();
    for _ in 0..100 {
        let mut p = RawPeer::connect(&kernel).await;
        p.send(&call(1, "robust", "ticks", &(1_000_000u64, 100u64))).await;
        p.send(&credit(1, 1 << 20)).await;
        peers.push(p);
    }
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let mut samples = Vec::new();
    for round in 0..200u32 {
        for p in &mut peers {
            p.send(&call(3 + 2 * round, "robust", "add", &(round as u64, 1u64))).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for p in &mut peers {
            loop {
                let f = p.recv_answer().await.unwrap();
                match f.kind {
                    Kind::Item | Kind::StreamOpen => continue,
                    Kind::Reply => {
                        assert_eq!(value_of::<u64>(&f), round as u64 + 1);
                        break;
                    }
                    other => panic!("failed call: {other:?} {:?}", error_of(&f)),
                }
            }
        }
        if round % 50 == 49 {
            samples.push(tasks());
        }
    }
    let (min, max) = (*samples.iter().min().unwrap(), *samples.iter().max().unwrap());
    assert!(max - min <= max / 50 + 2, "live tasks drift: {samples:?}");
    drop(peers);
    assert_baseline(&kernel, Duration::from_secs(1)).await;
    assert!(tests::eventually(Duration::from_secs(1), || tasks() == 0).await);
}

// ---------------------------------------------------------------------------------------
// Faults and lifecycle.

/// N1 (approximation): the peer vanishes without FIN: keepalive closes within 90 s and
/// everything is released.
#[tokio::test(start_paused = true)]
async fn n1_silent_peer_is_detected_by_keepalive() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&call(1, "robust", "ticks", &(1_000_000u64, 60_000u64))).await;
    assert_eq!(peer.recv_answer().await.unwrap().kind, Kind::StreamOpen);
    let started = Instant::now();
    let closed = peer.closed_within(Duration::from_secs(100)).await;
    assert_goaway(&closed, GoAwayCode::KeepaliveTimeout);
    assert!(started.elapsed() <= Duration::from_secs(91), "{:?}", started.elapsed());
    assert_baseline(&kernel, Duration::from_secs(1)).await;
}

/// N1 on a running clock, with a 100 ms keepalive and one miss allowed. A connection that
/// starts on a running clock has its deadlines served by the alarm thread (`connection::alarm`);
/// n1 runs on a paused clock, which keeps the runtime's timers. The silent peer is pinged at
/// 100 ms and closed at 200 ms.
#[tokio::test]
async fn n1_real_time_silent_peer_is_detected_by_the_alarm_thread() {
    let interval = Duration::from_millis(100);
    let (kernel, _) = server(limits().keepalive_interval(interval).keepalive_misses(1), true);
    let started = Instant::now();
    let mut peer = RawPeer::connect(&kernel).await;
    let closed = peer.closed_within(Duration::from_secs(5)).await;
    assert_goaway(&closed, GoAwayCode::KeepaliveTimeout);
    assert!(
        closed.frames.iter().any(|f| f.kind == Kind::Ping),
        "no ping before the close: {closed:?}"
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= interval * 2, "closed before two intervals: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_baseline(&kernel, Duration::from_secs(1)).await;
}

/// N2 (approximation): a 20 s stall below the keepalive window loses nothing.
#[tokio::test(start_paused = true)]
async fn n2_short_stall_loses_nothing() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect(&kernel).await;
    peer.send(&call(1, "robust", "ticks", &(10u64, 1000u64))).await;
    peer.send(&credit(1, 100)).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut next = 0;
    while let Some(f) = peer.recv_answer().await {
        match f.kind {
            Kind::Item => {
                assert_eq!(value_of::<u64>(&f), next);
                next += 1;
            }
            Kind::End => break,
            _ => {}
        }
    }
    assert_eq!(next, 10);
    assert!(!peer.conn().is_closed());
}

/// N4: graceful shutdown with 50 calls and 20 streams in flight: the calls complete, new
/// calls are refused, streams end with the connection's GoAway, all within the deadline.
#[tokio::test(start_paused = true)]
async fn n4_graceful_shutdown_drains() {
    let (kernel, _) = server(limits(), true);
    let mut peer = RawPeer::connect_with(&kernel, 8 << 20).await;
    let calls: Vec<u8> =
        (0..50u32).flat_map(|i| call(2 * i + 1, "robust", "sleep", &(1000u64,))).collect();
    let streams: Vec<u8> = (50..70u32)
        .flat_map(|i| call(2 * i + 1, "robust", "ticks", &(1_000_000u64, 100u64)))
        .collect();
    peer.send(&calls).await;
    peer.send(&streams).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let conn = peer.conn().clone();
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { conn.shutdown(Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    peer.send(&call(201, "robust", "echo", &("late",))).await;
    let closed = peer.closed_within(Duration::from_secs(31)).await;
    shutdown.await.unwrap();
    assert!(started.elapsed() <= Duration::from_secs(31));
    let replies = closed.frames.iter().filter(|f| f.kind == Kind::Reply).count();
    assert_eq!(replies, 50);
    let late = closed.frames.iter().find(|f| f.id == 201).expect("the late call is answered");
    assert_eq!(kind_of(late), ErrorKind::Disconnected);
    assert_goaway(&closed, GoAwayCode::ShuttingDown);
    assert_baseline(&kernel, Duration::from_secs(1)).await;
}

/// N5: the server side vanishes (transport dropped): the client's pending calls fail at
/// once with `Disconnected`.
#[tokio::test(start_paused = true)]
async fn n5_server_gone_fails_pending_calls_at_once() {
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(ours);
    let transport = rpc_core::transport::ByteStream::new(r, w, Default::default());
    let fake_server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut theirs = theirs;
        theirs.write_all(&hello(100)).await.unwrap();
        let mut buf = vec![0u8; 4096];
        // Read the client's Hello and its Call, then "crash".
        let _ = theirs.read(&mut buf).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = theirs.read(&mut buf).await;
        drop(theirs);
    });
    let client = rpc_core::RpcKernel::new();
    let conn = client.dial(transport).await.expect("dial");
    let target = conn.controller::<RobustClient>();
    let started = Instant::now();
    let err = target.sleep(60_000).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    fake_server.await.unwrap();
}

/// N6 (approximation): a new connection starts from nothing: no session, no peer alias.
#[tokio::test(start_paused = true)]
async fn n6_reconnect_does_not_resurrect_the_session() {
    let (kernel, _) = server(limits(), false);
    let mut first = RawPeer::connect(&kernel).await;
    first.send(&auth(1, "alice")).await;
    assert_eq!(first.recv_answer().await.unwrap().kind, Kind::Reply);
    let mut body = bytes::BytesMut::new();
    message::encode_route_target(&mut body, "a-n6");
    first.send(&frame_bytes(Kind::PeerRegister, 3, None, &body)).await;
    assert_eq!(first.recv_answer().await.unwrap().kind, Kind::Reply);
    drop(first);
    assert_baseline(&kernel, Duration::from_secs(1)).await;
    let mut second = RawPeer::connect(&kernel).await;
    let answer = second.call(1, "echo", &("x",)).await;
    assert_eq!(kind_of(&answer), ErrorKind::Unauthenticated);
    assert_eq!(kernel.stats().peers, 0);
}

/// A hand-written controller whose responder answers from an OS thread of its own, in four
/// orders against the read loop's first poll of the call (by `x % 8`; ids are odd):
/// 1: answered during the poll, which then finishes; 3: answered during the poll, which
/// then waits once; 5: answered a little after the poll; 7: answered at once, racing it.
struct Handoff;

static HANDOFF_ACTIONS: [rpc_core::ActionInfo; 1] = [rpc_core::ActionInfo {
    name: "double",
    groups: &[],
    data: &[],
    kind: rpc_core::ActionKind::Unary,
}];

impl rpc_core::Controller for Handoff {
    fn name(&self) -> &'static str {
        "handoff"
    }

    fn actions(&self) -> &'static [rpc_core::ActionInfo] {
        &HANDOFF_ACTIONS
    }

    fn call(
        &self,
        _action: usize,
        args: &[u8],
        responder: rpc_core::Responder,
    ) -> Result<rpc_core::ActionFuture, rpc_core::RpcError> {
        use std::future::Future;
        use std::sync::atomic::AtomicBool;
        let mut reader = responder.args(args)?;
        let x: u32 = reader.next("x")?;
        reader.finish()?;
        let answered = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let flag = answered.clone();
        std::thread::spawn(move || {
            if x % 8 == 5 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let replied = responder.reply_value(&(u64::from(x) * 2));
            flag.store(true, SeqCst);
            let _ = tx.send(replied);
        });
        let mut first = true;
        Ok(Box::pin(std::future::poll_fn(move |cx| {
            if std::mem::take(&mut first) && matches!(x % 8, 1 | 3) {
                let until = std::time::Instant::now() + Duration::from_secs(5);
                while !answered.load(SeqCst) {
                    assert!(std::time::Instant::now() < until, "the reply thread never answered");
                    std::thread::yield_now();
                }
                if x % 8 == 3 {
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
            }
            std::pin::Pin::new(&mut rx).poll(cx).map(|r| r.expect("the reply thread"))
        })))
    }
}

/// A call polled on the read loop without a slot entry (no policy, no middleware) whose
/// responder answers from another thread, before, during or after that poll: every call
/// is answered once, and no slot leaks (with 8 slots, 100 bursts of 8 calls would meet
/// `Busy` after a single leak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_another_thread_frees_its_slot() {
    let kernel = rpc_core::RpcKernel::with_limits(limits().max_calls_in_flight(8));
    kernel.register(Handoff);
    let mut peer = RawPeer::connect(&kernel).await;
    for round in 0..100u32 {
        let ids: Vec<u32> = (0..8).map(|i| 2 * (round * 8 + i) + 1).collect();
        let burst: Vec<u8> =
            ids.iter().flat_map(|&id| call(id, "handoff", "double", &(id,))).collect();
        peer.send(&burst).await;
        let mut answered = std::collections::HashSet::new();
        for _ in 0..8 {
            let answer = peer.recv_answer().await.expect("an answer");
            assert_eq!(answer.kind, Kind::Reply, "round {round}: {:?}", error_of(&answer));
            assert_eq!(value_of::<u64>(&answer), u64::from(answer.id) * 2);
            answered.insert(answer.id);
        }
        assert_eq!(answered.len(), 8, "round {round}: every call answered once");
    }
    let conn = peer.conn().clone();
    let emptied = tests::eventually(Duration::from_secs(2), || conn.calls_in_flight() == (0, 0));
    assert!(emptied.await, "calls still counted: {:?}", conn.calls_in_flight());
}
