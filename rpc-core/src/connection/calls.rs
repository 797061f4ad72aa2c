//! Calls this side started: the pending table, the call futures, argument streams,
//! cancellation on drop, and the routed calls a server forwards on behalf of a peer.
//!
//! Cancel safety: dropping a call's future before it resolved removes its entry and sends a
//! Cancel frame, so the remote drops the handler. Dropping a result stream does the same.

use std::collections::hash_map::Entry;
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::ConnShared;
use super::producer::{Sent, send_stream};
use super::slots::{NoSlot, Slot, Slots};
use crate::client::Progress;
use crate::error::{ErrorKind, RpcError};
use crate::protocol::codec;
use crate::protocol::frame::{Frame, Kind};
use crate::protocol::message::{self, CallHead};
use crate::stream::{RpcStream, StreamSender};

/// A call this side has outstanding.
pub(crate) struct Pending {
    pub(crate) sink: Sink,
    /// Credit the remote granted for the argument stream this side sends on the call.
    pub(crate) arg_credit: Option<Arc<Semaphore>>,
    /// Where chunked transfers of this call report (from [`Progress::track`]).
    pub(crate) progress: Option<Progress>,
    /// When the call times out (unary calls; see [`super::deadlines`]).
    pub(crate) deadline: Option<Instant>,
}

/// Where the answer to a pending call goes.
pub(crate) enum Sink {
    /// A unary call (or a control request): the one answer frame, left in the entry.
    Unary(Answer),
    /// A streaming call: StreamOpen, items (within credit), then End or Error.
    Stream(StreamSender),
    /// A call this routing server forwarded for `caller`: answers go back to it, unread.
    Routed { caller: Weak<ConnShared>, caller_id: u32, _slot: Slot },
}

/// The answer slot of a unary call, kept in its pending entry: the read loop leaves the
/// answer frame here and wakes the caller, who then takes the entry and the answer together
/// ([`ConnShared::answer`]).
///
/// A oneshot channel per call did the same job with an allocation of its shared state and
/// its atomics (callgrind: 122 instructions more per call at 64 in flight). Dropping the
/// entry without an answer (the deadline sweeper, the connection's close) wakes the caller,
/// who then finds no entry, as a closed channel would have told it.
pub(crate) struct Answer(AnswerState);

enum AnswerState {
    /// No answer yet; the caller's waker once it has polled.
    Waiting(Option<Waker>),
    /// The answer, for the caller to take.
    Arrived(Frame),
}

impl Answer {
    pub(crate) fn new() -> Answer {
        Answer::waking(None)
    }

    /// An answer slot that wakes `waker`, if given, when the answer arrives: a caller that
    /// registers its waker with the entry needs no look at the table on its first wait
    /// (see [`ConnShared::answer`]).
    fn waking(waker: Option<Waker>) -> Answer {
        Answer(AnswerState::Waiting(waker))
    }

    /// Whether the answer arrived (and waits for the caller to take it).
    pub(crate) fn arrived(&self) -> bool {
        matches!(self.0, AnswerState::Arrived(_))
    }

    /// Leaves `frame` for the caller and returns the waker to wake once the table's lock is
    /// released. A second answer to the same call is ignored.
    fn arrive(&mut self, frame: Frame) -> Option<Waker> {
        match &mut self.0 {
            AnswerState::Waiting(waker) => {
                let waker = waker.take();
                self.0 = AnswerState::Arrived(frame);
                waker
            }
            AnswerState::Arrived(_) => None,
        }
    }

    /// Takes the answer, if it arrived.
    fn take(&mut self) -> Option<Frame> {
        if !self.arrived() {
            return None;
        }
        match std::mem::replace(&mut self.0, AnswerState::Waiting(None)) {
            AnswerState::Arrived(frame) => Some(frame),
            AnswerState::Waiting(_) => None,
        }
    }

    /// Remembers the caller's waker (unless the one held already wakes the same task).
    fn wait(&mut self, waker: &Waker) {
        if let AnswerState::Waiting(held) = &mut self.0 {
            match held {
                Some(held) if held.will_wake(waker) => {}
                _ => *held = Some(waker.clone()),
            }
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // Dropped unanswered: the caller learns it on its next poll, which finds no entry.
        if let AnswerState::Waiting(Some(waker)) = &mut self.0 {
            waker.wake_by_ref();
        }
    }
}

impl Pending {
    /// Whether this is a unary call whose answer arrived and waits for its caller.
    pub(crate) fn answered(&self) -> bool {
        matches!(&self.sink, Sink::Unary(answer) if answer.arrived())
    }

    pub(crate) fn new(sink: Sink) -> Pending {
        Pending { sink, arg_credit: None, progress: None, deadline: None }
    }

    /// Called when the connection closes with the call still outstanding.
    pub(crate) fn fail(self, alias: Option<&str>) {
        if let Sink::Routed { caller, caller_id, .. } = self.sink
            && let Some(caller) = caller.upgrade()
        {
            let who = alias.map(|a| format!("peer `{a}`")).unwrap_or_else(|| "the peer".into());
            caller.answer_error(
                caller_id,
                &RpcError::new(
                    ErrorKind::PeerNotFound,
                    format!("{who} disconnected during the call"),
                ),
            );
        }
        // Unary and stream sinks: dropping the entry wakes the caller, who reads the
        // connection's close reason.
    }
}

/// Removes a pending entry and cancels the call at the remote, unless disarmed.
struct CallGuard<'a> {
    conn: &'a Arc<ConnShared>,
    id: u32,
    armed: bool,
    sent: bool,
}

impl CallGuard<'_> {
    /// Disarms the guard unless `result` leaves the remote working on a call nobody waits
    /// for (a timeout, an abort, a transfer refused as too large).
    fn settle<R>(&mut self, result: &Result<R, RpcError>) {
        let cancel = match result {
            Ok(_) => false,
            Err(e) => {
                matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Cancelled | ErrorKind::TooLarge)
            }
        };
        if !cancel {
            // Answered (or the connection is gone): nothing to cancel.
            self.armed = false;
        }
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if self.sent {
                self.conn.cancel_outbound(self.id);
            } else {
                self.conn.outbound.lock().remove(&self.id);
            }
        }
    }
}

/// A unary call registered and queued by [`ConnShared::begin_unary`].
struct UnaryCall<'a> {
    id: u32,
    /// The [`Progress`] scope the call runs in, if any.
    progress: Option<Progress>,
    /// Arguments too large for one frame, still to be sent in chunks.
    oversize: Option<bytes::Bytes>,
    guard: CallGuard<'a>,
}

/// What a call sends: its target, arguments, route and deadline.
pub(crate) struct CallSpec<'a, A: ?Sized> {
    pub(crate) controller: &'a str,
    pub(crate) action: &'a str,
    pub(crate) args: &'a A,
    pub(crate) route: Option<&'a [u8]>,
    pub(crate) timeout: Duration,
}

impl<A: ?Sized> CallSpec<'_, A> {
    #[cold]
    fn timeout_error(&self) -> RpcError {
        RpcError::new(
            ErrorKind::Timeout,
            format!(
                "`{}.{}` did not answer within {:?} (raise it with with_timeout or Limits::call_timeout)",
                self.controller, self.action, self.timeout
            ),
        )
    }
}

impl ConnShared {
    /// Forgets call `id` and tells the remote to stop it.
    pub(crate) fn cancel_outbound(&self, id: u32) {
        let removed = self.outbound.lock().remove(&id);
        if let Some(pending) = removed {
            self.stop_chunks(id);
            if !pending.answered() {
                let _ = self.outbox.push(Kind::Cancel, id, None, |_| Ok(()));
            }
        }
    }

    /// Waits for the answer to unary call `id` and takes it with the call's entry; `None`
    /// if the entry went without an answer (the deadline sweeper dropped it, or the
    /// connection closed).
    ///
    /// `registered`: the entry was made with [`Answer::waking`] in this same poll of the
    /// caller's task, so the first poll waits without locking the table. An answer that
    /// arrived meanwhile woke that waker, and the task is polled again at once.
    fn answer(&self, id: u32, mut registered: bool) -> impl Future<Output = Option<Frame>> + '_ {
        std::future::poll_fn(move |cx| {
            if std::mem::take(&mut registered) {
                return Poll::Pending;
            }
            let mut table = self.outbound.lock();
            let Entry::Occupied(mut entry) = table.entry(id) else {
                return Poll::Ready(None);
            };
            let Sink::Unary(answer) = &mut entry.get_mut().sink else {
                return Poll::Ready(None);
            };
            match answer.take() {
                Some(frame) => {
                    let pending = entry.remove();
                    drop(table);
                    drop(pending);
                    Poll::Ready(Some(frame))
                }
                None => {
                    answer.wait(cx.waker());
                    Poll::Pending
                }
            }
        })
    }

    /// Ends call `id` here with `error` (delivered to whoever waits for it) and tells the
    /// remote to stop it.
    pub(crate) fn fail_outbound(self: &Arc<Self>, id: u32, error: &RpcError) {
        if self.outbound.lock().get(&id).is_none_or(|call| call.answered()) {
            // Gone, or answered already: the remote has nothing left to stop.
            return;
        }
        let mut body = bytes::BytesMut::new();
        message::encode_error(&mut body, error);
        on_response(self, Frame::new(Kind::Error, id, body.freeze()));
        self.stop_chunks(id);
        let _ = self.outbox.push(Kind::Cancel, id, None, |_| Ok(()));
    }

    /// Registers a pending call; fails if the connection closed meanwhile.
    pub(crate) fn register_pending(&self, id: u32, pending: Pending) -> Result<(), RpcError> {
        let mut table = self.outbound.lock();
        if table.len() >= self.limits.max_outbound_calls {
            return Err(RpcError::busy(format!(
                "{} calls are already outstanding on this connection (Limits::max_outbound_calls)",
                table.len()
            )));
        }
        table.insert(id, pending);
        drop(table);
        // `close` sets the flag before draining the table: checking after the insert means
        // either close drains this entry or this check sees the flag.
        if self.is_closed() {
            self.outbound.lock().remove(&id);
            return Err(self.disconnect_error());
        }
        Ok(())
    }

    /// Queues the Call frame; arguments too large for one frame come back, to be sent in
    /// chunks by [`ConnShared::send_call_chunks`].
    fn queue_call<A: Serialize + ?Sized>(
        &self,
        id: u32,
        spec: &CallSpec<'_, A>,
        window: u32,
    ) -> Result<Option<bytes::Bytes>, RpcError> {
        let timeout_ms = spec.timeout.as_millis().min(u64::MAX as u128) as u64;
        self.queue_message(Kind::Call, id, spec.route, |buf| {
            CallHead::encode_start(buf, spec.controller, spec.action);
            codec::encode_into(buf, spec.args)?;
            CallHead::encode_tail(buf, Some(timeout_ms), window);
            Ok(())
        })
    }

    /// Sends what [`ConnShared::queue_call`] handed back. Boxed: a chunked transfer is rare,
    /// and its state (timers, credit) would otherwise enlarge every call's future.
    async fn send_call_chunks(
        self: &Arc<Self>,
        id: u32,
        oversize: Option<bytes::Bytes>,
    ) -> Result<(), RpcError> {
        match oversize {
            Some(frame) => Box::pin(self.send_chunks(id, frame)).await,
            None => Ok(()),
        }
    }

    /// Takes one of the calls-in-flight slots the remote granted, waiting (until `deadline`)
    /// only if none is free. The wait is boxed so that its timer does not enlarge the future
    /// of every call.
    async fn acquire_slot<A: ?Sized>(
        &self,
        deadline: Instant,
        spec: &CallSpec<'_, A>,
        slots: &Arc<Slots>,
    ) -> Result<Slot, RpcError> {
        let no_slot = match slots.try_take() {
            Ok(slot) => return Ok(slot),
            Err(e) => e,
        };
        if self.role == super::Role::Acceptor {
            // A server never queues calls to a client: past the budget, the caller hears
            // Busy at once instead of the server buffering.
            return Err(match no_slot {
                NoSlot::Closed => self.disconnect_error(),
                NoSlot::Full => RpcError::busy(
                    "as many calls to this client are outstanding as allowed (Limits::max_calls_to_client)",
                ),
            });
        }
        let wait = Box::pin(tokio::time::timeout_at(deadline, slots.take()));
        match wait.await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_)) => Err(self.disconnect_error()),
            Err(_) => Err(spec.timeout_error()),
        }
    }

    /// Calls a unary action.
    ///
    /// The future stays small (rarely needed state, such as a wait for a call slot, a
    /// chunked transfer or a progress scope, is boxed): a client with many calls in flight
    /// holds one of these per call.
    pub(crate) async fn call<A, R>(self: &Arc<Self>, spec: CallSpec<'_, A>) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let deadline = Instant::now() + spec.timeout;
        let _slot = self.acquire_slot(deadline, &spec, &self.call_slots).await?;
        // From here to the answer's first poll nothing waits (unless the arguments go in
        // chunks), so the entry can hold this poll's waker from the start.
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let UnaryCall { id, progress, oversize, mut guard } =
            self.begin_unary(&spec, deadline, None, Some(waker))?;
        let work = async {
            let registered = oversize.is_none();
            self.send_call_chunks(id, oversize).await?;
            self.read_answer(id, &spec, deadline, self.answer(id, registered).await)
        };
        let result = match progress {
            Some(p) => Box::pin(abortable(work, p)).await,
            None => work.await,
        };
        guard.settle(&result);
        result
    }

    /// Calls a unary action and sends `input` as its argument stream meanwhile.
    pub(crate) async fn call_with_input<A, R, T>(
        self: &Arc<Self>,
        spec: CallSpec<'_, A>,
        input: RpcStream<T>,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
        T: Serialize + Send + 'static,
    {
        let deadline = Instant::now() + spec.timeout;
        let _slot = self.acquire_slot(deadline, &spec, &self.call_slots).await?;
        let credit = Arc::new(Semaphore::new(0));
        let UnaryCall { id, progress, oversize, mut guard } =
            self.begin_unary(&spec, deadline, Some(credit.clone()), None)?;
        let work = async {
            self.send_call_chunks(id, oversize).await?;
            // Send the argument stream while waiting for the answer; the answer wins.
            let produce = produce_arguments(self.clone(), id, credit, input);
            let answer = self.answer(id, false);
            tokio::pin!(answer, produce);
            let mut produced = false;
            let frame = loop {
                tokio::select! {
                    frame = &mut answer => break frame,
                    _ = &mut produce, if !produced => produced = true,
                }
            };
            self.read_answer(id, &spec, deadline, frame)
        };
        let result = match progress {
            Some(p) => abortable(work, p).await,
            None => work.await,
        };
        guard.settle(&result);
        result
    }

    /// Registers a unary call (watched by the deadline sweeper) and queues its Call frame.
    /// `waker`, if given, is woken when the answer arrives (see [`Answer::waking`]).
    fn begin_unary<A: Serialize + ?Sized>(
        self: &Arc<Self>,
        spec: &CallSpec<'_, A>,
        deadline: Instant,
        arg_credit: Option<Arc<Semaphore>>,
        waker: Option<Waker>,
    ) -> Result<UnaryCall<'_>, RpcError> {
        let id = self.alloc_id()?;
        let mut pending = Pending::new(Sink::Unary(Answer::waking(waker)));
        pending.arg_credit = arg_credit;
        let progress = Progress::current();
        pending.progress = progress.clone();
        pending.deadline = Some(deadline);
        let (guard, oversize) = self.register_and_queue(id, pending, spec, 0)?;
        self.watch_deadline(deadline);
        Ok(UnaryCall { id, progress, oversize, guard })
    }

    /// Registers `pending` as call `id` and queues its Call frame. The guard forgets the
    /// call if it ends unanswered, and cancels it at the remote only once the frame was
    /// queued.
    fn register_and_queue<A: Serialize + ?Sized>(
        self: &Arc<Self>,
        id: u32,
        pending: Pending,
        spec: &CallSpec<'_, A>,
        window: u32,
    ) -> Result<(CallGuard<'_>, Option<bytes::Bytes>), RpcError> {
        self.register_pending(id, pending)?;
        let mut guard = CallGuard { conn: self, id, armed: true, sent: false };
        let oversize = self.queue_call(id, spec, window)?;
        guard.sent = true;
        Ok((guard, oversize))
    }

    /// Turns what [`ConnShared::answer`] delivered into a unary call's result. No timer
    /// waits for the answer: the connection's deadline sweeper drops the pending entry once
    /// the deadline has passed, which is told apart from a lost connection by the clock.
    fn read_answer<A: ?Sized, R: DeserializeOwned>(
        &self,
        id: u32,
        spec: &CallSpec<'_, A>,
        deadline: Instant,
        answer: Option<Frame>,
    ) -> Result<R, RpcError> {
        let frame = match answer {
            Some(frame) => frame,
            None if Instant::now() >= deadline => return Err(spec.timeout_error()),
            None => return Err(self.disconnect_error()),
        };
        if frame.kind == Kind::StreamOpen {
            // The remote streams where we expect one value: stop its producer.
            let _ = self.outbox.push(Kind::Cancel, id, None, |_| Ok(()));
        }
        decode_reply(frame)
    }

    /// Calls a streaming action (optionally sending an argument stream too); resolves once
    /// the remote accepted the subscription.
    pub(crate) async fn call_stream<A, R, T>(
        self: &Arc<Self>,
        spec: CallSpec<'_, A>,
        input: Option<RpcStream<T>>,
    ) -> Result<RpcStream<R>, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
        T: Serialize + Send + 'static,
    {
        let deadline = Instant::now() + spec.timeout;
        let slot = self.acquire_slot(deadline, &spec, &self.stream_slots).await?;
        let id = self.alloc_id()?;
        let window = self.limits.result_stream_window.max(1);
        let (tx, mut rx, allowance) = StreamSender::channel(window);
        let mut pending = Pending::new(Sink::Stream(tx));
        let credit = input.as_ref().map(|_| Arc::new(Semaphore::new(0)));
        pending.arg_credit = credit.clone();
        let (mut guard, oversize) = self.register_and_queue(id, pending, &spec, window)?;
        self.send_call_chunks(id, oversize).await?;
        // The argument stream starts at once: the remote's credit paces it.
        let producer = match (input, credit) {
            (Some(input), Some(credit)) => Some(
                tokio::spawn(produce_arguments(self.clone(), id, credit, input)).abort_handle(),
            ),
            _ => None,
        };
        let abort_producer = |p: &Option<tokio::task::AbortHandle>| {
            if let Some(p) = p {
                p.abort();
            }
        };
        let first = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                abort_producer(&producer);
                guard.armed = false;
                return Err(self.disconnect_error());
            }
            Err(_) => {
                abort_producer(&producer);
                return Err(spec.timeout_error());
            }
        };
        match first.kind {
            Kind::StreamOpen => {
                guard.armed = false;
                // The callee announces the window it granted (it may be smaller than asked):
                // credit is returned in halves of that, or the stream would stall.
                let granted = message::decode_uint(&first.body).unwrap_or(0) as u32;
                let window = if granted > 0 { window.min(granted) } else { window };
                Ok(RpcStream::remote_result(
                    rx,
                    self.clone(),
                    id,
                    window,
                    slot,
                    producer,
                    allowance,
                ))
            }
            Kind::Error => {
                abort_producer(&producer);
                guard.armed = false;
                Err(decode_error(&first))
            }
            Kind::Reply => {
                abort_producer(&producer);
                guard.armed = false;
                Err(RpcError::protocol(format!(
                    "`{}.{}` answered with a value, not a stream: the two sides disagree on its signature",
                    spec.controller, spec.action
                )))
            }
            other => {
                abort_producer(&producer);
                Err(RpcError::protocol(format!("unexpected {other:?} before StreamOpen")))
            }
        }
    }

    /// Sends a control request (Auth, PeerRegister, PeerUnregister) and decodes its Reply.
    pub(crate) async fn request<R: DeserializeOwned>(
        self: &Arc<Self>,
        kind: Kind,
        body: &[u8],
        timeout: Duration,
    ) -> Result<R, RpcError> {
        let id = self.alloc_id()?;
        self.register_pending(id, Pending::new(Sink::Unary(Answer::new())))?;
        let mut guard = CallGuard { conn: self, id, armed: true, sent: false };
        self.outbox
            .push_raw(kind, id, None, body)
            .map_err(|e| e.into_rpc_error(self.limits.frame_limit()))?;
        guard.sent = true;
        let frame = match tokio::time::timeout(timeout, self.answer(id, false)).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                guard.armed = false;
                return Err(self.disconnect_error());
            }
            Err(_) => {
                return Err(RpcError::new(
                    ErrorKind::Timeout,
                    format!("{kind:?} was not answered within {timeout:?}"),
                ));
            }
        };
        guard.armed = false;
        decode_reply(frame)
    }

    /// Authenticates this connection with `token`; returns the session's user name.
    pub(crate) async fn authenticate(
        self: &Arc<Self>,
        token: &crate::Token,
        timeout: Duration,
    ) -> Result<String, RpcError> {
        match self.request::<(String,)>(Kind::Auth, token.raw(), timeout).await {
            Ok((name,)) => Ok(name),
            Err(e) if e.kind() == ErrorKind::Unauthenticated => Err(e),
            Err(e) => Err(RpcError::unauthenticated(format!("authentication failed: {e}"))),
        }
    }
}

/// Runs `work` until it ends or the [`Progress`] scope it runs in is aborted.
async fn abortable<R>(
    work: impl Future<Output = Result<R, RpcError>>,
    progress: Progress,
) -> Result<R, RpcError> {
    tokio::select! {
        result = work => result,
        _ = progress.aborted() => Err(RpcError::new(ErrorKind::Cancelled, "the call was aborted")),
    }
}

/// Sends the items of `input` as the argument stream of call `id`, each only once the remote
/// granted credit for it, then End.
async fn produce_arguments<T: Serialize + Send + 'static>(
    conn: Arc<ConnShared>,
    id: u32,
    credit: Arc<Semaphore>,
    mut input: RpcStream<T>,
) {
    match send_stream(&conn, id, credit, &mut input).await {
        Sent::Completed => {
            let _ = conn.outbox.push(Kind::End, id, None, |_| Ok(()));
        }
        Sent::Failed(e) => {
            // The caller's own stream failed: the call cannot complete meaningfully.
            tracing::debug!(connection = conn.id, call = id, "argument stream failed: {e}");
            let error =
                RpcError::new(e.kind(), format!("the argument stream failed: {}", e.message()));
            conn.fail_outbound(id, &error);
        }
        Sent::Unsent(e) => {
            tracing::debug!(connection = conn.id, call = id, "argument stream stopped: {e}");
            conn.cancel_outbound(id);
        }
        Sent::Gone => {}
    }
}

fn decode_error(frame: &Frame) -> RpcError {
    message::decode_error(&frame.body)
        .unwrap_or_else(|e| RpcError::protocol(format!("malformed Error frame: {e}")))
}

fn decode_reply<R: DeserializeOwned>(frame: Frame) -> Result<R, RpcError> {
    match frame.kind {
        Kind::Reply => {
            // Blobs in the reply share the frame's memory.
            let decoded =
                crate::blob::decode_from(&frame.body, || codec::decode_value(&frame.body));
            decoded.map_err(|e| {
                RpcError::protocol(format!(
                    "the reply did not decode into the expected type ({e}): the two sides disagree on the action's signature"
                ))
            })
        }
        Kind::Error => Err(decode_error(&frame)),
        Kind::StreamOpen => {
            Err(RpcError::protocol("the action answered with a stream where a value was expected"))
        }
        other => Err(RpcError::protocol(format!("unexpected {other:?} frame as a reply"))),
    }
}

/// Routes a response frame (Reply, Error, StreamOpen, or a result-stream Item/End) to the
/// call waiting for it, or forwards it to the caller of a routed call.
pub(crate) fn on_response(conn: &Arc<ConnShared>, frame: Frame) {
    let ends = matches!(frame.kind, Kind::Reply | Kind::Error | Kind::End);
    let mut table = conn.outbound.lock();
    // One lookup per frame: every stream item and routed answer comes through here.
    let Entry::Occupied(mut entry) = table.entry(frame.id) else {
        // A late frame for a call this side already gave up on: expected, ignored.
        return;
    };
    match &mut entry.get_mut().sink {
        Sink::Unary(answer) => {
            // The one answer (a StreamOpen here means the remote streams where this side
            // expects a value: the caller tells it to stop). Anything else is ignored.
            if ends || frame.kind == Kind::StreamOpen {
                let waker = answer.arrive(frame);
                drop(table);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
        }
        Sink::Stream(tx) if !ends => {
            let sent = tx.send(frame);
            drop(table);
            if let Err(refused) = sent {
                conn.protocol_error(0, refused.reason());
            }
        }
        Sink::Routed { caller, caller_id, .. } if !ends => {
            let (caller, caller_id) = (caller.clone(), *caller_id);
            drop(table);
            if let Some(caller) = caller.upgrade() {
                forward(&caller, frame.kind, caller_id, &frame.body);
            }
        }
        // The last frame of a stream or a routed call: the entry goes with it.
        Sink::Stream(_) | Sink::Routed { .. } => {
            let pending = entry.remove();
            drop(table);
            match pending.sink {
                Sink::Stream(tx) => {
                    if let Err(refused) = tx.send(frame) {
                        conn.protocol_error(0, refused.reason());
                    }
                }
                Sink::Routed { caller, caller_id, _slot } => {
                    if let Some(caller) = caller.upgrade() {
                        caller.release_inbound(caller_id);
                        forward(&caller, frame.kind, caller_id, &frame.body);
                    }
                }
                Sink::Unary(_) => {} // matched by the first arm
            }
        }
    }
}

/// Handles a Credit for the argument stream of a call this side started (or forwards it to
/// the caller of a routed call).
#[inline(never)]
pub(crate) fn on_credit(conn: &Arc<ConnShared>, frame: Frame) {
    let n = match message::decode_uint(&frame.body) {
        Ok(n) => n.min(u32::MAX as u64) as usize,
        Err(_) => return conn.protocol_error(frame.id, "malformed Credit"),
    };
    let table = conn.outbound.lock();
    match table.get(&frame.id) {
        Some(Pending { sink: Sink::Routed { caller, caller_id, .. }, .. }) => {
            let (caller, caller_id) = (caller.clone(), *caller_id);
            drop(table);
            if let Some(caller) = caller.upgrade() {
                forward(&caller, Kind::Credit, caller_id, &frame.body);
            }
        }
        Some(Pending { arg_credit: Some(credit), .. }) => super::add_credit(credit, n),
        _ => {}
    }
}

/// Queues an already-encoded frame on `to` (routing: the body is copied, never re-encoded).
/// An Items frame for a peer that does not read them goes as one Item frame per item.
pub(crate) fn forward(to: &Arc<ConnShared>, kind: Kind, id: u32, body: &[u8]) {
    if kind == Kind::Items && !to.batch_items {
        return forward_items_one_by_one(to, id, body);
    }
    if let Err(e) = to.outbox.push_raw(kind, id, None, body) {
        let e = e.into_rpc_error(to.limits.frame_limit());
        to.on_push_error(&e);
    }
}

fn forward_items_one_by_one(to: &Arc<ConnShared>, id: u32, body: &[u8]) {
    let Ok(mut batch) = message::ItemBatch::new(body) else {
        tracing::debug!(connection = to.id, call = id, "dropped a malformed Items frame");
        return;
    };
    loop {
        match batch.next_item(to.limits.depth_limit()) {
            Ok(Some(item)) => forward(to, Kind::Item, id, item),
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(
                    connection = to.id,
                    call = id,
                    "dropped the rest of a malformed Items frame: {e}"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::waker;

    use super::super::tests::{Counter, connection};
    use super::*;

    fn reply(id: u32, byte: u8) -> Frame {
        Frame::new(Kind::Reply, id, bytes::Bytes::from(vec![byte]))
    }

    #[test]
    fn an_answer_wakes_its_caller_once_and_keeps_the_first_frame() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let mut answer = Answer::new();
        assert!(answer.take().is_none());
        answer.wait(&waker(counter.clone()));
        answer.wait(&waker(counter.clone())); // the same task again: one waker kept
        let woken = answer.arrive(reply(1, 1)).expect("the caller waits");
        woken.wake();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        // A duplicate answer from the remote neither replaces the first nor wakes again.
        assert!(answer.arrive(reply(1, 2)).is_none());
        assert!(answer.arrived());
        assert_eq!(&answer.take().expect("arrived").body[..], &[1]);
        drop(answer);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "taken: dropping wakes nobody");
    }

    #[test]
    fn an_answer_that_arrived_outlives_the_connection_and_a_missing_one_does_not_hang() {
        use futures::FutureExt;
        let conn = connection();
        conn.register_pending(1, Pending::new(Sink::Unary(Answer::new()))).unwrap();
        conn.register_pending(3, Pending::new(Sink::Unary(Answer::new()))).unwrap();
        let mut waiting = Box::pin(conn.answer(3, false));
        assert!(waiting.as_mut().now_or_never().is_none(), "no answer yet");
        on_response(&conn, reply(1, 7));
        // The connection closes before call 1's caller got to its answer.
        conn.close(RpcError::disconnected("test"), None);
        let answer = conn.answer(1, false).now_or_never().expect("ready");
        assert_eq!(&answer.expect("the answer that arrived").body[..], &[7]);
        assert_eq!(waiting.now_or_never(), Some(None), "call 3 hears the close");
        assert_eq!(conn.outbound.lock().len(), 0, "nothing left behind");
    }

    #[test]
    fn an_entry_dropped_unanswered_wakes_its_caller() {
        // The deadline sweeper and the connection's close drop entries: the caller must hear
        // of it, or it would wait forever.
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let mut pending = Pending::new(Sink::Unary(Answer::new()));
        if let Sink::Unary(answer) = &mut pending.sink {
            answer.wait(&waker(counter.clone()));
        }
        assert!(!pending.answered());
        pending.fail(None);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_caller_registered_with_its_entry_is_woken_even_by_an_answer_before_its_first_wait() {
        let conn = connection();
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let task = waker(counter.clone());
        let mut cx = std::task::Context::from_waker(&task);
        let waking = || Pending::new(Sink::Unary(Answer::waking(Some(task.clone()))));

        // The answer comes while the caller is still between its registration and its
        // first wait (another worker's read loop): the registered waker hears it.
        conn.register_pending(1, waking()).unwrap();
        on_response(&conn, reply(1, 5));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "woken by the answer");
        let mut first = Box::pin(conn.answer(1, true));
        assert!(first.as_mut().poll(&mut cx).is_pending(), "the first wait looks at nothing");
        match first.as_mut().poll(&mut cx) {
            Poll::Ready(Some(frame)) => assert_eq!(&frame.body[..], &[5]),
            other => panic!("the woken task finds its answer, not {other:?}"),
        }

        // The usual order: the first wait, then the answer.
        conn.register_pending(3, waking()).unwrap();
        let mut second = Box::pin(conn.answer(3, true));
        assert!(second.as_mut().poll(&mut cx).is_pending());
        on_response(&conn, reply(3, 6));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2, "woken once more");
        assert!(matches!(second.as_mut().poll(&mut cx), Poll::Ready(Some(_))));
        assert_eq!(conn.outbound.lock().len(), 0, "both entries taken");
    }
}
