//! [`Responder`]: how a running action answers its caller.
//!
//! Generated code hands each action a `Responder` and calls exactly one `reply_*` method with
//! the handler's output; the [`Replied`] it returns proves the answer was queued. A handler
//! that panics or is cancelled never reaches that call: the kernel answers for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc};

use crate::connection::ConnShared;
use crate::connection::outbox::PushError;
use crate::connection::producer::{Sent, send_stream};
use crate::error::{ErrorKind, RpcError};
use crate::kernel::context::Context;
use crate::kernel::controller::ActionError;
use crate::protocol::codec::{self, ArgsReader};
use crate::protocol::frame::{Frame, Kind};
use crate::stream::RpcStream;

/// Proof that an action's answer has been queued, with how the call ended (what
/// middleware and events see).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Replied {
    outcome: Result<(), ErrorKind>,
}

impl Replied {
    pub(crate) fn ok() -> Replied {
        Replied { outcome: Ok(()) }
    }

    pub(crate) fn failed(kind: ErrorKind) -> Replied {
        Replied { outcome: Err(kind) }
    }

    /// `Ok` if the caller got a value (or a completed stream), else the kind of error it got.
    pub fn outcome(&self) -> Result<(), ErrorKind> {
        self.outcome
    }
}

/// Answers one call. See the module docs.
pub struct Responder {
    pub(crate) id: u32,
    pub(crate) ctx: Context,
    pub(crate) credit: Option<Arc<Semaphore>>,
    /// The window granted to the caller's result stream (announced in StreamOpen).
    pub(crate) window: u32,
    /// The caller's argument stream, until the handler takes it.
    pub(crate) args: parking_lot::Mutex<Option<(mpsc::UnboundedReceiver<Frame>, Arc<AtomicI64>)>>,
    /// The call's slot, while held: the argument bytes it counts toward the in-flight
    /// budgets. Released just before the final answer is queued (so the caller may start
    /// its next call as soon as it reads it), or when the responder is dropped unanswered
    /// (rejected, cancelled, timed out, panicked): a cancel never frees a slot before the
    /// handler has stopped.
    pub(crate) slot: Option<usize>,
    /// The call's token while it may be polled inline on the read loop without a table
    /// entry (0: the call has its entry from the start). See `inbound::run_inline`.
    pub(crate) inline_token: u64,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.release_slot();
    }
}

impl Responder {
    /// The connection the call came on (the context's; the responder keeps no other
    /// reference to it).
    pub(crate) fn conn(&self) -> &Arc<ConnShared> {
        &self.ctx.connection.shared
    }

    /// Frees the call's slot: its table entry, its argument bytes, its place in the stats.
    fn release_slot(&mut self) {
        if let Some(bytes) = self.slot.take() {
            let conn = self.conn();
            // A call answered during its inline poll never entered the table.
            if !conn.finish_inline_call(self.inline_token) {
                conn.inbound.lock().remove(&self.id);
            }
            conn.release_bytes(bytes);
            conn.kernel.stats_call_ended();
        }
    }

    /// The call's context (connection, session, action).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Starts reading the call's argument array, under the connection's depth limit.
    pub fn args<'a>(&self, args: &'a [u8]) -> Result<ArgsReader<'a>, RpcError> {
        ArgsReader::new(args, self.conn().limits.depth_limit())
    }

    /// The caller's argument stream (for an action with an `RpcStream<T>` parameter), read
    /// with the same credit-based flow control as result streams. Can be taken once.
    pub fn arg_stream<T: DeserializeOwned + Send + 'static>(
        &self,
    ) -> Result<RpcStream<T>, RpcError> {
        let (rx, allowance) = self.args.lock().take().ok_or_else(|| {
            RpcError::bad_arguments("this action takes no argument stream (or it was taken)")
        })?;
        let window = self.conn().limits.stream_window.max(1);
        Ok(RpcStream::remote_arguments(rx, self.conn().clone(), self.id, window, allowance))
    }

    /// Answers with a value.
    pub fn reply_value<T: Serialize + ?Sized>(mut self, value: &T) -> Replied {
        self.release_slot();
        let pushed = self
            .conn()
            .outbox
            .push(Kind::Reply, self.id, None, |buf| codec::encode_into(buf, value));
        if let Err(PushError::Oversize(frame)) = pushed {
            // A large result goes out in chunks, paced by the caller, without holding the
            // handler: a task of its own sends them.
            let (conn, id) = (self.conn().clone(), self.id);
            tokio::spawn(async move {
                if let Err(e) = conn.send_chunks(id, frame).await
                    && e.kind() != ErrorKind::Cancelled
                {
                    conn.send_error(id, &e);
                }
            });
            return Replied::ok();
        }
        if let Err(e) = pushed {
            let e = e.into_rpc_error(self.conn().limits.frame_limit());
            self.conn().on_push_error(&e);
            let kind = e.kind();
            self.conn().send_error(self.id, &e);
            return Replied::failed(kind);
        }
        Replied::ok()
    }

    /// Answers with a value or an error (declared errors travel whole; others are hidden).
    pub fn reply_result<T: Serialize, E: ActionError>(self, result: Result<T, E>) -> Replied {
        match result {
            Ok(value) => self.reply_value(&value),
            Err(e) => self.reply_error(e),
        }
    }

    /// Answers with an error.
    pub fn reply_error<E: ActionError>(mut self, error: E) -> Replied {
        let error = error_for_caller(error, &self.ctx);
        let kind = error.kind();
        self.release_slot();
        self.conn().send_error(self.id, &error);
        Replied::failed(kind)
    }

    /// Answers with a stream: accepts the subscription, then sends items as the caller grants
    /// credit, then the end (or the stream's error).
    pub async fn reply_stream<T: Serialize + Send + 'static>(
        mut self,
        mut stream: RpcStream<T>,
    ) -> Replied {
        let Some(credit) = self.credit.clone() else {
            return self.reply_error(RpcError::internal("stream reply on a call without credit"));
        };
        if self
            .conn()
            .outbox
            .push(Kind::StreamOpen, self.id, None, |buf| codec::encode_into(buf, &self.window))
            .is_err()
        {
            return Replied::failed(ErrorKind::Disconnected);
        }
        self.conn().kernel.stats_stream_opened();
        let _open = StreamGauge(self.conn().kernel.clone());
        match send_stream(self.conn(), self.id, credit, &mut stream).await {
            Sent::Completed => {
                self.release_slot();
                let _ = self.conn().outbox.push(Kind::End, self.id, None, |_| Ok(()));
                Replied::ok()
            }
            Sent::Failed(e) | Sent::Unsent(e) => {
                let kind = e.kind();
                self.release_slot();
                self.conn().send_error(self.id, &e);
                Replied::failed(kind)
            }
            Sent::Gone => Replied::failed(ErrorKind::Disconnected),
        }
    }

    /// Answers with a stream or an error.
    pub async fn reply_stream_result<T: Serialize + Send + 'static, E: ActionError>(
        self,
        result: Result<RpcStream<T>, E>,
    ) -> Replied {
        match result {
            Ok(stream) => self.reply_stream(stream).await,
            Err(e) => self.reply_error(e),
        }
    }
}

/// Counts an open stream in the kernel's stats while alive.
struct StreamGauge(crate::RpcKernel);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.stats_stream_closed();
    }
}

/// An error as the caller may see it: declared errors as they are, anything else reduced to
/// `Internal` with a correlation id that is also in the server's log line.
pub(crate) fn error_for_caller<E: ActionError>(error: E, ctx: &Context) -> RpcError {
    match error.into_rpc_error() {
        Ok(e) => e,
        Err(detail) => hidden_failure(&detail, ctx.controller, ctx.action.name),
    }
}

/// Logs a failure the caller must not see and returns the generic error it gets instead.
pub(crate) fn hidden_failure(detail: &str, controller: &str, action: &str) -> RpcError {
    let id = correlation_id();
    tracing::error!(correlation_id = %id, controller, action, "action failed: {detail}");
    RpcError::internal("the server failed to handle the call").with_correlation_id(id)
}

/// An id that is unique per process and not guessable from the previous one.
pub(crate) fn correlation_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = SEED.get_or_init(Default::default).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}
