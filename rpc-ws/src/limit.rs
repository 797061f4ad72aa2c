//! [`MessageLimit`]: refuses a WebSocket message above the connection's current limit as
//! soon as its header arrives, under tungstenite.
//!
//! tungstenite buffers a whole message before handing it over, up to its
//! `max_message_size` (the frame limit + 4: 1 MiB + 4 by default), and its limits cannot be
//! changed once the WebSocket exists. Until a connection authenticates, the kernel accepts
//! frames of at most `Limits::max_preauth_frame_size` (16 KiB), which on TCP is checked at
//! each frame's length prefix; over WebSocket an unauthenticated client could still make the
//! server hold a 1 MiB message, on every connection, until the authentication deadline
//! (`ROBUSTNESS.md` §3.2: "16 KiB pre-auth if the API allows a change after the handshake;
//! otherwise reject at our layer"). So the server's socket is read through this wrapper,
//! which follows the WebSocket frames in the bytes tungstenite reads and fails the read
//! when a message's frames add up to more than the connection's frame limit allows, read
//! live from the kernel (see
//! [`TransportReader::follow_frame_limit`](rpc_core::transport::TransportReader::follow_frame_limit)):
//! the limit rises the moment the connection authenticates, even while a read is waiting.
//! Once it reaches tungstenite's own, the wrapper stops looking for good.

use std::io::{self, Cursor};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;

/// A byte stream whose incoming WebSocket messages are held to the connection's frame
/// limit (see the module docs). Looks at nothing until the kernel hands over its limit
/// ([`MessageLimitHandle::follow`]), so the HTTP upgrade passes untouched.
pub(crate) struct MessageLimit<S> {
    inner: S,
    shared: Arc<Shared>,
    scan: FrameScan,
}

struct Shared {
    /// The connection's frame limit, once the kernel handed it over.
    frame_limit: parking_lot::Mutex<Option<Arc<AtomicUsize>>>,
    /// Set once the limit reached `ceiling`: nothing is looked at any more.
    done: AtomicBool,
    /// tungstenite's `max_message_size`: at or above it, checking is its job.
    ceiling: usize,
}

/// Hands the kernel's frame limit to a [`MessageLimit`].
#[derive(Clone)]
pub(crate) struct MessageLimitHandle(Arc<Shared>);

impl std::fmt::Debug for MessageLimitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageLimitHandle").field("ceiling", &self.0.ceiling).finish()
    }
}

impl<S> MessageLimit<S> {
    /// Wraps `inner`, whose WebSocket will refuse messages above `ceiling` by itself.
    pub(crate) fn new(inner: S, ceiling: usize) -> (MessageLimit<S>, MessageLimitHandle) {
        let shared = Arc::new(Shared {
            frame_limit: parking_lot::Mutex::new(None),
            done: AtomicBool::new(false),
            ceiling,
        });
        let handle = MessageLimitHandle(shared.clone());
        (MessageLimit { inner, shared, scan: FrameScan::default() }, handle)
    }

    /// The largest message accepted now; `None`: no check (not yet, or never again).
    fn limit(&self) -> Option<usize> {
        if self.shared.done.load(Ordering::Relaxed) {
            return None;
        }
        let frame_limit = self.shared.frame_limit.lock().as_ref()?.load(Ordering::Acquire);
        let message = message_limit(frame_limit);
        if message >= self.shared.ceiling {
            self.shared.done.store(true, Ordering::Relaxed);
            return None;
        }
        Some(message)
    }
}

/// What frames of at most `frame_limit` bytes need a message to hold: one such frame with
/// its length prefix, or the 4 KiB + 4 a sender packs small frames into.
fn message_limit(frame_limit: usize) -> usize {
    frame_limit.saturating_add(crate::transport::LEN_PREFIX).max(crate::transport::PACK_LIMIT)
}

impl MessageLimitHandle {
    /// From now on, messages are held to what `frame_limit` (the connection's, live)
    /// allows.
    pub(crate) fn follow(&self, frame_limit: Arc<AtomicUsize>) {
        *self.0.frame_limit.lock() = Some(frame_limit);
    }
}

/// The error a read fails with when a message passes the limit; the reader closes the
/// WebSocket with 1009 for it.
#[derive(Debug)]
pub(crate) struct MessageTooLarge {
    pub(crate) size: u64,
    pub(crate) limit: usize,
}

impl std::fmt::Display for MessageTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a WebSocket message of at least {} bytes, above the {} allowed before \
             authentication (Limits::max_preauth_frame_size + 4)",
            self.size, self.limit
        )
    }
}

impl std::error::Error for MessageTooLarge {}

impl<S: AsyncRead + Unpin> AsyncRead for MessageLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(limit) = this.limit()
            && let Err(size) = this.scan.scan(&buf.filled()[before..], limit as u64)
        {
            let error = MessageTooLarge { size, limit };
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MessageLimit<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Follows WebSocket frames (RFC 6455 §5.2) through a byte stream, however it is cut into
/// reads, and adds up the payloads of each message's data frames. Headers are read by
/// tungstenite's own [`FrameHeader::parse`].
#[derive(Debug, Default)]
struct FrameScan {
    /// The header being read (at most 2 + 8 length + 4 mask bytes).
    header: [u8; 14],
    /// Header bytes read so far.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// Payload bytes of the current message so far (its data frames; control frames, which
    /// may come between fragments, do not count).
    message: u64,
    /// A header tungstenite refuses (a reserved opcode) was seen: tungstenite closes the
    /// connection when it reads it, and the frames after it cannot be followed.
    lost: bool,
}

impl FrameScan {
    /// Follows `bytes`; `Err(size)` once a message reaches `size` bytes, above `limit`.
    fn scan(&mut self, mut bytes: &[u8], limit: u64) -> Result<(), u64> {
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64) as usize;
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            // As many bytes as a header can have; those past the header are payload.
            let take = (self.header.len() - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            let mut cursor = Cursor::new(&self.header[..self.have + take]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => {
                    self.have += take;
                    bytes = &bytes[take..];
                    continue;
                }
                Err(_) => {
                    self.lost = true;
                    break;
                }
            };
            bytes = &bytes[cursor.position() as usize - self.have..];
            self.have = 0;
            self.payload_left = len;
            if let OpCode::Data(_) = header.opcode {
                self.message = self.message.saturating_add(len);
                if self.message > limit {
                    return Err(self.message);
                }
                if header.is_final {
                    self.message = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data};

    use super::*;

    const BINARY: OpCode = OpCode::Data(Data::Binary);
    const CONTINUE: OpCode = OpCode::Data(Data::Continue);

    /// A frame header as a client sends it, masked with a zero key (the payload goes as it
    /// is), written by tungstenite.
    fn header(is_final: bool, opcode: OpCode, len: u64) -> Vec<u8> {
        let header = FrameHeader { is_final, opcode, mask: Some([0; 4]), ..Default::default() };
        let mut out = Vec::new();
        header.format(len, &mut out).expect("a header formats into a Vec");
        out
    }

    /// A whole frame with `len` bytes of payload.
    fn frame(is_final: bool, opcode: OpCode, len: usize) -> Vec<u8> {
        let mut out = header(is_final, opcode, len as u64);
        out.extend(std::iter::repeat_n(0xab, len));
        out
    }

    /// Scans `stream` cut into pieces of `piece` bytes.
    fn scan_in_pieces(stream: &[u8], piece: usize, limit: u64) -> Result<(), u64> {
        let mut scan = FrameScan::default();
        stream.chunks(piece).try_for_each(|chunk| scan.scan(chunk, limit))
    }

    #[test]
    fn messages_within_the_limit_pass_however_the_reads_cut_them() {
        // Every length form; a fragmented message with a ping between its fragments.
        let mut stream = Vec::new();
        for len in [0, 1, 125, 126, 1000, 0xffff, 0x1_0000] {
            stream.extend(frame(true, BINARY, len));
        }
        stream.extend(frame(false, BINARY, 30_000));
        stream.extend(frame(true, OpCode::Control(Control::Ping), 125));
        stream.extend(frame(false, CONTINUE, 30_000));
        stream.extend(frame(true, CONTINUE, 5_000));
        for piece in [1, 2, 3, 7, 14, 1000, stream.len()] {
            assert_eq!(scan_in_pieces(&stream, piece, 0x1_0000), Ok(()), "pieces of {piece}");
        }
    }

    #[test]
    fn a_message_above_the_limit_fails_at_its_header() {
        for piece in [1, 5, 64] {
            // One frame declaring more than the limit: refused before its payload.
            let header_only = header(true, BINARY, 20_000);
            assert_eq!(scan_in_pieces(&header_only, piece, 16_388), Err(20_000));
            // Fragments that add up to more than the limit, one byte over.
            let mut stream = frame(false, BINARY, 10_000);
            // A pong between fragments does not count.
            stream.extend(frame(true, OpCode::Control(Control::Pong), 3));
            stream.extend(frame(true, CONTINUE, 6_389));
            assert_eq!(scan_in_pieces(&stream, piece, 16_388), Err(16_389));
            // A 64-bit length no limit allows.
            let huge = header(true, BINARY, u64::MAX);
            assert_eq!(scan_in_pieces(&huge, piece, 16_388), Err(u64::MAX));
        }
        // The count restarts with each message.
        let mut stream = frame(true, BINARY, 16_000);
        stream.extend(frame(true, BINARY, 16_000));
        assert_eq!(scan_in_pieces(&stream, 100, 16_388), Ok(()));
        // A reserved opcode, which tungstenite refuses when it reads it: nothing after it
        // can be followed, and nothing is refused here.
        let mut stream = vec![0x83, 0x80, 0, 0, 0, 0];
        stream.extend(header(true, BINARY, 20_000));
        assert_eq!(scan_in_pieces(&stream, 3, 16_388), Ok(()));
    }

    #[test]
    fn the_limit_follows_the_kernel_and_stops_at_the_ceiling() {
        let (guarded, handle) = MessageLimit::new((), 1 << 20);
        assert_eq!(guarded.limit(), None, "no check until the kernel hands its limit over");
        let frame_limit = Arc::new(AtomicUsize::new(16 << 10));
        handle.follow(frame_limit.clone());
        assert_eq!(guarded.limit(), Some((16 << 10) + 4));
        frame_limit.store(512, Ordering::Release);
        assert_eq!(
            guarded.limit(),
            Some(crate::transport::PACK_LIMIT),
            "never below what a sender packs small frames into"
        );
        // Authenticated: the full limit, which tungstenite enforces itself; for good.
        frame_limit.store((1 << 20) - 4, Ordering::Release);
        assert_eq!(guarded.limit(), None);
        frame_limit.store(512, Ordering::Release);
        assert_eq!(guarded.limit(), None);
    }
}
