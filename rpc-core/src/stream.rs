//! [`RpcStream`]: a typed stream of items, on either side of a call.
//!
//! On the server an action returns one, built from any `Stream` ([`RpcStream::new`]), a
//! fallible stream ([`RpcStream::try_new`]) or a `watch` channel (`From`: Deepkit's
//! BehaviorSubject). On the client the call resolves to one once the server accepted the
//! subscription; it yields `Result<T, RpcError>` items, ends at completion, yields one `Err`
//! and ends on failure, and unsubscribes when dropped.
//!
//! Flow control: the server sends at most a window of credit (the client asks for
//! [`Limits::result_stream_window`](crate::Limits), 1 MiB by default, and the server grants
//! up to 16 times its own `stream_window`; an item costs its encoded size plus 64 bytes)
//! beyond what the client has consumed; the client grants more credit as it consumes.
//! Small items thus run thousands deep, large ones a few, and an unread stream stalls only
//! its own producer, holding at most a window (plus one item) in the client's memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

use futures::Stream;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::AbortHandle;

use crate::connection::ConnShared;
use crate::connection::slots::Slot;
use crate::error::RpcError;
use crate::kernel::controller::ActionError;
use crate::kernel::responder::hidden_failure;
use crate::protocol::codec;
use crate::protocol::frame::{Frame, Kind};
use crate::protocol::message;

/// The sending half of a remote stream's channel, as the read loop holds it: items are
/// accepted only within the credit the receiving [`RpcStream`] has granted, so a peer that
/// ignores flow control is a protocol violation, never unbounded buffering.
pub(crate) struct StreamSender {
    tx: mpsc::UnboundedSender<Frame>,
    allowance: Arc<AtomicI64>,
}

/// Why the read loop refused a stream frame (a protocol error either way).
pub(crate) enum Refused {
    /// An item arrived beyond the granted credit.
    Overrun,
    /// An Items frame without a readable array header.
    Malformed,
}

impl Refused {
    /// The reason, for the protocol error.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refused::Overrun => "a stream item beyond the granted credit",
            Refused::Malformed => "a malformed Items frame",
        }
    }
}

impl StreamSender {
    /// A channel whose sender may deliver `window` credit of items before more is granted.
    pub(crate) fn channel(
        window: u32,
    ) -> (StreamSender, mpsc::UnboundedReceiver<Frame>, Arc<AtomicI64>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let allowance = Arc::new(AtomicI64::new(window as i64));
        (StreamSender { tx, allowance: allowance.clone() }, rx, allowance)
    }

    /// Delivers a frame; Item and Items only while some credit is left (one frame may
    /// overdraw the rest, as its producer may send it holding any credit at all).
    pub(crate) fn send(&self, frame: Frame) -> Result<(), Refused> {
        let cost = match frame.kind {
            Kind::Item => message::stream_item_cost(frame.body.len()),
            Kind::Items => match message::ItemBatch::new(&frame.body) {
                Ok(batch) => batch.cost(),
                Err(_) => return Err(Refused::Malformed),
            },
            _ => 0,
        };
        if cost > 0 {
            let cost = cost.min(i64::MAX as u64) as i64;
            let took = self
                .allowance
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n > 0).then(|| n - cost));
            if took.is_err() {
                return Err(Refused::Overrun);
            }
        }
        let _ = self.tx.send(frame);
        Ok(())
    }
}

/// A stream producer's side of the credit its consumer grants (result streams on the callee,
/// argument streams on the caller). Credit arrives as semaphore permits; the producer takes
/// all there is in one operation and spends it item by item. An item may be sent while any
/// credit is left, and its whole cost is charged, so the balance may go below zero: the
/// producer then waits until grants lift it above zero again.
pub(crate) struct CreditGate {
    granted: Arc<Semaphore>,
    balance: i64,
}

/// The consumer is gone (its credit semaphore was closed with the call).
pub(crate) struct CreditClosed;

impl CreditGate {
    pub(crate) fn new(granted: Arc<Semaphore>) -> CreditGate {
        CreditGate { granted, balance: 0 }
    }

    /// Waits until some credit is left.
    pub(crate) async fn ready(&mut self) -> Result<(), CreditClosed> {
        while self.balance <= 0 {
            self.granted.acquire().await.map_err(|_| CreditClosed)?.forget();
            let more = self.granted.available_permits().min(u32::MAX as usize) as u32;
            if let Ok(permits) = self.granted.try_acquire_many(more) {
                permits.forget();
                self.balance += more as i64;
            }
            self.balance += 1;
        }
        Ok(())
    }

    /// Whether some credit is left, taking what was granted meanwhile (never waits).
    pub(crate) fn try_ready(&mut self) -> bool {
        if self.balance <= 0 {
            let more = self.granted.available_permits().min(u32::MAX as usize) as u32;
            if more > 0
                && let Ok(permits) = self.granted.try_acquire_many(more)
            {
                permits.forget();
                self.balance += more as i64;
            }
        }
        self.balance > 0
    }

    /// Charges an item whose body is `body_len` bytes.
    pub(crate) fn spend(&mut self, body_len: usize) {
        self.balance -= message::stream_item_cost(body_len) as i64;
    }
}

type LocalStream<T> = Pin<Box<dyn Stream<Item = Result<T, RpcError>> + Send>>;

/// A stream of `Result<T, RpcError>`. See the module docs.
///
/// ```
/// use futures::StreamExt;
/// use rpc_core::RpcStream;
///
/// # tokio_test();
/// # fn tokio_test() {
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let mut numbers = RpcStream::new(futures::stream::iter([1, 2, 3]));
/// assert_eq!(numbers.next().await.unwrap().unwrap(), 1);
///
/// let (tx, rx) = tokio::sync::watch::channel(10);
/// let mut latest = RpcStream::from(rx);
/// assert_eq!(latest.next().await.unwrap().unwrap(), 10); // the current value first
/// tx.send(11).unwrap();
/// assert_eq!(latest.next().await.unwrap().unwrap(), 11); // then each change
/// # });
/// # }
/// ```
pub struct RpcStream<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Local(LocalStream<T>),
    Remote(RemoteStream<T>),
}

impl<T: Send + 'static> RpcStream<T> {
    /// A stream of the items of `stream`.
    pub fn new<S: Stream<Item = T> + Send + 'static>(stream: S) -> RpcStream<T> {
        use futures::StreamExt;
        RpcStream { inner: Inner::Local(Box::pin(stream.map(Ok))) }
    }

    /// A stream that ends with the first `Err`, typed as an action's error would be (declared
    /// errors travel whole, others are hidden behind `Internal`).
    pub fn try_new<S, E>(stream: S) -> RpcStream<T>
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
        E: ActionError,
    {
        use futures::StreamExt;
        let mapped = stream.map(|item| {
            item.map_err(|e| match e.into_rpc_error() {
                Ok(e) => e,
                Err(detail) => hidden_failure(&detail, "stream", "item"),
            })
        });
        RpcStream { inner: Inner::Local(Box::pin(mapped)) }
    }
}

impl<T: Clone + Send + Sync + 'static> From<watch::Receiver<T>> for RpcStream<T> {
    fn from(rx: watch::Receiver<T>) -> RpcStream<T> {
        let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let value = rx.borrow_and_update().clone();
            Some((Ok(value), (rx, false)))
        });
        RpcStream { inner: Inner::Local(Box::pin(stream)) }
    }
}

impl<T: DeserializeOwned> RpcStream<T> {
    /// The caller's end of a result stream: holds the call's slot, stops the argument
    /// producer (if any) and unsubscribes when dropped.
    pub(crate) fn remote_result(
        rx: mpsc::UnboundedReceiver<Frame>,
        conn: Arc<ConnShared>,
        id: u32,
        window: u32,
        slot: Slot,
        producer: Option<AbortHandle>,
        allowance: Arc<AtomicI64>,
    ) -> RpcStream<T> {
        let direction = Direction::Result { slot: Some(slot), producer };
        RpcStream::remote(rx, conn, id, window, direction, allowance)
    }

    /// The callee's end of an argument stream.
    pub(crate) fn remote_arguments(
        rx: mpsc::UnboundedReceiver<Frame>,
        conn: Arc<ConnShared>,
        id: u32,
        window: u32,
        allowance: Arc<AtomicI64>,
    ) -> RpcStream<T> {
        RpcStream::remote(rx, conn, id, window, Direction::Arguments, allowance)
    }

    fn remote(
        rx: mpsc::UnboundedReceiver<Frame>,
        conn: Arc<ConnShared>,
        id: u32,
        window: u32,
        direction: Direction,
        allowance: Arc<AtomicI64>,
    ) -> RpcStream<T> {
        RpcStream {
            inner: Inner::Remote(RemoteStream {
                rx,
                conn,
                id,
                consumed: 0,
                grant_at: (window as u64 / 2).max(1),
                done: false,
                direction,
                allowance,
                batch: None,
                grant_yield: None,
                decode: codec::decode_prefix::<T>,
            }),
        }
    }
}

impl<T> Stream for RpcStream<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().inner {
            Inner::Local(s) => s.as_mut().poll_next(cx),
            Inner::Remote(r) => r.poll_next(cx),
        }
    }
}

impl<T> std::fmt::Debug for RpcStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Local(_) => f.write_str("RpcStream(local)"),
            Inner::Remote(r) => write!(f, "RpcStream(remote call {})", r.id),
        }
    }
}

/// Which way a remote stream flows, and what it holds while open.
enum Direction {
    /// Items the callee sends back to this (calling) side.
    Result {
        /// The calls-in-flight slot this stream holds until it ends.
        slot: Option<Slot>,
        /// The task sending this side's argument stream on the same call (bidirectional).
        producer: Option<AbortHandle>,
    },
    /// Items the caller sends to this (serving) side.
    Arguments,
}

/// The receiving end of a stream that crosses the connection.
struct RemoteStream<T> {
    rx: mpsc::UnboundedReceiver<Frame>,
    conn: Arc<ConnShared>,
    id: u32,
    /// Credit consumed since the last grant.
    consumed: u64,
    /// Consumed credit at which it is granted back: half the window.
    grant_at: u64,
    done: bool,
    direction: Direction,
    /// Credit the remote has left (shared with the read loop's [`StreamSender`]).
    allowance: Arc<AtomicI64>,
    /// The Items frame being read, if its items are not all yielded yet.
    batch: Option<Batch>,
    /// Set when credit was just granted: the consumer steps aside once so that the
    /// connection's writer sends the grant now (see [`RemoteStream::consumed`]).
    grant_yield: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    /// Decodes the item at the start of a slice under a depth limit, returning it with its
    /// length ([`codec::decode_prefix`]; the stream type itself needs no `DeserializeOwned`
    /// bound, so the server can hold `RpcStream<T>` for any serializable `T`).
    decode: DecodePrefix<T>,
}

/// [`codec::decode_prefix`] for one item type: the item at the start of a slice, under a
/// depth limit, with the bytes it took.
type DecodePrefix<T> = fn(&[u8], usize) -> Result<(T, usize), codec::DecodeError>;

/// What is left of an Items frame: its body, where the next item starts, how many remain.
struct Batch {
    body: bytes::Bytes,
    offset: usize,
    remaining: u32,
}

impl<T> RemoteStream<T> {
    /// Releases what an open result stream holds.
    fn finish(&mut self) {
        if let Direction::Result { slot, producer } = &mut self.direction {
            *slot = None;
            if let Some(p) = producer.take() {
                p.abort();
            }
        }
    }

    /// Counts a consumed item's cost and grants credit back once half the window is spent.
    ///
    /// A grant is only queued here; the writer task sends it. A consumer with items ready
    /// would otherwise not yield until it had read them all, so the grant would leave only
    /// then and the producer would idle while the consumer read, and the consumer while the
    /// producer wrote. The next poll therefore yields once (at the back of the scheduler's
    /// queue, behind the writer), which keeps both ends busy.
    #[inline]
    fn consumed(&mut self, body_len: usize) {
        self.consumed += message::stream_item_cost(body_len);
        if self.consumed >= self.grant_at {
            self.grant();
        }
    }

    /// Grants what was consumed since the last grant (see [`RemoteStream::consumed`]).
    #[cold]
    fn grant(&mut self) {
        self.allowance.fetch_add(self.consumed as i64, Ordering::AcqRel);
        self.conn.send_credit(self.id, self.consumed);
        self.consumed = 0;
        self.grant_yield = Some(Box::pin(tokio::task::yield_now()));
    }

    /// Fails the stream with a protocol error (the remote sent something unreadable).
    fn malformed(&mut self, what: String) -> Option<Result<T, RpcError>> {
        self.done = true;
        self.batch = None;
        self.finish();
        Some(Err(RpcError::protocol(what)))
    }

    /// The next item of the current Items frame, if there is one. The batch is read in
    /// place: taking it out and putting it back moved it twice per item.
    ///
    /// The item is decoded straight from the batch, which finds where it ends; only an item
    /// that fails is scanned, to tell one of another type (an error for that item, and the
    /// stream goes on after it) from bytes that are no value at all (the stream ends).
    fn next_batched(&mut self) -> Option<Result<T, RpcError>> {
        let depth = self.conn.limits.depth_limit();
        let decode = self.decode;
        let batch = self.batch.as_mut()?;
        let rest = &batch.body[batch.offset..];
        // Blobs in the item share the frame's bytes.
        let (item, len) = match crate::blob::decode_from(&batch.body, || decode(rest, depth)) {
            Ok((value, len)) => (Ok(value), len),
            Err(e) => match codec::value_len(rest, depth) {
                Ok(len) => (Err(e), len),
                Err(e) => {
                    return self.malformed(format!("an Items frame holds a malformed item: {e}"));
                }
            },
        };
        batch.offset += len;
        batch.remaining -= 1;
        if batch.remaining == 0 {
            self.batch = None;
        }
        self.consumed(len);
        Some(item.map_err(undecodable))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, RpcError>>> {
        if let Some(step_aside) = &mut self.grant_yield {
            std::task::ready!(step_aside.as_mut().poll(cx));
            self.grant_yield = None;
        }
        if let Some(item) = self.next_batched() {
            return Poll::Ready(Some(item));
        }
        if self.done {
            self.finish();
            return Poll::Ready(None);
        }
        let frame = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(frame)) => frame,
            Poll::Ready(None) => {
                self.done = true;
                return Poll::Ready(Some(Err(self.conn.disconnect_error())));
            }
        };
        match frame.kind {
            Kind::Items => {
                // The read loop already checked the header (`StreamSender::send`).
                let (offset, remaining) = match message::ItemBatch::new(&frame.body) {
                    Ok(b) => (frame.body.len() - b.rest().len(), b.remaining()),
                    Err(e) => return Poll::Ready(self.malformed(format!("malformed Items: {e}"))),
                };
                self.batch = Some(Batch { body: frame.body, offset, remaining });
                Poll::Ready(self.next_batched())
            }
            Kind::Item => {
                self.consumed(frame.body.len());
                let depth = self.conn.limits.depth_limit();
                let item =
                    crate::blob::decode_from(&frame.body, || (self.decode)(&frame.body, depth))
                        .and_then(|decoded| codec::all_of(&frame.body, decoded))
                        .map_err(undecodable);
                Poll::Ready(Some(item))
            }
            Kind::End => {
                self.done = true;
                self.finish();
                Poll::Ready(None)
            }
            Kind::Error => {
                self.done = true;
                self.finish();
                let e = message::decode_error(&frame.body)
                    .unwrap_or_else(|e| RpcError::protocol(format!("malformed error: {e}")));
                Poll::Ready(Some(Err(e)))
            }
            other => {
                self.done = true;
                Poll::Ready(Some(Err(RpcError::protocol(format!(
                    "unexpected {other:?} frame on a stream"
                )))))
            }
        }
    }
}

fn undecodable(e: codec::DecodeError) -> RpcError {
    RpcError::protocol(format!("a stream item did not decode: {e}"))
}

impl<T> Drop for RemoteStream<T> {
    fn drop(&mut self) {
        if !self.done && matches!(self.direction, Direction::Result { .. }) {
            // Unsubscribe: the server drops its producer.
            self.conn.cancel_outbound(self.id);
        }
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn item(len: usize) -> Frame {
        Frame { kind: Kind::Item, id: 1, route: None, body: Bytes::from(vec![0u8; len]) }
    }

    #[test]
    fn an_item_may_overdraw_the_credit_left_but_none_follows_it() {
        let (tx, mut rx, allowance) = StreamSender::channel(100);
        assert!(tx.send(item(10)).is_ok(), "74 of 100 spent");
        assert!(tx.send(item(1000)).is_ok(), "26 left: a large item still goes");
        assert_eq!(allowance.load(Ordering::Acquire), 100 - 74 - 1064);
        assert!(tx.send(item(1)).is_err(), "no credit left: an overrun");
        // End and Error frames need no credit.
        let end = Frame { kind: Kind::End, id: 1, route: None, body: Bytes::new() };
        assert!(tx.send(end).is_ok());
        assert_eq!(rx.try_recv().map(|f| f.body.len()).ok(), Some(10));
    }

    /// An item of another type than the stream's is an error for that item only, and the
    /// stream reads on after it; bytes that are no value end the stream.
    #[test]
    fn a_mistyped_item_is_skipped_and_a_malformed_one_ends_the_stream() {
        use futures::StreamExt;
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = crate::connection::tests::connection();
        let allowance = Arc::new(AtomicI64::new(1 << 20));
        let mut stream = RpcStream::<u32>::remote_arguments(rx, conn, 2, 1 << 20, allowance);
        let frame = |kind, body: &'static [u8]| Frame {
            kind,
            id: 2,
            route: None,
            body: Bytes::from_static(body),
        };
        // [1, "x", [7, 8], 3], then 4 with a byte after it, then "y", then [5, 0xc1, 6].
        tx.send(frame(Kind::Items, &[0x94, 0x01, 0xa1, b'x', 0x92, 0x07, 0x08, 0x03])).unwrap();
        tx.send(frame(Kind::Item, &[0x04, 0x00])).unwrap();
        tx.send(frame(Kind::Item, &[0xa1, b'y'])).unwrap();
        tx.send(frame(Kind::Items, &[0x93, 0x05, 0xc1, 0x06])).unwrap();
        let read: Vec<Result<u32, String>> = futures::executor::block_on(
            stream.by_ref().map(|item| item.map_err(|e| e.to_string())).collect(),
        );
        let kinds: Vec<_> = read
            .iter()
            .map(|item| match item {
                Ok(v) => format!("{v}"),
                Err(e) if e.contains("malformed item") => "malformed".into(),
                Err(e) if e.contains("did not decode") => "undecodable".into(),
                Err(e) => e.clone(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "1",
                "undecodable",
                "undecodable",
                "3",
                "undecodable",
                "undecodable",
                "5",
                "malformed"
            ],
            "{read:?}"
        );
    }

    #[test]
    fn an_items_frame_costs_its_items_and_a_malformed_one_is_refused() {
        let (tx, _rx, allowance) = StreamSender::channel(1000);
        // [1, 2, 3]: three one-byte items.
        let batch = Frame {
            kind: Kind::Items,
            id: 1,
            route: None,
            body: Bytes::from_static(&[0x93, 1, 2, 3]),
        };
        assert!(tx.send(batch).is_ok());
        assert_eq!(allowance.load(Ordering::Acquire), 1000 - 3 * 65);
        for body in [&[][..], &[0x90][..], &[0x01][..]] {
            let bad =
                Frame { kind: Kind::Items, id: 1, route: None, body: Bytes::from_static(body) };
            assert!(matches!(tx.send(bad), Err(Refused::Malformed)), "{body:?}");
        }
        assert_eq!(allowance.load(Ordering::Acquire), 1000 - 3 * 65, "refusals cost nothing");
    }

    #[tokio::test]
    async fn the_gate_waits_until_grants_lift_the_balance_above_zero() {
        let granted = Arc::new(Semaphore::new(100));
        let mut gate = CreditGate::new(granted.clone());
        assert!(gate.ready().await.is_ok());
        gate.spend(1000); // 100 - 1064
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), gate.ready());
        assert!(waiting.await.is_err(), "overdrawn: waits");
        granted.add_permits(964);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), gate.ready());
        assert!(waiting.await.is_err(), "back to exactly zero: still waits");
        granted.add_permits(1);
        assert!(gate.ready().await.is_ok());
        granted.close();
        gate.spend(1);
        assert!(gate.ready().await.is_err(), "the consumer is gone");
    }
}
