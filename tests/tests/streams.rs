//! Streams (issue 4), each scenario run over every transport by `transport_tests!`: server
//! streams (order, completion, typed errors, unsubscribe, teardown on disconnect, flow
//! control, many at once, watch channels), client streams and bidirectional streams.
//!
//! Producers count the items they make and carry drop guards; the scenario reaches that
//! [`State`] through a thread-local that `setup` fills (the harness calls `setup` and runs
//! the scenario in the same future, on the test's own thread).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use futures::StreamExt;
use rpc_core::{Entity, ErrorKind, Limits, RpcError, RpcKernel, RpcStream, controller};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tests::{eventually, transport_tests};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

// ---------------------------------------------------------------------------------------
// The contract.

/// A typed error a stream ends with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity, thiserror::Error)]
#[entity(name = "@error:streamBroke")]
#[error("the stream broke after {after} items: {reason}")]
pub struct StreamBroke {
    pub after: u64,
    pub reason: String,
}

#[controller("streams")]
pub trait Streams {
    /// `0..n`, then completion.
    async fn count(&self, n: u64) -> RpcStream<u64>;
    /// Two items, then `StreamBroke`.
    async fn fail_after_two(&self) -> RpcStream<u64>;
    /// An endless stream, one item every `every_ms`; counts items, drop guard.
    async fn ticker(&self, every_ms: u64) -> RpcStream<u64>;
    /// `0..n` as fast as credit allows; counts items, drop guard.
    async fn flood(&self, n: u64) -> RpcStream<u64>;
    /// Endless `size`-byte items as fast as credit allows; counts items, drop guard.
    async fn blobs(&self, size: u32) -> RpcStream<ByteBuf>;
    /// The server's watched value: the current one, then each change.
    async fn watched(&self) -> RpcStream<u32>;
    async fn set_watched(&self, value: u32);
    async fn ping(&self, x: u32) -> u32;
    /// Sums a client stream.
    async fn sum(&self, input: RpcStream<u64>) -> Result<u64, RpcError>;
    /// Echoes each item of the client stream.
    async fn echo(&self, input: RpcStream<String>) -> RpcStream<String>;
    /// `n` items, then the producer panics with `message`.
    async fn panics_after(&self, n: u64, message: String) -> RpcStream<u64>;
}

// ---------------------------------------------------------------------------------------
// The server.

struct State {
    /// Items made by `ticker`, `flood` and `blobs`.
    produced: AtomicUsize,
    /// Producers (of `ticker`, `flood`, `blobs`) dropped.
    dropped: AtomicUsize,
    /// Items `sum` received (its drop guard counts into `dropped` too).
    summed: AtomicUsize,
    watched: watch::Sender<u32>,
}

/// Counts a dropped producer.
struct OnDrop(Arc<State>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, SeqCst);
    }
}

struct StreamsImpl {
    state: Arc<State>,
}

impl StreamsImpl {
    /// `items`, counting each one made and holding a drop guard while the stream lives.
    fn counted<T: Send + 'static>(
        &self,
        items: impl futures::Stream<Item = T> + Send + 'static,
    ) -> RpcStream<T> {
        let state = self.state.clone();
        let guard = OnDrop(state.clone());
        RpcStream::new(items.map(move |item| {
            let _alive = &guard;
            state.produced.fetch_add(1, SeqCst);
            item
        }))
    }
}

impl Streams for StreamsImpl {
    async fn count(&self, n: u64) -> RpcStream<u64> {
        RpcStream::new(futures::stream::iter(0..n))
    }

    async fn fail_after_two(&self) -> RpcStream<u64> {
        let items: Vec<Result<u64, StreamBroke>> =
            vec![Ok(1), Ok(2), Err(StreamBroke { after: 2, reason: "disk full".into() }), Ok(3)];
        RpcStream::try_new(futures::stream::iter(items))
    }

    async fn ticker(&self, every_ms: u64) -> RpcStream<u64> {
        let ticks = futures::stream::iter(0u64..).then(move |i| async move {
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
            i
        });
        self.counted(ticks)
    }

    async fn flood(&self, n: u64) -> RpcStream<u64> {
        self.counted(futures::stream::iter(0..n))
    }

    async fn blobs(&self, size: u32) -> RpcStream<ByteBuf> {
        let size = size as usize;
        self.counted(futures::stream::repeat_with(move || ByteBuf::from(vec![7u8; size])))
    }

    async fn watched(&self) -> RpcStream<u32> {
        RpcStream::from(self.state.watched.subscribe())
    }

    async fn set_watched(&self, value: u32) {
        self.state.watched.send_replace(value);
    }

    async fn ping(&self, x: u32) -> u32 {
        x
    }

    async fn sum(&self, mut input: RpcStream<u64>) -> Result<u64, RpcError> {
        let _guard = OnDrop(self.state.clone());
        let mut sum = 0u64;
        while let Some(item) = input.next().await {
            sum += item?;
            self.state.summed.fetch_add(1, SeqCst);
        }
        Ok(sum)
    }

    async fn echo(&self, input: RpcStream<String>) -> RpcStream<String> {
        RpcStream::try_new(input.map(|item| item.map(|s| format!("echo {s}"))))
    }

    async fn panics_after(&self, n: u64, message: String) -> RpcStream<u64> {
        RpcStream::new(futures::stream::iter(0..=n).map(move |i| {
            if i == n {
                panic!("{message}");
            }
            i
        }))
    }
}

thread_local! {
    static STATE: RefCell<Option<Arc<State>>> = const { RefCell::new(None) };
}

fn setup() -> RpcKernel {
    let (watched, _) = watch::channel(7);
    let state = Arc::new(State {
        produced: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        summed: AtomicUsize::new(0),
        watched,
    });
    STATE.with(|s| *s.borrow_mut() = Some(state.clone()));
    let kernel = RpcKernel::new();
    kernel.register(StreamsServer::new(StreamsImpl { state }));
    kernel
}

/// The state `setup` made for this test.
fn state() -> Arc<State> {
    STATE.with(|s| s.borrow().clone()).expect("setup runs on the scenario's thread")
}

/// Awaits `f`, failing the test if it takes longer than `d`.
/// The most small items (`u64` counters, each at least 65 bytes of credit) that fit in a
/// stream window of `bytes`, plus the one item a producer may overdraw it by.
fn window_of_small_items(bytes: u32) -> usize {
    bytes as usize / rpc_core::protocol::message::stream_item_cost(1) as usize + 1
}

async fn within<F: std::future::Future>(d: Duration, what: &str, f: F) -> F::Output {
    match timeout(d, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {d:?}"),
    }
}

/// The next item of `stream`, within 5 s.
async fn next<T>(stream: &mut RpcStream<T>) -> Option<Result<T, RpcError>> {
    within(Duration::from_secs(5), "the next stream item", stream.next()).await
}

/// Every item of `stream` (failing on an error), within 20 s.
async fn drain<T>(stream: RpcStream<T>) -> Vec<T> {
    let items = stream.map(|item| item.expect("a stream item"));
    within(Duration::from_secs(20), "the whole stream", items.collect()).await
}

// ---------------------------------------------------------------------------------------
// The scenarios.

transport_tests! {
    setup = setup;

    async fn thousand_items_in_order_then_completion(h: Harness) {
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut stream = p.count(1000).await.unwrap();
        for expected in 0..1000u64 {
            match next(&mut stream).await {
                Some(Ok(item)) => assert_eq!(item, expected),
                other => panic!("item {expected}: {other:?}"),
            }
        }
        assert!(next(&mut stream).await.is_none(), "completion after the last item");
        assert!(next(&mut stream).await.is_none(), "an ended stream stays ended");
        // An empty stream completes at once.
        assert_eq!(drain(p.count(0).await.unwrap()).await, Vec::<u64>::new());
    }

    async fn typed_error_after_two_items(h: Harness) {
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut stream = p.fail_after_two().await.unwrap();
        assert_eq!(next(&mut stream).await.unwrap().unwrap(), 1);
        assert_eq!(next(&mut stream).await.unwrap().unwrap(), 2);
        let err = next(&mut stream).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Remote, "{err}");
        assert_eq!(err.name(), Some(StreamBroke::ENTITY_NAME));
        assert_eq!(
            err.downcast::<StreamBroke>(),
            Some(StreamBroke { after: 2, reason: "disk full".into() })
        );
        assert!(next(&mut stream).await.is_none(), "nothing after the error");
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_streams == 0).await);
    }

    async fn unsubscribe_stops_the_producer(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut stream = p.ticker(5).await.unwrap();
        for expected in 0..3u64 {
            assert_eq!(next(&mut stream).await.unwrap().unwrap(), expected);
        }
        assert_eq!(h.kernel.stats().active_streams, 1);
        drop(stream);
        assert!(
            eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 1).await,
            "the producer was not dropped within 1 s of the unsubscribe"
        );
        let produced = state.produced.load(SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            state.produced.load(SeqCst),
            produced,
            "no item is produced after the unsubscribe"
        );
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_streams == 0).await);
        // The connection goes on.
        assert_eq!(p.ping(5).await.unwrap(), 5);
        assert_eq!(h.kernel.stats().total_connections, 1);
    }

    async fn disconnect_tears_down_open_streams(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut streams = Vec::new();
        for _ in 0..10 {
            let mut stream = p.ticker(10).await.unwrap();
            assert_eq!(next(&mut stream).await.unwrap().unwrap(), 0);
            streams.push(stream);
        }
        assert_eq!(h.kernel.stats().active_streams, 10);

        let disconnected = Instant::now();
        client.disconnect().await;
        for mut stream in streams {
            // Items already received may come first; then one Disconnected error, then the end.
            let mut error = None;
            for _ in 0..100 {
                match next(&mut stream).await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        error = Some(e);
                        break;
                    }
                    None => break,
                }
            }
            let error = error.expect("an open stream ends with an error on disconnect");
            assert_eq!(error.kind(), ErrorKind::Disconnected, "{error}");
            assert!(next(&mut stream).await.is_none());
        }
        assert!(
            disconnected.elapsed() < Duration::from_secs(1),
            "took {:?}",
            disconnected.elapsed()
        );
        assert!(
            eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 10).await,
            "producers dropped: {}",
            state.dropped.load(SeqCst)
        );
        assert!(
            eventually(Duration::from_secs(1), || {
                let s = h.kernel.stats();
                s.active_streams == 0 && s.active_calls == 0 && s.connections == 0
            })
            .await,
            "{:?}",
            h.kernel.stats()
        );
    }

    async fn two_hundred_concurrent_streams_on_one_connection(h: Harness) {
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let readers = (0..200u64).map(|i| {
            let p = p.clone();
            async move {
                let stream = p.count(50 + i).await.unwrap();
                let items = drain(stream).await;
                assert_eq!(items, (0..50 + i).collect::<Vec<_>>(), "stream {i}");
            }
        });
        within(Duration::from_secs(30), "200 streams", futures::future::join_all(readers)).await;
        let stats = h.kernel.stats();
        assert_eq!(stats.total_connections, 1);
        assert_eq!(stats.total_streams, 200);
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_streams == 0).await);
    }

    async fn two_hundred_streams_open_at_once(h: Harness) {
        // All 200 subscriptions are open before any is read (Limits::max_streams is 1024
        // per connection). Each stream is longer than the window this client asks for (its
        // small items cost at least 65 bytes of credit each), so no producer can finish
        // before its reader starts.
        let window = 4 << 10;
        let client = h.client_with(Limits::default().result_stream_window(window));
        let p = client.controller::<StreamsClient>();
        let longer = window_of_small_items(window) as u64 + 1;
        let opens = (0..200u64).map(|i| {
            let p = p.clone();
            async move { p.count(longer + i).await }
        });
        let streams = within(
            Duration::from_secs(10),
            "opening 200 streams",
            futures::future::join_all(opens),
        )
        .await;
        assert_eq!(h.kernel.stats().active_streams, 200);
        let readers = streams.into_iter().enumerate().map(|(i, stream)| async move {
            let items = drain(stream.unwrap()).await;
            assert_eq!(items, (0..longer + i as u64).collect::<Vec<_>>(), "stream {i}");
        });
        within(Duration::from_secs(20), "reading 200 streams", futures::future::join_all(readers))
            .await;
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_streams == 0).await);
    }

    async fn watch_stream_yields_current_value_then_changes(h: Harness) {
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut stream = p.watched().await.unwrap();
        assert_eq!(next(&mut stream).await.unwrap().unwrap(), 7, "the current value first");
        for value in [8, 9, 100, 7] {
            p.set_watched(value).await.unwrap();
            assert_eq!(next(&mut stream).await.unwrap().unwrap(), value);
        }
        // No change, no item.
        assert!(timeout(Duration::from_millis(200), stream.next()).await.is_err());
        // A second subscriber starts from the value now current.
        let mut late = p.watched().await.unwrap();
        assert_eq!(next(&mut late).await.unwrap().unwrap(), 7);
        p.set_watched(1).await.unwrap();
        assert_eq!(next(&mut stream).await.unwrap().unwrap(), 1);
        assert_eq!(next(&mut late).await.unwrap().unwrap(), 1);
    }

    async fn slow_reader_pauses_the_producer(h: Harness) {
        let state = state();
        let window = window_of_small_items(Limits::default().result_stream_window);
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut stream = p.flood(10_000_000).await.unwrap();
        assert_eq!(next(&mut stream).await.unwrap().unwrap(), 0);

        tokio::time::sleep(Duration::from_secs(1)).await;
        let paused = state.produced.load(SeqCst);
        // One read, one window ahead, plus slack for the credit batching (window / 2).
        assert!(
            paused <= 1 + window + window / 2,
            "the producer ran ahead of a paused reader: {paused} items made, window {window}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(state.produced.load(SeqCst), paused, "the producer stays paused");

        // Reading again resumes it, in order.
        for expected in 1..=2000u64 {
            assert_eq!(next(&mut stream).await.unwrap().unwrap(), expected);
        }
        assert!(state.produced.load(SeqCst) > 2000);
        assert!(state.produced.load(SeqCst) <= 2001 + window + window / 2);
        drop(stream);
        assert!(eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 1).await);
    }

    async fn a_busy_reader_grants_credit_while_it_reads(h: Harness) {
        // The reader runs as a task and never waits while items are ready, like a consumer
        // that does real work per item (here: blocking 2 ms). The credit it grants halfway
        // through the window must still leave at once, so the producer makes the next
        // items while the reader is busy with the rest of the window. If the grant only
        // left once the reader ran dry, the two ends would take turns instead of working
        // together.
        let state = state();
        let window = 16 * rpc_core::protocol::message::stream_item_cost(1) as u32;
        let client = h.client_with(Limits::default().result_stream_window(window));
        let p = client.controller::<StreamsClient>();
        let mut stream = p.flood(10_000).await.unwrap();
        // Items below 128 encode in one byte: the window holds exactly 16 of them.
        let first_window = 16;
        // Let the producer fill the window before reading.
        assert!(
            eventually(Duration::from_secs(5), || state.produced.load(SeqCst) >= first_window)
                .await
        );
        let reader = tokio::spawn(async move {
            let mut produced_at = Vec::new();
            for expected in 0..first_window as u64 {
                assert_eq!(stream.next().await.unwrap().unwrap(), expected);
                std::thread::sleep(Duration::from_millis(2));
                produced_at.push(state.produced.load(SeqCst));
            }
            produced_at
        });
        let produced_at = within(Duration::from_secs(10), "reading a window", reader).await.unwrap();
        let last = *produced_at.last().unwrap();
        assert!(
            last > first_window + 1,
            "the producer made no item while the reader worked through its first window \
             ({first_window} items; produced after each read: {produced_at:?})"
        );
    }

    async fn the_window_counts_bytes_so_large_items_stay_few(h: Harness) {
        // 64 KiB items against the default 1 MiB window a client asks for: a paused reader
        // holds about 16 of them, not a window of thousands (as an item-counted window of
        // the same small-item depth would allow).
        let state = state();
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut stream = p.blobs(64 << 10).await.unwrap();
        assert_eq!(next(&mut stream).await.unwrap().unwrap().len(), 64 << 10);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let paused = state.produced.load(SeqCst);
        let per_window = Limits::default().result_stream_window as usize / (64 << 10);
        assert!(
            (per_window..=per_window + 2).contains(&paused),
            "{paused} items of 64 KiB made for a paused reader; expected one read plus a \
             window of {per_window} (and one overdrawn)"
        );
        // Reading on resumes it.
        for _ in 0..20 {
            assert_eq!(next(&mut stream).await.unwrap().unwrap().len(), 64 << 10);
        }
        assert!(state.produced.load(SeqCst) > 20);
    }

    async fn many_fast_streams_do_not_overrun_the_outbound_queue(h: Harness) {
        // 64 streams of 32 KiB items, all read: together their windows (64 x 1 MiB) are
        // eight times the server's outbound queue (8 MiB). Producers must wait for the writer
        // instead of queueing past it, or the connection is closed as a slow consumer
        // though its reader keeps up.
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let opens = (0..64).map(|_| {
            let p = p.clone();
            async move { p.blobs(32 << 10).await.unwrap() }
        });
        let streams = within(Duration::from_secs(10), "opening", futures::future::join_all(opens)).await;
        let reads = streams.into_iter().map(|s| async move {
            let items: Vec<_> = s.take(24).collect().await;
            assert!(items.iter().all(|i| i.as_ref().is_ok_and(|b| b.len() == 32 << 10)));
            items.len()
        });
        let counts = within(Duration::from_secs(20), "reading", futures::future::join_all(reads)).await;
        assert!(counts.iter().all(|&n| n == 24), "{counts:?}");
        assert_eq!(p.ping(5).await.unwrap(), 5, "the connection is still up");
        assert_eq!(h.kernel.stats().total_connections, 1);
    }

    async fn unread_stream_does_not_delay_calls(h: Harness) {
        let state = state();
        // 32 KiB items (each costs a little more than 32 KiB of credit): a full window of
        // them is in flight toward a reader that does not read.
        let window = Limits::default().result_stream_window as usize / ((32 << 10) + 128);
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let unread = p.blobs(32 << 10).await.unwrap();
        assert!(
            eventually(Duration::from_secs(5), || state.produced.load(SeqCst) >= window).await,
            "the producer fills its window: {}",
            state.produced.load(SeqCst)
        );

        let started = Instant::now();
        let calls = (0..50u32).map(|i| {
            let p = p.clone();
            async move { p.ping(i).await }
        });
        let results =
            within(Duration::from_secs(5), "50 calls", futures::future::join_all(calls)).await;
        let took = started.elapsed();
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), i as u32);
        }
        assert!(took < Duration::from_secs(1), "50 calls next to an unread stream took {took:?}");
        assert!(
            state.produced.load(SeqCst) <= window + window / 2,
            "the unread stream stays paused"
        );
        drop(unread);
        assert!(eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 1).await);
    }

    async fn client_stream_sums_a_hundred_thousand_numbers(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let input = RpcStream::new(futures::stream::iter(0..100_000u64));
        let sum = within(Duration::from_secs(30), "the sum", p.sum(input)).await.unwrap();
        assert_eq!(sum, (0..100_000u64).sum::<u64>());
        assert_eq!(state.summed.load(SeqCst), 100_000);
        // An empty client stream.
        assert_eq!(
            p.sum(RpcStream::new(futures::stream::iter(Vec::<u64>::new()))).await.unwrap(),
            0
        );
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_calls == 0).await);
    }

    async fn bidirectional_echo(h: Harness) {
        let client = h.client();
        let p = client.controller::<StreamsClient>();

        // A whole stream in, each item back.
        let words: Vec<String> = (0..500).map(|i| format!("w{i}")).collect();
        let out = p.echo(RpcStream::new(futures::stream::iter(words.clone()))).await.unwrap();
        let echoed = drain(out).await;
        assert_eq!(echoed, words.iter().map(|w| format!("echo {w}")).collect::<Vec<_>>());

        // In lock step: each answer arrives before the next item is sent.
        let (tx, rx) = futures::channel::mpsc::unbounded::<String>();
        let mut out = p.echo(RpcStream::new(rx)).await.unwrap();
        for i in 0..20 {
            tx.unbounded_send(format!("ping {i}")).unwrap();
            assert_eq!(next(&mut out).await.unwrap().unwrap(), format!("echo ping {i}"));
        }
        drop(tx);
        assert!(next(&mut out).await.is_none(), "the echo ends when the input ends");
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_streams == 0).await);
    }

    async fn active_streams_return_to_zero(h: Harness) {
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut open = Vec::new();
        for n in [5u64, 10, 0, 1, 3] {
            open.push(p.count(n).await.unwrap());
        }
        let mut ticking = p.ticker(5).await.unwrap();
        assert_eq!(next(&mut ticking).await.unwrap().unwrap(), 0);
        assert_eq!(h.kernel.stats().total_streams, 6);
        assert!(h.kernel.stats().active_streams >= 1);

        for stream in open {
            drain(stream).await;
        }
        drop(ticking);
        let mut failing = p.fail_after_two().await.unwrap();
        while next(&mut failing).await.is_some() {}
        assert!(
            eventually(Duration::from_secs(1), || h.kernel.stats().active_streams == 0).await,
            "{:?}",
            h.kernel.stats()
        );
        assert_eq!(h.kernel.stats().total_streams, 7);
    }

    async fn panicking_producer_ends_the_stream_with_internal(h: Harness) {
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        let mut stream = p.panics_after(3, "SECRET-producer-detail".into()).await.unwrap();
        for expected in 0..3u64 {
            assert_eq!(next(&mut stream).await.unwrap().unwrap(), expected);
        }
        let err = next(&mut stream).await.expect("an error, not a silent end").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        assert!(!err.to_string().contains("SECRET"), "the panic message leaked: {err}");
        assert!(next(&mut stream).await.is_none());
        // The connection goes on.
        assert_eq!(p.ping(1).await.unwrap(), 1);
        assert_eq!(drain(p.count(5).await.unwrap()).await, vec![0, 1, 2, 3, 4]);
        assert_eq!(h.kernel.stats().total_connections, 1);
        assert!(
            eventually(Duration::from_secs(1), || {
                let s = h.kernel.stats();
                s.active_streams == 0 && s.active_calls == 0
            })
            .await,
            "{:?}",
            h.kernel.stats()
        );
    }

    async fn dropping_a_client_stream_call_drops_the_handler(h: Harness) {
        let state = state();
        let client = h.client();
        let p = client.controller::<StreamsClient>();
        client.connect().await.unwrap();
        // An input that sends three items and then never ends.
        let input =
            RpcStream::new(futures::stream::iter(0..3u64).chain(futures::stream::pending()));
        let call = tokio::spawn({
            let p = p.clone();
            async move { p.sum(input).await }
        });
        assert!(
            eventually(Duration::from_secs(2), || state.summed.load(SeqCst) == 3).await,
            "the handler received the first items"
        );
        assert_eq!(state.dropped.load(SeqCst), 0);
        call.abort();
        assert!(
            eventually(Duration::from_secs(1), || state.dropped.load(SeqCst) == 1).await,
            "the handler was not dropped within 1 s of the caller dropping the call"
        );
        assert!(eventually(Duration::from_secs(1), || h.kernel.stats().active_calls == 0).await);
        assert_eq!(p.sum(RpcStream::new(futures::stream::iter([1u64, 2]))).await.unwrap(), 3);
    }
}
