//! The "mem ≤ X" parts of ROBUSTNESS.md §8 (F1, F4, F8, D2, D3, D4, S8, A2), measured with a
//! counting global allocator (current and peak bytes; one per test binary, so this file is
//! its own binary and runs its steps serially in one test).
//!
//! Each step measures the peak allocation beyond the level before it, while the server
//! handles the hostile input, on a current-thread runtime with paused time.

mod robustness_support;

use std::time::Duration;

use robustness_support::*;
use rpc_core::protocol::frame::Kind;
use rpc_core::protocol::message::GoAwayCode;
use rpc_core::{ErrorKind, Limits, RpcKernel};

#[global_allocator]
static ALLOCATOR: tests::alloc::Counting = tests::alloc::Counting;

use tests::alloc::{mark as reset, peak_since};

const KIB: usize = 1 << 10;

/// Sends `bytes` on a connected peer and returns the peak extra allocation while the server
/// handles them (the sent bytes themselves are allocated before the measurement starts).
async fn measure(peer: &mut RawPeer, bytes: Vec<u8>) -> usize {
    let base = reset();
    peer.send(&bytes).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    peak_since(base)
}

async fn f1(kernel: &RpcKernel) {
    let mut peer = RawPeer::connect(kernel).await;
    let peak = measure(&mut peer, vec![0xff; 4]).await;
    assert!(peak <= 64 * KIB, "F1: {peak} B");
    assert_goaway(&peer.closed_within(Duration::from_secs(1)).await, GoAwayCode::TooLarge);
}

async fn f4(kernel: &RpcKernel) {
    let mut peers = Vec::new();
    for _ in 0..50 {
        peers.push(RawPeer::connect(kernel).await);
    }
    let base = reset();
    for p in &mut peers {
        p.send(&(1u32 << 20).to_be_bytes()).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let peak = peak_since(base);
    assert!(peak <= 50 * 64 * KIB + 64 * KIB, "F4: {peak} B for 50 stalled headers");
    for p in &mut peers {
        assert_goaway(&p.closed_within(Duration::from_secs(31)).await, GoAwayCode::FrameTimeout);
    }
}

async fn f8(kernel: &RpcKernel) {
    let mut peer = RawPeer::connect(kernel).await;
    let frame = call(1, "robust", "bytes", &(serde_bytes::ByteBuf::from(vec![0u8; 17 * KIB]),));
    let peak = measure(&mut peer, frame).await;
    assert!(peak <= 64 * KIB, "F8: {peak} B");
    assert_goaway(&peer.closed_within(Duration::from_secs(1)).await, GoAwayCode::TooLarge);
}

async fn bad_args(peer: &mut RawPeer, action: &str, args: &[u8], what: &str) {
    let peak = measure(peer, call_raw(1, "robust", action, args)).await;
    let answer = peer.recv_answer().await.unwrap();
    assert_eq!(kind_of(&answer), ErrorKind::BadArguments, "{what}");
    assert!(peak <= 64 * KIB, "{what}: {peak} B");
}

async fn decoding(kernel: &RpcKernel) {
    let mut peer = RawPeer::connect(kernel).await;
    // D2: array32 declaring 2^32-1 elements, 3 present.
    let d2 = [0x91, 0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
    bad_args(&mut peer, "list", &d2, "D2").await;
    bad_args(&mut peer, "any", &d2, "D2 generic").await;
    // D3: recursive-type bomb.
    let mut d3 = vec![0x91u8];
    for _ in 0..600 {
        d3.extend_from_slice(&[0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff]);
    }
    bad_args(&mut peer, "node", &d3, "D3").await;
    // D4: bin32 / str32 declaring 4 GiB in a 1 KiB frame.
    for (marker, action) in [(0xc6u8, "bytes"), (0xdb, "echo")] {
        let mut d4 = vec![0x91, marker, 0xff, 0xff, 0xff, 0xff];
        d4.extend_from_slice(&[b'x'; 1000]);
        bad_args(&mut peer, action, &d4, "D4").await;
    }
}

async fn s8(kernel: &RpcKernel) {
    let mut peer = RawPeer::connect(kernel).await;
    let mut body = vec![0xff, 0xff, 0xff, 0xff, Kind::Call as u8, 0];
    body.extend_from_slice(&[0x95; 100]);
    let peak = measure(&mut peer, frame_bytes(Kind::Chunk, 1, None, &body)).await;
    assert!(peak <= 64 * KIB, "S8: {peak} B");
}

async fn a2(kernel: &RpcKernel) {
    let mut peer = RawPeer::connect_with(kernel, 16 * KIB).await;
    let flood: Vec<u8> =
        (0..2000u32).flat_map(|i| call(2 * i + 1, "robust", "echo", &("x",))).collect();
    let peak = measure(&mut peer, flood[..15 * KIB].to_vec()).await;
    assert!(peak <= 64 * KIB, "A2: {peak} B");
    assert_goaway(&peer.closed_within(Duration::from_secs(1)).await, GoAwayCode::Unauthenticated);
}

#[tokio::test(start_paused = true)]
async fn memory_bounds_f1_f4_f8_d2_d3_d4_s8_a2() {
    let (open, _) = server(Limits::default(), true);
    let (closed, _) = server(Limits::default(), false);
    // Warm-up: the first connection allocates lazily initialised state.
    let mut warm = RawPeer::connect(&open).await;
    warm.call(1, "echo", &("warm",)).await;
    drop(warm);

    f1(&open).await;
    f4(&open).await;
    f8(&closed).await;
    decoding(&open).await;
    s8(&open).await;
    a2(&closed).await;
}
