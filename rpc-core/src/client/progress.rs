//! [`Progress`]: watch a large call's upload and download, and abort it.
//!
//! Messages above [`Limits::chunk_size`](crate::Limits) travel in chunks; a call made inside
//! [`Progress::track`] reports how many bytes of its arguments have been sent and how many of
//! its result have arrived, and [`Progress::abort`] ends it with `Cancelled` on both sides.
//!
//! ```no_run
//! # use rpc_core::{controller, Progress, RpcDirectClient, RpcKernel};
//! #[controller("files")]
//! pub trait Files {
//!     async fn store(&self, data: Vec<u8>) -> u64;
//! }
//! # async fn run(files: FilesClient) -> Result<(), rpc_core::RpcError> {
//! let progress = Progress::new();
//! let mut upload = progress.upload();
//! tokio::spawn(async move {
//!     while upload.changed().await.is_ok() {
//!         let t = *upload.borrow();
//!         println!("uploaded {} of {} bytes", t.done, t.total);
//!     }
//! });
//! let stored = progress.track(files.store(vec![0; 8 << 20])).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

/// Bytes of one direction of a transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes moved so far.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

impl Transfer {
    /// Whether everything has moved (and there was something to move).
    pub fn is_complete(&self) -> bool {
        self.total > 0 && self.done >= self.total
    }
}

struct Inner {
    upload: watch::Sender<Transfer>,
    download: watch::Sender<Transfer>,
    aborted: watch::Sender<bool>,
}

/// Progress of the calls made inside [`Progress::track`]. Cheap to clone.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("upload", &*self.inner.upload.borrow())
            .field("download", &*self.inner.download.borrow())
            .field("aborted", &*self.inner.aborted.borrow())
            .finish()
    }
}

tokio::task_local! {
    static CURRENT: Progress;
}

impl Progress {
    /// A fresh handle with nothing transferred.
    pub fn new() -> Progress {
        Progress {
            inner: Arc::new(Inner {
                upload: watch::channel(Transfer::default()).0,
                download: watch::channel(Transfer::default()).0,
                aborted: watch::channel(false).0,
            }),
        }
    }

    /// Runs `call` with this handle attached: chunked transfers inside it report here.
    pub async fn track<F: Future>(&self, call: F) -> F::Output {
        CURRENT.scope(self.clone(), call).await
    }

    /// The upload (arguments) progress.
    pub fn upload(&self) -> watch::Receiver<Transfer> {
        self.inner.upload.subscribe()
    }

    /// The download (result) progress.
    pub fn download(&self) -> watch::Receiver<Transfer> {
        self.inner.download.subscribe()
    }

    /// Ends the tracked call with `Cancelled`; the server drops its handler.
    pub fn abort(&self) {
        self.inner.aborted.send_replace(true);
    }

    /// Whether [`Progress::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        *self.inner.aborted.borrow()
    }

    pub(crate) async fn aborted(&self) {
        let mut rx = self.inner.aborted.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }

    pub(crate) fn report_upload(&self, done: usize, total: usize) {
        self.inner.upload.send_replace(Transfer { done: done as u64, total: total as u64 });
    }

    pub(crate) fn report_download(&self, done: usize, total: usize) {
        self.inner.download.send_replace(Transfer { done: done as u64, total: total as u64 });
    }

    /// The handle of the [`Progress::track`] scope the current task runs in.
    pub(crate) fn current() -> Option<Progress> {
        CURRENT.try_with(|p| p.clone()).ok()
    }
}
