//! The body of the fuzz target `ws_frames` in `fuzz/`, as a plain function so that an
//! ordinary `cargo test` replays its saved corpus (`tests/tests/fuzz_corpus.rs`) through the
//! code the fuzzer ran. Not part of the API: hidden, unstable, for tests only.
//!
//! Input: `flags: u8` (bit 0: read as a server, which expects masked frames), `limit: u16`
//! (the message limit is 16 + it), `max_read: u8` (reads of 1 to 1 + it bytes), then the
//! bytes a remote sent.

use crate::socket::READ_AHEAD_MAX;
use crate::wire::{Event, Inbound, Violation};

/// Runs the WebSocket frame reader over `data`, twice: with all of it at once, and cut into
/// reads of fuzzer-chosen sizes with room made before each as the socket reader makes it.
///
/// Checks: both see the same events and end the same way; no message passes the limit and
/// no control payload passes 125 bytes; the buffer never holds much more than what arrived
/// plus one read's reservation.
pub fn ws_frames(data: &[u8]) {
    let [flags, limit_high, limit_low, read_byte, stream @ ..] = data else { return };
    let server = flags & 1 == 1;
    let limit = 16 + usize::from(u16::from_be_bytes([*limit_high, *limit_low]));
    let max_read = 1 + usize::from(*read_byte);

    let mut whole = Inbound::new(server);
    whole.buffer().extend_from_slice(stream);
    let (expected, expected_end) = drain(&mut whole, limit, stream.len());

    let mut pieces = Inbound::new(server);
    let mut seen = Vec::new();
    let mut end = None;
    let mut fed = 0;
    let mut seed = u32::from(*read_byte) + 1;
    while fed < stream.len() && end.is_none() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let size = 1 + (seed as usize % max_read);
        let next = (fed + size).min(stream.len());
        pieces.reserve_for_read(READ_AHEAD_MAX);
        pieces.buffer().extend_from_slice(&stream[fed..next]);
        fed = next;
        let buffer = pieces.buffer();
        assert!(
            buffer.capacity() <= 2 * (buffer.len() + READ_AHEAD_MAX) + (64 << 10),
            "the buffer grew to {} for {} bytes held",
            buffer.capacity(),
            buffer.len()
        );
        let (events, stop) = drain(&mut pieces, limit, stream.len());
        seen.extend(events);
        end = stop;
    }
    // Messages buffered back to back are joined, so how many come out together depends on
    // the reads: compare their bytes between control frames.
    assert_eq!(joined(seen), joined(expected), "the same events whatever the reads");
    assert_eq!(end, expected_end, "the same end whatever the reads");
}

/// `events` with adjacent messages joined into one.
fn joined(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::with_capacity(events.len());
    for event in events {
        match (out.last_mut(), event) {
            (Some(Event::Message(last)), Event::Message(next)) => {
                let mut both = bytes::BytesMut::from(&last[..]);
                both.extend_from_slice(&next);
                *last = both.freeze();
            }
            (_, event) => out.push(event),
        }
    }
    out
}

/// Events until the buffered bytes hold no whole frame (`None`) or a violation or Close
/// ends the connection (`Some`); bounded by the input's length.
fn drain(
    inbound: &mut Inbound,
    limit: usize,
    input_len: usize,
) -> (Vec<Event>, Option<Result<Event, Violation>>) {
    let mut events = Vec::new();
    // Every event takes at least two bytes of input.
    for _ in 0..=input_len {
        match inbound.next(limit) {
            Ok(None) => return (events, None),
            Ok(Some(Event::Close(code))) => return (events, Some(Ok(Event::Close(code)))),
            Ok(Some(event)) => {
                match &event {
                    Event::Message(message) => assert!(message.len() <= limit),
                    Event::Ping(payload) => assert!(payload.len() <= 125),
                    Event::Pong | Event::Close(_) => {}
                }
                events.push(event);
            }
            Err(violation) => return (events, Some(Err(violation))),
        }
    }
    panic!("more events than bytes of input");
}
