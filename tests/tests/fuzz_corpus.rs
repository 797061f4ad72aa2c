//! D13: every saved fuzz input (`fuzz/corpus/<target>/*`) replayed through the same target
//! body the fuzzer ran, on stable Rust, in the default debug profile and on a 2 MiB stack.
//!
//! The target bodies live in `rpc_core::fuzzing` (see `fuzz/README.md`). The corpora are the
//! minimised corpora of the fuzz runs plus the seeds written by `write_seeds` below, so a
//! plain `cargo test` re-checks every path the fuzzers found. Memory: the two synchronous
//! targets (frames and body decoders) run under a counting allocator and must stay within
//! 40 × the input size + a constant (ROBUSTNESS.md D13: the decoded size of a generic value
//! is at most ~40× its bytes; the constant is the frame reader's 64 KiB reservation plus its
//! first read buffer — twice for `chunk_frames`, which runs two decoders side by side).
//!
//! Regenerate the seeds (after changing the input formats in `rpc_core::fuzzing`):
//! `cargo test -p tests --test fuzz_corpus -- --ignored write_seeds`.

use std::path::{Path, PathBuf};

// Until rpc-core exposes `pub mod fuzzing`, the module is compiled here from its source.
use rpc_core::fuzzing;

#[global_allocator]
static ALLOCATOR: tests::alloc::Counting = tests::alloc::Counting;

use tests::alloc::peak_during;

// ---------------------------------------------------------------------------------------

const TARGETS: [&str; 5] =
    ["server_bytes", "message_decoders", "chunk_frames", "connection_ops", "ws_frames"];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("read input"))).collect()
}

/// Runs `f` on a thread with a 2 MiB stack (the size of a tokio worker's), in this debug
/// build: where a recursive decoder would overflow first.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .unwrap_or_else(|_| panic!("a corpus input panicked (see the output above)"));
}

thread_local! {
    static PANICS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Panics on this thread so far. A panic anywhere (also inside a task of the replay's
/// current-thread runtime, which tokio would swallow) fails the replay; counted per thread
/// so that tests running in parallel do not see each other's panics.
fn panics_here() -> usize {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(|p| p.get())
}

/// The allocator counts the whole process: replays run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `slack`: fixed allocation of the target itself (decoders, reassembly buffers).
fn replay_sync(target: &'static str, run: fn(&[u8]), slack: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    on_small_stack(move || {
        for (path, data) in inputs(target) {
            let before = panics_here();
            let peak = peak_during(|| run(&data));
            assert_eq!(panics_here(), before, "{} panicked", path.display());
            let bound = 40 * data.len() + slack;
            assert!(peak <= bound, "{}: peak {peak} B > {bound} B", path.display());
        }
    });
}

fn replay_async<F: std::future::Future<Output = ()> + 'static>(
    target: &'static str,
    run: fn(&'static [u8]) -> F,
) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    on_small_stack(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        for (path, data) in inputs(target) {
            let data: &'static [u8] = Box::leak(data.into_boxed_slice());
            let before = panics_here();
            rt.block_on(run(data));
            assert_eq!(panics_here(), before, "{} panicked", path.display());
        }
    });
}

#[test]
fn d13_corpus_message_decoders() {
    replay_sync("message_decoders", fuzzing::message_decoders, 128 << 10);
}

#[test]
fn d13_corpus_chunk_frames() {
    // Two frame decoders side by side (one reads whole, one in pieces), each reserving up to
    // 64 KiB + its first 8 KiB read, plus the reassemblies.
    replay_sync("chunk_frames", fuzzing::chunk_frames, 256 << 10);
}

#[test]
fn d13_corpus_ws_frames() {
    // Two WebSocket readers side by side (one reads whole, one in pieces), each reserving up
    // to 256 KiB ahead for a frame whose header claims more.
    replay_sync("ws_frames", rpc_ws::fuzzing::ws_frames, 1 << 20);
}

#[test]
fn d13_corpus_server_bytes() {
    replay_async("server_bytes", fuzzing::server_bytes);
}

#[test]
fn d13_corpus_connection_ops() {
    replay_async("connection_ops", fuzzing::connection_ops);
}

/// The crashes the fuzzers found, kept as reproducers (`fuzz/regressions/<target>/*`): each
/// must run clean once its bug is fixed.
#[test]
fn d13_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    on_small_stack(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        for target in TARGETS {
            let Ok(entries) = std::fs::read_dir(dir.join(target)) else { continue };
            for path in entries.map(|e| e.expect("dir entry").path()) {
                let data: &'static [u8] =
                    Box::leak(std::fs::read(&path).unwrap().into_boxed_slice());
                let before = panics_here();
                let _ = std::panic::catch_unwind(|| match target {
                    "server_bytes" => rt.block_on(fuzzing::server_bytes(data)),
                    "connection_ops" => rt.block_on(fuzzing::connection_ops(data)),
                    "message_decoders" => fuzzing::message_decoders(data),
                    _ => fuzzing::chunk_frames(data),
                });
                assert_eq!(panics_here(), before, "{} panicked", path.display());
            }
        }
    });
}

#[test]
fn every_target_has_a_corpus() {
    for target in TARGETS {
        assert!(!inputs(target).is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Seeds: valid sessions and bodies the fuzzers start from.

mod seeds {
    use super::fuzzing::{self, auth_body, call_body, frame_bytes, hello_frame, raw_frame};
    use bytes::BytesMut;
    use rpc_core::protocol::Kind;
    use rpc_core::protocol::codec::encode_value;
    use rpc_core::protocol::message;

    fn call(id: u32, action: &str, args: &impl serde::Serialize) -> Vec<u8> {
        let args = encode_value(args).unwrap();
        frame_bytes(Kind::Call, id, None, &call_body("fuzz", action, &args, Some(5000)))
    }

    fn session(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    /// `server_bytes`: flags, seed, stream.
    pub fn server_bytes() -> Vec<Vec<u8>> {
        let item = |id, v: u64| frame_bytes(Kind::Item, id, None, &encode_value(&v).unwrap());
        let credit = |id, n: u64| frame_bytes(Kind::Credit, id, None, &encode_value(&n).unwrap());
        let auth = frame_bytes(Kind::Auth, 1, None, &auth_body("ok"));
        let calls = session(&[
            call(3, "echo", &("hi",)),
            call(5, "add", &(1u64, 2u64)),
            call(7, "count", &(5u32,)),
            credit(7, 8),
            call(9, "sum", &rpc_core::NoArgs),
            item(9, 4),
            item(9, 5),
            frame_bytes(Kind::End, 9, None, &[]),
            call(11, "sleep", &(1000u64,)),
            frame_bytes(Kind::Cancel, 11, None, &[]),
            frame_bytes(Kind::Ping, 77, None, &[]),
            call(13, "any", &(vec![vec![1u8]],)),
            call(15, "fail", &rpc_core::NoArgs),
            call(17, "secret", &rpc_core::NoArgs),
            call(19, "callback", &(3u32,)),
        ]);
        let mut out = Vec::new();
        let with = |flags: u8, seed: u16, stream: &[u8]| {
            let mut v = vec![flags];
            v.extend_from_slice(&seed.to_le_bytes());
            v.extend_from_slice(stream);
            v
        };
        out.push(with(0b0000_0010, 1, &calls));
        out.push(with(0b1111_1010, 7, &calls));
        out.push(with(0b0000_0011, 3, &[auth.clone(), calls.clone()].concat()));
        out.push(with(0b0000_0111, 5, &[auth, calls.clone()].concat()));
        out.push(with(0b0000_0011, 9, &call(3, "echo", &("before auth",))));
        out.push(with(0, 2, &[hello_frame(4), calls].concat()));
        out.push(with(0b0000_0010, 4, &[0xff, 0xff, 0xff, 0xff]));
        out.push(with(0b0000_0010, 4, &raw_frame(99, 0, 1, &[])));
        out
    }

    /// `message_decoders`: selector, body.
    pub fn message_decoders() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut push = |selector: u8, body: Vec<u8>| {
            let mut v = vec![selector];
            v.extend(body);
            out.push(v);
        };
        let hello = hello_frame(100);
        push(0, hello[10..].to_vec());
        let args = encode_value(&("x", 1u8)).unwrap();
        push(1, call_body("fuzz", "echo", &args, Some(10)));
        let mut e = BytesMut::new();
        message::encode_error(
            &mut e,
            &rpc_core::RpcError::internal("x").with_correlation_id("c-1"),
        );
        push(2, e.to_vec());
        let mut g = BytesMut::new();
        message::GoAway { code: message::GoAwayCode::TooLarge, reason: "big".into() }
            .encode(&mut g);
        push(3, g.to_vec());
        push(4, encode_value(&300u32).unwrap());
        let mut r = BytesMut::new();
        message::RouteSource { connection_id: 3, alias: Some("a".into()), username: None }
            .encode(&mut r);
        push(5, r.to_vec());
        let mut bomb = vec![0x91u8; 1000];
        bomb.push(0xc0);
        push(6, bomb);
        // D3: each level [0, array32 declaring 2^32-1 kids] nested 600 times.
        let mut node = Vec::new();
        for _ in 0..600 {
            node.extend_from_slice(&[0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff]);
        }
        push(7, node);
        push(8, vec![0x85, 0xa4, b'n', b'a', b'm', b'e', 0xa1, b'x']);
        push(9, vec![0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        push(10, encode_value("ok").unwrap());
        push(11, encode_value(&("s", Vec::<u8>::new())).unwrap());
        push(6, vec![0xc6, 0xff, 0xff, 0xff, 0xff, 1]);
        push(6, vec![0x01, 0xff, 0xff]);
        out
    }

    /// `chunk_frames`: limit, seed, max_read, chunk_size, stream.
    pub fn chunk_frames() -> Vec<Vec<u8>> {
        let inner_call = {
            let mut v = vec![Kind::Call as u8, 0];
            v.extend(call_body("fuzz", "echo", &encode_value(&("x".repeat(100),)).unwrap(), None));
            v
        };
        let total = (inner_call.len() as u32).to_be_bytes();
        let chunks: Vec<u8> = inner_call
            .chunks(40)
            .flat_map(|piece| frame_bytes(Kind::Chunk, 5, None, &[&total[..], piece].concat()))
            .collect();
        let frames = [
            call(3, "echo", &("hello",)),
            frame_bytes(Kind::Reply, 4, None, &encode_value(&"r").unwrap()),
            chunks.clone(),
            frame_bytes(Kind::Chunk, 7, None, &[0xff, 0xff, 0xff, 0xff, 1, 2]),
            frame_bytes(Kind::ChunkCredit, 5, None, &encode_value(&40u32).unwrap()),
        ]
        .concat();
        let mut out = Vec::new();
        for (limit, seed, max_read, chunk) in [(4096u16, 1u16, 7u8, 16u8), (200, 9, 255, 1)] {
            let mut v = Vec::new();
            v.extend_from_slice(&limit.to_le_bytes());
            v.extend_from_slice(&seed.to_le_bytes());
            v.push(max_read);
            v.push(chunk);
            v.extend_from_slice(&frames);
            out.push(v);
        }
        let _ = fuzzing::MAX_REASSEMBLIES;
        out
    }

    /// `connection_ops`: flags, then ops (see `rpc_core::fuzzing::decode_ops`).
    pub fn connection_ops() -> Vec<Vec<u8>> {
        // op 0 = Call: id selector, action index, args selector (2 = valid), timeout byte.
        let call = |id: u8, action: u8| vec![0, id, action, 2, 0];
        let mut ops = Vec::new();
        ops.extend(vec![8, 0, 0]); // Auth id 1, token "ok"
        ops.extend(call(1, 0)); // echo
        ops.extend(call(2, 4)); // count
        ops.extend(vec![7, 2, 8]); // Credit 8 on call 5
        ops.extend(call(3, 5)); // sum
        ops.extend(vec![5, 3, 1, 6, 3]); // Item, End on call 7
        ops.extend(call(4, 7)); // callback
        ops.extend(vec![11, 0, 0]); // answer the server's call with a Reply
        ops.extend(vec![10, 5, 0]); // routed call to p1
        ops.extend(vec![9, 6, 1, 0]); // register as p1
        ops.extend(call(7, 3)); // sleep
        ops.extend(vec![4, 7]); // cancel it
        ops.extend(vec![14, 0xff, 0x10]); // wait
        ops.extend(vec![15, 0]); // stall
        ops.extend(call(8, 4));
        ops.extend(vec![14, 0xff, 0xff]);
        let mut out = Vec::new();
        for flags in [0u8, 1, 2, 3, 4, 7] {
            let mut v = vec![flags];
            v.extend_from_slice(&ops);
            out.push(v);
        }
        out
    }
}

#[test]
#[ignore = "writes the seed corpora; run by hand after changing an input format"]
fn write_seeds() {
    let sets: [(&str, Vec<Vec<u8>>); 4] = [
        ("server_bytes", seeds::server_bytes()),
        ("message_decoders", seeds::message_decoders()),
        ("chunk_frames", seeds::chunk_frames()),
        ("connection_ops", seeds::connection_ops()),
    ];
    for (target, inputs) in sets {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), input).unwrap();
        }
    }
}
