//! Large messages travel in chunks that interleave with other traffic, report progress and
//! can be aborted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rpc_core::{ErrorKind, Progress, RpcDirectClient, RpcKernel, controller};

#[controller("blobs")]
pub trait Blobs {
    async fn echo(&self, data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
    async fn slow_sink(&self, data: serde_bytes::ByteBuf) -> u64;
    async fn ping(&self) -> u8;
}

struct BlobsImpl {
    sink_dropped: Arc<AtomicUsize>,
}

struct Flag(Arc<AtomicUsize>);
impl Drop for Flag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Blobs for BlobsImpl {
    async fn echo(&self, data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
        data
    }
    async fn slow_sink(&self, data: serde_bytes::ByteBuf) -> u64 {
        let _flag = Flag(self.sink_dropped.clone());
        tokio::time::sleep(Duration::from_secs(30)).await;
        data.len() as u64
    }
    async fn ping(&self) -> u8 {
        1
    }
}

fn setup() -> (RpcDirectClient, Arc<AtomicUsize>) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let kernel = RpcKernel::new();
    kernel.register(BlobsServer::new(BlobsImpl { sink_dropped: dropped.clone() }));
    (RpcDirectClient::new(&kernel), dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_round_trip_interleaves_with_small_calls_and_reports_progress() {
    let (client, _) = setup();
    let blobs = client.controller::<BlobsClient>();
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let progress = Progress::new();
    let big = {
        let blobs = blobs.clone();
        let data = serde_bytes::ByteBuf::from(data.clone());
        let progress = progress.clone();
        tokio::spawn(async move { progress.track(blobs.echo(data)).await })
    };
    let small = futures::future::join_all((0..50).map(|_| blobs.ping())).await;
    assert!(small.iter().all(|r| *r.as_ref().unwrap() == 1));
    let echoed =
        tokio::time::timeout(Duration::from_secs(30), big).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed.as_slice() == data.as_slice());
    let up = *progress.upload().borrow();
    let down = *progress.download().borrow();
    assert!(up.is_complete(), "{up:?}");
    assert!(down.is_complete(), "{down:?}");
    assert!(up.total > 8 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_cancels_on_both_sides() {
    let (client, dropped) = setup();
    let blobs = client.controller::<BlobsClient>();
    let progress = Progress::new();
    let call = {
        let blobs = blobs.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            progress.track(blobs.slow_sink(serde_bytes::ByteBuf::from(vec![7u8; 4 << 20]))).await
        })
    };
    let mut up = progress.upload();
    tokio::time::timeout(Duration::from_secs(10), up.wait_for(|t| t.is_complete()))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    progress.abort();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while dropped.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the server's handler was not dropped");
    assert_eq!(blobs.ping().await.unwrap(), 1);
}

#[tokio::test]
async fn above_the_message_limit_is_too_large_and_the_connection_lives() {
    let (client, _) = setup();
    let blobs = client.controller::<BlobsClient>();
    let err = blobs.echo(serde_bytes::ByteBuf::from(vec![0u8; 9 << 20])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert_eq!(blobs.ping().await.unwrap(), 1);
}
