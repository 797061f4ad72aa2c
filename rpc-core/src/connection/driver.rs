//! Moves bytes: the handshake, the read loop (bytes in, frames to the connection) and the
//! writer (the outbox's batches out). This is the only place that awaits I/O.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use super::{ConnShared, Connection, Role};
use crate::error::RpcError;
use crate::kernel::RpcKernel;
use crate::protocol::frame::{self, FrameDecoder, FrameError, Kind};
use crate::protocol::message::{FEATURE_ITEM_BATCHES, GoAway, GoAwayCode, Hello, PROTOCOL_VERSION};
use crate::transport::{Transport, TransportReader, TransportWriter};

/// Reads until one whole frame is buffered, within `deadline`.
async fn read_first_frame<R: TransportReader>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
    deadline: Duration,
) -> Result<frame::Frame, RpcError> {
    let read = async {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(RpcError::protocol(format!("handshake: {e}"))),
            }
            decoder.reserve_for_read();
            match reader.read(decoder.buffer()).await {
                Ok(0) => {
                    return Err(RpcError::disconnected("the remote closed during the handshake"));
                }
                Ok(_) => {}
                Err(e) => return Err(RpcError::disconnected(format!("handshake: {e}"))),
            }
        }
    };
    tokio::time::timeout(deadline, read).await.map_err(|_| {
        RpcError::disconnected(format!(
            "the handshake did not complete within {deadline:?} (Limits::handshake_timeout)"
        ))
    })?
}

fn hello_bytes(connection_id: u64, limits: &crate::Limits) -> bytes::Bytes {
    let mut out = BytesMut::new();
    let start = frame::begin_frame(&mut out, Kind::Hello, 0, None);
    Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        connection_id,
        max_calls: limits.max_calls_in_flight.min(u32::MAX as usize) as u32,
        max_streams: limits.max_streams.min(u32::MAX as usize) as u32,
        max_frame: limits.frame_limit() as u32,
        features: FEATURE_ITEM_BATCHES,
    }
    .encode(&mut out);
    frame::finish_frame(&mut out, start);
    out.freeze()
}

fn goaway_bytes(code: GoAwayCode, reason: &str) -> bytes::Bytes {
    let mut out = BytesMut::new();
    let start = frame::begin_frame(&mut out, Kind::GoAway, 0, None);
    GoAway { code, reason: reason.into() }.encode(&mut out);
    frame::finish_frame(&mut out, start);
    out.freeze()
}

fn check_hello(frame: &frame::Frame) -> Result<Hello, (GoAwayCode, String)> {
    if frame.kind == Kind::GoAway {
        let reason = GoAway::decode(&frame.body).map(|g| g.reason).unwrap_or_default();
        return Err((GoAwayCode::Normal, format!("the remote refused the connection: {reason}")));
    }
    if frame.kind != Kind::Hello {
        return Err((GoAwayCode::ProtocolError, format!("expected Hello, got {:?}", frame.kind)));
    }
    let hello = Hello::decode(&frame.body)
        .map_err(|e| (GoAwayCode::ProtocolError, format!("malformed Hello: {e}")))?;
    hello.negotiate().ok_or_else(|| {
        (
            GoAwayCode::UnsupportedVersion,
            format!(
                "no common protocol version: the remote speaks {}..={}, this side {PROTOCOL_VERSION}",
                hello.min_version, hello.max_version
            ),
        )
    })?;
    Ok(hello)
}

/// Opens a connection over `transport` as the dialing side; `kernel` serves the calls the
/// remote makes back (back-controllers).
pub(crate) async fn dial<T: Transport>(
    transport: T,
    kernel: RpcKernel,
) -> Result<Connection, RpcError> {
    let limits = kernel.limits();
    let info = transport.info();
    let (mut reader, mut writer) = transport.split();
    writer.write(hello_bytes(0, &limits)).await?;
    let mut decoder = FrameDecoder::new(limits.frame_limit());
    decoder.set_reservation(limits.read_reservation);
    let first = read_first_frame(&mut reader, &mut decoder, limits.handshake_timeout).await?;
    let hello = check_hello(&first).map_err(|(_, reason)| RpcError::disconnected(reason))?;
    let shared = ConnShared::new(hello.connection_id, Role::Dialer, info, kernel, limits, &hello);
    start_loops(&shared, reader, writer, decoder);
    Ok(Connection { shared })
}

/// Runs a connection over `transport` as the accepting side until it closes.
pub(crate) async fn accept<T: Transport>(
    transport: T,
    kernel: RpcKernel,
) -> Result<Connection, RpcError> {
    accept_with(transport, kernel, None).await
}

/// As [`accept`], with the handshake already counted by the transport (or not).
pub(crate) async fn accept_with<T: Transport>(
    transport: T,
    kernel: RpcKernel,
    counted: Option<crate::kernel::HandshakeGuard>,
) -> Result<Connection, RpcError> {
    let limits = kernel.limits();
    let info = transport.info();
    let (mut reader, mut writer) = transport.split();
    let Some(_handshake) = counted.or_else(|| kernel.begin_handshake()) else {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = writer.write(goaway_bytes(GoAwayCode::ServerFull, "server full")).await;
            let _ = writer.close().await;
        })
        .await;
        return Err(RpcError::busy(
            "the server is full (Limits::max_connections or max_handshakes)",
        ));
    };
    let first_limit = limits.max_preauth_frame_size.min(limits.frame_limit());
    let mut decoder = FrameDecoder::new(first_limit);
    decoder.set_reservation(limits.read_reservation);
    reader.follow_frame_limit(Arc::new(AtomicUsize::new(first_limit)));
    let first = read_first_frame(&mut reader, &mut decoder, limits.handshake_timeout).await?;
    let hello = match check_hello(&first) {
        Ok(hello) => hello,
        Err((code, reason)) => {
            let _ = writer.write(goaway_bytes(code, &reason)).await;
            let _ = writer.close().await;
            return Err(RpcError::protocol(reason));
        }
    };
    let id = kernel.next_connection_id();
    writer.write(hello_bytes(id, &limits)).await?;
    let shared = ConnShared::new(id, Role::Acceptor, info, kernel.clone(), limits, &hello);
    if !kernel.security().is_none_or(|s| s.allow_anonymous()) {
        // Until it authenticates: only Auth and Ping, in small frames, within a deadline.
        shared.authenticated.store(false, Ordering::Release);
        shared.frame_limit.store(shared.limits.max_preauth_frame_size, Ordering::Release);
    }
    let connection = Connection { shared: shared.clone() };
    if let Some(security) = kernel.security() {
        match security.session_for_connection(&connection).await {
            Ok(None) => {}
            Ok(Some(session)) => {
                shared.set_session(session);
                shared.frame_limit.store(shared.limits.frame_limit(), Ordering::Release);
                shared.authenticated.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::info!(connection = id, reason = %e, "connection refused by the policy");
                let _ = writer
                    .write(goaway_bytes(GoAwayCode::Unauthenticated, "authentication failed"))
                    .await;
                let _ = writer.close().await;
                return Err(RpcError::unauthenticated("authentication failed"));
            }
        }
    }
    kernel.connection_opened(&connection);
    start_loops(&shared, reader, writer, decoder);
    Ok(connection)
}

fn start_loops<R: TransportReader, W: TransportWriter>(
    shared: &Arc<ConnShared>,
    mut reader: R,
    writer: W,
    decoder: FrameDecoder,
) {
    reader.follow_frame_limit(shared.frame_limit.clone());
    tokio::spawn(write_loop(shared.clone(), writer));
    tokio::spawn(read_loop(shared.clone(), reader, decoder));
}

/// The connection's single writer: takes everything queued and writes it in one go.
async fn write_loop<W: TransportWriter>(shared: Arc<ConnShared>, mut writer: W) {
    let write_timeout = shared.limits.write_timeout;
    while let Some((batch, frames)) = shared.outbox.take().await {
        let len = batch.len();
        // Most writes complete in their first poll (the socket has room): the write timer
        // is armed only for one that has to wait.
        let mut write = std::pin::pin!(writer.write(batch));
        let written = match futures::poll!(write.as_mut()) {
            std::task::Poll::Ready(result) => Ok(result),
            std::task::Poll::Pending => tokio::time::timeout(write_timeout, write).await,
        };
        match written {
            Ok(Ok(())) => shared.kernel.stats_sent(frames, len as u64),
            Ok(Err(e)) => {
                shared.outbox.abort();
                shared.close(RpcError::disconnected(format!("write failed: {e}")), None);
                break;
            }
            Err(_) => {
                shared.outbox.abort();
                shared.close(
                    RpcError::disconnected(format!(
                        "a write blocked for {write_timeout:?}: the remote is not reading (Limits::write_timeout)"
                    )),
                    None,
                );
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
}

/// Receives the next bytes into `decoder`: a transport that receives whole buffers hands
/// them over (no copy); any other reads into the decoder's reserved buffer. Cancel-safe if
/// the transport is.
async fn receive<R: TransportReader>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
) -> std::io::Result<usize> {
    if R::RECEIVES_BUFFERS {
        let received = reader.read_bytes().await?;
        let n = received.len();
        decoder.push_bytes(received);
        Ok(n)
    } else {
        decoder.reserve_for_read();
        reader.read(decoder.buffer()).await
    }
}

/// The read loop: bytes in, frames to [`ConnShared::handle_frame`], plus the connection's
/// timers (keepalive and frame completion), computed lazily from timestamps.
async fn read_loop<R: TransportReader>(
    shared: Arc<ConnShared>,
    mut reader: R,
    mut decoder: FrameDecoder,
) {
    let limits = shared.limits.clone();
    let mut watch = Watch::new(&shared, &limits);
    let mut timer = shared.alarm_at(watch.next_check);

    // Frames that arrived with the handshake.
    decoder.set_limit(shared.frame_limit.load(Ordering::Relaxed));
    if drain_frames(&shared, &mut decoder).is_none() {
        return;
    }
    loop {
        tokio::select! {
            biased;
            _ = shared.closed_for_reader() => break,
            read = receive(&mut reader, &mut decoder) => match read {
                Ok(0) => {
                    let reason = if decoder.in_frame() { "the remote closed in the middle of a frame" } else { "the remote closed the connection" };
                    shared.close(RpcError::disconnected(reason), None);
                    break;
                }
                Ok(n) => {
                    // The limit now, not before the read: authentication may have raised it
                    // while the read waited (the remote sends its large frames once it has
                    // the answer to its Auth).
                    decoder.set_limit(shared.frame_limit.load(Ordering::Acquire));
                    shared.kernel.stats_received(n as u64);
                    let now = watch.read_at();
                    let Some(mut completed) = drain_some_frames(&shared, &mut decoder, FRAMES_BEFORE_YIELD) else { break };
                    if completed == FRAMES_BEFORE_YIELD {
                        // Let the writer send the first answers (see FRAMES_BEFORE_YIELD).
                        let_queued_tasks_run().await;
                        if shared.is_closed() {
                            break;
                        }
                        let Some(rest) = drain_frames(&shared, &mut decoder) else { break };
                        completed += rest;
                    }
                    watch.frames_handled(now, decoder.in_frame(), completed);
                }
                Err(e) => {
                    shared.close(RpcError::disconnected(format!("read failed: {e}")), None);
                    break;
                }
            },
            _ = &mut timer => {
                if watch.on_timer(&shared, &limits).is_break() {
                    break;
                }
                timer.reset(watch.next_check);
            }
        }
        // A new session (authentication) may expire before the next check, and a frame left
        // incomplete must complete in time: either moves the check earlier.
        if watch.reschedule(&shared, &limits) {
            timer.reset(watch.next_check);
        }
    }
}

/// The read loop's deadlines: keepalive, frame completion, authentication and the
/// session's expiry. The checks run when the loop's one timer fires (rarely), so they are
/// kept out of the loop's body, which runs on every read.
struct Watch {
    last_read: Instant,
    /// When the first bytes of the frame still incomplete arrived.
    frame_started: Option<Instant>,
    pings_unanswered: u32,
    auth_deadline: Instant,
    /// When the timer fires next.
    next_check: Instant,
}

impl Watch {
    fn new(shared: &ConnShared, limits: &crate::Limits) -> Watch {
        let now = Instant::now();
        let mut watch = Watch {
            last_read: now,
            frame_started: None,
            pings_unanswered: 0,
            auth_deadline: now + limits.auth_timeout,
            next_check: now,
        };
        let authenticated = shared.authenticated.load(Ordering::Acquire);
        watch.schedule(limits, authenticated, shared.session.read().expires_at());
        // The first check also comes within a frame timeout.
        watch.next_check = watch.next_check.min(now + limits.frame_timeout);
        watch
    }

    /// Sets the next check to the earliest deadline: the next keepalive ping, the frame
    /// still incomplete, authentication, the session's expiry.
    fn schedule(
        &mut self,
        limits: &crate::Limits,
        authenticated: bool,
        expires_at: Option<Instant>,
    ) {
        let keepalive_due =
            self.last_read + limits.keepalive_interval * (self.pings_unanswered + 1);
        self.next_check = match self.frame_started {
            Some(started) => keepalive_due.min(started + limits.frame_timeout),
            None => keepalive_due,
        };
        if !authenticated {
            self.next_check = self.next_check.min(self.auth_deadline);
        }
        if let Some(at) = expires_at {
            self.next_check = self.next_check.min(at);
        }
    }

    /// Records a read: the remote is alive.
    fn read_at(&mut self) -> Instant {
        self.last_read = Instant::now();
        self.pings_unanswered = 0;
        self.last_read
    }

    /// Records the frames a read completed: the frame deadline runs from the moment a
    /// frame's first bytes arrived.
    fn frames_handled(&mut self, read_at: Instant, in_frame: bool, completed: usize) {
        self.frame_started = match (in_frame, completed > 0) {
            (false, _) => None,
            (true, true) => Some(read_at),
            (true, false) => self.frame_started.or(Some(read_at)),
        };
    }

    /// Moves the next check earlier if a new session or an incomplete frame needs it; true
    /// if it moved.
    fn reschedule(&mut self, shared: &ConnShared, limits: &crate::Limits) -> bool {
        let mut moved = false;
        if shared.session_changed.load(Ordering::Acquire)
            && shared.session_changed.swap(false, Ordering::AcqRel)
            && let Some(at) = shared.session.read().expires_at()
            && at < self.next_check
        {
            self.next_check = at;
            moved = true;
        }
        if let Some(started) = self.frame_started
            && started + limits.frame_timeout < self.next_check
        {
            self.next_check = started + limits.frame_timeout;
            moved = true;
        }
        moved
    }

    /// The timer fired: closes the connection if a deadline passed, sends a keepalive ping
    /// if the remote has been quiet, and computes the next check. `Break` once closed.
    #[cold]
    #[inline(never)]
    fn on_timer(&mut self, shared: &Arc<ConnShared>, limits: &crate::Limits) -> ControlFlow<()> {
        let now = Instant::now();
        super::chunks::sweep_idle(shared, limits.frame_timeout);
        let expires_at = shared.session.read().expires_at();
        if expires_at.is_some_and(|at| now >= at) {
            shared.close_with_goaway(GoAwayCode::Unauthenticated, "authentication expired");
            return ControlFlow::Break(());
        }
        let authenticated = shared.authenticated.load(Ordering::Acquire);
        if !authenticated && now >= self.auth_deadline {
            shared.close_with_goaway(
                GoAwayCode::Unauthenticated,
                "authentication timeout (Limits::auth_timeout)",
            );
            return ControlFlow::Break(());
        }
        if let Some(started) = self.frame_started
            && now >= started + limits.frame_timeout
        {
            shared.close_with_goaway(
                GoAwayCode::FrameTimeout,
                "a frame did not complete in time (Limits::frame_timeout)",
            );
            return ControlFlow::Break(());
        }
        if now >= self.last_read + limits.keepalive_interval * (self.pings_unanswered + 1) {
            if self.pings_unanswered >= limits.keepalive_misses {
                shared.close(
                    RpcError::disconnected(format!(
                        "the remote did not answer {} pings (Limits::keepalive_interval)",
                        self.pings_unanswered
                    )),
                    Some(GoAway {
                        code: GoAwayCode::KeepaliveTimeout,
                        reason: "keepalive timeout".into(),
                    }),
                );
                return ControlFlow::Break(());
            }
            self.pings_unanswered += 1;
            let _ = shared.outbox.push(Kind::Ping, self.pings_unanswered, None, |_| Ok(()));
        }
        self.schedule(limits, authenticated, expires_at);
        ControlFlow::Continue(())
    }
}

/// Frames handled before the read loop lets other tasks run once, when one read brought
/// more.
///
/// The answers to the first frames of a large batch are then written while the rest are
/// handled, instead of all of them after the last one. Without this, two sides pipelining
/// calls work in lockstep: each handles a whole batch while the other waits for it, and
/// each is idle half the time (64 calls in flight between two cores: 0.47 M calls/s; with
/// it, 0.9 M; on one core it makes no difference). Yielding once per read, not every 16
/// frames, keeps the extra writes to one per read.
const FRAMES_BEFORE_YIELD: usize = 16;

/// Lets the tasks already queued on this thread (the writer, callers woken by the frames
/// just handled) run once, then resumes.
///
/// A task that wakes itself while it runs goes to the back of the run queue (tokio treats
/// it as yielding, in both of its schedulers). `tokio::task::yield_now` instead waits for
/// the next poll of the I/O driver: one more `epoll_wait` per large read, which on one core
/// cost more than the early answers gained.
async fn let_queued_tasks_run() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Hands every whole buffered frame to the connection; returns how many, or `None` once the
/// connection must close.
fn drain_frames(shared: &Arc<ConnShared>, decoder: &mut FrameDecoder) -> Option<usize> {
    drain_some_frames(shared, decoder, usize::MAX)
}

/// As [`drain_frames`], stopping after `max` frames.
fn drain_some_frames(
    shared: &Arc<ConnShared>,
    decoder: &mut FrameDecoder,
    max: usize,
) -> Option<usize> {
    let mut completed = 0;
    loop {
        if completed == max {
            return Some(completed);
        }
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                completed += 1;
                // Defence in depth: a bug reachable from input must end this connection
                // cleanly, never leave it half alive with a dead read loop.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.handle_frame(frame)
                }));
                if handled.is_err() {
                    tracing::error!(
                        connection = shared.id,
                        "a frame made the connection panic; closing it"
                    );
                    shared.close_with_goaway(
                        GoAwayCode::ProtocolError,
                        "internal error handling a frame",
                    );
                    return None;
                }
                if shared.is_closed() {
                    return None;
                }
            }
            Ok(None) => return Some(completed),
            Err(e @ FrameError::TooLarge { .. }) => {
                shared.close_with_goaway(GoAwayCode::TooLarge, &e.to_string());
                return None;
            }
            Err(e) => {
                shared.close_with_goaway(GoAwayCode::ProtocolError, &e.to_string());
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::let_queued_tasks_run;

    /// The read loop's yield must let the tasks its frames woke (the writer above all) run
    /// before it goes on, in both of tokio's schedulers.
    async fn queued_task_runs_first() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn({
            let log = log.clone();
            async move {
                let queued = tokio::spawn({
                    let log = log.clone();
                    async move { log.lock().push("writer") }
                });
                let_queued_tasks_run().await;
                log.lock().push("reader");
                queued.await.unwrap();
            }
        });
        reader.await.unwrap();
        assert_eq!(*log.lock(), ["writer", "reader"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_yield_lets_queued_tasks_run_on_one_thread() {
        queued_task_runs_first().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_yield_lets_queued_tasks_run_on_a_worker() {
        queued_task_runs_first().await;
    }
}
