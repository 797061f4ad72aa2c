//! Chunked messages on a connection: sending a large message as Chunk frames paced by the
//! receiver's ChunkCredit, reassembling received chunks, and forwarding both through a
//! routing server untouched. The byte format is in [`crate::protocol::chunk`].

use std::collections::hash_map::Entry;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;

use super::ConnShared;
use super::calls::{self, Pending, Sink};
use super::inbound::Inbound;
use crate::client::Progress;
use crate::error::{ErrorKind, RpcError};
use crate::protocol::chunk::{self, ChunkError, Reassembly};
use crate::protocol::codec;
use crate::protocol::frame::{Frame, Kind, parse_frame};
use crate::protocol::message;

/// A message being received in chunks, and when its last chunk arrived.
pub(crate) struct Incoming {
    state: IncomingState,
    last: tokio::time::Instant,
}

enum IncomingState {
    /// Being reassembled; the route came on the first chunk.
    Assembling { reassembly: Reassembly, route: Option<Bytes> },
    /// Refused (too large, too many at once): the rest of its chunks are dropped.
    Discarding { total: usize, received: usize },
}

impl Incoming {
    fn new(state: IncomingState) -> Incoming {
        Incoming { state, last: tokio::time::Instant::now() }
    }

    fn touch(&mut self) -> &mut IncomingState {
        self.last = tokio::time::Instant::now();
        &mut self.state
    }
}

/// Drops reassemblies whose sender went quiet for `idle` (the memory is freed, the call is
/// answered `Timeout`); the read loop calls this from its timer.
pub(crate) fn sweep_idle(conn: &Arc<ConnShared>, idle: std::time::Duration) {
    let now = tokio::time::Instant::now();
    let stale: Vec<u32> = {
        let mut map = conn.reassembly.lock();
        let stale: Vec<u32> =
            map.iter().filter(|(_, m)| now >= m.last + idle).map(|(id, _)| *id).collect();
        for id in &stale {
            map.remove(id);
        }
        stale
    };
    for id in stale {
        tracing::debug!(connection = conn.id, call = id, "chunked message abandoned");
        let error = RpcError::new(
            ErrorKind::Timeout,
            format!("a chunked message stalled for {idle:?} (Limits::frame_timeout)"),
        );
        if conn.is_local_id(id) {
            conn.fail_outbound(id, &error);
        } else {
            super::inbound::fail_inbound(conn, id, &error);
        }
    }
}

/// Removes a sender's credit entry however the sending ends.
struct SenderGuard<'a> {
    conn: &'a ConnShared,
    id: u32,
}

impl Drop for SenderGuard<'_> {
    fn drop(&mut self) {
        self.conn.chunk_senders.lock().remove(&self.id);
    }
}

impl ConnShared {
    /// Queues a message. Above the chunk size it is handed back, encoded, for
    /// [`ConnShared::send_chunks`] (which paces it by the remote's credit).
    ///
    /// Synchronous on purpose: the encoder borrows the value, and no borrow of it lives
    /// across an await.
    pub(crate) fn queue_message(
        &self,
        kind: Kind,
        id: u32,
        route: Option<&[u8]>,
        body: impl FnOnce(&mut BytesMut) -> Result<(), RpcError>,
    ) -> Result<Option<Bytes>, RpcError> {
        match self.outbox.push(kind, id, route, body) {
            Ok(()) => Ok(None),
            Err(super::outbox::PushError::Oversize(frame)) => Ok(Some(frame)),
            Err(e) => {
                let e = e.into_rpc_error(self.limits.frame_limit());
                self.on_push_error(&e);
                Err(e)
            }
        }
    }

    /// Queues one stream item on call `id`: returns its body's length (what the stream's
    /// credit is charged) and, for an item above the chunk size, the frame
    /// [`ConnShared::finish_message`] must send in chunks.
    pub(crate) fn queue_item<T: serde::Serialize + ?Sized>(
        &self,
        id: u32,
        item: &T,
    ) -> Result<(usize, Option<Bytes>), RpcError> {
        let mut len = 0;
        let oversize = self.queue_message(Kind::Item, id, None, |buf| {
            let start = buf.len();
            codec::encode_into(buf, item)?;
            len = buf.len() - start;
            Ok(())
        })?;
        Ok((len, oversize))
    }

    /// Sends what [`ConnShared::queue_message`] handed back, if anything.
    pub(crate) async fn finish_message(
        self: &Arc<Self>,
        id: u32,
        oversize: Option<Bytes>,
    ) -> Result<(), RpcError> {
        match oversize {
            Some(frame) => self.send_chunks(id, frame).await,
            None => Ok(()),
        }
    }

    /// Sends an encoded frame (length prefix included) as Chunk frames on call `id`.
    pub(crate) async fn send_chunks(
        self: &Arc<Self>,
        id: u32,
        encoded: Bytes,
    ) -> Result<(), RpcError> {
        let frame = parse_frame(encoded.slice(4..))
            .map_err(|e| RpcError::internal(format!("an outgoing frame is malformed: {e}")))?;
        let inner = chunk::inner_message(frame.kind, &frame.body);
        let total = inner.len();
        if total > self.limits.max_message_size || total > u32::MAX as usize {
            return Err(RpcError::too_large(format!(
                "message of {total} bytes exceeds the limit of {} bytes (Limits::max_message_size)",
                self.limits.max_message_size
            )));
        }
        let chunk_size = self.limits.chunk_limit();
        let window = Arc::new(Semaphore::new(self.limits.chunk_window.max(chunk_size)));
        self.chunk_senders.lock().insert(id, window.clone());
        let _guard = SenderGuard { conn: self, id };
        let progress = Progress::current();
        let mut sent = 0;
        for (index, (header, piece)) in chunk::chunk_bodies(&inner, chunk_size).enumerate() {
            // A receiver that stops granting credit must not hold this transfer forever.
            let credit = self.limits.frame_timeout;
            match tokio::time::timeout(credit, window.acquire_many(piece.len() as u32)).await {
                Ok(Ok(permit)) => permit.forget(),
                Ok(Err(_)) => {
                    return Err(RpcError::new(ErrorKind::Cancelled, "the transfer was cancelled"));
                }
                Err(_) => {
                    return Err(RpcError::new(
                        ErrorKind::Timeout,
                        format!(
                            "the receiver granted no chunk credit for {credit:?} (Limits::frame_timeout)"
                        ),
                    ));
                }
            }
            // The route rides on the first chunk only, where a routing server reads it.
            let route = if index == 0 { frame.route.as_deref() } else { None };
            self.outbox
                .push(Kind::Chunk, id, route, |buf| {
                    buf.extend_from_slice(&header);
                    buf.extend_from_slice(&piece);
                    Ok(())
                })
                .map_err(|e| {
                    let e = e.into_rpc_error(self.limits.frame_limit());
                    self.on_push_error(&e);
                    e
                })?;
            sent += piece.len();
            if let Some(p) = &progress {
                p.report_upload(sent, total);
            }
        }
        Ok(())
    }

    /// Stops sending chunks on call `id` (the call was cancelled or ended).
    pub(crate) fn stop_chunks(&self, id: u32) {
        if let Some(window) = self.chunk_senders.lock().remove(&id) {
            window.close();
        }
        self.reassembly.lock().remove(&id);
    }
}

/// Handles a received Chunk: forwards it on a routed call, else reassembles it.
#[inline(never)]
pub(crate) fn on_chunk(conn: &Arc<ConnShared>, frame: Frame) {
    let id = frame.id;
    let local = conn.is_local_id(id);
    if local {
        let table = conn.outbound.lock();
        if let Some(Pending { sink: Sink::Routed { caller, caller_id, .. }, .. }) = table.get(&id) {
            let (caller, caller_id) = (caller.clone(), *caller_id);
            drop(table);
            if let Some(caller) = caller.upgrade() {
                calls::forward(&caller, Kind::Chunk, caller_id, &frame.body);
            }
            return;
        }
    } else {
        let mut table = conn.inbound.lock();
        match table.get_mut(&id) {
            Some(Inbound::Routed { callee, callee_id, .. }) => {
                let (callee, callee_id) = (callee.clone(), *callee_id);
                drop(table);
                return calls::forward(&callee, Kind::Chunk, callee_id, &frame.body);
            }
            Some(Inbound::Routing { queued, .. }) => {
                // The policy check is still running: keep the chunk for the callee (bounded
                // by the sender's chunk window).
                queued.push(frame);
                return;
            }
            None if frame.route.is_some() && conn.role == super::Role::Acceptor => {
                drop(table);
                return crate::kernel::router::route_call(conn, frame);
            }
            _ => {}
        }
    }
    receive(conn, frame, local);
}

fn receive(conn: &Arc<ConnShared>, frame: Frame, local: bool) {
    let id = frame.id;
    if local && !conn.outbound.lock().contains_key(&id) {
        // The rest of an answer this side no longer waits for (cancelled, timed out): it
        // must not start a reassembly that would never finish.
        return;
    }
    let piece = frame.body.len().saturating_sub(chunk::CHUNK_HEADER);
    let outcome: Result<Option<Frame>, ChunkError> = {
        let mut map = conn.reassembly.lock();
        let active = map.len();
        match map.entry(id) {
            Entry::Occupied(mut entry) => match entry.get_mut().touch() {
                IncomingState::Assembling { reassembly, route } => {
                    match reassembly.push(id, &frame.body) {
                        Ok(Some(mut whole)) => {
                            whole.route = route.take();
                            entry.remove();
                            Ok(Some(whole))
                        }
                        Ok(None) => Ok(None),
                        Err(e) => {
                            entry.remove();
                            Err(e)
                        }
                    }
                }
                IncomingState::Discarding { total, received } => {
                    *received += piece;
                    if *received >= *total {
                        entry.remove();
                    }
                    Ok(None)
                }
            },
            Entry::Vacant(slot) => {
                let total = chunk_total(&frame.body);
                let started = if active >= conn.limits.max_reassemblies {
                    Err(ChunkError::TooLarge { total, limit: 0 })
                } else {
                    Reassembly::start(&frame.body, conn.limits.max_message_size)
                };
                match started {
                    Ok(mut reassembly) => match reassembly.push(id, &frame.body) {
                        Ok(Some(mut whole)) => {
                            whole.route = frame.route.clone();
                            Ok(Some(whole))
                        }
                        Ok(None) => {
                            slot.insert(Incoming::new(IncomingState::Assembling {
                                reassembly,
                                route: frame.route.clone(),
                            }));
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => {
                        if piece < total {
                            slot.insert(Incoming::new(IncomingState::Discarding {
                                total,
                                received: piece,
                            }));
                        }
                        Err(e)
                    }
                }
            }
        }
    };
    // Room for the sender's next chunk: the bytes are buffered here now.
    let _ = conn.outbox.push(Kind::ChunkCredit, id, None, |buf| {
        message::encode_uint(buf, piece as u64);
        Ok(())
    });
    if local {
        report_download(conn, id);
    }
    match outcome {
        Ok(Some(whole)) => conn.handle_frame(whole),
        Ok(None) => {}
        Err(e) => {
            let error = match e {
                ChunkError::TooLarge { limit: 0, total } => RpcError::busy(format!(
                    "{} chunked messages are already being received on this connection (Limits::max_reassemblies); a {total}-byte message was refused",
                    conn.limits.max_reassemblies
                )),
                ChunkError::TooLarge { .. } => RpcError::too_large(e.to_string()),
                other => RpcError::protocol(other.to_string()),
            };
            tracing::debug!(connection = conn.id, call = id, "chunked message refused: {error}");
            if local {
                // Our own call's answer cannot be received: fail the call, stop the remote.
                let mut body = BytesMut::new();
                message::encode_error(&mut body, &error);
                calls::on_response(conn, Frame::new(Kind::Error, id, body.freeze()));
                let _ = conn.outbox.push(Kind::Cancel, id, None, |_| Ok(()));
            } else {
                super::inbound::fail_inbound(conn, id, &error);
            }
        }
    }
}

fn chunk_total(body: &[u8]) -> usize {
    if body.len() < chunk::CHUNK_HEADER {
        return 0;
    }
    u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize
}

fn report_download(conn: &Arc<ConnShared>, id: u32) {
    let progress = match conn.outbound.lock().get(&id) {
        Some(Pending { progress: Some(p), .. }) => p.clone(),
        _ => return,
    };
    let (done, total) = match conn.reassembly.lock().get(&id) {
        Some(Incoming { state: IncomingState::Assembling { reassembly, .. }, .. }) => {
            (reassembly.received(), reassembly.total())
        }
        _ => return progress.report_download(1, 1),
    };
    progress.report_download(done, total);
}

/// Handles a ChunkCredit: more room for chunks this side sends on call `id` (or forwards it
/// on a routed call).
#[inline(never)]
pub(crate) fn on_chunk_credit(conn: &Arc<ConnShared>, frame: Frame) {
    let id = frame.id;
    let Some(n) = chunk::credit_bytes(&frame.body) else {
        return conn.protocol_error(id, "malformed ChunkCredit");
    };
    if conn.is_local_id(id) {
        let table = conn.outbound.lock();
        if let Some(Pending { sink: Sink::Routed { caller, caller_id, .. }, .. }) = table.get(&id) {
            let (caller, caller_id) = (caller.clone(), *caller_id);
            drop(table);
            if let Some(caller) = caller.upgrade() {
                calls::forward(&caller, Kind::ChunkCredit, caller_id, &frame.body);
            }
            return;
        }
    } else {
        let table = conn.inbound.lock();
        if let Some(Inbound::Routed { callee, callee_id, .. }) = table.get(&id) {
            let (callee, callee_id) = (callee.clone(), *callee_id);
            drop(table);
            return calls::forward(&callee, Kind::ChunkCredit, callee_id, &frame.body);
        }
    }
    if let Some(window) = conn.chunk_senders.lock().get(&id) {
        super::add_credit(window, n);
    }
}
