//! Middleware around dispatch, in tower's shape: each layer gets the call's [`Context`] and
//! the [`Next`] step, may act before and after it, sees the outcome, or rejects the call.
//!
//! ```
//! use rpc_core::{Context, Middleware, Next, Replied, RpcError, RpcKernel};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! /// Refuses every call beyond the first `limit` (a toy rate limit).
//! struct Quota { used: AtomicU64, limit: u64 }
//!
//! impl Middleware for Quota {
//!     async fn call(&self, ctx: Context, next: Next) -> Replied {
//!         if self.used.fetch_add(1, Ordering::Relaxed) >= self.limit {
//!             return next.reject(RpcError::busy(format!("quota of {} calls used", self.limit)));
//!         }
//!         let replied = next.run().await;
//!         tracing::debug!(action = ctx.action().name, outcome = ?replied.outcome(), "audited");
//!         replied
//!     }
//! }
//!
//! let kernel = RpcKernel::new();
//! kernel.add_middleware(Quota { used: AtomicU64::new(0), limit: 1000 });
//! ```
//!
//! [`Trace`] is the built-in layer that gives each call a `tracing` span with its
//! controller, action, duration and outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::connection::ConnShared;
use crate::error::RpcError;
use crate::kernel::context::Context;
use crate::kernel::controller::ActionFuture;
use crate::kernel::responder::Replied;

/// A layer around every action a kernel runs. See the module docs.
pub trait Middleware: Send + Sync + 'static {
    /// Handles one call: usually some work, then `next.run().await`, then more work.
    fn call(&self, ctx: Context, next: Next) -> impl Future<Output = Replied> + Send;
}

pub(crate) trait DynMiddleware: Send + Sync + 'static {
    fn call_boxed<'a>(
        &'a self,
        ctx: Context,
        next: Next,
    ) -> Pin<Box<dyn Future<Output = Replied> + Send + 'a>>;
}

impl<M: Middleware> DynMiddleware for M {
    fn call_boxed<'a>(
        &'a self,
        ctx: Context,
        next: Next,
    ) -> Pin<Box<dyn Future<Output = Replied> + Send + 'a>> {
        Box::pin(self.call(ctx, next))
    }
}

pub(crate) type Chain = Arc<[Arc<dyn DynMiddleware>]>;

/// The rest of the chain: further layers, then the action itself.
pub struct Next {
    chain: Chain,
    index: usize,
    handler: ActionFuture,
    ctx: Context,
    conn: Arc<ConnShared>,
}

impl Next {
    pub(crate) fn new(
        chain: Chain,
        handler: ActionFuture,
        ctx: Context,
        conn: Arc<ConnShared>,
    ) -> Next {
        Next { chain, index: 0, handler, ctx, conn }
    }

    /// Runs the remaining layers and the action; resolves with how the call ended.
    pub async fn run(self) -> Replied {
        match self.chain.get(self.index).cloned() {
            Some(layer) => {
                let ctx = self.ctx.clone();
                let next = Next { index: self.index + 1, ..self };
                layer.call_boxed(ctx, next).await
            }
            None => {
                let (controller, action) = (self.ctx.controller, self.ctx.action.name);
                crate::connection::inbound::catch_panic(
                    self.handler,
                    self.conn,
                    self.ctx.call_id,
                    controller,
                    action,
                )
                .await
            }
        }
    }

    /// Answers the call with `error` without running the action (whose future is dropped).
    pub fn reject(self, error: RpcError) -> Replied {
        let kind = error.kind();
        self.conn.answer_error(self.ctx.call_id, &error);
        Replied::failed(kind)
    }
}

/// Gives each call a `tracing` span `rpc.call` (controller, action, connection, call id) and
/// logs its duration and outcome at `debug` (failures at `info`).
///
/// ```
/// let kernel = rpc_core::RpcKernel::new();
/// kernel.add_middleware(rpc_core::Trace);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace;

impl Middleware for Trace {
    async fn call(&self, ctx: Context, next: Next) -> Replied {
        let span = tracing::info_span!(
            "rpc.call",
            controller = ctx.controller(),
            action = ctx.action().name,
            connection = ctx.connection().id(),
            call_id = ctx.call_id(),
        );
        async move {
            let started = Instant::now();
            let replied = next.run().await;
            let elapsed = started.elapsed();
            match replied.outcome() {
                Ok(()) => tracing::debug!(?elapsed, "call succeeded"),
                Err(kind) => tracing::info!(?elapsed, %kind, "call failed"),
            }
            replied
        }
        .instrument(span)
        .await
    }
}
