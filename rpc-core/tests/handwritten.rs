//! The kernel and client driven by a controller written by hand, exactly as `#[controller]`
//! would generate it: proves the core without the macro.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rpc_core::{
    ActionFuture, ActionInfo, ActionKind, CallTarget, Controller, ControllerClient, ErrorKind,
    NoArgs, Responder, RpcDirectClient, RpcError, RpcKernel, RpcStream,
};

struct Calc {
    dropped: Arc<AtomicUsize>,
}

struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

const ACTIONS: &[ActionInfo] = &[
    ActionInfo { name: "add", groups: &[], data: &[], kind: ActionKind::Unary },
    ActionInfo { name: "sleep", groups: &[], data: &[], kind: ActionKind::Unary },
    ActionInfo { name: "boom", groups: &[], data: &[], kind: ActionKind::Unary },
    ActionInfo { name: "count", groups: &[], data: &[], kind: ActionKind::ServerStream },
];

impl Controller for Calc {
    fn name(&self) -> &'static str {
        "calc"
    }
    fn actions(&self) -> &'static [ActionInfo] {
        ACTIONS
    }
    fn call(
        &self,
        action: usize,
        args: &[u8],
        responder: Responder,
    ) -> Result<ActionFuture, RpcError> {
        match action {
            0 => {
                let mut args = responder.args(args)?;
                let a: i64 = args.next("a")?;
                let b: i64 = args.next("b")?;
                args.finish()?;
                Ok(Box::pin(async move { responder.reply_value(&(a + b)) }))
            }
            1 => {
                let mut args = responder.args(args)?;
                let ms: u64 = args.next("ms")?;
                args.finish()?;
                let flag = DropFlag(self.dropped.clone());
                Ok(Box::pin(async move {
                    let _flag = flag;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    responder.reply_value(&ms)
                }))
            }
            2 => {
                responder.args(args)?.finish()?;
                Ok(Box::pin(async move {
                    if responder.context().call_id() > 0 {
                        panic!("secret detail /etc/passwd");
                    }
                    responder.reply_value(&())
                }))
            }
            3 => {
                let mut args = responder.args(args)?;
                let n: u32 = args.next("n")?;
                args.finish()?;
                Ok(Box::pin(async move {
                    responder.reply_stream(RpcStream::new(futures::stream::iter(0..n))).await
                }))
            }
            _ => Err(RpcError::not_found("no such action")),
        }
    }
}

#[derive(Clone)]
struct CalcClient {
    target: CallTarget,
}
impl ControllerClient for CalcClient {
    const NAME: &'static str = "calc";
    fn from_target(target: CallTarget) -> Self {
        CalcClient { target }
    }
}
impl CalcClient {
    async fn add(&self, a: i64, b: i64) -> Result<i64, RpcError> {
        self.target.call("calc", "add", &(a, b)).await
    }
    async fn sleep(&self, ms: u64) -> Result<u64, RpcError> {
        self.target.call("calc", "sleep", &(ms,)).await
    }
    async fn boom(&self) -> Result<(), RpcError> {
        self.target.call("calc", "boom", &NoArgs).await
    }
    async fn count(&self, n: u32) -> Result<RpcStream<u32>, RpcError> {
        self.target.call_stream("calc", "count", &(n,)).await
    }
}

fn setup() -> (RpcKernel, RpcDirectClient, Arc<AtomicUsize>) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let kernel = RpcKernel::new();
    kernel.register(Calc { dropped: dropped.clone() });
    let client = RpcDirectClient::new(&kernel);
    (kernel, client, dropped)
}

#[tokio::test]
async fn unary_calls_errors_and_panics() {
    let (_kernel, client, _) = setup();
    let calc = client.controller::<CalcClient>();
    assert_eq!(calc.add(2, 40).await.unwrap(), 42);

    let bad: Result<i64, _> = calc.target.call("calc", "add", &("x", 1)).await;
    let err = bad.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArguments);
    assert!(err.message().contains("argument `a` (#1)"), "{err}");

    let missing: Result<(), _> = calc.target.call("calc", "nope", &NoArgs).await;
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
    let missing: Result<(), _> = calc.target.call("nope", "add", &NoArgs).await;
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);

    let err = calc.boom().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(!err.to_string().contains("passwd"), "{err}");
    assert!(err.correlation_id().is_some());
    // The connection survives a panic.
    assert_eq!(calc.add(1, 1).await.unwrap(), 2);
}

#[tokio::test]
async fn dropping_a_call_drops_the_handler() {
    let (kernel, client, dropped) = setup();
    let calc = client.controller::<CalcClient>();
    client.connect().await.unwrap();
    let call = tokio::spawn({
        let calc = calc.clone();
        async move { calc.sleep(10_000).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(kernel.stats().active_calls, 1);
    call.abort();
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(kernel.stats().active_calls, 0);
}

#[tokio::test]
async fn timeouts_and_streams() {
    let (_kernel, client, _) = setup();
    let calc = client.controller::<CalcClient>();
    let slow = CalcClient { target: calc.target.with_timeout(Duration::from_millis(50)) };
    assert_eq!(slow.sleep(5_000).await.unwrap_err().kind(), ErrorKind::Timeout);

    let items: Vec<u32> = calc.count(1000).await.unwrap().map(|r| r.unwrap()).collect().await;
    assert_eq!(items, (0..1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn many_concurrent_calls_share_one_connection() {
    let (kernel, client, _) = setup();
    let calc = client.controller::<CalcClient>();
    let calls = (0..10_000i64).map(|i| {
        let calc = calc.clone();
        async move { calc.add(i, 1).await }
    });
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i64 + 1);
    }
    assert_eq!(kernel.stats().total_connections, 1);
}
