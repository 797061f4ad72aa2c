//! WebSocket framing (RFC 6455 §5), with no I/O: frame headers in and out, masking, and
//! [`Inbound`], which turns received bytes into whole messages and control frames.
//!
//! [`RpcWebSocketServer`](crate::RpcWebSocketServer) and
//! [`RpcWebSocketClient`](crate::RpcWebSocketClient) let tungstenite do the HTTP upgrade and
//! then read and write frames with this module (see `socket`): received bytes land in a
//! buffer that is never zero-filled, payloads are unmasked in place and handed over without
//! a copy, and a batch of outgoing messages is one write.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rpc_core::protocol::frame::reserve_read_room;

/// Opcodes (RFC 6455 §5.2).
pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub(crate) const NORMAL: u16 = 1000;
pub(crate) const AWAY: u16 = 1001;
pub(crate) const PROTOCOL: u16 = 1002;
pub(crate) const UNSUPPORTED: u16 = 1003;
pub(crate) const TOO_BIG: u16 = 1009;

/// The most payload a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;

/// Whole binary messages buffered back to back are joined into one handover up to this
/// many bytes (see [`Inbound::next`]).
const JOIN_MAX: usize = 32 << 10;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) mask: Option<[u8; 4]>,
    /// Payload bytes.
    pub(crate) len: u64,
    /// Header bytes (2 to 14).
    pub(crate) size: usize,
}

/// Why the connection must close: the code and reason of the Close frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

impl Violation {
    fn protocol(reason: &'static str) -> Violation {
        Violation { code: PROTOCOL, reason }
    }
}

/// Reads the header at the start of `buf`; `Ok(None)` until all of it has arrived.
///
/// tungstenite's `FrameHeader::parse` reads through an `io::Cursor` and answers with its own
/// error type; this is a match on the slice that names the close code, and the reader
/// calls it for every frame (again when it joins messages and sizes a read).
/// Reserved bits (no extension is negotiated) and a 64-bit length with its top bit set are
/// protocol errors.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, Violation> {
    let [first, second, ..] = *buf else { return Ok(None) };
    if first & 0x70 != 0 {
        return Err(Violation::protocol("reserved bits set (no extension was negotiated)"));
    }
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let masked = second & 0x80 != 0;
    let size = 2 + extended + if masked { 4 } else { 0 };
    let Some(head) = buf.get(..size) else { return Ok(None) };
    let len = match extended {
        2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        8 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(bytes)
        }
        _ => u64::from(second & 0x7f),
    };
    if len >> 63 != 0 {
        return Err(Violation::protocol("a frame length with its top bit set"));
    }
    let mask = masked.then(|| {
        let key = &head[size - 4..size];
        [key[0], key[1], key[2], key[3]]
    });
    Ok(Some(Head { fin: first & 0x80 != 0, opcode: first & 0x0f, mask, len, size }))
}

/// Appends the header of a final frame: `opcode`, `len` payload bytes, masked with `mask`
/// when the sender is a client.
pub(crate) fn put_head(out: &mut BytesMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(mask_bit | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(mask_bit | 126);
        out.put_u16(len);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    if let Some(key) = mask {
        out.put_slice(&key);
    }
}

/// XORs `data` with the masking key (masking and unmasking are the same operation), eight
/// bytes at a time.
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let word = u64::from(u32::from_ne_bytes(key));
    let word = word | (word << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The chunks were whole multiples of 4 bytes, so the key starts over here.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// What [`Inbound::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A whole binary message, or several that arrived back to back, joined (their frames
    /// follow one another, as on TCP).
    Message(Bytes),
    /// A Ping, with its payload (to be echoed in a Pong).
    Ping(Bytes),
    /// A Pong (nothing to do).
    Pong,
    /// A Close, with its status code when it had one.
    Close(Option<u16>),
}

/// The receiving side of a WebSocket: bytes in ([`Inbound::buffer`]), events out.
///
/// Messages may be fragmented (a Binary frame without FIN, then Continuation frames, with
/// control frames between them); the fragments are joined, which is the only copy. A
/// message is held to the limit given to [`Inbound::next`] as each frame's header arrives,
/// before its payload is buffered.
#[derive(Debug)]
pub(crate) struct Inbound {
    buf: BytesMut,
    /// The fragments of a message still open.
    partial: Option<BytesMut>,
    /// A server receives masked frames only, a client unmasked ones (RFC 6455 §5.1).
    expect_masked: bool,
}

impl Inbound {
    /// `expect_masked`: true on the server side.
    pub(crate) fn new(expect_masked: bool) -> Inbound {
        Inbound { buf: BytesMut::new(), partial: None, expect_masked }
    }

    /// The receive buffer, to read into.
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Makes room for the next read as the TCP path's frame decoder does
    /// ([`reserve_read_room`]): what the frame being received still needs, at most `max` (a
    /// header that claims a large frame gets memory as its bytes come, not before).
    pub(crate) fn reserve_for_read(&mut self, max: usize) {
        let rest = match parse_head(&self.buf) {
            Ok(Some(head)) => {
                let total = (head.size as u64).saturating_add(head.len);
                Some(
                    usize::try_from(total.saturating_sub(self.buf.len() as u64))
                        .unwrap_or(usize::MAX),
                )
            }
            _ => None,
        };
        reserve_read_room(&mut self.buf, rest, max);
    }

    /// The next event the buffered bytes hold, `Ok(None)` if they hold no whole frame yet.
    /// A message (all its fragments together) may have at most `limit` payload bytes.
    pub(crate) fn next(&mut self, limit: usize) -> Result<Option<Event>, Violation> {
        loop {
            let Some(head) = parse_head(&self.buf)? else { return Ok(None) };
            self.check(&head, limit)?;
            // `check` bounded the length by `limit` or by 125.
            let len = head.len as usize;
            if self.buf.len() < head.size + len {
                return Ok(None);
            }
            self.buf.advance(head.size);
            if head.opcode == BINARY && head.fin {
                return Ok(Some(Event::Message(self.join_messages(len, head.mask, limit))));
            }
            let mut payload = self.buf.split_to(len);
            if let Some(key) = head.mask {
                apply_mask(&mut payload, key);
            }
            match head.opcode {
                // Not final (a final one was joined above): a fragmented message starts.
                BINARY => self.partial = Some(payload),
                CONTINUATION => {
                    // `check` made sure a message is open.
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(Violation::protocol("a continuation frame with no message"));
                    };
                    partial.extend_from_slice(&payload);
                    if head.fin {
                        let whole = self.partial.take().unwrap_or_default();
                        return Ok(Some(Event::Message(whole.freeze())));
                    }
                }
                PING => return Ok(Some(Event::Ping(payload.freeze()))),
                PONG => return Ok(Some(Event::Pong)),
                CLOSE => return close_event(&payload).map(Some),
                _ => return Err(Violation::protocol("an unknown opcode")),
            }
        }
    }

    /// Takes out the whole binary message of `len` bytes at the start of the buffer (its
    /// header already gone), joined with the small whole binary messages buffered right
    /// after it: the kernel then handles as many frames per read as over TCP. Each later
    /// payload moves down over the header before it (a copy of at most [`JOIN_MAX`] bytes);
    /// a large message, a fragment, a control frame or one that breaks a rule stops the
    /// join and comes out of the next call.
    fn join_messages(&mut self, len: usize, mask: Option<[u8; 4]>, limit: usize) -> Bytes {
        if let Some(key) = mask {
            apply_mask(&mut self.buf[..len], key);
        }
        let (mut end, mut pos) = (len, len);
        while let Ok(Some(next)) = parse_head(&self.buf[pos..]) {
            let next_len = next.len as usize;
            let start = pos + next.size;
            if next.opcode != BINARY
                || !next.fin
                || next.len > JOIN_MAX as u64
                || end + next_len > JOIN_MAX.min(limit)
                || self.check(&next, limit).is_err()
                || self.buf.len() < start + next_len
            {
                break;
            }
            if let Some(key) = next.mask {
                apply_mask(&mut self.buf[start..start + next_len], key);
            }
            self.buf.copy_within(start..start + next_len, end);
            end += next_len;
            pos = start + next_len;
        }
        let mut joined = self.buf.split_to(pos);
        joined.truncate(end);
        joined.freeze()
    }

    /// Checks a header before its payload is buffered.
    fn check(&self, head: &Head, limit: usize) -> Result<(), Violation> {
        if head.mask.is_some() != self.expect_masked {
            return Err(Violation::protocol(if self.expect_masked {
                "an unmasked frame from a client"
            } else {
                "a masked frame from a server"
            }));
        }
        match head.opcode {
            CLOSE | PING | PONG => {
                if !head.fin {
                    return Err(Violation::protocol("a fragmented control frame"));
                }
                if head.len > MAX_CONTROL {
                    return Err(Violation::protocol("a control frame above 125 bytes"));
                }
                Ok(())
            }
            TEXT => Err(Violation {
                code: UNSUPPORTED,
                reason: "text messages are not part of the protocol",
            }),
            BINARY | CONTINUATION => {
                let open = self.partial.as_ref().map(|p| p.len());
                match (head.opcode, open) {
                    (BINARY, Some(_)) => {
                        return Err(Violation::protocol("a new message before the last one ended"));
                    }
                    (CONTINUATION, None) => {
                        return Err(Violation::protocol("a continuation frame with no message"));
                    }
                    _ => {}
                }
                if (open.unwrap_or(0) as u64).saturating_add(head.len) > limit as u64 {
                    return Err(Violation { code: TOO_BIG, reason: "message too big" });
                }
                Ok(())
            }
            _ => Err(Violation::protocol("an unknown opcode")),
        }
    }
}

/// A Close frame's payload: nothing, or a status code and a UTF-8 reason.
fn close_event(payload: &[u8]) -> Result<Event, Violation> {
    match payload {
        [] => Ok(Event::Close(None)),
        [_] => Err(Violation::protocol("a Close frame with a one-byte payload")),
        [high, low, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation::protocol("a Close reason that is not UTF-8"));
            }
            Ok(Event::Close(Some(u16::from_be_bytes([*high, *low]))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a peer would send it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_head(&mut out, opcode, payload.len(), mask);
        if !fin {
            out[0] &= 0x7f;
        }
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut out[start..], key);
        }
        out.to_vec()
    }

    const KEY: Option<[u8; 4]> = Some([0x11, 0x22, 0x33, 0x44]);

    fn server_reads(bytes: &[u8], limit: usize) -> Vec<Result<Event, Violation>> {
        let mut inbound = Inbound::new(true);
        inbound.buffer().extend_from_slice(bytes);
        let mut events = Vec::new();
        for _ in 0..100 {
            match inbound.next(limit) {
                Ok(Some(event)) => events.push(Ok(event)),
                Ok(None) => break,
                Err(violation) => {
                    events.push(Err(violation));
                    break;
                }
            }
        }
        events
    }

    /// Arbitrary bytes, fed in arbitrary pieces, end in events or a violation: no panic, no
    /// endless loop, and never a message above the limit.
    #[test]
    fn arbitrary_bytes_never_panic_or_pass_the_limit() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..5_000 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Often a plausible first byte, so that parsing goes past the header.
            if round % 2 == 0 && !bytes.is_empty() {
                bytes[0] = [0x82, 0x02, 0x80, 0x89, 0x8a, 0x88][(next() % 6) as usize];
            }
            let mut inbound = Inbound::new(round % 3 != 0);
            let mut fed = 0;
            'feed: while fed < bytes.len() {
                let piece = 1 + (next() % 64) as usize;
                let end = (fed + piece).min(bytes.len());
                inbound.buffer().extend_from_slice(&bytes[fed..end]);
                fed = end;
                for _ in 0..=bytes.len() {
                    match inbound.next(100) {
                        Ok(Some(Event::Message(m))) => assert!(m.len() <= 100),
                        Ok(Some(_)) => {}
                        Ok(None) => continue 'feed,
                        Err(_) => break 'feed,
                    }
                }
                panic!("round {round}: more events than bytes");
            }
        }
    }

    #[test]
    fn headers_round_trip_in_all_three_length_forms() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20] {
            for mask in [None, KEY] {
                let mut out = BytesMut::new();
                put_head(&mut out, BINARY, len, mask);
                let head = parse_head(&out).unwrap().unwrap();
                assert_eq!(
                    head,
                    Head { fin: true, opcode: BINARY, mask, len: len as u64, size: out.len() }
                );
                // One byte short of the header: not yet.
                assert_eq!(parse_head(&out[..out.len() - 1]), Ok(None));
            }
        }
    }

    #[test]
    fn masking_matches_the_byte_by_byte_definition() {
        let key = [0xa1, 0x02, 0xf3, 0x7c];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }

    #[test]
    fn messages_and_control_frames_come_out_in_order() {
        let mut bytes = frame(true, BINARY, b"one", KEY);
        bytes.extend(frame(true, PING, b"hi", KEY));
        bytes.extend(frame(true, PONG, b"", KEY));
        bytes.extend(frame(true, BINARY, b"two", KEY));
        bytes.extend(frame(true, CLOSE, &[0x03, 0xe8, b'o', b'k'], KEY));
        let events = server_reads(&bytes, 1024);
        assert_eq!(
            events,
            vec![
                Ok(Event::Message(Bytes::from_static(b"one"))),
                Ok(Event::Ping(Bytes::from_static(b"hi"))),
                Ok(Event::Pong),
                Ok(Event::Message(Bytes::from_static(b"two"))),
                Ok(Event::Close(Some(1000))),
            ]
        );
    }

    #[test]
    fn whole_messages_back_to_back_come_out_joined_up_to_a_large_one_or_a_control_frame() {
        let mut bytes = frame(true, BINARY, b"one", KEY);
        bytes.extend(frame(true, BINARY, b"two", KEY));
        bytes.extend(frame(true, BINARY, b"three", KEY));
        bytes.extend(frame(true, PING, b"p", KEY));
        bytes.extend(frame(true, BINARY, b"four", KEY));
        bytes.extend(frame(true, BINARY, &[9u8; JOIN_MAX], KEY));
        bytes.extend(frame(true, BINARY, b"five", KEY));
        bytes.extend(frame(true, TEXT, b"six", KEY));
        let events = server_reads(&bytes, 1 << 20);
        assert_eq!(
            events,
            vec![
                Ok(Event::Message(Bytes::from_static(b"onetwothree"))),
                Ok(Event::Ping(Bytes::from_static(b"p"))),
                Ok(Event::Message(Bytes::from_static(b"four"))),
                Ok(Event::Message(Bytes::from(vec![9u8; JOIN_MAX]))),
                Ok(Event::Message(Bytes::from_static(b"five"))),
                Err(Violation {
                    code: UNSUPPORTED,
                    reason: "text messages are not part of the protocol"
                }),
            ]
        );
        // Never joined past the limit.
        let mut bytes = frame(true, BINARY, &[1u8; 60], KEY);
        bytes.extend(frame(true, BINARY, &[2u8; 60], KEY));
        let events = server_reads(&bytes, 100);
        assert_eq!(events.len(), 2, "{events:?}");
    }

    #[test]
    fn a_frame_split_across_reads_comes_out_once_whole() {
        let bytes = frame(true, BINARY, &[7u8; 300], KEY);
        let mut inbound = Inbound::new(true);
        for (i, byte) in bytes.iter().enumerate() {
            assert_eq!(inbound.next(1024), Ok(None), "after {i} bytes");
            inbound.buffer().put_u8(*byte);
        }
        assert_eq!(inbound.next(1024), Ok(Some(Event::Message(Bytes::from(vec![7u8; 300])))));
    }

    #[test]
    fn fragments_are_joined_with_control_frames_between_them() {
        let mut bytes = frame(false, BINARY, b"ab", KEY);
        bytes.extend(frame(true, PING, b"p", KEY));
        bytes.extend(frame(false, CONTINUATION, b"cd", KEY));
        bytes.extend(frame(true, CONTINUATION, b"ef", KEY));
        let events = server_reads(&bytes, 6);
        assert_eq!(
            events,
            vec![
                Ok(Event::Ping(Bytes::from_static(b"p"))),
                Ok(Event::Message(Bytes::from_static(b"abcdef"))),
            ]
        );
        // One byte over the limit, counted over all fragments.
        assert_eq!(
            server_reads(&bytes, 5).pop(),
            Some(Err(Violation { code: TOO_BIG, reason: "message too big" }))
        );
    }

    #[test]
    fn a_message_over_the_limit_is_refused_at_its_header() {
        let mut inbound = Inbound::new(true);
        let mut head = BytesMut::new();
        put_head(&mut head, BINARY, 1 << 20, KEY);
        inbound.buffer().extend_from_slice(&head);
        assert_eq!(inbound.next(64 << 10).unwrap_err().code, TOO_BIG);
        // At the limit exactly, it waits for the payload.
        let mut inbound = Inbound::new(true);
        inbound.buffer().extend_from_slice(&head);
        assert_eq!(inbound.next(1 << 20), Ok(None));
        // Room is made for the payload as it comes, at most `max` at a time.
        inbound.reserve_for_read(64 << 10);
        let room = inbound.buffer().capacity() - inbound.buffer().len();
        assert!((64 << 10..1 << 20).contains(&room), "{room}");
    }

    #[test]
    fn protocol_violations_name_their_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (frame(true, BINARY, b"x", None), PROTOCOL), // unmasked from a client
            (frame(true, TEXT, b"x", KEY), UNSUPPORTED), // text
            (frame(true, 0x3, b"x", KEY), PROTOCOL),     // reserved opcode
            (frame(true, 0xB, b"", KEY), PROTOCOL),      // reserved control opcode
            (frame(false, PING, b"x", KEY), PROTOCOL),   // fragmented control frame
            (frame(true, PING, &[0; 126], KEY), PROTOCOL), // control frame too long
            (frame(true, CONTINUATION, b"x", KEY), PROTOCOL), // continuation, no message
            (frame(true, CLOSE, &[3], KEY), PROTOCOL),   // one-byte close payload
            (frame(true, CLOSE, &[3, 232, 0xff], KEY), PROTOCOL), // reason not UTF-8
            (
                {
                    let mut f = frame(true, BINARY, b"x", KEY);
                    f[0] |= 0x40; // RSV1
                    f
                },
                PROTOCOL,
            ),
            (
                {
                    let mut f = frame(false, BINARY, b"x", KEY);
                    f.extend(frame(true, BINARY, b"y", KEY)); // a new message inside one
                    f
                },
                PROTOCOL,
            ),
        ];
        for (i, (bytes, code)) in cases.into_iter().enumerate() {
            let last = server_reads(&bytes, 1024).pop();
            assert!(
                matches!(last, Some(Err(Violation { code: c, .. })) if c == code),
                "case {i}: {last:?}"
            );
        }
        // A client refuses masked frames.
        let mut inbound = Inbound::new(false);
        inbound.buffer().extend_from_slice(&frame(true, BINARY, b"x", KEY));
        assert_eq!(inbound.next(1024).unwrap_err().code, PROTOCOL);
        // A length with its top bit set.
        let mut bytes = vec![0x82, 0xff];
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(parse_head(&bytes).unwrap_err().code, PROTOCOL);
    }
}
