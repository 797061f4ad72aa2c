//! Micro-benchmarks of the per-message codec work on the hot path, next to the raw
//! rmp-serde cost of the same value: `cargo bench --bench codec` (in `benches/`).
//!
//! What the end-to-end profile pointed at: the MessagePack pre-scan (`value_len`/`prescan`,
//! run on every body), framing (`FrameDecoder::next_frame`), and encode/decode.

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use rpc_core::protocol::codec;
use rpc_core::protocol::{Frame, FrameDecoder, Kind};
use serde::{Deserialize, Serialize};
use std::hint::black_box;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Small {
    id: u64,
    name: String,
    flag: bool,
    value: f64,
}

fn small() -> Small {
    Small { id: 42, name: "hello world".into(), flag: true, value: 1.5 }
}

fn bench(c: &mut Criterion) {
    let value = small();
    let body = codec::encode_value(&value).unwrap();
    let item = codec::encode_value(&7u64).unwrap();

    c.bench_function("encode Small: rmp_serde to Vec (baseline)", |b| {
        b.iter(|| rmp_serde::to_vec_named(black_box(&value)).unwrap())
    });
    let mut out = BytesMut::with_capacity(1 << 16);
    c.bench_function("encode Small: codec::encode_into BytesMut", |b| {
        b.iter(|| {
            out.clear();
            codec::encode_into(&mut out, black_box(&value)).unwrap();
        })
    });
    c.bench_function("decode Small: rmp_serde from_slice (baseline)", |b| {
        b.iter(|| rmp_serde::from_slice::<Small>(black_box(&body)).unwrap())
    });
    c.bench_function("decode Small: codec::decode_value (prescan + decode)", |b| {
        b.iter(|| codec::decode_value::<Small>(black_box(&body)).unwrap())
    });
    c.bench_function("prescan Small", |b| b.iter(|| codec::prescan(black_box(&body), 64).unwrap()));
    c.bench_function("prescan u64 stream item", |b| {
        b.iter(|| codec::prescan(black_box(&item), 64).unwrap())
    });
    c.bench_function("decode u64 item: codec::decode_value", |b| {
        b.iter(|| codec::decode_value::<u64>(black_box(&item)).unwrap())
    });

    // 64 frames of a Small reply, cut out of one receive buffer.
    let mut wire = BytesMut::new();
    for id in 0..64 {
        Frame::new(Kind::Reply, id, body.clone().into()).encode(&mut wire);
    }
    let wire = wire.freeze();
    c.bench_function("FrameDecoder: 64 small frames from one read", |b| {
        b.iter(|| {
            let mut d = FrameDecoder::new(1 << 20);
            d.buffer().extend_from_slice(&wire);
            let mut n = 0;
            while let Some(f) = d.next_frame().unwrap() {
                n += f.body.len();
            }
            n
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
