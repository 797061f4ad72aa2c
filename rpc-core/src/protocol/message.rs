//! Bodies of the frame kinds that have a structure (`PROTOCOL.md`, "Messages").
//!
//! Each body is one MessagePack array with fixed positions, so that a decoder in any language
//! reads it with a handful of primitive calls. Readers accept extra trailing array elements
//! (added by newer versions) and ignore them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ErrorKind, RpcError};
use crate::protocol::codec::{self, DecodeError};

/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The magic string that opens every Hello body.
pub const MAGIC: &str = "rpc";

fn malformed(what: &str) -> DecodeError {
    DecodeError::Type(format!("malformed {what} body"))
}

fn read_str<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(read_str_bytes(rest, what)?).map_err(|_| malformed(what))
}

/// Reads a string's bytes, not checked as UTF-8 (see [`CallHead`]).
fn read_str_bytes<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a [u8], DecodeError> {
    let (&marker, tail) = rest.split_first().ok_or_else(|| malformed(what))?;
    let (len, tail) = match marker {
        0xa0..=0xbf => ((marker & 0x1f) as usize, tail),
        0xd9 => tail.split_first().map(|(&n, t)| (n as usize, t)).ok_or_else(|| malformed(what))?,
        0xda => tail
            .split_first_chunk::<2>()
            .map(|(n, t)| (u16::from_be_bytes(*n) as usize, t))
            .ok_or_else(|| malformed(what))?,
        0xdb => tail
            .split_first_chunk::<4>()
            .map(|(n, t)| (u32::from_be_bytes(*n) as usize, t))
            .ok_or_else(|| malformed(what))?,
        _ => return Err(malformed(what)),
    };
    if tail.len() < len {
        return Err(malformed(what));
    }
    let (s, tail) = tail.split_at(len);
    *rest = tail;
    Ok(s)
}

fn read_opt_str<'a>(rest: &mut &'a [u8], what: &str) -> Result<Option<&'a str>, DecodeError> {
    if rest.first() == Some(&0xc0) {
        *rest = &rest[1..];
        return Ok(None);
    }
    read_str(rest, what).map(Some)
}

fn read_uint(rest: &mut &[u8], what: &str) -> Result<u64, DecodeError> {
    // The unsigned forms, read here: every call's head has two (its timeout and window),
    // and `rmp`'s generic reader spent about 30 instructions on each. Signed forms of a
    // non-negative value (legal, if odd) go to `rmp`.
    let (value, len) = match **rest {
        [b @ 0x00..=0x7f, ..] => (b as u64, 1),
        [0xcc, b, ..] => (b as u64, 2),
        [0xcd, a, b, ..] => (u16::from_be_bytes([a, b]) as u64, 3),
        [0xce, a, b, c, d, ..] => (u32::from_be_bytes([a, b, c, d]) as u64, 5),
        [0xcf, a, b, c, d, e, f, g, h, ..] => (u64::from_be_bytes([a, b, c, d, e, f, g, h]), 9),
        _ => return rmp::decode::read_int(rest).map_err(|_| malformed(what)),
    };
    *rest = &rest[len..];
    Ok(value)
}

fn read_opt_uint(rest: &mut &[u8], what: &str) -> Result<Option<u64>, DecodeError> {
    if rest.first() == Some(&0xc0) {
        *rest = &rest[1..];
        return Ok(None);
    }
    read_uint(rest, what).map(Some)
}

fn read_array(rest: &mut &[u8], min: u32, what: &str) -> Result<u32, DecodeError> {
    let n = rmp::decode::read_array_len(rest).map_err(|_| malformed(what))?;
    if n < min {
        return Err(malformed(what));
    }
    Ok(n)
}

fn write_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => codec::put_str(out, s),
        None => out.put_u8(0xc0),
    }
}

/// Hello: `["rpc", min_version, max_version, connection_id, max_calls, max_streams,
/// max_frame]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Lowest version the sender speaks.
    pub min_version: u32,
    /// Highest version the sender speaks.
    pub max_version: u32,
    /// The acceptor's id for this connection (0 from the dialer).
    pub connection_id: u64,
    /// Calls the sender accepts in flight at once; the receiver queues calls beyond it
    /// instead of sending them (and being answered `Busy`).
    pub max_calls: u32,
    /// Streaming calls the sender accepts open at once (counted apart from `max_calls`).
    pub max_streams: u32,
    /// The largest frame the sender accepts (length prefix excluded); the receiver cuts its
    /// messages into chunks that fit.
    pub max_frame: u32,
    /// Optional protocol features the sender understands (bits of `FEATURE_*`; 0 from
    /// peers that send no such field).
    pub features: u64,
}

/// Hello feature bit: the sender accepts **Items** frames (several stream items in one
/// frame, `PROTOCOL.md` §9.5).
pub const FEATURE_ITEM_BATCHES: u64 = 1;

impl Hello {
    /// Encodes the body.
    pub fn encode(&self, out: &mut BytesMut) {
        codec::put_array_len(out, 8);
        codec::put_str(out, MAGIC);
        codec::put_uint(out, self.min_version as u64);
        codec::put_uint(out, self.max_version as u64);
        codec::put_uint(out, self.connection_id);
        codec::put_uint(out, self.max_calls as u64);
        codec::put_uint(out, self.max_streams as u64);
        codec::put_uint(out, self.max_frame as u64);
        codec::put_uint(out, self.features);
    }

    /// Decodes the body.
    pub fn decode(mut body: &[u8]) -> Result<Hello, DecodeError> {
        let rest = &mut body;
        let n = read_array(rest, 3, "Hello")?;
        if read_str(rest, "Hello")? != MAGIC {
            return Err(malformed("Hello (bad magic)"));
        }
        let min_version = read_uint(rest, "Hello")? as u32;
        let max_version = read_uint(rest, "Hello")? as u32;
        let connection_id = if n >= 4 { read_uint(rest, "Hello")? } else { 0 };
        let max_calls =
            if n >= 5 { read_uint(rest, "Hello")?.min(u32::MAX as u64) as u32 } else { 100 };
        let max_streams =
            if n >= 6 { read_uint(rest, "Hello")?.min(u32::MAX as u64) as u32 } else { 1024 };
        let max_frame =
            if n >= 7 { read_uint(rest, "Hello")?.min(u32::MAX as u64) as u32 } else { 1 << 20 };
        let features = if n >= 8 { read_uint(rest, "Hello")? } else { 0 };
        Ok(Hello {
            min_version,
            max_version,
            connection_id,
            max_calls,
            max_streams,
            max_frame,
            features,
        })
    }

    /// The highest version both sides speak.
    pub fn negotiate(&self) -> Option<u32> {
        let v = self.max_version.min(PROTOCOL_VERSION);
        (v >= self.min_version && v >= 1).then_some(v)
    }
}

/// The start of a Call body: `[controller, action, args, timeout_ms?, window?]`.
///
/// Borrowed from the frame body: decoding it allocates nothing.
///
/// The names are the bytes as they arrived, not checked as UTF-8: the kernel looks them up
/// among the registered names, which are UTF-8, so a name that matches is valid and an
/// unknown one is only shown (lossily) in the error. The check would cost more than the
/// lookup (about 70 instructions per name, per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallHead<'a> {
    /// Controller name.
    pub controller: &'a [u8],
    /// Action name.
    pub action: &'a [u8],
    /// The argument array, still encoded.
    pub args: &'a [u8],
    /// Values in the arguments (the array, every element, map key and value), counted by the
    /// scan that checked them: a measure of what decoding them will cost.
    pub arg_values: u64,
    /// The caller's deadline, relative, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Items the callee may send on a result stream before waiting for credit.
    pub window: u32,
}

impl<'a> CallHead<'a> {
    /// Decodes the head; `args` is checked to be one well-formed value within `max_depth`.
    pub fn decode(body: &'a [u8], max_depth: usize) -> Result<CallHead<'a>, DecodeError> {
        let mut rest = body;
        let n = read_array(&mut rest, 3, "Call")?;
        let controller = read_str_bytes(&mut rest, "Call")?;
        let action = read_str_bytes(&mut rest, "Call")?;
        let (len, arg_values) = codec::scan_value(rest, max_depth)?;
        let (args, tail) = rest.split_at(len);
        rest = tail;
        let timeout_ms = if n >= 4 { read_opt_uint(&mut rest, "Call")? } else { None };
        let window =
            if n >= 5 { read_uint(&mut rest, "Call")?.min(u32::MAX as u64) as u32 } else { 0 };
        // Elements a newer peer appends are skipped; bytes after the array are not allowed.
        for _ in 5..n {
            let len = codec::value_len(rest, max_depth)?;
            rest = &rest[len..];
        }
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        Ok(CallHead { controller, action, args, arg_values, timeout_ms, window })
    }

    /// Writes everything but the arguments: the caller appends the argument array, then
    /// [`CallHead::encode_tail`].
    /// The names are `&str` for callers and raw bytes for a head read back with
    /// [`CallHead::decode`].
    pub fn encode_start(
        out: &mut BytesMut,
        controller: impl AsRef<[u8]>,
        action: impl AsRef<[u8]>,
    ) {
        out.put_u8(0x95); // an array of 5
        codec::put_str_bytes(out, controller.as_ref());
        codec::put_str_bytes(out, action.as_ref());
    }

    /// Writes the options that follow the arguments.
    pub fn encode_tail(out: &mut BytesMut, timeout_ms: Option<u64>, window: u32) {
        match timeout_ms {
            Some(ms) => codec::put_uint(out, ms),
            None => out.put_u8(0xc0),
        }
        codec::put_uint(out, window as u64);
    }
}

/// Encodes an Error body: `[code, message, name?, payload?, correlation_id?]`.
pub fn encode_error(out: &mut BytesMut, error: &RpcError) {
    codec::put_array_len(out, 5);
    codec::put_uint(out, error.kind().code() as u64);
    codec::put_str(out, error.message());
    write_opt_str(out, error.name());
    match error.payload() {
        Some(p) => codec::put_bin(out, p),
        None => out.put_u8(0xc0),
    }
    write_opt_str(out, error.correlation_id());
}

/// Decodes an Error body.
pub fn decode_error(body: &Bytes) -> Result<RpcError, DecodeError> {
    let mut rest: &[u8] = body;
    let n = read_array(&mut rest, 2, "Error")?;
    let code = read_uint(&mut rest, "Error")?;
    let kind = ErrorKind::from_code(code.min(255) as u8);
    let message = read_str(&mut rest, "Error")?.to_string();
    let name = if n >= 3 { read_opt_str(&mut rest, "Error")?.map(str::to_string) } else { None };
    let payload = if n >= 4 && rest.first() != Some(&0xc0) {
        let len = rmp::decode::read_bin_len(&mut rest).map_err(|_| malformed("Error"))? as usize;
        if len > rest.len() {
            return Err(DecodeError::Truncated);
        }
        let start = body.len() - rest.len();
        rest = &rest[len..];
        Some(body.slice(start..start + len))
    } else {
        if n >= 4 {
            rest = &rest[1..];
        }
        None
    };
    let correlation =
        if n >= 5 { read_opt_str(&mut rest, "Error")?.map(str::to_string) } else { None };
    Ok(RpcError::from_parts(kind, message, name, payload, correlation))
}

/// Why a connection is being closed: the code of a GoAway frame (`PROTOCOL.md`, "GoAway").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum GoAwayCode {
    /// An orderly close.
    Normal = 0,
    /// The peer broke the protocol.
    ProtocolError = 1,
    /// A frame exceeded the frame limit.
    TooLarge = 2,
    /// The peer did not read what was sent to it.
    SlowConsumer = 3,
    /// Authentication failed, or did not happen in time.
    Unauthenticated = 4,
    /// Too many protocol errors.
    TooManyErrors = 5,
    /// The server is shutting down.
    ShuttingDown = 6,
    /// Pings went unanswered.
    KeepaliveTimeout = 7,
    /// The server has no room for another connection.
    ServerFull = 8,
    /// No protocol version in common.
    UnsupportedVersion = 9,
    /// The handshake did not complete in time.
    HandshakeTimeout = 10,
    /// A started frame did not complete in time.
    FrameTimeout = 11,
    /// The call id space is used up; reconnect.
    IdsExhausted = 12,
}

impl GoAwayCode {
    /// The code for a wire value (unknown values read as `ProtocolError`).
    pub fn from_u16(v: u16) -> GoAwayCode {
        use GoAwayCode::*;
        match v {
            0 => Normal,
            2 => TooLarge,
            3 => SlowConsumer,
            4 => Unauthenticated,
            5 => TooManyErrors,
            6 => ShuttingDown,
            7 => KeepaliveTimeout,
            8 => ServerFull,
            9 => UnsupportedVersion,
            10 => HandshakeTimeout,
            11 => FrameTimeout,
            12 => IdsExhausted,
            _ => ProtocolError,
        }
    }
}

/// GoAway: `[code, reason]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// Machine-readable reason.
    pub code: GoAwayCode,
    /// Human-readable reason.
    pub reason: String,
}

impl GoAway {
    /// Encodes the body.
    pub fn encode(&self, out: &mut BytesMut) {
        codec::put_array_len(out, 2);
        codec::put_uint(out, self.code as u16 as u64);
        codec::put_str(out, &self.reason);
    }

    /// Decodes the body.
    pub fn decode(mut body: &[u8]) -> Result<GoAway, DecodeError> {
        let rest = &mut body;
        read_array(rest, 2, "GoAway")?;
        let code = GoAwayCode::from_u16(read_uint(rest, "GoAway")?.min(u16::MAX as u64) as u16);
        let reason = read_str(rest, "GoAway")?.to_string();
        Ok(GoAway { code, reason })
    }
}

/// What one stream Item costs in credit (`PROTOCOL.md` §9): its body's length plus a fixed
/// 64 for what the receiver holds per queued item besides the body. Counting bytes, not
/// items, lets a window of tiny items run thousands deep while a window of large items stays
/// a few of them, so one setting bounds the receiver's memory whatever the item size.
///
/// ```
/// use rpc_core::protocol::message::stream_item_cost;
/// assert_eq!(stream_item_cost(1), 65);
/// ```
pub fn stream_item_cost(body_len: usize) -> u64 {
    body_len as u64 + STREAM_ITEM_OVERHEAD
}

/// The fixed part of [`stream_item_cost`].
pub const STREAM_ITEM_OVERHEAD: u64 = 64;

/// The body of an **Items** frame: a MessagePack array of stream items, read one item at a
/// time (each checked by [`codec::value_len`] before anyone decodes it).
///
/// ```
/// use rpc_core::protocol::message::ItemBatch;
///
/// // [1, "two"]
/// let body = [0x92, 0x01, 0xa3, b't', b'w', b'o'];
/// let mut batch = ItemBatch::new(&body).unwrap();
/// assert_eq!(batch.cost(), 5 + 2 * 64); // the items' 5 bytes plus 64 each
/// assert_eq!(batch.next_item(64).unwrap(), Some(&[0x01][..]));
/// assert_eq!(batch.next_item(64).unwrap(), Some(&body[2..]));
/// assert_eq!(batch.next_item(64).unwrap(), None);
/// ```
#[derive(Debug, Clone)]
pub struct ItemBatch<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> ItemBatch<'a> {
    /// Reads the array header; an empty batch is malformed.
    pub fn new(body: &'a [u8]) -> Result<ItemBatch<'a>, DecodeError> {
        let mut rest = body;
        let remaining = rmp::decode::read_array_len(&mut rest).map_err(|_| malformed("Items"))?;
        if remaining == 0 {
            return Err(malformed("Items (no items)"));
        }
        Ok(ItemBatch { rest, remaining })
    }

    /// Items not yet read.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// What the whole batch costs in stream credit: as much as its items sent one by one
    /// (see [`stream_item_cost`]).
    pub fn cost(&self) -> u64 {
        self.rest.len() as u64 + STREAM_ITEM_OVERHEAD * self.remaining as u64
    }

    /// The next item's encoded bytes, or `None` after the last.
    pub fn next_item(&mut self, max_depth: usize) -> Result<Option<&'a [u8]>, DecodeError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let len = codec::value_len(self.rest, max_depth)?;
        let (item, rest) = self.rest.split_at(len);
        self.rest = rest;
        self.remaining -= 1;
        Ok(Some(item))
    }

    /// The bytes after the items read so far.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

/// Writes the array header of an Items body holding `count` items.
pub fn encode_items_header(out: &mut BytesMut, count: u32) {
    codec::put_array_len(out, count);
}

/// Reads a body holding one unsigned integer (Credit, ChunkCredit).
pub fn decode_uint(mut body: &[u8]) -> Result<u64, DecodeError> {
    let v = read_uint(&mut body, "Credit")?;
    if !body.is_empty() {
        return Err(DecodeError::Trailing(body.len()));
    }
    Ok(v)
}

/// Writes a body holding one unsigned integer.
pub fn encode_uint(out: &mut BytesMut, v: u64) {
    codec::put_uint(out, v);
}

/// The source a server stamps on a routed call: `[connection_id, alias?, username?]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteSource {
    /// The caller's connection id on the routing server.
    pub connection_id: u64,
    /// The caller's peer alias, if it registered one.
    pub alias: Option<String>,
    /// The caller's session user name, if authenticated.
    pub username: Option<String>,
}

impl RouteSource {
    /// Encodes the route section.
    pub fn encode(&self, out: &mut BytesMut) {
        codec::put_array_len(out, 3);
        codec::put_uint(out, self.connection_id);
        write_opt_str(out, self.alias.as_deref());
        write_opt_str(out, self.username.as_deref());
    }

    /// Decodes the route section.
    pub fn decode(mut body: &[u8]) -> Result<RouteSource, DecodeError> {
        let rest = &mut body;
        read_array(rest, 3, "route source")?;
        Ok(RouteSource {
            connection_id: read_uint(rest, "route source")?,
            alias: read_opt_str(rest, "route source")?.map(str::to_string),
            username: read_opt_str(rest, "route source")?.map(str::to_string),
        })
    }
}

/// Encodes a route target section: `[alias]`.
pub fn encode_route_target(out: &mut BytesMut, alias: &str) {
    codec::put_array_len(out, 1);
    codec::put_str(out, alias);
}

/// Decodes a route target section.
pub fn decode_route_target(mut body: &[u8]) -> Result<&str, DecodeError> {
    let rest = &mut body;
    read_array(rest, 1, "route target")?;
    read_str(rest, "route target")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_head_round_trip() {
        let mut out = BytesMut::new();
        CallHead::encode_start(&mut out, "users", "hello");
        codec::encode_into(&mut out, &("World",)).unwrap();
        CallHead::encode_tail(&mut out, Some(1500), 64);
        let head = CallHead::decode(&out, 64).unwrap();
        assert_eq!(head.controller, b"users");
        assert_eq!(head.action, b"hello");
        assert_eq!(head.args, &b"\x91\xa5World"[..]);
        assert_eq!(head.timeout_ms, Some(1500));
        assert_eq!(head.window, 64);
    }

    #[test]
    fn unsigned_integers_read_as_rmp_reads_them() {
        let mut values = vec![0u64, 1, 127, 128, 255, 256, 65_535, 65_536, u32::MAX as u64];
        values.extend([u32::MAX as u64 + 1, u64::MAX]);
        let mut forms = Vec::new();
        for v in values {
            let mut unsigned = Vec::new();
            rmp::encode::write_uint(&mut unsigned, v).unwrap();
            forms.push(unsigned);
            if let Ok(signed) = i64::try_from(v) {
                // The signed forms of a non-negative value, each width.
                let mut forced = vec![0xd3];
                forced.extend(signed.to_be_bytes());
                forms.push(forced);
                if let Ok(small) = i8::try_from(signed) {
                    forms.push(vec![0xd0, small as u8]);
                }
            }
        }
        forms.extend([vec![0xff], vec![0xd0, 0x80], vec![0xc0], vec![0xa1, b'x']]);
        for form in forms {
            for cut in 0..=form.len() {
                let with_tail = [&form[..cut], &[0x07][..]].concat();
                let (mut ours, mut theirs) = (&with_tail[..], &with_tail[..]);
                let expected = rmp::decode::read_int::<u64, _>(&mut theirs).ok();
                assert_eq!(read_uint(&mut ours, "test").ok(), expected, "{with_tail:02x?}");
                if expected.is_some() {
                    assert_eq!(ours, theirs, "both stop at the same byte: {with_tail:02x?}");
                }
            }
        }
    }

    #[test]
    fn call_head_names_read_back_in_every_string_form() {
        // fixstr, str8, str16 and str32 (as rmp writes them), and names that are not UTF-8.
        let lengths = [0usize, 1, 31, 32, 255, 256, 65_535, 65_536];
        for len in lengths {
            let name = "n".repeat(len);
            let mut out = BytesMut::new();
            CallHead::encode_start(&mut out, &name, b"\xff\xfe");
            let mut theirs = vec![0x95];
            rmp::encode::write_str(&mut theirs, &name).unwrap();
            assert_eq!(&out[..theirs.len()], &theirs[..], "a name of {len} bytes");
            out.put_u8(0x90);
            CallHead::encode_tail(&mut out, None, 0);
            let head = CallHead::decode(&out, 8).unwrap();
            assert_eq!((head.controller, head.action), (name.as_bytes(), &b"\xff\xfe"[..]));
            // Cut anywhere inside the names: an error, never a panic or a shorter name.
            let names_end = out.len() - 3;
            for cut in 1..names_end.min(40) {
                assert!(CallHead::decode(&out[..cut], 8).is_err(), "cut at {cut} of {len}");
            }
            assert!(CallHead::decode(&out[..names_end - 1], 8).is_err());
        }
        // A name that is no string at all.
        assert!(CallHead::decode(b"\x95\xc4\x01a\xa1b\x90\xc0\x00", 8).is_err());
        assert!(CallHead::decode(b"\x95\xa1a\x01\x90\xc0\x00", 8).is_err());
    }

    #[test]
    fn error_round_trip_keeps_every_field() {
        let e = RpcError::from_parts(
            ErrorKind::Remote,
            "cannot save".into(),
            Some("@error:x".into()),
            Some(Bytes::from_static(b"\x80")),
            Some("c-1".into()),
        );
        let mut out = BytesMut::new();
        encode_error(&mut out, &e);
        assert_eq!(decode_error(&out.freeze()).unwrap(), e);
        let plain = RpcError::not_found("no such action");
        let mut out = BytesMut::new();
        encode_error(&mut out, &plain);
        assert_eq!(decode_error(&out.freeze()).unwrap(), plain);
    }

    #[test]
    fn hello_negotiates_the_common_version() {
        let mut out = BytesMut::new();
        Hello {
            min_version: 1,
            max_version: 7,
            connection_id: 9,
            max_calls: 5,
            max_streams: 6,
            max_frame: 7,
            features: FEATURE_ITEM_BATCHES,
        }
        .encode(&mut out);
        let h = Hello::decode(&out).unwrap();
        assert_eq!(h.negotiate(), Some(1));
        assert_eq!((h.connection_id, h.max_calls, h.max_streams, h.max_frame), (9, 5, 6, 7));
        assert_eq!(h.features, FEATURE_ITEM_BATCHES);
        assert_eq!(
            Hello {
                min_version: 2,
                max_version: 3,
                connection_id: 0,
                max_calls: 1,
                max_streams: 1,
                max_frame: 4096,
                features: 0,
            }
            .negotiate(),
            None
        );
    }

    #[test]
    fn an_items_body_that_promises_more_than_it_holds_fails_at_the_missing_item() {
        // [1, 2, ?]: three items announced, two present.
        let body = [0x93, 0x01, 0x02];
        let mut batch = ItemBatch::new(&body).unwrap();
        assert_eq!(batch.next_item(8).unwrap(), Some(&[0x01][..]));
        assert_eq!(batch.next_item(8).unwrap(), Some(&[0x02][..]));
        assert!(batch.next_item(8).is_err());
        // Too deep for the limit.
        let deep = [0x91, 0x91, 0x91, 0x01];
        assert!(ItemBatch::new(&deep).unwrap().next_item(1).is_err());
        assert!(ItemBatch::new(&[0x90]).is_err(), "an empty batch is malformed");
    }

    #[test]
    fn goaway_and_route_round_trip() {
        let g = GoAway { code: GoAwayCode::SlowConsumer, reason: "slow consumer".into() };
        let mut out = BytesMut::new();
        g.encode(&mut out);
        assert_eq!(GoAway::decode(&out).unwrap(), g);
        let s = RouteSource { connection_id: 4, alias: Some("a".into()), username: None };
        let mut out = BytesMut::new();
        s.encode(&mut out);
        assert_eq!(RouteSource::decode(&out).unwrap(), s);
        let mut out = BytesMut::new();
        encode_route_target(&mut out, "printer-1");
        assert_eq!(decode_route_target(&out).unwrap(), "printer-1");
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [&b""[..], b"\x90", b"\x95\xa1a", b"\xc1", b"\x93\x01\x02\x03"] {
            assert!(CallHead::decode(body, 64).is_err());
            assert!(decode_error(&Bytes::copy_from_slice(body)).is_err());
            assert!(GoAway::decode(body).is_err());
            assert!(Hello::decode(body).is_err());
        }
    }
}
