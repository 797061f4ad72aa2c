//! The write queue of one connection: every task encodes its frames straight into one shared
//! buffer, and the connection's single writer takes the whole buffer at once. Many frames
//! queued while a write was in progress leave in one syscall, and encoding allocates nothing
//! per message (the buffer's capacity is reused once the previous write has completed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::RpcError;
use crate::protocol::chunk;
use crate::protocol::frame::{self, Kind};

struct State {
    buf: BytesMut,
    closed: bool,
    /// Frames queued since the writer last took the buffer.
    frames: u64,
}

/// Bounded by bytes: a connection whose queue passes `max_bytes` is closed as a slow
/// consumer by its owner (see [`Outbox::push`]).
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// The writer, waiting for frames. A wake costs one atomic swap and a schedule (a
    /// `Notify` costs a lock and a waiter list: measured ~700 instructions per batch).
    writer: AtomicWaker,
    /// Producers waiting for the queue to fall to half of `max_bytes` ([`Outbox::writable`]).
    drained: Notify,
    /// How many producers wait on `drained` (the writer notifies only if some do).
    blocked: AtomicUsize,
    max_bytes: usize,
    max_frame: usize,
    /// Messages above this size are handed back to be sent in chunks.
    chunk_above: usize,
}

/// Why a frame could not be queued.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The connection is closed.
    Closed,
    /// The frame exceeds the frame limit (the call fails; the connection stays).
    TooLarge(usize),
    /// The body could not be encoded.
    Encode(RpcError),
    /// The queue passed its bound: the remote is not reading.
    Overflow,
    /// The message exceeds the chunk size: here it is, encoded, to be sent in chunks.
    Oversize(Bytes),
}

impl PushError {
    pub(crate) fn into_rpc_error(self, max_frame: usize) -> RpcError {
        match self {
            PushError::Closed => RpcError::disconnected("the connection is closed"),
            PushError::TooLarge(n) => RpcError::too_large(format!(
                "message of {n} bytes exceeds the frame limit of {max_frame} bytes (Limits::max_frame_size)"
            )),
            PushError::Encode(e) => e,
            PushError::Overflow => RpcError::disconnected(
                "the remote side is not reading: its queue passed Limits::max_outbound_queue",
            ),
            PushError::Oversize(frame) => RpcError::too_large(format!(
                "message of {} bytes exceeds the frame limit of {max_frame} bytes and cannot be chunked here",
                frame.len()
            )),
        }
    }
}

impl Outbox {
    pub(crate) fn new(max_bytes: usize, max_frame: usize, chunk_above: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                buf: BytesMut::with_capacity(8 << 10),
                closed: false,
                frames: 0,
            }),
            writer: AtomicWaker::new(),
            drained: Notify::new(),
            blocked: AtomicUsize::new(0),
            max_bytes,
            max_frame,
            chunk_above,
        }
    }

    /// Queues one frame whose body `body` writes; the length prefix is patched afterwards.
    ///
    /// The lock is held only while encoding (never across an await).
    pub(crate) fn push(
        &self,
        kind: Kind,
        id: u32,
        route: Option<&[u8]>,
        body: impl FnOnce(&mut BytesMut) -> Result<(), RpcError>,
    ) -> Result<(), PushError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(PushError::Closed);
        }
        let start = frame::begin_frame(&mut st.buf, kind, id, route);
        if let Err(e) = body(&mut st.buf) {
            st.buf.truncate(start);
            return Err(PushError::Encode(e));
        }
        let len = frame::finish_frame(&mut st.buf, start);
        if len > self.chunk_above && chunk::is_chunkable(kind) {
            return Err(PushError::Oversize(st.buf.split_off(start).freeze()));
        }
        if len > self.max_frame {
            st.buf.truncate(start);
            return Err(PushError::TooLarge(len));
        }
        let overflow = st.buf.len() > self.max_bytes;
        st.frames += 1;
        let first = st.frames == 1;
        drop(st);
        if overflow {
            return Err(PushError::Overflow);
        }
        if first {
            self.writer.wake();
        }
        Ok(())
    }

    /// Frames of chunkable kinds above this size go out in chunks.
    pub(crate) fn chunk_limit(&self) -> usize {
        self.chunk_above
    }

    /// Queues a frame whose body is already encoded (forwarded frames: no re-encoding).
    pub(crate) fn push_raw(
        &self,
        kind: Kind,
        id: u32,
        route: Option<&[u8]>,
        body: &[u8],
    ) -> Result<(), PushError> {
        match self.push(kind, id, route, |buf| {
            buf.extend_from_slice(body);
            Ok(())
        }) {
            // Forwarded frames were already cut to size by their sender: a frame below the
            // frame limit goes out as it is, whatever this side's chunk size.
            Err(PushError::Oversize(frame))
                if frame.len() - frame::LEN_PREFIX <= self.max_frame =>
            {
                let mut st = self.state.lock();
                if st.closed {
                    return Err(PushError::Closed);
                }
                st.buf.extend_from_slice(&frame);
                st.frames += 1;
                let first = st.frames == 1;
                drop(st);
                if first {
                    self.writer.wake();
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Waits for queued bytes and takes all of them; `None` once closed and drained.
    pub(crate) async fn take(&self) -> Option<(Bytes, u64)> {
        std::future::poll_fn(|cx| {
            // Registered before looking, so a push after the look wakes this poll again.
            self.writer.register(cx.waker());
            let mut st = self.state.lock();
            if !st.buf.is_empty() {
                let frames = std::mem::take(&mut st.frames);
                // The next push reserves what it needs: by then the write of this batch has
                // often finished, so the same allocation is reclaimed instead of a fresh one
                // being made while this batch still shares it.
                let out = st.buf.split().freeze();
                drop(st);
                self.wake_producers();
                return Poll::Ready(Some((out, frames)));
            }
            if st.closed {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Bytes waiting to be written.
    pub(crate) fn queued(&self) -> usize {
        self.state.lock().buf.len()
    }

    /// Waits while more than half of the queue's bound is waiting to be written (returns at
    /// once after close).
    ///
    /// Producers that can run ahead of the writer (streams, whose credit windows together
    /// may exceed the bound) call it before queueing more: the queue's hard bound then only
    /// ever catches a remote that stopped reading, never a writer that has not had its turn.
    pub(crate) async fn writable(&self) {
        loop {
            // Announced before looking: a writer that drains after the look sees the count
            // and wakes this waiter (`notified` receives wake-ups from its creation on).
            let drained = self.drained.notified();
            self.blocked.fetch_add(1, Ordering::SeqCst);
            let ready = {
                let st = self.state.lock();
                st.closed || st.buf.len() <= self.max_bytes / 2
            };
            if !ready {
                drained.await;
            }
            self.blocked.fetch_sub(1, Ordering::SeqCst);
            if ready {
                return;
            }
        }
    }

    fn wake_producers(&self) {
        if self.blocked.load(Ordering::SeqCst) > 0 {
            self.drained.notify_waiters();
        }
    }

    /// Refuses further frames; what is queued is still written.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.writer.wake();
        self.wake_producers();
    }

    /// Drops everything queued and refuses further frames.
    pub(crate) fn abort(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.buf.clear();
        drop(st);
        self.writer.wake();
        self.wake_producers();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::FrameDecoder;

    #[tokio::test]
    async fn frames_queued_together_leave_together() {
        let outbox = Outbox::new(1 << 20, 1 << 20, 1 << 20);
        for id in 1..=3 {
            outbox
                .push(Kind::Reply, id, None, |b| {
                    b.extend_from_slice(&[0xc0]);
                    Ok(())
                })
                .unwrap();
        }
        let (batch, frames) = outbox.take().await.unwrap();
        assert_eq!(frames, 3);
        let mut d = FrameDecoder::new(1 << 20);
        d.buffer().extend_from_slice(&batch);
        for id in 1..=3 {
            assert_eq!(d.next_frame().unwrap().unwrap().id, id);
        }
    }

    #[tokio::test]
    async fn producers_wait_above_half_the_bound_until_the_writer_drains() {
        let outbox = std::sync::Arc::new(Outbox::new(1000, 1 << 20, 1 << 20));
        let fill = |n: usize| outbox.push_raw(Kind::Item, 1, None, &vec![0; n]).unwrap();
        fill(400);
        tokio::time::timeout(Duration::from_millis(10), outbox.writable())
            .await
            .expect("below half: at once");
        fill(200);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.writable().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "above half: waits");
        outbox.take().await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        // Close releases waiters too.
        fill(600);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.writable().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        outbox.close();
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
    }

    #[test]
    fn oversize_and_failed_encodes_leave_no_trace() {
        let outbox = Outbox::new(1 << 20, 8, 1 << 20);
        let big = outbox.push(Kind::Reply, 1, None, |b| {
            b.extend_from_slice(&[0; 16]);
            Ok(())
        });
        assert!(matches!(big, Err(PushError::TooLarge(22))));
        let failed = outbox.push(Kind::Reply, 1, None, |_| Err(RpcError::internal("x")));
        assert!(matches!(failed, Err(PushError::Encode(_))));
        assert_eq!(outbox.queued(), 0);
    }

    #[test]
    fn overflow_is_reported_and_closed_refuses() {
        let outbox = Outbox::new(16, 1 << 20, 1 << 20);
        let r = outbox.push_raw(Kind::Item, 1, None, &[0; 32]);
        assert!(matches!(r, Err(PushError::Overflow)));
        outbox.close();
        assert!(matches!(outbox.push_raw(Kind::Item, 1, None, &[]), Err(PushError::Closed)));
    }
}
