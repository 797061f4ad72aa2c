//! One connection, symmetric: either end may call and either may serve.
//!
//! - `outbox`: the single coalescing write queue.
//! - `producer`: sends a local stream's items within the remote's credit, batched.
//! - `calls`: calls this side started (ids, pending table, cancellation).
//! - `deadlines`: the one timer per connection that times those calls out.
//! - `alarm`: the thread that serves the connections' deadlines, off the runtime's timers.
//! - `slots`: the calls-in-flight budget the remote granted.
//! - `inbound`: calls the remote started (dispatch to the kernel, slots, cancellation).
//! - `driver`: the handshake and the read and write loops that move bytes.
//!
//! Call ids: the side that dialed allocates odd ids, the side that accepted even ids, so both
//! can start calls at once without colliding (`PROTOCOL.md`, "Call ids").

pub(crate) mod alarm;
pub(crate) mod calls;
pub(crate) mod chunks;
pub(crate) mod deadlines;
pub(crate) mod driver;
pub(crate) mod inbound;
pub(crate) mod outbox;
pub(crate) mod producer;
pub(crate) mod slots;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use futures::task::AtomicWaker;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Semaphore, watch};

use crate::client::CallTarget;
use crate::error::{ErrorKind, RpcError};
use crate::kernel::RpcKernel;
use crate::kernel::controller::{Controller, ControllerClient};
use crate::kernel::security::Session;
use crate::limits::Limits;
use crate::protocol::frame::{Frame, Kind};
use crate::protocol::message::{self, GoAway, GoAwayCode};
use crate::transport::TransportInfo;

use calls::Pending;
use inbound::Inbound;
use outbox::Outbox;

/// A table keyed by call id. Ids are sequential numbers chosen by the two ends of the
/// connection, not by a third party able to aim at one bucket, so a multiplicative hash is
/// enough (SipHash cost ~900 instructions per round trip across the tables).
pub(crate) type IdMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of a `u32` id.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Past this id, a connection stops taking new calls (they go to a fresh connection), long
/// before ids could run out at 2^31.
const DRAIN_IDS_AT: u32 = (1 << 31) - (1 << 20);

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Dialed out: allocates odd call ids.
    Dialer,
    /// Accepted: allocates even call ids.
    Acceptor,
}

/// State shared by a connection's handle, its read loop, its writer and its handlers.
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) role: Role,
    pub(crate) info: TransportInfo,
    pub(crate) limits: Arc<Limits>,
    pub(crate) kernel: RpcKernel,
    pub(crate) outbox: Outbox,
    next_id: AtomicU32,
    pub(crate) outbound: Mutex<IdMap<Pending>>,
    /// When the unary calls in `outbound` time out.
    pub(crate) deadlines: deadlines::CallDeadlines,
    /// Whether this connection's deadlines use the runtime's timers (its clock was paused
    /// when the connection started) rather than the alarm thread ([`ConnShared::alarm_at`]).
    runtime_timers: bool,
    /// The remote accepts Items frames (several stream items per frame).
    pub(crate) batch_items: bool,
    pub(crate) inbound: Mutex<IdMap<Inbound>>,
    pub(crate) session: RwLock<Arc<Session>>,
    /// The frame limit the read loop enforces (raised once authenticated); shared with the
    /// transport's reader (`TransportReader::follow_frame_limit`).
    pub(crate) frame_limit: Arc<AtomicUsize>,
    closed: AtomicBool,
    /// Set by a GoAway(ShuttingDown): no new calls go out on this connection.
    draining: AtomicBool,
    /// Set while shutting down: new calls from the remote are refused.
    pub(crate) refusing: AtomicBool,
    close_reason: Mutex<Option<RpcError>>,
    closed_tx: watch::Sender<bool>,
    /// The read loop, waiting for bytes: woken by the close (see
    /// [`ConnShared::closed_for_reader`]).
    reader: AtomicWaker,
    /// Per-connection controller instances (`RpcKernel::register_with`).
    pub(crate) local_controllers: Mutex<HashMap<&'static str, Arc<dyn Controller>>>,
    errors: Mutex<(Instant, u32)>,
    /// Which generation of the client's token this connection authenticated with.
    pub(crate) auth_generation: AtomicU32,
    /// Calls the remote accepts at once (from its Hello): calls beyond wait here for a slot
    /// rather than be refused with `Busy`.
    pub(crate) call_slots: Arc<slots::Slots>,
    /// Streaming calls the remote accepts open at once (from its Hello), likewise.
    pub(crate) stream_slots: Arc<slots::Slots>,
    /// Whether the remote may call actions (anonymous access allowed, or authenticated).
    pub(crate) authenticated: AtomicBool,
    /// Set whenever `session` is replaced, for the read loop to look at its expiry then
    /// instead of taking the session's lock on every read ([`ConnShared::set_session`]).
    pub(crate) session_changed: AtomicBool,
    /// Frames sent before authenticating that were not allowed then.
    preauth_strikes: AtomicU32,
    /// An Auth request is being checked (one at a time).
    pub(crate) auth_running: AtomicBool,
    /// Cancels received in the current minute (`Limits::max_cancels`).
    cancels: Mutex<(Instant, u32)>,
    /// Argument bytes held by running calls (`Limits::max_inflight_bytes`).
    pub(crate) inflight_bytes: AtomicUsize,
    /// The remote's unary call being polled on the read loop right now, by its token (0:
    /// none). Such a call enters `inbound` only if it must wait (see `inbound::run_inline`).
    inline_call: AtomicU64,
    /// The last token handed to an inline call.
    inline_seq: AtomicU64,
    /// The peer alias this connection registered (on the routing server).
    pub(crate) peer_alias: Mutex<Option<String>>,
    /// Credit windows of the chunked messages this side is sending, by call id.
    pub(crate) chunk_senders: Mutex<IdMap<Arc<Semaphore>>>,
    /// Chunked messages being received, by call id.
    pub(crate) reassembly: Mutex<IdMap<chunks::Incoming>>,
}

/// Adds credit a remote granted (stream items or chunk bytes) to the semaphore its sender
/// waits on; a grant that would pass the semaphore's maximum is ignored (the remote only
/// starves itself) instead of panicking.
pub(crate) fn add_credit(credit: &Semaphore, n: usize) {
    if credit.available_permits().saturating_add(n) <= Semaphore::MAX_PERMITS {
        credit.add_permits(n);
    }
}

impl ConnShared {
    pub(crate) fn new(
        id: u64,
        role: Role,
        info: TransportInfo,
        kernel: RpcKernel,
        limits: Arc<Limits>,
        remote: &crate::protocol::message::Hello,
    ) -> Arc<ConnShared> {
        let (closed_tx, _) = watch::channel(false);
        let max_calls_to_client = limits.max_calls_to_client.max(1);
        Arc::new(ConnShared {
            id,
            role,
            info,
            // Frames to the remote fit the smaller of the two frame limits; larger messages are
            // chunked to fit it.
            outbox: Outbox::new(
                limits.max_outbound_queue,
                limits.frame_limit().min(remote.max_frame.max(4096) as usize),
                limits.chunk_limit().min((remote.max_frame.max(4096) as usize).saturating_sub(64)),
            ),
            frame_limit: Arc::new(AtomicUsize::new(limits.frame_limit())),
            limits,
            kernel,
            next_id: AtomicU32::new(if role == Role::Dialer { 1 } else { 2 }),
            outbound: Mutex::new(IdMap::default()),
            deadlines: deadlines::CallDeadlines::new(),
            runtime_timers: alarm::runtime_clock_is_paused(),
            batch_items: remote.features & crate::protocol::message::FEATURE_ITEM_BATCHES != 0,
            inbound: Mutex::new(IdMap::default()),
            session: RwLock::new(Arc::new(Session::anonymous())),
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            closed_tx,
            reader: AtomicWaker::new(),
            local_controllers: Mutex::new(HashMap::new()),
            errors: Mutex::new((Instant::now(), 0)),
            auth_generation: AtomicU32::new(0),
            peer_alias: Mutex::new(None),
            auth_running: AtomicBool::new(false),
            cancels: Mutex::new((Instant::now(), 0)),
            inflight_bytes: AtomicUsize::new(0),
            inline_call: AtomicU64::new(0),
            inline_seq: AtomicU64::new(0),
            chunk_senders: Mutex::new(IdMap::default()),
            reassembly: Mutex::new(IdMap::default()),
            authenticated: AtomicBool::new(true),
            session_changed: AtomicBool::new(false),
            preauth_strikes: AtomicU32::new(0),
            // A server calls back at most `max_calls_to_client` at once, whatever the client
            // would accept.
            call_slots: slots::Slots::new((remote.max_calls.max(1) as usize).min(match role {
                Role::Acceptor => max_calls_to_client,
                Role::Dialer => usize::MAX,
            })),
            stream_slots: slots::Slots::new(remote.max_streams.max(1) as usize),
        })
    }

    /// Whether `id` belongs to a call this side started.
    pub(crate) fn is_local_id(&self, id: u32) -> bool {
        let odd = id % 2 == 1;
        match self.role {
            Role::Dialer => odd,
            Role::Acceptor => !odd,
        }
    }

    /// A fresh call id. Ids are never reused; past 2^31 the connection must be replaced.
    pub(crate) fn alloc_id(&self) -> Result<u32, RpcError> {
        let id = self.next_id.fetch_add(2, Ordering::Relaxed);
        if id >= DRAIN_IDS_AT {
            // Close to the end of the id space: new calls go to a fresh connection while the
            // ones in flight here finish.
            self.draining.store(true, Ordering::Relaxed);
        }
        if id >= 1 << 31 {
            // Saturate: the counter never wraps around to ids that were used.
            self.next_id.store(1 << 31, Ordering::Relaxed);
            self.draining.store(true, Ordering::Relaxed);
            return Err(RpcError::disconnected(
                "the connection's call ids are used up; the next call reconnects",
            ));
        }
        Ok(id)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether new calls may start on this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.is_closed() && !self.draining.load(Ordering::Relaxed)
    }

    /// An alarm at `deadline` for this connection: on the alarm thread, or on the runtime's
    /// timers if its clock was paused when the connection started (see [`alarm`]).
    pub(crate) fn alarm_at(&self, deadline: tokio::time::Instant) -> alarm::Alarm {
        alarm::Alarm::at(deadline, self.runtime_timers)
    }

    /// Replaces the remote's session whole (after authentication) and tells the read loop,
    /// which schedules the check of its expiry.
    pub(crate) fn set_session(&self, session: Session) {
        *self.session.write() = Arc::new(session);
        self.session_changed.store(true, Ordering::Release);
    }

    /// The error calls see once the connection is gone.
    #[cold]
    pub(crate) fn disconnect_error(&self) -> RpcError {
        match &*self.close_reason.lock() {
            Some(e) if matches!(e.kind(), ErrorKind::Disconnected | ErrorKind::Unauthenticated) => {
                e.clone()
            }
            Some(e) => RpcError::disconnected(format!("the connection closed: {e}")),
            None => RpcError::disconnected("the connection closed"),
        }
    }

    /// Waits until the connection is closed.
    pub(crate) async fn closed(&self) {
        let mut rx = self.closed_tx.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// As [`ConnShared::closed`], for the read loop, which polls it on every turn: an
    /// atomic load and a waker registration, where a poll of the watch channel behind
    /// `closed` took a lock and a waiter list (about 130 instructions, twice per turn).
    pub(crate) fn closed_for_reader(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if !self.is_closed() {
                // Registered before the second look: a close after it wakes this poll.
                self.reader.register(cx.waker());
                if !self.is_closed() {
                    return std::task::Poll::Pending;
                }
            }
            std::task::Poll::Ready(())
        })
    }

    /// Closes the connection: fails every pending call with `Disconnected` at once, drops
    /// every running handler, sends `goaway` if given, and lets the writer flush and stop.
    pub(crate) fn close(&self, reason: RpcError, goaway: Option<GoAway>) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(connection = self.id, %reason, "connection closing");
        self.kernel.connection_closed(self.id, &reason);
        *self.close_reason.lock() = Some(reason);
        if let Some(goaway) = goaway {
            let _ = self.outbox.push(Kind::GoAway, 0, None, |buf| {
                goaway.encode(buf);
                Ok(())
            });
        }
        self.outbox.close();
        self.call_slots.close();
        self.stream_slots.close();
        self.closed_tx.send_replace(true);
        self.reader.wake();
        let alias = self.peer_alias.lock().take();
        if let Some(alias) = &alias {
            self.kernel.router().release(alias, self.id);
        }
        // Dropping the entries wakes every waiting call with the close reason; routed calls
        // answer their callers that the peer left. Answers that arrived stay for their
        // callers to take.
        let failed: Vec<_> = self.outbound.lock().extract_if(|_, call| !call.answered()).collect();
        for (_, call) in failed {
            call.fail(alias.as_deref());
        }
        let running = std::mem::take(&mut *self.inbound.lock());
        for (_, call) in running {
            call.abort();
        }
        self.local_controllers.lock().clear();
        for (_, window) in std::mem::take(&mut *self.chunk_senders.lock()) {
            window.close();
        }
        self.reassembly.lock().clear();
    }

    /// Sends an Error frame for call `id`.
    ///
    /// Every error to the remote goes through here, so the policy's `transform_error`
    /// applies to all of them.
    pub(crate) fn send_error(&self, id: u32, error: &RpcError) {
        let error = &self.kernel.present_error(error.clone());
        let pushed = self.outbox.push(Kind::Error, id, None, |buf| {
            message::encode_error(buf, error);
            Ok(())
        });
        if let Err(outbox::PushError::Oversize(_)) = pushed {
            // An error too large for one frame (a huge declared error): the caller still gets
            // an answer, never silence.
            let hidden = crate::kernel::responder::hidden_failure(
                &format!("an error of kind {} was too large to send", error.kind()),
                "?",
                "?",
            );
            let _ = self.outbox.push(Kind::Error, id, None, |buf| {
                message::encode_error(buf, &hidden);
                Ok(())
            });
        }
    }

    /// Ends call `id` of the remote with `error`, releasing its slot first so that the
    /// remote may start its next call as soon as it reads the answer.
    ///
    /// For the call's own code (its task, its routing task, its middleware): it only
    /// forgets the table entry, which is how Cancel and the connection's close reach a
    /// running handler. From outside the call, use `inbound::fail_inbound`, which stops
    /// the handler first.
    pub(crate) fn answer_error(&self, id: u32, error: &RpcError) {
        self.inbound.lock().remove(&id);
        self.send_error(id, error);
    }

    /// Releases the slot of the remote's call `id` (its final answer is about to be queued).
    pub(crate) fn release_inbound(&self, id: u32) {
        self.inbound.lock().remove(&id);
    }

    /// Grants the producer of call `id` `n` more items.
    pub(crate) fn send_credit(&self, id: u32, n: u64) {
        let _ = self.outbox.push(Kind::Credit, id, None, |buf| {
            message::encode_uint(buf, n);
            Ok(())
        });
    }

    /// Reacts to a failed push: a queue overflow means the remote stopped reading.
    pub(crate) fn on_push_error(&self, error: &RpcError) {
        if self.outbox.queued() > self.limits.max_outbound_queue {
            self.outbox.abort();
            self.close(
                error.clone(),
                None, // the queue is full: a GoAway could not be delivered either
            );
        }
    }

    /// Counts a protocol violation; past the budget the connection is closed.
    #[cold]
    #[inline(never)]
    pub(crate) fn protocol_error(&self, id: u32, what: &str) {
        tracing::warn!(connection = self.id, call = id, "protocol error: {what}");
        if id != 0 {
            self.send_error(id, &RpcError::protocol(what.to_string()));
        }
        self.strike();
    }

    /// Counts a received Cancel; returns the count within the current minute.
    pub(crate) fn count_cancel(&self) -> u32 {
        let mut cancels = self.cancels.lock();
        if cancels.0.elapsed().as_secs() >= 60 {
            *cancels = (Instant::now(), 0);
        }
        cancels.1 += 1;
        cancels.1
    }

    /// Counts one violation toward `Limits::max_protocol_errors` per minute.
    #[cold]
    pub(crate) fn strike(&self) {
        let over = {
            let mut errors = self.errors.lock();
            if errors.0.elapsed().as_secs() >= 60 {
                *errors = (Instant::now(), 0);
            }
            errors.1 += 1;
            errors.1 > self.limits.max_protocol_errors
        };
        if over {
            self.close_with_goaway(GoAwayCode::TooManyErrors, "too many protocol errors");
        }
    }

    /// Answers a frame sent before authentication: one `Unauthenticated` error, then close.
    #[cold]
    #[inline(never)]
    fn refuse_unauthenticated(&self, id: u32) {
        if self.preauth_strikes.fetch_add(1, Ordering::AcqRel) == 0 && id != 0 {
            self.send_error(id, &RpcError::unauthenticated("authenticate before calling"));
        } else {
            self.close_with_goaway(GoAwayCode::Unauthenticated, "calls before authentication");
        }
    }

    /// Closes with a GoAway carrying `code` and `reason`.
    pub(crate) fn close_with_goaway(&self, code: GoAwayCode, reason: &str) {
        let error = match code {
            GoAwayCode::TooLarge => RpcError::too_large(reason.to_string()),
            GoAwayCode::Unauthenticated => RpcError::unauthenticated(reason.to_string()),
            GoAwayCode::Normal | GoAwayCode::ShuttingDown => {
                RpcError::disconnected(reason.to_string())
            }
            _ => RpcError::protocol(reason.to_string()),
        };
        self.close(error, Some(GoAway { code, reason: reason.to_string() }));
    }

    /// Handles a GoAway: a draining remote lets calls in flight finish; any other code
    /// closes the connection with the error it names.
    #[inline(never)]
    fn on_goaway(&self, frame: &Frame) {
        let goaway = GoAway::decode(&frame.body).unwrap_or(GoAway {
            code: GoAwayCode::ProtocolError,
            reason: "malformed GoAway".into(),
        });
        if goaway.code == GoAwayCode::ShuttingDown {
            // Calls in flight finish; new calls go elsewhere.
            self.draining.store(true, Ordering::Relaxed);
        } else {
            let reason = format!("the remote closed the connection: {}", goaway.reason);
            let error = match goaway.code {
                GoAwayCode::Unauthenticated => RpcError::unauthenticated(reason),
                GoAwayCode::TooLarge => RpcError::too_large(reason),
                _ => RpcError::disconnected(reason),
            };
            self.close(error, None);
        }
    }

    /// Handles one received frame. Never awaits: work that waits runs in its own task.
    ///
    /// Whether a frame concerns a call this side started or one the remote started follows
    /// from its id's parity, so both sides can stream on the same call at once.
    pub(crate) fn handle_frame(self: &Arc<Self>, frame: Frame) {
        if !self.authenticated.load(Ordering::Acquire)
            && !matches!(frame.kind, Kind::Auth | Kind::Ping | Kind::Pong | Kind::GoAway)
        {
            return self.refuse_unauthenticated(frame.id);
        }
        let local = self.is_local_id(frame.id);
        match frame.kind {
            Kind::Call => inbound::start_call(self, frame),
            Kind::Cancel if !local => inbound::cancel(self, frame.id),
            Kind::Reply | Kind::Error | Kind::StreamOpen if local => {
                calls::on_response(self, frame)
            }
            Kind::Item | Kind::Items | Kind::End if local => calls::on_response(self, frame),
            Kind::Item | Kind::Items | Kind::End => inbound::argument_frame(self, frame),
            Kind::Credit if local => calls::on_credit(self, frame),
            Kind::Credit => inbound::credit(self, frame),
            Kind::Ping => {
                let _ = self.outbox.push(Kind::Pong, frame.id, None, |_| Ok(()));
            }
            Kind::Pong => {}
            Kind::GoAway => self.on_goaway(&frame),
            Kind::Auth => inbound::authenticate(self, frame),
            Kind::PeerRegister | Kind::PeerUnregister if self.role == Role::Acceptor => {
                crate::kernel::router::handle_registration(self, frame)
            }
            Kind::PeerRegister | Kind::PeerUnregister => {
                self.protocol_error(frame.id, "peer registration goes to the routing server")
            }
            Kind::Hello => self.protocol_error(0, "Hello after the handshake"),
            Kind::Chunk => chunks::on_chunk(self, frame),
            Kind::ChunkCredit => chunks::on_chunk_credit(self, frame),
            other => self.protocol_error(
                frame.id,
                &format!("{other:?} with an id from the wrong side's id space"),
            ),
        }
    }
}

/// A live connection, seen from either end. Cheap to clone; calls through a closed one fail
/// at once with `Disconnected`.
///
/// On the server, [`Context::connection`](crate::Context::connection) gives the caller's
/// connection, which can call controllers the client registered (back-controllers):
///
/// ```
/// use rpc_core::{controller, Context, RpcError};
///
/// #[controller("ui")]
/// pub trait Ui {
///     async fn progress(&self, percent: u8);
/// }
///
/// #[controller("jobs")]
/// pub trait Jobs {
///     async fn run(&self, ctx: &Context) -> Result<(), RpcError>;
/// }
///
/// struct JobsImpl;
/// impl Jobs for JobsImpl {
///     async fn run(&self, ctx: &Context) -> Result<(), RpcError> {
///         let ui = ctx.connection().controller::<UiClient>();
///         ui.progress(50).await?;
///         Ok(())
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<ConnShared>,
}

impl Connection {
    /// The connection's id (unique within its kernel's process).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The remote address, for network transports.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.info.remote_addr
    }

    /// Facts about the transport (kind, remote address, TLS client identity).
    pub fn transport(&self) -> &TransportInfo {
        &self.shared.info
    }

    /// The session of the remote side (anonymous until it authenticated).
    pub fn session(&self) -> Arc<Session> {
        self.shared.session.read().clone()
    }

    /// A typed proxy calling the controller `C` that the remote side offers.
    pub fn controller<C: ControllerClient>(&self) -> C {
        C::from_target(CallTarget::connection(self.clone()))
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Closes the connection; calls in flight on it fail with `Disconnected`.
    pub fn close(&self) {
        self.shared.close_with_goaway(GoAwayCode::Normal, "closed by the application");
    }

    /// Waits until the connection is closed.
    pub async fn closed(&self) {
        self.shared.closed().await
    }

    /// Stops taking new calls, tells the remote (GoAway `ShuttingDown`), lets the calls
    /// running here finish for up to `deadline`, then closes. Used by servers' graceful
    /// shutdown.
    pub async fn shutdown(&self, deadline: std::time::Duration) {
        let shared = &self.shared;
        if !shared.is_closed() {
            shared.refusing.store(true, Ordering::Release);
            let _ = shared.outbox.push(Kind::GoAway, 0, None, |buf| {
                GoAway {
                    code: GoAwayCode::ShuttingDown,
                    reason: "the server is shutting down".into(),
                }
                .encode(buf);
                Ok(())
            });
            let until = tokio::time::Instant::now() + deadline;
            while !shared.is_closed()
                && (!shared.inbound.lock().is_empty()
                    || shared.inline_call.load(Ordering::Acquire) != 0)
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        shared.close_with_goaway(GoAwayCode::ShuttingDown, "the server shut down");
    }

    #[doc(hidden)]
    /// Test hook: the next call id this side allocates (for the id-exhaustion scenario).
    pub fn set_next_call_id(&self, id: u32) {
        self.shared.next_id.store(id, Ordering::Relaxed);
    }

    /// Calls this side has outstanding and calls the remote has running here.
    pub fn calls_in_flight(&self) -> (usize, usize) {
        (self.shared.outbound.lock().len(), self.shared.inbound.lock().len())
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("transport", &self.shared.info.kind)
            .field("remote_addr", &self.shared.info.remote_addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::{ArcWake, waker};

    use super::*;

    /// Counts its wake-ups.
    pub(crate) struct Counter(pub(crate) AtomicUsize);

    impl ArcWake for Counter {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection with no transport, for tests of its tables and signals.
    pub(crate) fn connection() -> Arc<ConnShared> {
        let hello = message::Hello {
            min_version: 1,
            max_version: 1,
            connection_id: 1,
            max_calls: 8,
            max_streams: 8,
            max_frame: 1 << 20,
            features: 0,
        };
        let info = crate::transport::TransportInfo {
            remote_addr: None,
            kind: "memory",
            peer_identity: None,
        };
        let kernel = crate::RpcKernel::new();
        let limits = kernel.limits();
        ConnShared::new(1, Role::Dialer, info, kernel, limits, &hello)
    }

    #[test]
    fn the_read_loop_hears_the_close() {
        let conn = connection();
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = waker(counter.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut closed = Box::pin(conn.closed_for_reader());
        assert!(closed.as_mut().poll(&mut cx).is_pending());
        conn.close(RpcError::disconnected("test"), None);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "the close wakes the read loop");
        assert!(closed.as_mut().poll(&mut cx).is_ready());
        // A read loop that starts polling after the close sees it at once.
        assert!(Box::pin(conn.closed_for_reader()).as_mut().poll(&mut cx).is_ready());
    }
}
