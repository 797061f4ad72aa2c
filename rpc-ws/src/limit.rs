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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
/// reads, and adds up the payloads of each message's data frames.
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
}

impl FrameScan {
    /// Follows `bytes`; `Err(size)` once a message reaches `size` bytes, above `limit`.
    fn scan(&mut self, mut bytes: &[u8], limit: u64) -> Result<(), u64> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64) as usize;
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let take = (self.header_len() - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < self.header_len() {
                continue;
            }
            let (first, second) = (self.header[0], self.header[1]);
            let len = match second & 0x7f {
                126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                127 => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(len)
                }
                n => n as u64,
            };
            self.have = 0;
            self.payload_left = len;
            let control = first & 0x08 != 0;
            if !control {
                self.message = self.message.saturating_add(len);
                if self.message > limit {
                    return Err(self.message);
                }
                if first & 0x80 != 0 {
                    // FIN: the message is complete.
                    self.message = 0;
                }
            }
        }
        Ok(())
    }

    /// The length of the header being read, as far as its first two bytes tell.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it (masked with a zero key: payload unchanged).
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut out = vec![(fin as u8) << 7 | opcode];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0; 4]);
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
            stream.extend(frame(true, 2, len));
        }
        stream.extend(frame(false, 2, 30_000));
        stream.extend(frame(true, 9, 125));
        stream.extend(frame(false, 0, 30_000));
        stream.extend(frame(true, 0, 5_000));
        for piece in [1, 2, 3, 7, 14, 1000, stream.len()] {
            assert_eq!(scan_in_pieces(&stream, piece, 0x1_0000), Ok(()), "pieces of {piece}");
        }
    }

    #[test]
    fn a_message_above_the_limit_fails_at_its_header() {
        for piece in [1, 5, 64] {
            // One frame declaring more than the limit: refused before its payload.
            let big = frame(true, 2, 20_000);
            let header_only = &big[..8];
            assert_eq!(scan_in_pieces(header_only, piece, 16_388), Err(20_000));
            // Fragments that add up to more than the limit, one byte over.
            let mut stream = frame(false, 2, 10_000);
            stream.extend(frame(true, 10, 3)); // a pong between fragments does not count
            stream.extend(frame(true, 0, 6_389));
            assert_eq!(scan_in_pieces(&stream, piece, 16_388), Err(16_389));
            // A 64-bit length no limit allows.
            let mut huge = vec![0x82, 0x80 | 127];
            huge.extend_from_slice(&u64::MAX.to_be_bytes());
            huge.extend_from_slice(&[0; 4]);
            assert_eq!(scan_in_pieces(&huge, piece, 16_388), Err(u64::MAX));
        }
        // The count restarts with each message.
        let mut stream = frame(true, 2, 16_000);
        stream.extend(frame(true, 2, 16_000));
        assert_eq!(scan_in_pieces(&stream, 100, 16_388), Ok(()));
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
