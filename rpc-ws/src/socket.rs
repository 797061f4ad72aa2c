//! [`WsSocket`]: the transport of [`RpcWebSocketServer`](crate::RpcWebSocketServer) and
//! [`RpcWebSocketClient`](crate::RpcWebSocketClient) once tungstenite has done the HTTP
//! upgrade: WebSocket frames read and written over the byte stream with [`crate::wire`].
//!
//! Why not tungstenite's own frame layer: it zero-fills its read buffer before every read
//! and copies every outgoing message into a write buffer of its own. At 64 calls in flight
//! the zero-filling alone was 601 of the 797 instructions per call WebSocket cost over TCP,
//! and 64 KiB echoes on one core ran at 0.7x the TCP rate (`BENCHMARKS.md`, session 11).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use rpc_core::transport::{Transport, TransportInfo, TransportReader, TransportWriter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::transport::{PACK_LIMIT, messages};
use crate::wire::{self, Event, Inbound, Violation};

/// The most one read reserves for a frame still arriving: a header that claims a large
/// frame gets memory as its bytes come, not before.
pub(crate) const READ_AHEAD_MAX: usize = 256 << 10;

/// Bytes the writer gathers before it starts writing, so that the first bytes of a large
/// batch leave while the rest is framed. Measured on one core, 64 KiB echoes with 8 in
/// flight: one vectored write per message ran at 1.41-1.62 GB/s, one per 256 KiB gathered
/// at 1.62-1.90 (`BENCHMARKS.md`, session 11).
const FLUSH_AT: usize = 256 << 10;

/// A server sends a message this large straight from the batch, without copying it (a
/// client must copy to mask).
const ZERO_COPY_MIN: usize = 16 << 10;

/// How long the reader waits to send a Close frame of its own.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A WebSocket over a byte stream whose HTTP upgrade is done. Which side it is decides the
/// masking: a client masks what it sends (with random keys) and refuses masked frames, a
/// server the reverse (RFC 6455 §5.1).
pub(crate) struct WsSocket<S> {
    stream: S,
    info: TransportInfo,
    server: bool,
    /// The largest message accepted: the kernel's frame limit + 4 (see
    /// [`max_message_size`](crate::max_message_size)).
    max_message: usize,
}

impl<S> WsSocket<S> {
    pub(crate) fn new(stream: S, info: TransportInfo, server: bool, max_message: usize) -> Self {
        WsSocket { stream, info, server, max_message }
    }
}

/// What both halves share: the write half (the reader answers pings and sends Close frames
/// itself when the writer is idle), the latest unanswered ping, and the Close frame to send.
struct Shared<S> {
    writer: tokio::sync::Mutex<Outbound<S>>,
    /// Only the latest ping is answered (RFC 6455 §5.5.3 allows it): a ping flood cannot
    /// queue pongs.
    pong: Mutex<Option<Bytes>>,
    /// The Close frame the writer sends at the end, set when the reader ends the connection.
    close: Mutex<Option<(u16, &'static str)>>,
}

/// The write half with its buffer.
struct Outbound<S> {
    io: WriteHalf<S>,
    /// Frames gathered for the next write: headers, small messages, and on a client every
    /// message (masked).
    out: BytesMut,
    /// Chunks to write in order, when large messages go out uncopied: gathered bytes and
    /// messages' payloads, written with vectored writes. What was written is gone from it,
    /// so a write cut short is finished by the next one.
    queue: VecDeque<Bytes>,
    /// Clients mask with random keys.
    client: bool,
    /// A Close frame went out: nothing may follow it.
    closed: bool,
}

impl<S: AsyncWrite> Outbound<S> {
    /// Appends one final frame.
    fn put(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.client.then(rand::random::<[u8; 4]>);
        wire::put_head(&mut self.out, opcode, payload.len(), mask);
        let start = self.out.len();
        self.out.extend_from_slice(payload);
        if let Some(key) = mask {
            wire::apply_mask(&mut self.out[start..], key);
        }
    }

    /// Appends a Pong for the latest ping, if one waits.
    fn put_pong(&mut self, pong: &Mutex<Option<Bytes>>) {
        if let Some(payload) = pong.lock().take()
            && !self.closed
        {
            self.put(wire::PONG, &payload);
        }
    }

    /// Appends a Close frame, unless one went out already.
    fn put_close(&mut self, code: u16, reason: &str) {
        if !self.closed {
            self.closed = true;
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason.as_bytes());
            self.put(wire::CLOSE, &payload);
        }
    }

    /// Writes out what was gathered and queued. Cancel-safe: what was written is gone from
    /// `out` and `queue`, so a flush cut short (the reader's, under its timeout) is finished
    /// by the next one.
    async fn flush(&mut self) -> io::Result<()> {
        if self.queue.is_empty() {
            self.io.write_all_buf(&mut self.out).await?;
        } else {
            if !self.out.is_empty() {
                self.queue.push_back(self.out.split().freeze());
            }
            self.write_queue().await?;
        }
        // A client's large message grew the buffer: give the memory back.
        if self.out.capacity() > 2 * FLUSH_AT {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Writes the queued chunks, up to 64 per vectored write.
    async fn write_queue(&mut self) -> io::Result<()> {
        while !self.queue.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); 64];
            let count = slices.len().min(self.queue.len());
            for (slice, chunk) in slices.iter_mut().zip(self.queue.iter()) {
                *slice = io::IoSlice::new(chunk);
            }
            let mut written = self.io.write_vectored(&slices[..count]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let Some(front) = self.queue.front_mut() else { break };
                if front.len() <= written {
                    written -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        Ok(())
    }

    /// Appends one binary message. A server queues a large one as it is, without copying
    /// it (a client must copy to mask). Writes out once [`FLUSH_AT`] bytes are waiting.
    async fn send_message(&mut self, message: Bytes) -> io::Result<()> {
        if self.client || message.len() < ZERO_COPY_MIN {
            self.put(wire::BINARY, &message);
        } else {
            wire::put_head(&mut self.out, wire::BINARY, message.len(), None);
            self.queue.push_back(self.out.split().freeze());
            self.queue.push_back(message);
        }
        // The queue is empty unless a large message went in (never on a client).
        let queued = match self.queue.is_empty() {
            true => 0,
            false => self.queue.iter().map(Bytes::len).sum(),
        };
        if self.out.len() + queued >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }
}

/// The read half of a [`WsSocket`].
pub(crate) struct WsSocketReader<S> {
    io: ReadHalf<S>,
    inbound: Inbound,
    shared: Arc<Shared<S>>,
    max_message: usize,
    /// The kernel's frame limit, live (pre-auth until the remote authenticates).
    frame_limit: Option<Arc<AtomicUsize>>,
}

/// The write half of a [`WsSocket`].
pub(crate) struct WsSocketWriter<S> {
    shared: Arc<Shared<S>>,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Transport for WsSocket<S> {
    type Reader = WsSocketReader<S>;
    type Writer = WsSocketWriter<S>;

    fn info(&self) -> TransportInfo {
        self.info.clone()
    }

    fn split(self) -> (WsSocketReader<S>, WsSocketWriter<S>) {
        let (read, write) = tokio::io::split(self.stream);
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(Outbound {
                io: write,
                out: BytesMut::new(),
                queue: VecDeque::new(),
                client: !self.server,
                closed: false,
            }),
            pong: Mutex::new(None),
            close: Mutex::new(None),
        });
        let reader = WsSocketReader {
            io: read,
            inbound: Inbound::new(self.server),
            shared: shared.clone(),
            max_message: self.max_message,
            frame_limit: None,
        };
        (reader, WsSocketWriter { shared })
    }
}

impl<S: AsyncWrite> Shared<S> {
    /// Sends what `put` appends now if the writer is idle; otherwise the writer sends it
    /// after its current write (see `WsSocketWriter::write`) or in its `close()`.
    async fn send_now(&self, put: impl FnOnce(&mut Outbound<S>)) {
        if let Ok(mut writer) = self.writer.try_lock() {
            put(&mut writer);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.flush()).await;
        }
    }

    /// Whether a ping waits for its Pong.
    fn ping_waits(&self) -> bool {
        self.pong.lock().is_some()
    }

    /// Sends the Pong for the latest ping if the writer is idle (otherwise the writer sends
    /// it).
    async fn answer_ping(&self) {
        self.send_now(|w| w.put_pong(&self.pong)).await;
    }

    /// The writer, without the cost of a waiting lock when nobody holds it (the usual case:
    /// the reader takes it only to answer pings and to close).
    async fn writer(&self) -> tokio::sync::MutexGuard<'_, Outbound<S>> {
        match self.writer.try_lock() {
            Ok(writer) => writer,
            Err(_) => self.writer.lock().await,
        }
    }

    /// Ends the connection with a Close frame of `code`: it goes out now if the writer is
    /// idle, or from the writer's `close()`.
    async fn send_close(&self, code: u16, reason: &'static str) {
        *self.close.lock() = Some((code, reason));
        self.send_now(|w| w.put_close(code, reason)).await;
    }

    /// Ends the connection for a violation (see [`Shared::send_close`]).
    async fn fail(&self, violation: &Violation) -> io::Error {
        self.send_close(violation.code, violation.reason).await;
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket: {} (closed with {})", violation.reason, violation.code),
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> WsSocketReader<S> {
    /// The largest message accepted now: what the kernel's current frame limit allows (the
    /// small pre-authentication limit until the remote authenticates), never above the
    /// configured maximum. Checked at each frame's header, before its payload is buffered.
    fn message_limit(&self) -> usize {
        match &self.frame_limit {
            Some(limit) => {
                let frame = limit.load(Ordering::Acquire);
                frame
                    .saturating_add(crate::transport::LEN_PREFIX)
                    .max(PACK_LIMIT)
                    .min(self.max_message)
            }
            None => self.max_message,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> TransportReader for WsSocketReader<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let message = TransportReader::read_bytes(self).await?;
        buf.extend_from_slice(&message);
        Ok(message.len())
    }

    /// Each binary message is handed over whole, without a copy.
    const RECEIVES_BUFFERS: bool = true;

    /// A message above the connection's current limit is refused as its header arrives.
    fn follow_frame_limit(&mut self, frame_limit: Arc<AtomicUsize>) {
        self.frame_limit = Some(frame_limit);
    }

    async fn read_bytes(&mut self) -> io::Result<Bytes> {
        // Cancel-safe: received bytes stay in `inbound` until a whole message is taken out.
        loop {
            match self.inbound.next(self.message_limit()) {
                Ok(Some(Event::Message(message))) => {
                    // An empty message carries no frame (and an empty buffer means the end).
                    if !message.is_empty() {
                        if self.shared.ping_waits() {
                            self.shared.answer_ping().await;
                        }
                        return Ok(message);
                    }
                }
                // Answered once the buffered frames are through: a burst of pings gets one
                // Pong, for the latest.
                Ok(Some(Event::Ping(payload))) => *self.shared.pong.lock() = Some(payload),
                Ok(Some(Event::Pong)) => {}
                Ok(Some(Event::Close(code))) => {
                    // Answer with the same code (RFC 6455 §5.5.1), then end.
                    self.shared.send_close(code.unwrap_or(wire::NORMAL), "").await;
                    return match code {
                        None | Some(wire::NORMAL) | Some(wire::AWAY) => Ok(Bytes::new()),
                        Some(code) => Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("the remote closed the WebSocket with code {code}"),
                        )),
                    };
                }
                Ok(None) => {
                    if self.shared.ping_waits() {
                        self.shared.answer_ping().await;
                    }
                    self.inbound.reserve_for_read(READ_AHEAD_MAX);
                    if self.io.read_buf(self.inbound.buffer()).await? == 0 {
                        return Ok(Bytes::new());
                    }
                }
                Err(violation) => return Err(self.shared.fail(&violation).await),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> TransportWriter for WsSocketWriter<S> {
    /// Small frames packed into messages of up to 4 KiB, a larger frame in a message of its
    /// own (`PROTOCOL.md`); a batch of small frames is one write.
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        let mut writer = self.shared.writer().await;
        if writer.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closing"));
        }
        writer.put_pong(&self.shared.pong);
        for message in messages(data) {
            writer.send_message(message).await?;
        }
        writer.flush().await?;
        drop(writer);
        // A ping that arrived while this write held the writer: the reader left its pong.
        if self.shared.ping_waits() {
            let mut writer = self.shared.writer().await;
            writer.put_pong(&self.shared.pong);
            writer.flush().await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> io::Result<()> {
        let (code, reason) =
            self.shared.close.lock().take().unwrap_or((wire::NORMAL, "connection closed"));
        let mut writer = self.shared.writer.lock().await;
        // Best effort: the remote may be gone already.
        writer.put_close(code, reason);
        let sent = writer.flush().await;
        let _ = writer.io.shutdown().await;
        sent
    }
}
