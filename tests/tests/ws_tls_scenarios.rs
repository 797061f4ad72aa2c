//! Transport-level scenarios, each run over every transport (in-memory, TCP, TLS, WS, WSS)
//! by `transport_tests!`: calls and errors, large messages (frames near the limit and chunked
//! ones, which on WebSocket must fit tungstenite's message limit), many small frames (packed
//! into messages), streams, calls back to the client, what handlers see of the transport, and
//! what a disconnect does to calls and streams in flight and what a reconnect restores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rpc_core::{
    ConnectionState, Context, Entity, ErrorKind, Limits, RpcKernel, RpcStream, controller,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tests::{TransportKind, eventually, pki, transport_tests};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity, thiserror::Error)]
#[entity(name = "suite_oops")]
#[error("oops: {reason}")]
pub struct Oops {
    pub reason: String,
}

#[controller("suite")]
pub trait Suite {
    async fn echo(&self, text: String) -> String;
    async fn echo_bytes(&self, data: ByteBuf) -> ByteBuf;
    async fn fail(&self, reason: String) -> Result<(), Oops>;
    /// The transport's kind and the TLS client identity, as the handler sees them.
    async fn transport(&self, ctx: &Context) -> (String, Option<String>);
    async fn sleep(&self, ms: u64) -> u64;
    async fn count(&self, n: u32, every_ms: u64) -> RpcStream<u32>;
    /// Closes the caller's connection.
    async fn drop_me(&self, ctx: &Context);
    /// Calls the client's `back` controller.
    async fn ask_back(&self, ctx: &Context, x: u32) -> u32;
    /// Closes the caller's connection, then waits forever; when the handler is dropped,
    /// `tag` joins [`DROPPED`].
    async fn close_then_wait(&self, ctx: &Context, tag: u64);
}

/// Tags of the `close_then_wait` handlers dropped so far (tests run in parallel, each with
/// its own tag).
static DROPPED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// The next test's tag.
static NEXT_TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Adds its tag to [`DROPPED`] when dropped.
struct DropTag(u64);

impl Drop for DropTag {
    fn drop(&mut self) {
        DROPPED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(self.0);
    }
}

#[controller("suite_back")]
pub trait Back {
    async fn double(&self, x: u32) -> u32;
}

struct SuiteImpl;

impl Suite for SuiteImpl {
    async fn echo(&self, text: String) -> String {
        text
    }

    async fn echo_bytes(&self, data: ByteBuf) -> ByteBuf {
        data
    }

    async fn fail(&self, reason: String) -> Result<(), Oops> {
        Err(Oops { reason })
    }

    async fn transport(&self, ctx: &Context) -> (String, Option<String>) {
        let info = ctx.connection().transport();
        (info.kind.to_string(), info.peer_identity.clone())
    }

    async fn sleep(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    async fn count(&self, n: u32, every_ms: u64) -> RpcStream<u32> {
        RpcStream::new(futures::stream::iter(0..n).then(move |i| async move {
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
            i
        }))
    }

    async fn drop_me(&self, ctx: &Context) {
        ctx.connection().close();
    }

    async fn ask_back(&self, ctx: &Context, x: u32) -> u32 {
        ctx.connection().controller::<BackClient>().double(x).await.unwrap_or(0)
    }

    async fn close_then_wait(&self, ctx: &Context, tag: u64) {
        let _tag = DropTag(tag);
        ctx.connection().close();
        std::future::pending::<()>().await;
    }
}

struct Doubler;

impl Back for Doubler {
    async fn double(&self, x: u32) -> u32 {
        x * 2
    }
}

fn kernel() -> RpcKernel {
    let kernel = RpcKernel::new();
    kernel.register(SuiteServer::new(SuiteImpl));
    kernel
}

transport_tests! {
    setup = kernel;

    async fn calls_and_typed_errors(h: Harness) {
        let client = h.client();
        let suite = client.controller::<SuiteClient>();
        assert_eq!(suite.echo("hi".into()).await.unwrap(), "hi");
        let err = suite.fail("nope".into()).await.unwrap_err();
        assert_eq!(err.downcast::<Oops>(), Some(Oops { reason: "nope".into() }));
        let (a, b) = tokio::join!(suite.echo("a".into()), suite.echo("b".into()));
        assert_eq!((a.unwrap(), b.unwrap()), ("a".to_string(), "b".to_string()));
        h.shutdown().await;
    }

    async fn handlers_see_the_transport(h: Harness) {
        let client = h.client();
        let (kind, identity) = client.controller::<SuiteClient>().transport().await.unwrap();
        assert_eq!(kind, h.kind.name());
        let expected = h.kind.is_tls().then(|| pki::CLIENT_IDENTITY.to_string());
        assert_eq!(identity, expected);
        h.shutdown().await;
    }

    async fn large_messages_cross_the_transport_and_oversized_ones_fail_alone(h: Harness) {
        let client = h.client();
        let suite = client.controller::<SuiteClient>();
        // Near the 1 MiB frame limit, and 3 MiB (cut into chunks, each a frame within the
        // limit: on WebSocket, each fits tungstenite's message limit of frame limit + 4).
        for len in [(1 << 20) - 256, 3 << 20] {
            let big = ByteBuf::from(vec![0xA5u8; len]);
            assert_eq!(suite.echo_bytes(big.clone()).await.unwrap(), big);
        }
        // Above the reassembly limit (8 MiB + 64 KiB): that call fails, the connection stays.
        let too_big = ByteBuf::from(vec![1u8; 9 << 20]);
        let err = suite.echo_bytes(too_big).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
        assert_eq!(suite.echo("still here".into()).await.unwrap(), "still here");
        h.shutdown().await;
    }

    async fn many_small_concurrent_calls(h: Harness) {
        let client = h.client();
        let suite = client.controller::<SuiteClient>();
        let calls = (0..300u32).map(|i| {
            let suite = suite.clone();
            async move { suite.echo(format!("call {i}")).await }
        });
        let results = futures::future::join_all(calls).await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), format!("call {i}"));
        }
        h.shutdown().await;
    }

    async fn streams_deliver_in_order(h: Harness) {
        let client = h.client();
        let suite = client.controller::<SuiteClient>();
        let items: Vec<u32> =
            suite.count(50, 0).await.unwrap().map(|i| i.unwrap()).collect().await;
        assert_eq!(items, (0..50).collect::<Vec<_>>());
        h.shutdown().await;
    }

    async fn server_calls_back_to_the_client(h: Harness) {
        let client = h.client();
        client.register_controller(BackServer::new(Doubler));
        assert_eq!(client.controller::<SuiteClient>().ask_back(21).await.unwrap(), 42);
        h.shutdown().await;
    }

    // A handler that closes its own connection and then waits is still dropped with the
    // connection, though the close came while the read loop was still polling it for the
    // first time (before the call had a task for the close to stop).
    async fn a_handler_that_closes_its_connection_then_waits_is_dropped(h: Harness) {
        let client = h.client();
        let tag = NEXT_TAG.fetch_add(1, Ordering::SeqCst);
        let err = client.controller::<SuiteClient>().close_then_wait(tag).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
        let dropped = || DROPPED.lock().unwrap().contains(&tag);
        assert!(
            eventually(Duration::from_secs(2), dropped).await,
            "the handler still runs 2 s after its connection closed"
        );
    }

    async fn disconnect_ends_calls_and_streams_and_reconnect_restores_nothing_implicitly(h: Harness) {
        let client = h.client_with(Limits::default().call_timeout(Duration::from_secs(20)));
        let connects = Arc::new(AtomicU32::new(0));
        let counter = connects.clone();
        client.on_connect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let suite = client.controller::<SuiteClient>();
        assert_eq!(suite.echo("first".into()).await.unwrap(), "first");
        assert_eq!(*client.state().borrow(), ConnectionState::Connected(1));

        let mut stream = suite.count(1000, 20).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 0);
        let slow = tokio::spawn({
            let suite = suite.clone();
            async move { suite.sleep(15_000).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = tokio::time::Instant::now();
        let dropped = suite.drop_me().await.unwrap_err();
        assert_eq!(dropped.kind(), ErrorKind::Disconnected, "{dropped}");

        let slow = tokio::time::timeout(Duration::from_secs(2), slow)
            .await
            .expect("the call in flight ended at once")
            .unwrap()
            .unwrap_err();
        assert_eq!(slow.kind(), ErrorKind::Disconnected, "{slow}");
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            }
        })
        .await
        .expect("the stream ended at once");
        if let Some(e) = ended {
            assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        let state = client.state();
        assert!(
            eventually(Duration::from_secs(2), || matches!(
                *state.borrow(),
                ConnectionState::Disconnected(_)
            ))
            .await
        );

        // The next call reconnects; the hook runs again, nothing else is restored.
        assert_eq!(suite.echo("again".into()).await.unwrap(), "again");
        assert_eq!(*client.state().borrow(), ConnectionState::Connected(2));
        assert_eq!(connects.load(Ordering::SeqCst), 2);
        h.shutdown().await;
    }

    async fn graceful_shutdown_lets_calls_finish(h: Harness) {
        if h.kind == TransportKind::Memory {
            return;
        }
        let client = h.client();
        let suite = client.controller::<SuiteClient>();
        assert_eq!(suite.echo("up".into()).await.unwrap(), "up");
        let running = tokio::spawn({
            let suite = suite.clone();
            async move { suite.sleep(300).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.shutdown().await;
        assert_eq!(running.await.unwrap().unwrap(), 300);
        let err = suite.echo("down".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    }
}
