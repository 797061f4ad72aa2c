//! Frames: the unit the transports move.
//!
//! ```text
//! offset  size  field
//! 0       4     length L (u32, big-endian): the bytes that follow, 6 <= L <= frame limit
//! 4       1     kind (see [`Kind`])
//! 5       1     flags: bit 0 = ROUTED (a route section follows); other bits must be 0
//! 6       4     call id (u32, big-endian); 0 for connection-level frames
//! 10      ..    if ROUTED: route length R (u16, big-endian), then R bytes of MessagePack
//! ..      ..    body: the rest of the frame (MessagePack, or raw bytes for Chunk)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes of the fixed header after the length prefix (kind, flags, call id).
pub const HEADER: usize = 6;
/// Flag bit: a route section follows the header.
pub const FLAG_ROUTED: u8 = 0b0000_0001;

/// The type of a frame. Values are stable wire codes (`PROTOCOL.md`, "Message kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Opens a connection: protocol versions and the sender's role.
    Hello = 0x01,
    /// Keepalive probe; the call id is a nonce echoed by the Pong.
    Ping = 0x02,
    /// Answer to a Ping.
    Pong = 0x03,
    /// The sender is closing the connection, with a code and a reason.
    GoAway = 0x04,
    /// Authenticate with a token; answered by Reply or Error.
    Auth = 0x05,
    /// Starts a call: controller, action, arguments, options.
    Call = 0x10,
    /// Successful result of a unary call; ends the call.
    Reply = 0x11,
    /// Failure; ends the call (or the stream it names).
    Error = 0x12,
    /// The caller gives up on a call; the callee drops its handler.
    Cancel = 0x13,
    /// The callee accepted a streaming call; items follow.
    StreamOpen = 0x14,
    /// One item of a stream (result stream from the callee, argument stream from the caller).
    Item = 0x15,
    /// The sender's stream on this call completed.
    End = 0x16,
    /// The receiver of this frame may send that many more items on this call.
    Credit = 0x17,
    /// One piece of a message too large for one frame.
    Chunk = 0x18,
    /// The receiver of this frame may send that many more chunk bytes on this call.
    ChunkCredit = 0x19,
    /// Several items of a stream in one frame: a MessagePack array of them (sent only to a
    /// peer whose Hello has `FEATURE_ITEM_BATCHES`).
    Items = 0x1a,
    /// Registers the sender under a peer alias.
    PeerRegister = 0x20,
    /// Releases the sender's peer alias.
    PeerUnregister = 0x21,
}

impl Kind {
    /// The kind for a wire code, or `None` for an unknown code.
    pub fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            0x01 => Hello,
            0x02 => Ping,
            0x03 => Pong,
            0x04 => GoAway,
            0x05 => Auth,
            0x10 => Call,
            0x11 => Reply,
            0x12 => Error,
            0x13 => Cancel,
            0x14 => StreamOpen,
            0x15 => Item,
            0x16 => End,
            0x17 => Credit,
            0x18 => Chunk,
            0x19 => ChunkCredit,
            0x1a => Items,
            0x20 => PeerRegister,
            0x21 => PeerUnregister,
            _ => return None,
        })
    }
}

/// One decoded frame. `route` and `body` share the receive buffer (no copy).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The frame's kind.
    pub kind: Kind,
    /// The call this frame belongs to (0: the connection itself).
    pub id: u32,
    /// The route section of a routed frame.
    pub route: Option<Bytes>,
    /// The body.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no route.
    pub fn new(kind: Kind, id: u32, body: Bytes) -> Frame {
        Frame { kind, id, route: None, body }
    }

    /// The bytes this frame occupies on the wire, length prefix included.
    pub fn wire_len(&self) -> usize {
        LEN_PREFIX + HEADER + self.route.as_ref().map_or(0, |r| 2 + r.len()) + self.body.len()
    }

    /// Appends the frame's wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let route_len = self.route.as_ref().map_or(0, |r| 2 + r.len());
        out.reserve(self.wire_len());
        out.put_u32((HEADER + route_len + self.body.len()) as u32);
        out.put_u8(self.kind as u8);
        out.put_u8(if self.route.is_some() { FLAG_ROUTED } else { 0 });
        out.put_u32(self.id);
        if let Some(route) = &self.route {
            out.put_u16(route.len() as u16);
            out.put_slice(route);
        }
        out.put_slice(&self.body);
    }
}

/// Why the byte stream could not be cut into frames. Each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix declares more than the connection's current frame limit.
    #[error(
        "frame of {declared} bytes exceeds the limit of {limit} bytes (Limits::max_frame_size)"
    )]
    TooLarge {
        /// The declared length.
        declared: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The length prefix is smaller than the fixed header.
    #[error("frame length {0} is smaller than the 6-byte header")]
    TooShort(usize),
    /// An unknown kind code.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// Reserved flag bits are set.
    #[error("reserved frame flags 0x{0:02x} are set")]
    BadFlags(u8),
    /// The route section does not fit the frame.
    #[error("route section of {0} bytes does not fit the frame")]
    BadRoute(usize),
}

/// Room between frames that [`reserve_read_room`] reads into without asking for more while
/// earlier frames still share the buffer. A unary round trip used to allocate (and free) a
/// fresh 8 KiB buffer on every read: about 600 instructions.
const MIN_READ_ROOM: usize = 2 << 10;

/// Makes room in `buf` for the next read, for a reader whose received messages are views
/// into `buf` (so a message still alive keeps it shared): [`FrameDecoder`], and the
/// WebSocket reader of `rpc-ws`.
///
/// `rest`: the bytes the message being received still needs, when its header has told
/// (`None`: no header yet). Room for that much is made, at most `max`; 8 KiB (at most `max`)
/// when no header is pending, which picks up several small messages in one read. Between
/// messages (`buf` empty), a read goes into the room left (2 KiB or more) rather than into
/// a fresh buffer; the buffer is reused in place as soon as nothing shares it.
///
/// ```
/// use bytes::BytesMut;
/// use rpc_core::protocol::frame::reserve_read_room;
///
/// let mut buf = BytesMut::new();
/// reserve_read_room(&mut buf, Some(1 << 30), 64 << 10); // a header claims 1 GiB
/// assert!(buf.capacity() >= 64 << 10 && buf.capacity() < 1 << 20);
/// ```
pub fn reserve_read_room(buf: &mut BytesMut, rest: Option<usize>, max: usize) {
    let (wanted, between_messages) = match rest {
        Some(rest) => (rest.clamp(1, max), false),
        None => ((8 << 10).min(max), buf.is_empty()),
    };
    let room = buf.capacity() - buf.len();
    if room >= wanted || buf.try_reclaim(wanted) || (between_messages && room >= MIN_READ_ROOM) {
        return;
    }
    buf.reserve(wanted);
}

/// Cuts a byte stream into frames. Bytes are pushed in, frames pulled out; no I/O, no clock.
///
/// Memory: the decoder never asks its buffer to grow beyond what has been received plus
/// [`FrameDecoder::reservation`] bytes, whatever length a header declares.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use rpc_core::protocol::{Frame, FrameDecoder, Kind};
///
/// let mut wire = BytesMut::new();
/// Frame::new(Kind::Ping, 7, Bytes::new()).encode(&mut wire);
///
/// let mut decoder = FrameDecoder::new(1 << 20);
/// decoder.buffer().extend_from_slice(&wire[..3]); // a partial frame
/// assert_eq!(decoder.next_frame().unwrap(), None);
/// decoder.buffer().extend_from_slice(&wire[3..]);
/// let frame = decoder.next_frame().unwrap().unwrap();
/// assert_eq!((frame.kind, frame.id), (Kind::Ping, 7));
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// A received buffer handed over whole ([`FrameDecoder::push_bytes`]): frames are cut
    /// out of it without copying. Never set while `buf` holds bytes.
    owned: Bytes,
    limit: usize,
    reservation: usize,
}

impl FrameDecoder {
    /// A decoder accepting frames up to `limit` bytes (length prefix excluded).
    pub fn new(limit: usize) -> FrameDecoder {
        FrameDecoder { buf: BytesMut::new(), owned: Bytes::new(), limit, reservation: 64 << 10 }
    }

    /// Changes the frame limit (for example once the connection authenticated).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The frame limit in force.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Sets how far beyond the received bytes the buffer may be reserved.
    pub fn set_reservation(&mut self, bytes: usize) {
        self.reservation = bytes.max(1024);
    }

    /// How far beyond the received bytes the buffer may be reserved.
    pub fn reservation(&self) -> usize {
        self.reservation
    }

    /// The receive buffer: append received bytes here.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Takes a whole received buffer (from a transport that receives buffers, such as
    /// WebSocket messages): the frames it holds are returned as views into it, not copies.
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use rpc_core::protocol::frame::{Frame, FrameDecoder, Kind};
    ///
    /// let mut wire = BytesMut::new();
    /// Frame::new(Kind::Reply, 3, Bytes::from_static(b"\xc0")).encode(&mut wire);
    /// let received = wire.freeze();
    /// let mut decoder = FrameDecoder::new(1 << 20);
    /// decoder.push_bytes(received.clone());
    /// let frame = decoder.next_frame().unwrap().unwrap();
    /// assert!(received.as_ptr_range().contains(&frame.body.as_ptr()), "no copy");
    /// ```
    pub fn push_bytes(&mut self, received: Bytes) {
        if self.buf.is_empty() && self.owned.is_empty() {
            self.owned = received;
        } else {
            // Behind a partial frame: join it the ordinary way.
            let owned = std::mem::take(&mut self.owned);
            self.buf.extend_from_slice(&owned);
            self.buf.extend_from_slice(&received);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.owned.len()
    }

    /// Whether a frame has started but not finished arriving.
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty() || !self.owned.is_empty()
    }

    /// Makes room for the next read: at most [`FrameDecoder::reservation`] bytes, and no more
    /// than the current frame still needs when its length is known.
    ///
    /// Frames are views into the buffer, so a frame still alive (an answer its caller has
    /// not read yet) keeps the buffer shared. Between frames, the decoder then goes on
    /// reading into the room left rather than allocate a fresh buffer for every read; it
    /// reuses the buffer in place as soon as no frame shares it.
    pub fn reserve_for_read(&mut self) {
        let rest = (self.buf.len() >= LEN_PREFIX).then(|| {
            let declared =
                u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            (LEN_PREFIX + declared).saturating_sub(self.buf.len())
        });
        reserve_read_room(&mut self.buf, rest, self.reservation);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or an error that ends the
    /// connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if !self.owned.is_empty() {
            if let Some(total) = whole_frame(&self.owned, self.limit)? {
                let mut frame = self.owned.split_to(total);
                frame.advance(LEN_PREFIX);
                return parse_frame(frame).map(Some);
            }
            // The rest of the buffer is the start of a frame: keep it the ordinary way.
            let owned = std::mem::take(&mut self.owned);
            self.buf.extend_from_slice(&owned);
        }
        let Some(total) = whole_frame(&self.buf, self.limit)? else { return Ok(None) };
        let mut frame = self.buf.split_to(total).freeze();
        frame.advance(LEN_PREFIX);
        parse_frame(frame).map(Some)
    }
}

/// The length (prefix included) of the frame at the start of `buf` if all of it is there;
/// an error as soon as its declared length is known to be out of bounds.
fn whole_frame(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let declared = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if declared > limit {
        return Err(FrameError::TooLarge { declared, limit });
    }
    if declared < HEADER {
        return Err(FrameError::TooShort(declared));
    }
    Ok((buf.len() >= LEN_PREFIX + declared).then_some(LEN_PREFIX + declared))
}

/// Parses one frame without its length prefix.
pub fn parse_frame(mut frame: Bytes) -> Result<Frame, FrameError> {
    if frame.len() < HEADER {
        return Err(FrameError::TooShort(frame.len()));
    }
    let kind = Kind::from_u8(frame[0]).ok_or(FrameError::UnknownKind(frame[0]))?;
    let flags = frame[1];
    if flags & !FLAG_ROUTED != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    let id = u32::from_be_bytes([frame[2], frame[3], frame[4], frame[5]]);
    frame.advance(HEADER);
    let route = if flags & FLAG_ROUTED != 0 {
        if frame.len() < 2 {
            return Err(FrameError::BadRoute(frame.len()));
        }
        let len = u16::from_be_bytes([frame[0], frame[1]]) as usize;
        if frame.len() < 2 + len {
            return Err(FrameError::BadRoute(len));
        }
        frame.advance(2);
        Some(frame.split_to(len))
    } else {
        None
    };
    Ok(Frame { kind, id, route, body: frame })
}

/// Writes a frame header whose length is patched later by [`finish_frame`].
///
/// Returns the offset of the length prefix. Used to encode a body straight into an output
/// buffer with no intermediate allocation.
pub fn begin_frame(out: &mut BytesMut, kind: Kind, id: u32, route: Option<&[u8]>) -> usize {
    let start = out.len();
    // The prefix (patched later), kind, flags and id in one append: each `put_*` checks
    // the capacity and advances the length (callgrind: about 40 instructions more a frame).
    let [a, b, c, d] = id.to_be_bytes();
    let flags = if route.is_some() { FLAG_ROUTED } else { 0 };
    let header: [u8; LEN_PREFIX + HEADER] = [0, 0, 0, 0, kind as u8, flags, a, b, c, d];
    out.put_slice(&header);
    if let Some(route) = route {
        out.put_u16(route.len() as u16);
        out.put_slice(route);
    }
    start
}

/// Patches the length prefix of the frame begun at `start`; returns the frame's length
/// (prefix excluded).
pub fn finish_frame(out: &mut BytesMut, start: usize) -> usize {
    let len = out.len() - start - LEN_PREFIX;
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        out
    }

    #[test]
    fn a_frame_still_alive_does_not_make_every_read_allocate() {
        // A client's read loop: each read brings one small answer, which lives on (until its
        // caller reads it) while the loop already reserves room for the next read.
        let bytes = wire(&Frame::new(Kind::Reply, 1, Bytes::from(vec![7u8; 48])));
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut unread = None;
        let mut moved = 0;
        for _ in 0..200 {
            let before = decoder.buffer().as_ptr();
            decoder.reserve_for_read();
            moved += (decoder.buffer().as_ptr() != before) as u32;
            decoder.buffer().extend_from_slice(&bytes);
            unread = Some(decoder.next_frame().unwrap().expect("a whole frame"));
        }
        assert_eq!(unread.map(|f| f.body.len()), Some(48));
        // 200 reads of 56 bytes fit in an 8 KiB buffer about twice, with 2 KiB left over.
        assert!(moved <= 4, "the buffer moved on {moved} of 200 reads");
        assert!(decoder.buffer().capacity() <= 8 << 10);
    }

    #[test]
    fn received_buffers_split_into_frames_even_across_buffers() {
        let frames: Vec<Frame> = (1..=3)
            .map(|id| Frame::new(Kind::Reply, id, Bytes::from(vec![id as u8; 100])))
            .collect();
        let mut all = BytesMut::new();
        for f in &frames {
            f.encode(&mut all);
        }
        let all = all.freeze();
        // Cut in the middle of the second frame: the first comes out as a view, the second
        // once the rest arrives, the third (whole in the second buffer) as well.
        let cut = all.len() / 2;
        let mut d = FrameDecoder::new(1 << 20);
        d.push_bytes(all.slice(..cut));
        let first = d.next_frame().unwrap().unwrap();
        assert_eq!(first, frames[0]);
        assert!(all.as_ptr_range().contains(&first.body.as_ptr()), "a view, not a copy");
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(d.in_frame());
        d.push_bytes(all.slice(cut..));
        assert_eq!(d.next_frame().unwrap().as_ref(), Some(&frames[1]));
        assert_eq!(d.next_frame().unwrap().as_ref(), Some(&frames[2]));
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(!d.in_frame());
    }

    #[test]
    fn a_received_buffer_is_held_to_the_frame_limit() {
        let big = wire(&Frame::new(Kind::Reply, 1, Bytes::from(vec![0u8; 2000]))).freeze();
        let mut d = FrameDecoder::new(1000);
        d.push_bytes(big);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        let mut d = FrameDecoder::new(1000);
        d.push_bytes(Bytes::from_static(&[0, 0, 0, 1, 0x11]));
        assert!(matches!(d.next_frame(), Err(FrameError::TooShort(1))));
    }

    #[test]
    fn round_trips_plain_and_routed_frames() {
        let plain = Frame::new(Kind::Call, 3, Bytes::from_static(b"\x93"));
        let routed = Frame {
            kind: Kind::Call,
            id: 5,
            route: Some(Bytes::from_static(b"\x91\xa1x")),
            body: Bytes::from_static(b"\xc0"),
        };
        let mut bytes = wire(&plain);
        bytes.extend_from_slice(&wire(&routed));
        let mut d = FrameDecoder::new(1 << 20);
        d.buffer().extend_from_slice(&bytes);
        assert_eq!(d.next_frame().unwrap(), Some(plain));
        assert_eq!(d.next_frame().unwrap(), Some(routed));
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(!d.in_frame());
    }

    #[test]
    fn header_layout_is_big_endian_and_counts_bytes_after_prefix() {
        let bytes = wire(&Frame::new(Kind::Reply, 0x0102_0304, Bytes::from_static(b"\xa2hi")));
        assert_eq!(&bytes[..], b"\x00\x00\x00\x09\x11\x00\x01\x02\x03\x04\xa2hi");
    }

    #[test]
    fn oversized_declared_length_is_rejected_before_buffering() {
        let mut d = FrameDecoder::new(1 << 20);
        d.buffer().extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn reservation_is_bounded_whatever_the_declared_length() {
        let mut d = FrameDecoder::new(16 << 20);
        d.buffer().extend_from_slice(&(16u32 << 20).to_be_bytes());
        d.reserve_for_read();
        assert!(d.buffer().capacity() <= 128 << 10, "capacity {}", d.buffer().capacity());
    }

    #[test]
    fn short_length_unknown_kind_and_flags_are_errors() {
        let mut d = FrameDecoder::new(1 << 20);
        d.buffer().extend_from_slice(&[0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(d.next_frame(), Err(FrameError::TooShort(3)));
        assert_eq!(
            parse_frame(Bytes::from_static(&[0x99, 0, 0, 0, 0, 1])),
            Err(FrameError::UnknownKind(0x99))
        );
        assert_eq!(
            parse_frame(Bytes::from_static(&[0x10, 0x80, 0, 0, 0, 1])),
            Err(FrameError::BadFlags(0x80))
        );
        assert_eq!(
            parse_frame(Bytes::from_static(&[0x10, 0x01, 0, 0, 0, 1, 0, 9, 1])),
            Err(FrameError::BadRoute(9))
        );
    }

    #[test]
    fn begin_and_finish_patch_the_length() {
        let mut out = BytesMut::new();
        let start = begin_frame(&mut out, Kind::Item, 9, None);
        out.extend_from_slice(b"\x01");
        assert_eq!(finish_frame(&mut out, start), 7);
        let mut d = FrameDecoder::new(1024 * 4);
        d.buffer().extend_from_slice(&out);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.kind, f.id, &f.body[..]), (Kind::Item, 9, &b"\x01"[..]));
    }
}
