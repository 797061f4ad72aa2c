//! Sends a local [`RpcStream`]'s items to the remote, within the credit it grants:
//! result streams on the callee, argument streams on the caller.
//!
//! Items the stream has ready at once travel together in one **Items** frame (when the
//! remote's Hello says it reads them): the receiver then parses, routes and queues one frame
//! for many items. The producer never waits to fill a batch; it takes what is ready, up to
//! [`BATCH_BYTES`], and sends it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::ConnShared;
use crate::error::RpcError;
use crate::protocol::codec;
use crate::protocol::frame::Kind;
use crate::protocol::message;
use crate::stream::{CreditGate, RpcStream};

/// An Items frame stops taking items once its body reaches this size.
const BATCH_BYTES: usize = 16 << 10;

/// How a stream's sending ended.
pub(crate) enum Sent {
    /// The stream completed; every item was queued (the caller sends End).
    Completed,
    /// The stream yielded this error (the caller reports it).
    Failed(RpcError),
    /// An item could not be encoded or queued.
    Unsent(RpcError),
    /// The consumer is gone (the call ended).
    Gone,
}

/// Sends every item of `stream` on call `id`, paced by `credit`.
pub(crate) async fn send_stream<T: Serialize + Send + 'static>(
    conn: &Arc<ConnShared>,
    id: u32,
    credit: Arc<Semaphore>,
    stream: &mut RpcStream<T>,
) -> Sent {
    let mut credit = CreditGate::new(credit);
    let mut batch = Batch::default();
    loop {
        // Credit first: the producer never runs ahead of what the consumer granted.
        if credit.ready().await.is_err() {
            return Sent::Gone;
        }
        // Streams together may be granted more than the outbound queue holds: wait for the
        // writer rather than overrun it (which would close the connection as a slow
        // consumer though the remote reads).
        conn.outbox.writable().await;
        // One unit of the task's cooperative budget per round, so that a producer whose
        // stream is always ready still lets the connection's other tasks run.
        tokio::task::consume_budget().await;
        // The first item goes out alone, encoded straight into the outbox (in chunks if it
        // is large).
        let item = match stream.next().await {
            Some(Ok(item)) => item,
            Some(Err(e)) => return Sent::Failed(e),
            None => return Sent::Completed,
        };
        let queued = conn.queue_item(id, &item);
        drop(item);
        let sent = match queued {
            Ok((len, oversize)) => {
                credit.spend(len);
                conn.finish_message(id, oversize).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            return Sent::Unsent(e);
        }
        if !conn.batch_items {
            continue;
        }
        // Then whatever else is ready right now, in one Items frame.
        let mut end = None;
        let mut panicked = None;
        batch.clear();
        while batch.bytes.len() < BATCH_BYTES && credit.try_ready() {
            // A producer that panics here has its earlier items sent first, as if each had
            // gone out alone; the panic then goes on up to the call's handler.
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| stream.next().now_or_never()));
            let polled = match polled {
                Ok(polled) => polled,
                Err(panic) => {
                    panicked = Some(panic);
                    break;
                }
            };
            match polled {
                Some(Some(Ok(item))) => match batch.add(&item) {
                    Ok(len) => credit.spend(len),
                    Err(e) => {
                        end = Some(Sent::Unsent(e));
                        break;
                    }
                },
                Some(Some(Err(e))) => {
                    end = Some(Sent::Failed(e));
                    break;
                }
                Some(None) => {
                    end = Some(Sent::Completed);
                    break;
                }
                None => break,
            }
        }
        let sent = send_batch(conn, id, &batch).await;
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        if let Err(e) = sent {
            return Sent::Unsent(e);
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// Items encoded for one Items frame, and where each ends.
#[derive(Default)]
struct Batch {
    bytes: BytesMut,
    ends: Vec<usize>,
}

impl Batch {
    fn clear(&mut self) {
        // A batch that held a large item gives its memory back rather than keep it for
        // the rest of the stream.
        if self.bytes.capacity() > 4 * BATCH_BYTES {
            self.bytes = BytesMut::new();
        }
        self.bytes.clear();
        self.ends.clear();
    }

    /// Encodes one more item; returns its length.
    fn add<T: Serialize>(&mut self, item: &T) -> Result<usize, RpcError> {
        let start = self.bytes.len();
        codec::encode_into(&mut self.bytes, item)?;
        self.ends.push(self.bytes.len());
        Ok(self.bytes.len() - start)
    }

    /// The encoded items, one slice each.
    fn items(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(start, end)| &self.bytes[start..end])
    }
}

/// Queues a batch as one Items frame (a single item as a plain Item).
async fn send_batch(conn: &Arc<ConnShared>, id: u32, batch: &Batch) -> Result<(), RpcError> {
    let count = batch.ends.len();
    if count == 0 {
        return Ok(());
    }
    // Items frames are never chunked: a batch that would not fit one frame (its last item
    // is large) goes as separate Item frames, chunked as they need.
    if count == 1 || batch.bytes.len() + 5 > conn.outbox.chunk_limit() {
        for item in batch.items() {
            let oversize = conn.queue_message(Kind::Item, id, None, |buf| {
                buf.extend_from_slice(item);
                Ok(())
            })?;
            conn.finish_message(id, oversize).await?;
        }
        return Ok(());
    }
    conn.queue_message(Kind::Items, id, None, |buf| {
        message::encode_items_header(buf, count as u32);
        buf.extend_from_slice(&batch.bytes);
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_lists_its_items_and_gives_back_a_large_buffer() {
        let mut batch = Batch::default();
        assert_eq!(batch.add(&1u8).unwrap(), 1);
        assert_eq!(batch.add(&"two").unwrap(), 4);
        let items: Vec<&[u8]> = batch.items().collect();
        assert_eq!(items, vec![&[0x01][..], &[0xa3, b't', b'w', b'o'][..]]);

        batch.clear();
        assert_eq!(batch.items().count(), 0);
        batch.add(&serde_bytes::ByteBuf::from(vec![0u8; 1 << 20])).unwrap();
        batch.clear();
        assert!(batch.bytes.capacity() <= 4 * BATCH_BYTES, "the 1 MiB buffer was kept");
    }
}
