//! Chunked messages: a message larger than the chunk size travels as a run of Chunk frames
//! on its call id, interleaved with other traffic, and is reassembled by the receiver.
//!
//! A Chunk frame's body is raw bytes, not MessagePack:
//!
//! ```text
//! offset  size  field
//! 0       4     total: u32 big-endian, the size of the whole inner message
//! 4       ..    the next piece of the inner message
//! ```
//!
//! The inner message is a frame without its length prefix and call id: `kind u8, flags u8
//! (0), body`. A routed message's route section rides on the first Chunk frame's own
//! header instead, where a routing server reads (and rewrites) it. Chunks of one message arrive in order; the message is
//! complete when `total` bytes have arrived, and is then handled as if it had arrived whole.
//! The receiver grants the sender more room with ChunkCredit frames (body: a MessagePack
//! unsigned integer counting bytes), so a large transfer never floods the connection.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{Frame, FrameError, HEADER, Kind, parse_frame};

/// Bytes of a Chunk body before the piece.
pub const CHUNK_HEADER: usize = 4;

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The Chunk body is shorter than its header.
    #[error("chunk body of {0} bytes is shorter than its 4-byte header")]
    Short(usize),
    /// The declared total exceeds the message limit.
    #[error(
        "chunked message of {total} bytes exceeds the limit of {limit} bytes (Limits::max_message_size)"
    )]
    TooLarge {
        /// The declared size.
        total: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A chunk disagrees with the total declared by the first one, or overruns it.
    #[error("chunk does not fit the declared message size")]
    Inconsistent,
    /// The reassembled message is not a valid inner frame.
    #[error("reassembled message is malformed: {0}")]
    Malformed(FrameError),
    /// Chunks cannot carry Chunk frames or connection-level frames.
    #[error("a {0:?} message cannot be chunked")]
    NotChunkable(Kind),
}

/// Whether a message of this kind may travel in chunks.
pub fn is_chunkable(kind: Kind) -> bool {
    matches!(kind, Kind::Call | Kind::Reply | Kind::Item | Kind::Error)
}

/// The reassembly of one chunked message.
#[derive(Debug)]
pub struct Reassembly {
    total: usize,
    buf: BytesMut,
}

impl Reassembly {
    /// Starts a reassembly from the first chunk's declared total.
    ///
    /// The buffer grows with the bytes that arrive, never ahead of them: a lying total costs
    /// nothing until the bytes are really sent.
    pub fn start(first_chunk: &[u8], limit: usize) -> Result<Reassembly, ChunkError> {
        let total = declared_total(first_chunk)?;
        if total > limit {
            return Err(ChunkError::TooLarge { total, limit });
        }
        if total < 2 {
            return Err(ChunkError::Inconsistent);
        }
        Ok(Reassembly { total, buf: BytesMut::new() })
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.buf.len()
    }

    /// The declared size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Appends one chunk; returns the whole message once complete, as a frame with `id`.
    pub fn push(&mut self, id: u32, chunk: &[u8]) -> Result<Option<Frame>, ChunkError> {
        let total = declared_total(chunk)?;
        let piece = &chunk[CHUNK_HEADER..];
        if total != self.total || self.buf.len() + piece.len() > self.total {
            return Err(ChunkError::Inconsistent);
        }
        self.buf.extend_from_slice(piece);
        if self.buf.len() < self.total {
            return Ok(None);
        }
        let inner = std::mem::take(&mut self.buf);
        inner_frame(id, inner.freeze()).map(Some)
    }
}

fn declared_total(chunk: &[u8]) -> Result<usize, ChunkError> {
    if chunk.len() < CHUNK_HEADER {
        return Err(ChunkError::Short(chunk.len()));
    }
    Ok(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize)
}

/// Parses a reassembled inner message (`kind, flags, [route], body`) as a frame with `id`.
fn inner_frame(id: u32, inner: Bytes) -> Result<Frame, ChunkError> {
    // Re-use the frame parser: put the id where a frame header has it.
    let mut framed = BytesMut::with_capacity(HEADER + inner.len());
    framed.put_u8(inner[0]);
    framed.put_u8(inner[1]);
    framed.put_u32(id);
    framed.extend_from_slice(&inner[2..]);
    let frame = parse_frame(framed.freeze()).map_err(ChunkError::Malformed)?;
    if !is_chunkable(frame.kind) {
        return Err(ChunkError::NotChunkable(frame.kind));
    }
    Ok(frame)
}

/// The inner message of a frame: `kind, flags (0), body`. The route section is not part of
/// it: a routed message carries its route on the first Chunk frame's own header.
pub fn inner_message(kind: Kind, body: &[u8]) -> Bytes {
    let mut inner = BytesMut::with_capacity(2 + body.len());
    inner.put_u8(kind as u8);
    inner.put_u8(0);
    inner.put_slice(body);
    inner.freeze()
}

/// Cuts `inner` into Chunk bodies of at most `chunk_size` piece bytes each: the 4-byte
/// header (the same for every chunk) and the piece, which shares `inner`'s buffer.
pub fn chunk_bodies(
    inner: &Bytes,
    chunk_size: usize,
) -> impl Iterator<Item = ([u8; 4], Bytes)> + '_ {
    let total = (inner.len() as u32).to_be_bytes();
    let step = chunk_size.max(1);
    (0..inner.len()).step_by(step).map(move |start| {
        let end = (start + step).min(inner.len());
        (total, inner.slice(start..end))
    })
}

/// Reads the byte count of a ChunkCredit body.
pub fn credit_bytes(body: &[u8]) -> Option<usize> {
    let mut b = body;
    let n = rmp::decode::read_int::<u64, _>(&mut b).ok()?;
    b.is_empty().then_some(n.min(u32::MAX as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_being_cut_into_chunks() {
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let inner = inner_message(Kind::Reply, &body);
        let mut chunks = chunk_bodies(&inner, 1000).map(|(h, p)| [&h[..], &p[..]].concat());
        let first = chunks.next().unwrap();
        let mut r = Reassembly::start(&first, 1 << 20).unwrap();
        assert_eq!(r.push(9, &first).unwrap(), None);
        let mut done = None;
        for c in chunks {
            if let Some(f) = r.push(9, &c).unwrap() {
                done = Some(f);
            }
        }
        let f = done.unwrap();
        assert_eq!((f.kind, f.id, &f.body[..]), (Kind::Reply, 9, &body[..]));
    }

    #[test]
    fn lying_totals_and_overruns_are_refused() {
        let huge = [0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(matches!(Reassembly::start(&huge, 8 << 20), Err(ChunkError::TooLarge { .. })));
        let mut r = Reassembly::start(&[0, 0, 0, 4, 0x11, 0], 100).unwrap();
        assert_eq!(
            r.push(1, &[0, 0, 0, 4, 0x11, 0, 0xc0, 0xc0, 0xc0]),
            Err(ChunkError::Inconsistent)
        );
        assert_eq!(Reassembly::start(&[0, 0], 100).unwrap_err(), ChunkError::Short(2));
    }

    #[test]
    fn chunks_cannot_smuggle_connection_frames() {
        let inner = inner_message(Kind::GoAway, &[0x92, 0, 0xa0]);
        let (h, p) = chunk_bodies(&inner, 1000).next().unwrap();
        let chunk = [&h[..], &p[..]].concat();
        let mut r = Reassembly::start(&chunk, 1 << 20).unwrap();
        assert_eq!(r.push(1, &chunk), Err(ChunkError::NotChunkable(Kind::GoAway)));
    }
}
