//! [`WsTransport`]: frames over WebSocket binary messages, for any socket that is a stream
//! and a sink of tungstenite [`Message`]s.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use parking_lot::Mutex;
use rpc_core::Limits;
use rpc_core::transport::{Transport, TransportInfo, TransportReader, TransportWriter};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Bytes of a frame's length prefix (`PROTOCOL.md`): a frame is `4 + length` bytes.
pub(crate) const LEN_PREFIX: usize = 4;

/// Frames are packed into one message while it stays within this many bytes: the smallest
/// frame limit any peer may have (4 KiB) plus the prefix, so a packed message never exceeds
/// a receiver's `max_message_size`. A larger frame travels alone.
pub(crate) const PACK_LIMIT: usize = (4 << 10) + LEN_PREFIX;

/// The frame limit the kernel enforces for `limits` (`Limits::max_frame_size`, clamped to
/// 4 KiB ..= 16 MiB as the kernel does), plus the length prefix: the largest binary message a
/// peer with these limits ever needs to send.
pub fn max_message_size(limits: &Limits) -> usize {
    limits.frame_limit() + LEN_PREFIX
}

/// The tungstenite configuration for [`WsTransport`] (and [`serve_upgraded`]), and for the
/// upgrades of [`RpcWebSocketServer`] and [`RpcWebSocketClient`], whose frames are then read
/// and written by this crate under the same message limit. Set deliberately instead of
/// tungstenite's defaults (`ROBUSTNESS.md` §3.2):
///
/// [`serve_upgraded`]: crate::serve_upgraded
/// [`RpcWebSocketServer`]: crate::RpcWebSocketServer
/// [`RpcWebSocketClient`]: crate::RpcWebSocketClient
///
/// | setting | value | tungstenite's default |
/// |---|---|---|
/// | `max_message_size` | [`Limits::max_frame_size`] + 4 (1 MiB + 4) | 64 MiB |
/// | `max_frame_size` | the same | 16 MiB |
/// | `read_buffer_size` | 16 KiB (allocated up front and zero-filled on every read; measured, split placement: 64 KiB echoes 1161 MB/s at 4 KiB, 1758 at 8, 2069 at 16, unary latency unchanged; 4 KiB would save 9.5 KiB per idle connection) | 128 KiB |
/// | `write_buffer_size` | 16 KiB | 128 KiB |
/// | `max_write_buffer_size` | [`Limits::max_outbound_queue`] (8 MiB), at least one message more than the write buffer | unbounded |
/// | `accept_unmasked_frames` | false (a client's unmasked frame closes with 1002) | false |
///
/// A larger message closes the connection with code 1009. Servers that upgrade the socket
/// themselves (axum, hyper) should apply the same values; see the `axum_server` example.
///
/// ```
/// let config = rpc_ws::websocket_config(&rpc_core::Limits::default());
/// assert_eq!(config.max_message_size, Some((1 << 20) + 4));
/// assert_eq!(config.read_buffer_size, 16 << 10);
/// ```
pub fn websocket_config(limits: &Limits) -> WebSocketConfig {
    let message = max_message_size(limits);
    let (read_buffer, write_buffer) = (16 << 10, 16 << 10);
    // tungstenite refuses a message that would not fit in the write buffer's bound.
    let max_write = limits.max_outbound_queue.max(write_buffer + message + 14);
    WebSocketConfig::default()
        .max_message_size(Some(message))
        .max_frame_size(Some(message))
        .read_buffer_size(read_buffer)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(max_write)
        .accept_unmasked_frames(false)
}

/// The close code and reason the writer sends when the connection ends; set by the reader
/// when it ends the connection for a WebSocket-level reason.
type CloseCell = Arc<Mutex<Option<CloseFrame>>>;

/// A transport over an established WebSocket: any `S` that is a
/// `Stream<Item = Result<Message, E>>` and a `Sink<Message, Error = E>` of tungstenite
/// messages, such as `tokio_tungstenite::WebSocketStream<T>` for any byte stream `T` (TCP,
/// TLS, an upgraded hyper connection), or a WebSocket of another server adapted to
/// tungstenite's `Message` (see the `axum_server` example).
///
/// The wire rules (`PROTOCOL.md`): each binary message carries one or more whole frames
/// (frames never span messages); a text message is a protocol error that closes the
/// connection with code 1003; a message above the configured size closes it with 1009;
/// tungstenite answers pings. When the connection ends, the writer sends a Close frame:
/// 1000 when the kernel closed it (a GoAway frame precedes it), 1003, 1002 or 1009 when the
/// reader ended it.
///
/// ```no_run
/// use rpc_core::RpcKernel;
/// use rpc_core::transport::TransportInfo;
/// use rpc_ws::WsTransport;
///
/// # async fn run(socket: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
/// let kernel = RpcKernel::new();
/// let config = rpc_ws::websocket_config(&kernel.limits());
/// let ws = tokio_tungstenite::accept_async_with_config(socket, Some(config)).await?;
/// let info = TransportInfo { kind: "ws", ..Default::default() };
/// let connection = kernel.accept(WsTransport::new(ws, info)).await?;
/// # drop(connection); Ok(()) }
/// ```
pub struct WsTransport<S> {
    socket: S,
    info: TransportInfo,
}

impl<S> WsTransport<S> {
    /// Wraps an established WebSocket; `info` is what handlers see as
    /// `ctx.connection().transport()` (use kind `"ws"` or `"wss"`).
    pub fn new(socket: S, info: TransportInfo) -> WsTransport<S> {
        WsTransport { socket, info }
    }
}

/// The sending half, shared: the writer sends frames through it, and the reader sends the
/// Close frame itself when it ends the connection (a text message, a message too big), which
/// can happen before the kernel's writer runs at all (during the protocol handshake).
type SharedSink<S> = Arc<tokio::sync::Mutex<SplitSink<S, Message>>>;

/// How long the reader waits to send its Close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The read half of a [`WsTransport`].
pub struct WsReader<S> {
    stream: SplitStream<S>,
    sink: SharedSink<S>,
    close: CloseCell,
}

/// The write half of a [`WsTransport`].
pub struct WsWriter<S> {
    sink: SharedSink<S>,
    close: CloseCell,
}

impl<S, E> Transport for WsTransport<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    type Reader = WsReader<S>;
    type Writer = WsWriter<S>;

    fn info(&self) -> TransportInfo {
        self.info.clone()
    }

    fn split(self) -> (WsReader<S>, WsWriter<S>) {
        let (sink, stream) = self.socket.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let close = CloseCell::default();
        let reader = WsReader { stream, sink: sink.clone(), close: close.clone() };
        (reader, WsWriter { sink, close })
    }
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame { code, reason: reason.into() }
}

/// The close code for an error the reader got, when tungstenite leaves the close to us.
fn close_for_error<E: std::error::Error + 'static>(error: &E) -> Option<CloseFrame> {
    let error: &dyn std::error::Error = error;
    match error.downcast_ref::<WsError>()? {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some(close_frame(CloseCode::Size, "message too big (Limits::max_frame_size + 4)"))
        }
        WsError::Capacity(_) => Some(close_frame(CloseCode::Size, "message too big")),
        WsError::Protocol(_) => Some(close_frame(CloseCode::Protocol, "WebSocket protocol error")),
        _ => None,
    }
}

impl<S> WsReader<S>
where
    S: Sink<Message> + Send,
{
    /// Ends the connection with `frame`: sends it now if the writer is idle, and leaves it for
    /// the writer's `close()` either way (a second Close frame is never sent).
    async fn fail(&mut self, frame: CloseFrame) {
        *self.close.lock() = Some(frame.clone());
        if let Ok(mut sink) = self.sink.try_lock() {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
        }
    }
}

impl<S, E> TransportReader for WsReader<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let message = self.read_bytes().await?;
        buf.extend_from_slice(&message);
        Ok(message.len())
    }

    /// Each binary message is handed over whole: the connection cuts its frames out of
    /// it without copying.
    const RECEIVES_BUFFERS: bool = true;

    async fn read_bytes(&mut self) -> io::Result<Bytes> {
        // Cancel-safe: `next()` either yields a whole message, which is consumed before the
        // next await, or nothing.
        loop {
            let message = match self.stream.next().await {
                None => return Ok(Bytes::new()),
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    if let Some(frame) = close_for_error(&e) {
                        self.fail(frame).await;
                    }
                    return Err(io::Error::other(e));
                }
            };
            match message {
                Message::Binary(data) => {
                    // An empty message carries no frame (and `Ok(0)` would mean end of stream).
                    if !data.is_empty() {
                        return Ok(data);
                    }
                }
                Message::Text(_) => {
                    self.fail(close_frame(
                        CloseCode::Unsupported,
                        "text messages are not part of the protocol",
                    ))
                    .await;
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message arrived: frames travel in binary messages (closed with 1003)",
                    ));
                }
                Message::Close(None) => return Ok(Bytes::new()),
                Message::Close(Some(frame)) => {
                    return match frame.code {
                        CloseCode::Normal | CloseCode::Away => Ok(Bytes::new()),
                        code => Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!(
                                "the remote closed the WebSocket with code {}: {}",
                                u16::from(code),
                                frame.reason.as_str()
                            ),
                        )),
                    };
                }
                // Answered by tungstenite; nothing for the protocol.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

/// Splits a batch of whole frames into messages: frames are packed together up to
/// [`PACK_LIMIT`]; a larger frame gets a message of its own. A batch that does not parse as
/// frames (never the case for the kernel's writer) goes out whole. Each message is a slice
/// of the batch (no copy).
pub(crate) fn messages(batch: Bytes) -> Messages {
    Messages { batch, start: 0 }
}

/// The messages of a batch, see [`messages`].
pub(crate) struct Messages {
    batch: Bytes,
    /// Where the next message starts.
    start: usize,
}

impl Iterator for Messages {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let batch = &self.batch;
        let start = self.start;
        let mut end = start;
        while end < batch.len() {
            let Some(prefix) = batch.get(end..end + LEN_PREFIX) else {
                end = batch.len();
                break;
            };
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            let frame_end = end.saturating_add(LEN_PREFIX).saturating_add(len).min(batch.len());
            if frame_end - start > PACK_LIMIT && end > start {
                break;
            }
            end = frame_end;
        }
        self.start = end;
        (end > start).then(|| batch.slice(start..end))
    }
}

impl<S, E> TransportWriter for WsWriter<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        let mut sink = self.sink.lock().await;
        for part in messages(data) {
            sink.feed(Message::Binary(part)).await.map_err(io::Error::other)?;
        }
        sink.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self) -> io::Result<()> {
        let frame = self
            .close
            .lock()
            .take()
            .unwrap_or_else(|| close_frame(CloseCode::Normal, "connection closed"));
        // Best effort: the remote may be gone already. After a Close frame (ours, sent by the
        // reader, or the remote's), tungstenite sends no other.
        let mut sink = self.sink.lock().await;
        let sent = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
        sent.map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut f = (len as u32).to_be_bytes().to_vec();
        f.resize(LEN_PREFIX + len, 7);
        f
    }

    fn split(frames: &[usize]) -> Vec<usize> {
        let batch: Vec<u8> = frames.iter().flat_map(|&n| frame(n)).collect();
        messages(Bytes::from(batch)).map(|m| m.len()).collect()
    }

    #[test]
    fn small_frames_are_packed_and_large_ones_travel_alone() {
        assert_eq!(split(&[10, 20, 30]), [14 + 24 + 34]);
        assert_eq!(split(&[10, 100_000, 10]), [14, 100_004, 14]);
        assert_eq!(split(&[PACK_LIMIT - 4]), [PACK_LIMIT]);
        assert_eq!(split(&[2000, 2000, 2000]), [4008, 2004]);
        assert_eq!(split(&[]), Vec::<usize>::new());
    }

    #[test]
    fn a_batch_that_is_not_frames_goes_out_whole() {
        let lens = |batch: &'static [u8]| -> Vec<usize> {
            messages(Bytes::from_static(batch)).map(|m| m.len()).collect()
        };
        assert_eq!(lens(&[0, 0]), [2]);
        assert_eq!(lens(&[0, 0, 0, 200, 1, 2]), [6]);
    }

    #[test]
    fn config_follows_the_limits() {
        let limits = Limits::default().max_frame_size(64 << 10).max_outbound_queue(1 << 20);
        let config = websocket_config(&limits);
        assert_eq!(config.max_message_size, Some((64 << 10) + 4));
        assert_eq!(config.max_frame_size, Some((64 << 10) + 4));
        assert_eq!(config.max_write_buffer_size, 1 << 20);
        assert_eq!(config.write_buffer_size, 16 << 10);
        assert!(!config.accept_unmasked_frames);
    }
}
