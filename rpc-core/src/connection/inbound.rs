//! Calls the remote started: dispatch to the kernel, concurrency slots, cancellation,
//! deadlines, and authentication requests.
//!
//! A call is first polled on the read loop ([`run_inline_or_spawn`]); one that must wait runs
//! on in its own task, so a waiting call never delays another. A call's slot is held by its
//! [`Responder`] inside the call's future: it is released when the final answer is queued,
//! or else only when that future has really been dropped, whether it panicked, timed out or
//! was cancelled (the HTTP/2 rapid-reset lesson: a cancel never frees a slot early).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use super::ConnShared;
use crate::error::{ErrorKind, RpcError};
use crate::kernel::context::Context;
use crate::kernel::controller::ActionFuture;
use crate::kernel::events::Event;
use crate::kernel::middleware::Next;
use crate::kernel::responder::{Replied, Responder, correlation_id};
use crate::kernel::security::{ControllerAccess, Token};
use crate::protocol::codec;
use crate::protocol::frame::{Frame, Kind};
use crate::protocol::message::{self, CallHead, GoAwayCode, RouteSource};
use crate::stream::StreamSender;

/// A call the remote has running on this side.
pub(crate) enum Inbound {
    /// Served here by a handler task.
    Local {
        abort: Option<AbortHandle>,
        /// Credit for the result stream, if the action streams.
        credit: Option<Arc<Semaphore>>,
        /// Where the caller's argument stream goes, if the action takes one.
        args: Option<StreamSender>,
    },
    /// A routed call whose policy check is still running; chunks that arrive meanwhile wait
    /// here (bounded by the sender's chunk window).
    Routing { abort: AbortHandle, queued: Vec<Frame> },
    /// A routed call forwarded to `callee` as its call `callee_id`.
    Routed { callee: Arc<ConnShared>, callee_id: u32, stream: bool },
}

impl Inbound {
    /// Whether the call counts against the stream budget rather than the call budget.
    fn is_stream(&self) -> bool {
        match self {
            Inbound::Local { credit, .. } => credit.is_some(),
            Inbound::Routing { .. } => false,
            Inbound::Routed { stream, .. } => *stream,
        }
    }

    /// Called when the call must stop (cancel, or the caller's connection closed).
    pub(crate) fn abort(self) {
        match self {
            Inbound::Local { abort: Some(handle), .. } | Inbound::Routing { abort: handle, .. } => {
                handle.abort()
            }
            Inbound::Local { abort: None, .. } => {}
            Inbound::Routed { callee, callee_id, .. } => callee.cancel_outbound(callee_id),
        }
    }
}

impl ConnShared {
    /// Counts a call's argument bytes toward the connection's and the kernel's in-flight
    /// budgets, or says which one is full.
    fn reserve_bytes(&self, bytes: usize) -> Result<(), RpcError> {
        use std::sync::atomic::Ordering::AcqRel;
        let held = self.inflight_bytes.fetch_add(bytes, AcqRel);
        if held + bytes > self.limits.max_inflight_bytes {
            self.inflight_bytes.fetch_sub(bytes, AcqRel);
            return Err(RpcError::busy(format!(
                "the calls running on this connection hold {held} bytes of arguments (Limits::max_inflight_bytes); retry later"
            )));
        }
        if !self.kernel.reserve_inflight(bytes) {
            self.inflight_bytes.fetch_sub(bytes, AcqRel);
            return Err(RpcError::busy(
                "the server holds as many argument bytes as it allows (Limits::max_kernel_inflight_bytes); retry later",
            ));
        }
        Ok(())
    }

    pub(crate) fn release_bytes(&self, bytes: usize) {
        self.inflight_bytes.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
        self.kernel.release_inflight(bytes);
    }
}

/// Checks that call `id` may take a slot; on refusal the caller has been answered.
///
/// Returns the locked table so that the caller inserts its entry under the same lock.
pub(crate) fn reserve_slot(
    conn: &Arc<ConnShared>,
    id: u32,
    stream: bool,
) -> Option<parking_lot::MutexGuard<'_, super::IdMap<Inbound>>> {
    let table = conn.inbound.lock();
    if table.contains_key(&id) {
        drop(table);
        conn.protocol_error(id, "Call reuses the id of a call still running");
        return None;
    }
    let (limit, knob) = match stream {
        false => (conn.limits.max_calls_in_flight, "Limits::max_calls_in_flight"),
        true => (conn.limits.max_streams, "Limits::max_streams"),
    };
    // Counting only when the table is large keeps the common case O(1).
    let running = if table.len() < limit {
        0
    } else {
        table.values().filter(|call| call.is_stream() == stream).count()
    };
    if running >= limit {
        drop(table);
        let what = if stream { "streams are" } else { "calls are" };
        conn.send_error(
            id,
            &RpcError::busy(format!(
                "{running} {what} already open on this connection ({knob}); retry later"
            )),
        );
        return None;
    }
    Some(table)
}

/// Handles a Call frame: checks it, reserves a slot and spawns the handler's task. On a
/// routing server, a call with a route section goes to the router instead.
pub(crate) fn start_call(conn: &Arc<ConnShared>, frame: Frame) {
    let id = frame.id;
    if id == 0 || conn.is_local_id(id) {
        return conn.protocol_error(id, "Call with an id from this side's id space");
    }
    if conn.refusing.load(std::sync::atomic::Ordering::Acquire) {
        return conn.send_error(
            id,
            &RpcError::disconnected("the server is shutting down; retry on a new connection"),
        );
    }
    let source = match (&frame.route, conn.role) {
        (Some(_), super::Role::Acceptor) => return crate::kernel::router::route_call(conn, frame),
        (Some(route), super::Role::Dialer) => match RouteSource::decode(route) {
            Ok(source) => Some(Arc::new(source)),
            Err(_) => return conn.protocol_error(id, "malformed route source"),
        },
        (None, _) => None,
    };
    let head = match CallHead::decode(&frame.body, conn.limits.depth_limit()) {
        Ok(head) => head,
        Err(e) => {
            conn.strike();
            return conn
                .send_error(id, &RpcError::bad_arguments(format!("the call did not decode: {e}")));
        }
    };
    let resolved = match conn.kernel.resolve(conn, head.controller, head.action) {
        Ok(resolved) => resolved,
        Err(e) => {
            tracing::debug!(
                connection = conn.id,
                controller = %String::from_utf8_lossy(head.controller),
                action = %String::from_utf8_lossy(head.action),
                "{e}"
            );
            return conn.send_error(id, &e);
        }
    };
    // The argument bytes stay in the receive buffer they arrived in: no copy.
    let args_start = head.args.as_ptr() as usize - frame.body.as_ptr() as usize;
    let args = frame.body.slice(args_start..args_start + head.args.len());
    // The caller's deadline bounds a unary handler (capped by the server, and applied even
    // when the caller sent none). A stream's deadline is its subscription: once accepted it
    // runs until it ends or is cancelled.
    let deadline = (!resolved.action.kind.streams_out()).then(|| {
        head.timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(conn.limits.max_call_timeout)
            .min(conn.limits.max_call_timeout)
    });
    let kind = resolved.action.kind;
    let (args_tx, args_rx) = match kind.streams_in() {
        true => {
            let (tx, rx, allowance) = StreamSender::channel(conn.limits.stream_window.max(1));
            (Some(tx), Some((rx, allowance)))
        }
        false => (None, None),
    };
    // A caller may ask for a larger window than ours, up to 16 times ours; the window
    // granted is announced in StreamOpen.
    let ours = conn.limits.stream_window.max(1);
    let window = if head.window == 0 { ours } else { head.window.min(ours.saturating_mul(16)) };
    let credit = kind
        .streams_out()
        .then(|| Arc::new(Semaphore::new(window.min(Semaphore::MAX_PERMITS as u32) as usize)));

    let Some(mut table) = reserve_slot(conn, id, kind.streams_out()) else { return };
    let bytes = args.len();
    if let Err(e) = conn.reserve_bytes(bytes) {
        drop(table);
        return conn.send_error(id, &e);
    }
    conn.kernel.stats_call_started();
    let ctx = Context {
        connection: crate::Connection { shared: conn.clone() },
        session: conn.session.read().clone(),
        controller: resolved.controller_name,
        action: resolved.action,
        call_id: id,
        source,
    };
    let inline = head.arg_values <= conn.limits.max_inline_values;
    // A plain unary call without policy or middleware is polled right here, and most
    // answer in that poll: such a call enters the table only if it must wait.
    let plain = inline && !kind.streams_in() && !kind.streams_out();
    let inline_token = match plain && !conn.kernel.has_call_layers() {
        true => conn.begin_inline_call(),
        false => {
            table.insert(id, Inbound::Local { abort: None, credit: credit.clone(), args: args_tx });
            0
        }
    };
    drop(table);
    let responder = Responder {
        id,
        ctx,
        credit,
        window,
        args: parking_lot::Mutex::new(args_rx),
        slot: Some(bytes),
        inline_token,
    };
    if kind.streams_in() {
        // The caller may start its argument stream: one window of credit.
        conn.send_credit(id, conn.limits.stream_window.max(1) as u64);
    }
    if inline_token != 0 {
        return run_inline(conn, resolved.controller, resolved.index, args, responder, deadline);
    }
    let names = (resolved.controller_name, resolved.action.name);
    let call = run_call(resolved.controller, resolved.index, args, responder, deadline);
    match inline {
        true => run_inline_or_spawn(conn, id, names, call),
        false => spawn_call(conn, id, call),
    }
}

impl ConnShared {
    /// Starts an inline call (see [`run_inline`]): its token, which its responder and
    /// [`end_inline_poll`] compete to clear.
    fn begin_inline_call(&self) -> u64 {
        use std::sync::atomic::Ordering::{Relaxed, Release};
        let token = self.inline_seq.fetch_add(1, Relaxed) + 1;
        self.inline_call.store(token, Release);
        token
    }

    /// The responder's side of [`end_inline_poll`], when it releases its slot: true if its
    /// call (`token`, 0 for a call with an entry from the start) was still in its inline
    /// poll, so it never entered the table and has nothing to remove from it.
    pub(crate) fn finish_inline_call(&self, token: u64) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        token != 0 && self.inline_call.compare_exchange(token, 0, AcqRel, Acquire).is_ok()
    }
}

/// Ends the inline poll of call `id`: if its responder is still alive (the handler waits,
/// or a hand-written controller kept the responder), the call enters the table now, so
/// that Cancel, the close, the shutdown drain and the slot count see it, and its
/// responder's release removes it later.
///
/// The responder clears the token when it releases the slot first (the common case: the
/// handler answered in its poll) and then has nothing to remove. Clearing it here happens
/// under the table lock, so a responder releasing on another worker meanwhile waits for the
/// entry and removes it.
fn end_inline_poll(conn: &ConnShared, id: u32, token: u64) {
    if conn.inline_call.load(std::sync::atomic::Ordering::Acquire) != token {
        return;
    }
    let mut table = conn.inbound.lock();
    if conn.finish_inline_call(token) {
        table.insert(id, Inbound::Local { abort: None, credit: None, args: None });
    }
}

/// Runs a plain unary call with no policy check and no middleware right here, on the read
/// loop: the handler's future (boxed by the generated code) is polled once, and only a
/// handler that waits gets a task, which takes that same future over. Most handlers answer
/// in that first poll, so most calls cost no task, no second allocation and no entry in
/// the table of running calls (see [`run_inline_or_spawn`] for the price and for when calls
/// do not come here).
///
/// Without an entry during its poll, the call is still safe from what the table guards
/// against: no other frame of this connection is handled until the poll returns, so no
/// Cancel and no call reusing its id can arrive meanwhile, and [`end_inline_poll`] gives it
/// its entry before the read loop goes on if it is still running.
fn run_inline(
    conn: &Arc<ConnShared>,
    controller: Arc<dyn crate::Controller>,
    index: usize,
    args: bytes::Bytes,
    responder: Responder,
    deadline: Option<Duration>,
) {
    let call = CallNames::of(&responder);
    let token = responder.inline_token;
    let started = call.start(conn);
    let mut handler = match start_handler(conn, &call, &controller, index, &args, responder) {
        Ok(handler) => handler,
        Err(kind) => {
            end_inline_poll(conn, call.id, token);
            return call.finish(conn, started, Err(kind));
        }
    };
    drop(args);
    // The waker is never used: a handler still pending after this poll is polled again by
    // its task, and every future registers the waker of its latest poll.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(&mut cx)));
    end_inline_poll(conn, call.id, token);
    match polled {
        Ok(Poll::Ready(replied)) => call.finish(conn, started, replied.outcome()),
        Ok(Poll::Pending) => {
            let task_conn = conn.clone();
            spawn_call(conn, call.id, async move {
                let outcome = await_handler(&task_conn, &call, handler, deadline).await;
                call.finish(&task_conn, started, outcome);
            });
        }
        Err(panic) => {
            report_panic(conn, call.id, call.controller, call.action.name, panic);
            call.finish(conn, started, Err(ErrorKind::Internal));
        }
    }
}

/// Which call this is, for events, logs and errors.
#[derive(Clone, Copy)]
struct CallNames {
    id: u32,
    controller: &'static str,
    action: &'static crate::kernel::controller::ActionInfo,
}

impl CallNames {
    fn of(responder: &Responder) -> CallNames {
        CallNames {
            id: responder.id,
            controller: responder.ctx.controller,
            action: responder.ctx.action,
        }
    }

    /// Reports the start (ActionStarted); returns the time it started if anyone listens
    /// (the clock is read only for listeners: ActionFinished carries the elapsed time).
    fn start(&self, conn: &ConnShared) -> Option<Instant> {
        let kernel = &conn.kernel;
        kernel.emit(|| Event::ActionStarted {
            connection: conn.id,
            controller: self.controller,
            action: self.action.name,
            call_id: self.id,
        });
        kernel.observed().then(Instant::now)
    }

    /// Counts and reports the end (ActionFinished).
    fn finish(&self, conn: &ConnShared, started: Option<Instant>, outcome: Result<(), ErrorKind>) {
        let kernel = &conn.kernel;
        if outcome.is_err() {
            kernel.stats_call_failed();
        }
        kernel.emit(|| Event::ActionFinished {
            connection: conn.id,
            controller: self.controller,
            action: self.action.name,
            call_id: self.id,
            elapsed: started.map(|t| t.elapsed()).unwrap_or_default(),
            outcome,
        });
    }
}

/// Runs call `id` in a task of its own, abortable through its table entry.
fn spawn_call(conn: &Arc<ConnShared>, id: u32, call: impl Future<Output = ()> + Send + 'static) {
    let task = tokio::spawn(call);
    let mut table = conn.inbound.lock();
    // A close since the call's entry was made found no task to abort (or, for a call polled
    // inline, came before the entry did: a handler can close its own connection). The
    // close marks the connection before it empties the table, so under the table's lock
    // one of the two always sees the other.
    if conn.closed.load(std::sync::atomic::Ordering::Acquire) {
        table.remove(&id);
        task.abort();
        return;
    }
    // The call may already have finished (on another worker) and left the table.
    if let Some(Inbound::Local { abort, .. }) = table.get_mut(&id) {
        *abort = Some(task.abort_handle());
    }
}

/// Polls a call once right here, on the read loop; a call that must wait continues in a
/// task of its own.
///
/// Most handlers answer without waiting: they finish in this one poll, with no task to
/// allocate, schedule and tear down, and their answer joins the batch the writer sends for
/// this read. A handler that waits (I/O, a lock, a timer) costs one task, as before. The
/// price: a handler's synchronous work before its first `.await` delays the frames behind
/// it on this connection, so long CPU-bound work belongs in `spawn_blocking` (or set
/// [`Limits::max_inline_values`](crate::Limits::max_inline_values) to 0). Calls with large
/// arguments never come here: decoding them would hold up the read loop.
fn run_inline_or_spawn(
    conn: &Arc<ConnShared>,
    id: u32,
    (controller, action): (&str, &str),
    call: impl Future<Output = ()> + Send + 'static,
) {
    let mut call = Box::pin(call);
    // The waker is never used: a call still pending after this poll is polled again by its
    // task, and every future registers the waker of its latest poll.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(&mut cx)));
    match polled {
        Ok(std::task::Poll::Ready(())) => {}
        Ok(std::task::Poll::Pending) => spawn_call(conn, id, call),
        Err(panic) => {
            // Handler panics are caught inside the call; this is the policy's check or a
            // middleware layer. Dropping the call releases its slot.
            drop(call);
            report_panic(conn, id, controller, action, panic);
        }
    }
}

/// The body of a call's task: access check, argument decoding, middleware, the handler,
/// the caller's deadline, and panics turned into `Internal` errors.
async fn run_call(
    controller: Arc<dyn crate::Controller>,
    index: usize,
    args: bytes::Bytes,
    responder: Responder,
    deadline: Option<Duration>,
) {
    let conn = responder.conn().clone();
    let call = CallNames::of(&responder);
    // The policy decides first (reported as AccessDecided); a denied call still starts and
    // finishes in the events, with its outcome.
    let allowed = check_access(&conn, call.id, &responder).await;
    let started = call.start(&conn);
    let outcome = match allowed {
        Ok(()) => dispatch(&conn, &call, controller, index, args, responder, deadline).await,
        Err(kind) => Err(kind),
    };
    call.finish(&conn, started, outcome);
}

/// Asks the policy whether the call may run; a denial is answered here.
async fn check_access(
    conn: &Arc<ConnShared>,
    id: u32,
    responder: &Responder,
) -> Result<(), ErrorKind> {
    let (controller_name, action) = (responder.ctx.controller, responder.ctx.action);
    let kernel = &conn.kernel;
    if let Some(security) = kernel.security() {
        let access = ControllerAccess::new(controller_name, action, &responder.ctx.connection);
        let session = responder.ctx.session.clone();
        let allowed = security.has_controller_access(&session, &access).await;
        kernel.emit(|| Event::AccessDecided {
            connection: conn.id,
            controller: controller_name,
            action: action.name,
            allowed,
        });
        if !allowed {
            kernel.stats_access_denied();
            tracing::debug!(
                connection = conn.id,
                controller = controller_name,
                action = action.name,
                "access denied"
            );
            let error = if security.hide_forbidden_actions() {
                RpcError::not_found(format!(
                    "no action `{}` on controller `{controller_name}`",
                    action.name
                ))
            } else {
                RpcError::access_denied(format!(
                    "`{controller_name}.{}` is not allowed for this session",
                    action.name
                ))
            };
            let kind = error.kind();
            conn.answer_error(id, &error);
            return Err(kind);
        }
    }
    Ok(())
}

/// Argument decoding, middleware and the handler under the caller's deadline;
/// every way out answers the caller and says how.
async fn dispatch(
    conn: &Arc<ConnShared>,
    call: &CallNames,
    controller: Arc<dyn crate::Controller>,
    index: usize,
    args: bytes::Bytes,
    responder: Responder,
    deadline: Option<Duration>,
) -> Result<(), ErrorKind> {
    let layered = conn.kernel.middleware().map(|chain| (chain, responder.ctx.clone()));
    let handler = start_handler(conn, call, &controller, index, &args, responder)?;
    drop(args);
    // Without middleware the handler runs as it is: its panic is caught in
    // `await_handler`, with the same report and answer that `catch_panic` gives it inside
    // a middleware chain.
    let future: ActionFuture = match layered {
        Some((chain, ctx)) => Box::pin(Next::new(chain, handler, ctx, conn.clone()).run()),
        None => handler,
    };
    await_handler(conn, call, future, deadline).await
}

/// Decodes the arguments and creates the handler's future; a failure (arguments that do
/// not decode, a panic in a Deserialize impl) has been answered when this returns `Err`.
fn start_handler(
    conn: &Arc<ConnShared>,
    call: &CallNames,
    controller: &Arc<dyn crate::Controller>,
    index: usize,
    args: &bytes::Bytes,
    responder: Responder,
) -> Result<ActionFuture, ErrorKind> {
    // Decoding the arguments runs user Deserialize impls: a panic there is caught too.
    let created = std::panic::catch_unwind(AssertUnwindSafe(|| {
        crate::blob::decode_from(args, || controller.call(index, args, responder))
    }));
    match created {
        Ok(Ok(future)) => Ok(future),
        Ok(Err(error)) => {
            tracing::debug!(connection = conn.id, controller = call.controller, action = call.action.name, %error, "call rejected");
            let kind = error.kind();
            // The responder was dropped inside `call`, which released the call's slot.
            conn.send_error(call.id, &error);
            Err(kind)
        }
        Err(panic) => {
            report_panic(conn, call.id, call.controller, call.action.name, panic);
            Err(ErrorKind::Internal)
        }
    }
}

/// Runs a handler under the caller's deadline; a timeout or a panic is answered here.
async fn await_handler(
    conn: &Arc<ConnShared>,
    call: &CallNames,
    future: ActionFuture,
    deadline: Option<Duration>,
) -> Result<(), ErrorKind> {
    let (controller_name, action) = (call.controller, call.action);
    let outcome = match deadline {
        Some(d) => match LazyDeadline::new(d, AssertUnwindSafe(future).catch_unwind()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let error = RpcError::new(
                    ErrorKind::Timeout,
                    format!(
                        "`{controller_name}.{}` did not finish within the caller's deadline of {d:?}",
                        action.name
                    ),
                );
                conn.answer_error(call.id, &error);
                Ok(Replied::failed(ErrorKind::Timeout))
            }
        },
        None => AssertUnwindSafe(future).catch_unwind().await,
    };
    match outcome {
        Ok(replied) => replied.outcome(),
        // The handler panicked (or, with middleware, a layer itself: handler panics are
        // then caught closer, see `catch_panic`).
        Err(panic) => {
            report_panic(conn, call.id, controller_name, action.name, panic);
            Err(ErrorKind::Internal)
        }
    }
}

/// A deadline whose timer starts only if the future does not finish in its first poll.
///
/// Most handlers answer in the poll that starts them (on the read loop, see
/// [`run_inline_or_spawn`]); for them, registering a timer and reading the clock would be
/// pure cost. A handler that waits gets its timer at that first poll, which is when the
/// call started.
struct LazyDeadline<F> {
    future: F,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The deadline passed first.
struct Elapsed;

impl<F: Future + Unpin> LazyDeadline<F> {
    fn new(limit: Duration, future: F) -> LazyDeadline<F> {
        LazyDeadline { future, limit, timer: None }
    }
}

impl<F: Future + Unpin> Future for LazyDeadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = Pin::new(&mut self.future).poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs a handler, turning its panic into an `Internal` answer and outcome, so that
/// middleware around it sees the failure like any other.
pub(crate) async fn catch_panic(
    handler: ActionFuture,
    conn: Arc<ConnShared>,
    id: u32,
    controller: &'static str,
    action: &'static str,
) -> Replied {
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(replied) => replied,
        Err(panic) => {
            report_panic(&conn, id, controller, action, panic);
            Replied::failed(ErrorKind::Internal)
        }
    }
}

pub(crate) fn report_panic(
    conn: &Arc<ConnShared>,
    id: u32,
    controller: &str,
    action: &str,
    panic: Box<dyn std::any::Any + Send>,
) {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into());
    let correlation = correlation_id();
    tracing::error!(correlation_id = %correlation, connection = conn.id, controller, action, "handler panicked: {detail}");
    let error =
        RpcError::internal("the server failed to handle the call").with_correlation_id(correlation);
    conn.answer_error(id, &error);
}

/// Handles a Cancel: the handler's task is aborted; its slot frees once it has stopped. A
/// routed call is cancelled at its callee.
#[inline(never)]
pub(crate) fn cancel(conn: &Arc<ConnShared>, id: u32) {
    // Rapid reset: start-and-cancel churns handlers (a cancel never frees a slot early, but
    // it still costs work); past the budget per minute, close.
    if conn.count_cancel() > conn.limits.max_cancels {
        return conn.close_with_goaway(GoAwayCode::TooManyErrors, "too many cancelled calls");
    }
    conn.stop_chunks(id);
    stop_inbound(conn, id);
}

/// Ends the remote's call `id` from outside its handler, answering `error`: a message of
/// the call (a chunked item of its argument stream, say) could not be received. A running
/// handler is stopped as on Cancel; removing only its entry would leave its task running
/// with nothing left to stop it, not even the connection's close.
pub(crate) fn fail_inbound(conn: &Arc<ConnShared>, id: u32, error: &RpcError) {
    stop_inbound(conn, id);
    conn.send_error(id, error);
}

/// Stops the remote's call `id`, if it runs: a handler's task is aborted (its slot frees,
/// and its entry goes, once it has stopped); a routed call is cancelled at its callee.
fn stop_inbound(conn: &Arc<ConnShared>, id: u32) {
    let mut table = conn.inbound.lock();
    match table.get(&id) {
        Some(Inbound::Local { abort: Some(handle), .. }) => handle.abort(),
        Some(Inbound::Routing { .. } | Inbound::Routed { .. }) => {
            if let Some(call) = table.remove(&id) {
                drop(table);
                call.abort();
            }
        }
        _ => {}
    }
}

/// Handles an Item or End of the argument stream the caller sends on its call `id`.
#[inline(never)]
pub(crate) fn argument_frame(conn: &Arc<ConnShared>, frame: Frame) {
    let mut table = conn.inbound.lock();
    match table.get_mut(&frame.id) {
        Some(Inbound::Local { args: args @ Some(_), .. }) => {
            if let Some(tx) = args.as_ref()
                && let Err(refused) = tx.send(frame.clone())
            {
                drop(table);
                return conn.protocol_error(frame.id, refused.reason());
            }
            if frame.kind == Kind::End {
                *args = None;
            }
        }
        Some(Inbound::Routed { callee, callee_id, .. }) => {
            let (callee, callee_id) = (callee.clone(), *callee_id);
            drop(table);
            super::calls::forward(&callee, frame.kind, callee_id, &frame.body);
        }
        Some(Inbound::Local { args: None, .. }) => {
            drop(table);
            conn.protocol_error(frame.id, "stream item for a call that takes no (more) stream");
        }
        // Late items of a call that ended: expected, ignored.
        _ => {}
    }
}

/// Handles a Credit for a result stream this side produces.
#[inline(never)]
pub(crate) fn credit(conn: &Arc<ConnShared>, frame: Frame) {
    let n = match message::decode_uint(&frame.body) {
        Ok(n) => n.min(u32::MAX as u64) as usize,
        Err(_) => return conn.protocol_error(frame.id, "malformed Credit"),
    };
    let table = conn.inbound.lock();
    match table.get(&frame.id) {
        Some(Inbound::Local { credit: Some(credit), .. }) => super::add_credit(credit, n),
        Some(Inbound::Routed { callee, callee_id, .. }) => {
            let (callee, callee_id) = (callee.clone(), *callee_id);
            drop(table);
            super::calls::forward(&callee, Kind::Credit, callee_id, &frame.body);
        }
        _ => {}
    }
}

/// Handles an Auth frame: runs the policy, replaces the session whole, or closes.
#[inline(never)]
pub(crate) fn authenticate(conn: &Arc<ConnShared>, frame: Frame) {
    let id = frame.id;
    if conn.role != super::Role::Acceptor || conn.is_local_id(id) {
        return conn.protocol_error(id, "Auth sent to the dialing side");
    }
    if codec::prescan(&frame.body, conn.limits.depth_limit()).is_err() || frame.body.len() > 8 << 10
    {
        conn.send_error(id, &RpcError::unauthenticated("authentication failed"));
        conn.kernel.stats_auth_failed();
        conn.kernel.emit(|| Event::AuthenticationFailed { connection: conn.id });
        return conn.close_with_goaway(GoAwayCode::Unauthenticated, "authentication failed");
    }
    if conn.auth_running.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return conn.protocol_error(id, "Auth while another Auth is being checked");
    }
    let conn = conn.clone();
    tokio::spawn(async move {
        let token = Token::from_raw(frame.body);
        let security = conn.kernel.security_or_default();
        let started = Instant::now();
        let connection = crate::Connection { shared: conn.clone() };
        let result = security.authenticate_connection(&token, &connection).await;
        match result {
            Ok(session) => {
                let name = session.username().to_string();
                // The new session replaces the old one whole.
                conn.set_session(session);
                conn.frame_limit
                    .store(conn.limits.frame_limit(), std::sync::atomic::Ordering::Release);
                conn.authenticated.store(true, std::sync::atomic::Ordering::Release);
                conn.kernel.stats_authenticated();
                conn.kernel
                    .emit(|| Event::Authenticated { connection: conn.id, username: name.clone() });
                tracing::debug!(connection = conn.id, user = %name, elapsed = ?started.elapsed(), "authenticated");
                let _ = conn
                    .outbox
                    .push(Kind::Reply, id, None, |buf| codec::encode_into(buf, &(name,)));
            }
            Err(e) => {
                tracing::info!(connection = conn.id, reason = %e, "authentication failed");
                conn.kernel.stats_auth_failed();
                conn.kernel.emit(|| Event::AuthenticationFailed { connection: conn.id });
                // The same message whatever the cause: no oracle for guessing tokens.
                conn.send_error(id, &RpcError::unauthenticated("authentication failed"));
                conn.close_with_goaway(GoAwayCode::Unauthenticated, "authentication failed");
            }
        }
        conn.auth_running.store(false, std::sync::atomic::Ordering::Release);
    });
}
