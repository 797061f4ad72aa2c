//! MessagePack rules every body obeys, on both sides of a connection.
//!
//! Decoding follows the rules of `ROBUSTNESS.md` §4.3: nesting is limited, no declared
//! length is trusted beyond the bytes present, and nothing may trail the value. The crate's
//! serde decoder (`protocol::msgpack`) enforces all three as it reads, so hostile input can
//! neither overflow the stack nor make serde pre-allocate more than the frame's size.
//! A call's argument array also passes a non-recursive pre-scan ([`scan_value`]) when its
//! head is read: it finds where the array ends in the frame and counts its values, which
//! decides whether the call is run inline. [`prescan`] checks a value without decoding it
//! (an Auth token, kept raw for the policy).

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RpcError;

/// Default nesting limit of decoded bodies (see [`Limits::max_depth`](crate::Limits)).
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not one well-formed MessagePack value within the limits.
    #[error(
        "malformed MessagePack: bad syntax, nesting deeper than {max_depth} levels, or a declared length beyond the data"
    )]
    Malformed {
        /// The depth limit in force.
        max_depth: usize,
    },
    /// Declared lengths run past the end of the body.
    #[error("truncated MessagePack: a declared length runs past the end of the data")]
    Truncated,
    /// Bytes follow the value.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    /// The value does not have the expected type.
    #[error("{0}")]
    Type(String),
}

/// Deepest nesting [`value_len`] can track (the depth limit is clamped to it).
const MAX_TRACKED_DEPTH: usize = 128;

/// Open containers [`value_len`] tracks on the stack; deeper ones (rare) go to the heap.
const SHALLOW_DEPTH: usize = 16;

/// Length of the one MessagePack value at the start of `data`, with nesting at most
/// `max_depth` (at most 128).
///
/// A loop over a stack of open containers: it never recurses, allocates only for values
/// nested deeper than 16 levels, and refuses any declared length (string, binary, ext, or
/// element count) that the bytes present cannot back. Every marker of the format is
/// handled, ext types included.
///
/// ```
/// use rpc_core::protocol::codec::value_len;
///
/// assert_eq!(value_len(&[0x92, 0x01, 0xa1, b'x', 0xff], 64), Ok(4)); // [1, "x"], then more
/// assert!(value_len(&[0xa5, b'x'], 64).is_err()); // a 5-byte string with 1 byte present
/// ```
pub fn value_len(data: &[u8], max_depth: usize) -> Result<usize, DecodeError> {
    scan_value(data, max_depth).map(|(len, _)| len)
}

/// As [`value_len`], also counting the values met (the value itself, its elements, map keys
/// and values, at every depth): a measure of what decoding it will cost.
///
/// ```
/// use rpc_core::protocol::codec::scan_value;
///
/// assert_eq!(scan_value(&[0x92, 0x01, 0xa1, b'x'], 64), Ok((4, 3))); // the array and 2 items
/// ```
#[inline]
pub fn scan_value(data: &[u8], max_depth: usize) -> Result<(usize, u64), DecodeError> {
    // A number, a bool, nil or a short string (a stream's `u64` item, say) is measured by
    // its marker alone, inline; everything else takes the general scan.
    if let Some(&first) = data.first()
        && let Some(len) = fixed_len(first)
        && len <= data.len()
    {
        return Ok((len, 1));
    }
    scan_any(data, max_depth)
}

/// The encoded length of a value whose marker alone says how long it is: numbers, nil,
/// booleans and fixstr. `None` for containers, and for anything with a length field.
///
/// One load from a 256-byte table ([`FIXED_LENGTHS`]): the scan runs it on nearly every
/// value of a typical body, where a `match` over the marker's ranges cost about 13
/// instructions a value (callgrind).
#[inline(always)]
fn fixed_len(marker: u8) -> Option<usize> {
    match FIXED_LENGTHS[marker as usize] {
        0 => None,
        len => Some(len as usize),
    }
}

/// [`fixed_len`]'s table, built at compile time from [`fixed_len_of`].
static FIXED_LENGTHS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut marker = 0;
    while marker < 256 {
        table[marker] = fixed_len_of(marker as u8);
        marker += 1;
    }
    table
};

/// The length [`fixed_len`] reports for `marker`, or 0. This repeats part of
/// [`marker_lengths`]' table; `the_scalar_path_agrees_with_the_general_loop` checks that
/// the two agree.
const fn fixed_len_of(marker: u8) -> u8 {
    match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 1,
        0xa0..=0xbf => 1 + (marker & 0x1f),
        0xcc | 0xd0 => 2,
        0xcd | 0xd1 => 3,
        0xca | 0xce | 0xd2 => 5,
        0xcb | 0xcf | 0xd3 => 9,
        _ => 0,
    }
}

/// [`scan_value`] for any value.
fn scan_any(data: &[u8], max_depth: usize) -> Result<(usize, u64), DecodeError> {
    let max_depth = max_depth.min(MAX_TRACKED_DEPTH);
    let malformed = DecodeError::Malformed { max_depth };
    // A value that is no container (a stream's `u64` item, say) needs no stack at all.
    let first = *data.first().ok_or(DecodeError::Truncated)?;
    let mut pos = 1usize;
    let (skip, items) = marker_lengths(first, data, &mut pos, max_depth)?;
    if items == 0 {
        let left = (data.len() - pos.min(data.len())) as u64;
        if skip > left {
            return Err(DecodeError::Truncated);
        }
        return Ok((pos + skip as usize, 1));
    }
    // A container: every item takes at least one byte, so a count the data cannot back is
    // refused before anything is done with it.
    if items > (data.len() - pos.min(data.len())) as u64 {
        return Err(DecodeError::Truncated);
    }
    if max_depth == 0 {
        return Err(malformed);
    }
    // Items still to read in each open container; `remaining` is the innermost. The
    // outermost level (the value itself) is done once its container closes.
    let mut shallow = [0u64; SHALLOW_DEPTH];
    let mut deep: Vec<u64> = Vec::new();
    let mut depth = 1usize;
    let mut remaining: u64 = items;
    let mut values = 1u64;
    loop {
        // Numbers, nil, booleans and short strings (most of a typical value: a struct's keys
        // and fields) in a tight loop: the marker alone says how long each is. A string
        // running past the data is caught by the next `get`, or by the check at the end.
        while remaining > 0 {
            let marker = *data.get(pos).ok_or(DecodeError::Truncated)?;
            let Some(len) = fixed_len(marker) else { break };
            pos += len;
            remaining -= 1;
            values += 1;
        }
        if remaining == 0 {
            if depth == 0 {
                if pos > data.len() {
                    return Err(DecodeError::Truncated);
                }
                return Ok((pos, values));
            }
            depth -= 1;
            remaining = match depth < SHALLOW_DEPTH {
                true => shallow[depth],
                false => deep.pop().ok_or_else(|| malformed.clone())?,
            };
            continue;
        }
        remaining -= 1;
        values += 1;
        let marker = *data.get(pos).ok_or(DecodeError::Truncated)?;
        pos += 1;
        let (skip, items) = marker_lengths(marker, data, &mut pos, max_depth)?;
        let left = (data.len() - pos.min(data.len())) as u64;
        if skip > left {
            return Err(DecodeError::Truncated);
        }
        pos += skip as usize;
        if items > 0 {
            // Every item takes at least one byte: a count the data cannot back is refused
            // before anything is done with it.
            if items > left {
                return Err(DecodeError::Truncated);
            }
            if depth >= max_depth {
                return Err(malformed);
            }
            match depth < SHALLOW_DEPTH {
                true => shallow[depth] = remaining,
                false => deep.push(remaining),
            }
            depth += 1;
            remaining = items;
        }
    }
}

/// What the marker just read at `*pos - 1` declares: (bytes to skip after the marker and
/// any length field, which this reads and moves `pos` past; items of a container).
#[inline(always)]
fn marker_lengths(
    marker: u8,
    data: &[u8],
    pos: &mut usize,
    max_depth: usize,
) -> Result<(u64, u64), DecodeError> {
    // Reads a big-endian length field of `width` bytes at `pos` and moves past it.
    let mut length = |width: usize| -> Result<u64, DecodeError> {
        let bytes = data.get(*pos..*pos + width).ok_or(DecodeError::Truncated)?;
        *pos += width;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64))
    };
    Ok(match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
        0x80..=0x8f => (0, 2 * (marker & 0x0f) as u64),
        0x90..=0x9f => (0, (marker & 0x0f) as u64),
        0xa0..=0xbf => ((marker & 0x1f) as u64, 0),
        0xc1 => return Err(DecodeError::Malformed { max_depth }),
        // bin8/16/32, str8/16/32: a length, then that many bytes.
        0xc4 | 0xd9 => (length(1)?, 0),
        0xc5 | 0xda => (length(2)?, 0),
        0xc6 | 0xdb => (length(4)?, 0),
        // ext8/16/32: a length, a type byte, then the data.
        0xc7 => (length(1)? + 1, 0),
        0xc8 => (length(2)? + 1, 0),
        0xc9 => (length(4)? + 1, 0),
        0xca => (4, 0),
        0xcb => (8, 0),
        0xcc | 0xd0 => (1, 0),
        0xcd | 0xd1 => (2, 0),
        0xce | 0xd2 => (4, 0),
        0xcf | 0xd3 => (8, 0),
        // fixext 1/2/4/8/16: a type byte, then the data.
        0xd4 => (2, 0),
        0xd5 => (3, 0),
        0xd6 => (5, 0),
        0xd7 => (9, 0),
        0xd8 => (17, 0),
        // array16/32, map16/32: a count, then that many items (two per map entry).
        0xdc => (0, length(2)?),
        0xdd => (0, length(4)?),
        0xde => (0, 2 * length(2)?),
        0xdf => (0, 2 * length(4)?),
    })
}

/// Checks that `body` is exactly one MessagePack value within the depth limit.
pub fn prescan(body: &[u8], max_depth: usize) -> Result<(), DecodeError> {
    let n = value_len(body, max_depth)?;
    if n != body.len() {
        return Err(DecodeError::Trailing(body.len() - n));
    }
    Ok(())
}

/// Decodes `body`, exactly one value, with the default depth limit.
///
/// ```
/// use rpc_core::protocol::codec::{decode_value, encode_value};
///
/// let bytes = encode_value(&(1u8, "two")).unwrap();
/// assert_eq!(decode_value::<(u8, String)>(&bytes).unwrap(), (1, "two".to_string()));
/// assert!(decode_value::<u8>(&[0x01, 0xff]).is_err()); // trailing bytes
/// ```
pub fn decode_value<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    decode_whole(body, DEFAULT_MAX_DEPTH)
}

/// Decodes `body`, which must be exactly one value nested at most `max_depth` deep.
///
/// No pre-scan: the decoder itself holds the nesting to the limit and never trusts a
/// declared length beyond the bytes present (see `msgpack`); a pass less is about 100
/// instructions less on every reply of a small call.
pub(crate) fn decode_whole<T: DeserializeOwned>(
    body: &[u8],
    max_depth: usize,
) -> Result<T, DecodeError> {
    decode_prefix(body, max_depth).and_then(|decoded| all_of(body, decoded))
}

/// The value [`decode_prefix`] read from the start of `body`, if it took all of `body`.
pub(crate) fn all_of<T>(body: &[u8], (value, len): (T, usize)) -> Result<T, DecodeError> {
    match body.len() - len {
        0 => Ok(value),
        trailing => Err(DecodeError::Trailing(trailing)),
    }
}

/// Decodes the value at the start of `body`, nested at most `max_depth` (at most 128)
/// deep, and returns it with the bytes it took: for values one after another (a call's
/// arguments, the items of a batch), which the decoder delimits as it reads them.
pub(crate) fn decode_prefix<T: DeserializeOwned>(
    body: &[u8],
    max_depth: usize,
) -> Result<(T, usize), DecodeError> {
    super::msgpack::decode(body, max_depth.min(MAX_TRACKED_DEPTH))
        .map_err(super::msgpack::Error::into_decode_error)
}

/// Encodes `value` as MessagePack: structs as maps keyed by field name (so fields can be
/// added in a compatible way), enums as `{variant: value}` or the variant name.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, RpcError> {
    let mut out = Vec::new();
    write_value(&mut out, value)?;
    Ok(out)
}

/// Encodes `value` at the end of `out`.
pub fn encode_into<T: Serialize + ?Sized>(out: &mut BytesMut, value: &T) -> Result<(), RpcError> {
    write_value(out, value)
}

// The protocol's own fields, written by `msgpack`'s shortest-form writers (the forms rmp
// writes). Each body field fits a frame (16 MiB at most), so the only failure of those
// writers, a length of 4 GiB or more, cannot happen here.

/// Writes a MessagePack string in its shortest form, as `rmp::encode::write_str` does.
///
/// The protocol's own fields (controller and action names) are written on every call;
/// `rmp`'s generic writer spent about 90 instructions on a five-letter name.
#[inline]
pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    put_str_bytes(out, s.as_bytes())
}

/// As [`put_str`], for a string's bytes (a call head's names as they were read).
#[inline]
pub(crate) fn put_str_bytes(out: &mut BytesMut, s: &[u8]) {
    let written = super::msgpack::write_str(out, s);
    debug_assert!(written.is_ok(), "a protocol string of {} bytes", s.len());
}

/// Writes an unsigned integer in its shortest form.
#[inline]
pub(crate) fn put_uint(out: &mut BytesMut, v: u64) {
    super::msgpack::write_uint(out, v);
}

/// Writes the header of an array of `len` elements in its shortest form.
#[inline]
pub(crate) fn put_array_len(out: &mut BytesMut, len: u32) {
    let written = super::msgpack::write_array_len(out, len as usize);
    debug_assert!(written.is_ok(), "a u32 length always fits");
}

/// Writes binary data in its shortest form.
pub(crate) fn put_bin(out: &mut BytesMut, data: &[u8]) {
    let written = super::msgpack::write_bin(out, data);
    debug_assert!(written.is_ok(), "protocol binary data of {} bytes", data.len());
}

fn write_value<O: super::msgpack::Output, T: Serialize + ?Sized>(
    out: &mut O,
    value: &T,
) -> Result<(), RpcError> {
    super::msgpack::encode(out, value)
        .map_err(|e| RpcError::internal(format!("value could not be serialized: {e}")))
}

/// Reads an action's arguments one by one, so that a failure names the argument.
///
/// The arguments travel as one MessagePack array; generated server code calls
/// [`ArgsReader::next`] once per parameter, then [`ArgsReader::finish`].
///
/// ```
/// use rpc_core::protocol::codec::{encode_value, ArgsReader};
///
/// let args = encode_value(&("Ada", 36u8)).unwrap();
/// let mut reader = ArgsReader::new(&args, 64).unwrap();
/// let name: String = reader.next("name").unwrap();
/// let err = reader.next::<String>("age").unwrap_err();
/// assert!(err.to_string().contains("argument `age` (#2)"), "{err}");
/// ```
pub struct ArgsReader<'a> {
    rest: &'a [u8],
    remaining: u32,
    position: u32,
    max_depth: usize,
}

impl<'a> ArgsReader<'a> {
    /// Starts reading an argument array. `args` must be one array value (checked).
    pub fn new(args: &'a [u8], max_depth: usize) -> Result<ArgsReader<'a>, RpcError> {
        let mut rest = args;
        let count = rmp::decode::read_array_len(&mut rest)
            .map_err(|_| RpcError::bad_arguments("the arguments are not a MessagePack array"))?;
        Ok(ArgsReader { rest, remaining: count, position: 0, max_depth })
    }

    /// How many arguments the caller sent.
    pub fn len(&self) -> usize {
        (self.remaining + self.position) as usize
    }

    /// Whether the caller sent no arguments.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the next argument, named `name` in errors.
    pub fn next<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, RpcError> {
        self.position += 1;
        let position = self.position;
        if self.remaining == 0 {
            return Err(RpcError::bad_arguments(format!(
                "argument `{name}` (#{position}) is missing: the caller sent {} arguments",
                position - 1
            )));
        }
        self.remaining -= 1;
        let failed = |e: &dyn std::fmt::Display| {
            RpcError::bad_arguments(format!("argument `{name}` (#{position}): {e}"))
        };
        let (value, len) = decode_prefix(self.rest, self.max_depth).map_err(|e| failed(&e))?;
        self.rest = self.rest.get(len..).unwrap_or_default();
        Ok(value)
    }

    /// Checks that no argument is left over.
    pub fn finish(self) -> Result<(), RpcError> {
        if self.remaining != 0 {
            return Err(RpcError::bad_arguments(format!(
                "{} arguments sent, the action takes {}",
                self.len(),
                self.position
            )));
        }
        if !self.rest.is_empty() {
            return Err(RpcError::bad_arguments(format!(
                "{} trailing bytes after the arguments",
                self.rest.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Circle { r: f64 },
        Pair(u8, i16),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Everything {
        s: String,
        o: Option<u32>,
        v: Vec<Shape>,
        m: BTreeMap<String, i64>,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
        big: u128,
        neg: i128,
        f: f64,
        unit: (),
    }

    #[test]
    fn serde_types_round_trip() {
        let value = Everything {
            s: "héllo".into(),
            o: Some(3),
            v: vec![Shape::Unit, Shape::Circle { r: 1.5 }, Shape::Pair(1, -2)],
            m: [("a".to_string(), -1)].into_iter().collect(),
            b: vec![0, 1, 255],
            big: u128::MAX,
            neg: i128::MIN,
            f: f64::MIN_POSITIVE,
            unit: (),
        };
        let bytes = encode_value(&value).unwrap();
        assert_eq!(decode_value::<Everything>(&bytes).unwrap(), value);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut bomb = vec![0x91u8; 100_000];
        bomb.push(0xc0);
        let err = decode_value::<serde::de::IgnoredAny>(&bomb).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn declared_lengths_must_be_backed_by_bytes() {
        // array32 declaring 2^32-1 elements with 3 bytes present
        let data = [0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(decode_value::<Vec<u8>>(&data).is_err());
        // bin32 declaring 4 GiB
        let data = [0xc6, 0xff, 0xff, 0xff, 0xff, 1];
        assert!(decode_value::<serde_bytes::ByteBuf>(&data).is_err());
    }

    #[test]
    fn every_marker_is_scanned_ext_included() {
        // fixext1, fixext16, ext8, a nested map, float64, str8, bin16, negative fixint
        let cases: &[&[u8]] = &[
            &[0xd4, 0x01, 0x00],
            &[0xd8, 0x01, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            &[0xc7, 0x02, 0x05, 0xaa, 0xbb],
            &[0x81, 0xa1, b'k', 0x92, 0x01, 0xc0],
            &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xd9, 0x02, b'h', b'i'],
            &[0xc5, 0x00, 0x01, 0x07],
            &[0xff],
        ];
        for case in cases {
            assert_eq!(value_len(case, 64), Ok(case.len()), "{case:02x?}");
            assert!(value_len(&case[..case.len() - 1], 64).is_err(), "truncated {case:02x?}");
        }
        assert!(value_len(&[0xc1], 64).is_err());
        // An ext inside a call's arguments decodes as an error, never a panic.
        assert!(decode_value::<u8>(&[0xd4, 0x01, 0x00]).is_err());
    }

    #[test]
    fn depth_limit_is_exact() {
        let mut ok = vec![0x91u8; 64];
        ok.push(0xc0);
        assert_eq!(value_len(&ok, 64), Ok(65));
        let mut deep = vec![0x91u8; 65];
        deep.push(0xc0);
        assert!(matches!(value_len(&deep, 64), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn siblings_after_deep_containers_are_counted() {
        // 40 nested two-element arrays: [[[..[1, 1]..], 3], 3]; the levels below 16 live on
        // the stack, the deeper ones on the heap, and every level's second item follows its
        // first on the way back out.
        let mut value = vec![0x92u8; 40];
        value.extend_from_slice(&[0x01, 0x01]);
        value.extend(std::iter::repeat_n(0x03, 39));
        let len = value.len();
        value.push(0xff);
        assert_eq!(value_len(&value, 64), Ok(len));
        assert_eq!(value_len(&value[..len - 1], 64), Err(DecodeError::Truncated));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert_eq!(decode_value::<u8>(&[0x01, 0xff, 0xff]), Err(DecodeError::Trailing(2)));
    }

    #[test]
    fn args_reader_names_the_failing_argument() {
        let args = encode_value(&(1u64, "x")).unwrap();
        let mut r = ArgsReader::new(&args, 64).unwrap();
        assert_eq!(r.next::<u64>("id").unwrap(), 1);
        let err = r.next::<u64>("count").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::BadArguments);
        assert!(err.message().contains("argument `count` (#2)"), "{err}");

        let mut r = ArgsReader::new(&args, 64).unwrap();
        r.next::<u64>("id").unwrap();
        assert!(r.finish().unwrap_err().message().contains("2 arguments sent"));

        let mut r = ArgsReader::new(&args, 64).unwrap();
        r.next::<u64>("id").unwrap();
        r.next::<String>("name").unwrap();
        let err = r.next::<String>("extra").unwrap_err();
        assert!(err.message().contains("missing"), "{err}");
    }

    #[test]
    fn arguments_read_back_in_order_and_the_last_one_is_still_named() {
        let args = encode_value(&(1u64, "x", vec![Shape::Circle { r: 2.0 }])).unwrap();
        let mut r = ArgsReader::new(&args, 64).unwrap();
        assert_eq!(r.next::<u64>("id").unwrap(), 1);
        assert_eq!(r.next::<String>("name").unwrap(), "x");
        assert_eq!(r.next::<Vec<Shape>>("shapes").unwrap(), vec![Shape::Circle { r: 2.0 }]);
        r.finish().unwrap();
        // The last argument of the wrong type is still named.
        let mut r = ArgsReader::new(&args, 64).unwrap();
        r.next::<u64>("id").unwrap();
        r.next::<String>("name").unwrap();
        let err = r.next::<u64>("shapes").unwrap_err();
        assert!(err.message().contains("argument `shapes` (#3)"), "{err}");
    }

    #[test]
    fn the_protocol_field_writers_write_what_rmp_writes() {
        for len in [0usize, 1, 5, 15, 16, 31, 32, 255, 256, 65_535, 65_536] {
            let s = "x".repeat(len);
            let mut ours = BytesMut::new();
            put_str(&mut ours, &s);
            let mut theirs = Vec::new();
            rmp::encode::write_str(&mut theirs, &s).unwrap();
            assert_eq!(&ours[..], &theirs[..], "string of {len} bytes");
            let mut ours = BytesMut::new();
            put_bin(&mut ours, s.as_bytes());
            let mut theirs = Vec::new();
            rmp::encode::write_bin(&mut theirs, s.as_bytes()).unwrap();
            assert_eq!(&ours[..], &theirs[..], "binary of {len} bytes");
            let mut ours = BytesMut::new();
            put_array_len(&mut ours, len as u32);
            let mut theirs = Vec::new();
            rmp::encode::write_array_len(&mut theirs, len as u32).unwrap();
            assert_eq!(&ours[..], &theirs[..], "array of {len}");
        }
        let edges = [0u64, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, 0xffff_ffff];
        for v in edges.into_iter().chain([1 << 32, u64::MAX]) {
            let mut ours = BytesMut::new();
            put_uint(&mut ours, v);
            let mut theirs = Vec::new();
            rmp::encode::write_uint(&mut theirs, v).unwrap();
            assert_eq!(&ours[..], &theirs[..], "{v}");
        }
    }

    /// A reproducible stream of pseudo-random numbers (xorshift64) for the scan tests.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// The plainest possible scan, recursive, for [`scan_value`] to be checked against:
    /// `Some((length, values))`, or `None` for anything refused.
    fn reference_scan(data: &[u8], depth_left: usize) -> Option<(usize, u64)> {
        let marker = *data.first()?;
        let be = |at: usize, width: usize| -> Option<usize> {
            let bytes = data.get(at..at + width)?;
            Some(bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
        };
        let (head, skip, items) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
            0x80..=0x8f => (1, 0, 2 * (marker & 0x0f) as usize),
            0x90..=0x9f => (1, 0, (marker & 0x0f) as usize),
            0xa0..=0xbf => (1, (marker & 0x1f) as usize, 0),
            0xc4 | 0xd9 => (2, be(1, 1)?, 0),
            0xc5 | 0xda => (3, be(1, 2)?, 0),
            0xc6 | 0xdb => (5, be(1, 4)?, 0),
            0xc7 => (2, be(1, 1)? + 1, 0),
            0xc8 => (3, be(1, 2)? + 1, 0),
            0xc9 => (5, be(1, 4)? + 1, 0),
            0xca | 0xce | 0xd2 => (1, 4, 0),
            0xcb | 0xcf | 0xd3 => (1, 8, 0),
            0xcc | 0xd0 => (1, 1, 0),
            0xcd | 0xd1 => (1, 2, 0),
            0xd4 => (1, 2, 0),
            0xd5 => (1, 3, 0),
            0xd6 => (1, 5, 0),
            0xd7 => (1, 9, 0),
            0xd8 => (1, 17, 0),
            0xdc => (3, 0, be(1, 2)?),
            0xdd => (5, 0, be(1, 4)?),
            0xde => (3, 0, 2 * be(1, 2)?),
            0xdf => (5, 0, 2 * be(1, 4)?),
            0xc1 => return None,
        };
        let mut pos = head + skip;
        if pos > data.len() {
            return None;
        }
        let mut values = 1;
        if items > 0 && depth_left == 0 {
            return None;
        }
        for _ in 0..items {
            let (len, inner) = reference_scan(&data[pos..], depth_left - 1)?;
            pos += len;
            values += inner;
        }
        Some((pos, values))
    }

    /// Random values of every kind, nested, then cut short or with a byte changed: the
    /// scan's fast paths must agree with the plain recursive reading on every one.
    #[test]
    fn the_scan_agrees_with_a_plain_recursive_reading() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        fn value(out: &mut Vec<u8>, next: &mut dyn FnMut() -> u64, depth: u32) {
            match next() % 12 {
                0 if depth < 6 => {
                    let n = next() % 5;
                    out.push(0x90 | n as u8);
                    (0..n).for_each(|_| value(out, next, depth + 1));
                }
                1 if depth < 6 => {
                    let n = next() % 4;
                    out.push(0x80 | n as u8);
                    (0..2 * n).for_each(|_| value(out, next, depth + 1));
                }
                2 if depth < 6 => {
                    let n = next() % 3;
                    out.extend_from_slice(&[0xdc, 0, n as u8]);
                    (0..n).for_each(|_| value(out, next, depth + 1));
                }
                3 => {
                    let n = (next() % 40) as usize;
                    rmp::encode::write_str(out, &"s".repeat(n)).unwrap();
                }
                4 => rmp::encode::write_bin(out, &vec![7; (next() % 10) as usize]).unwrap(),
                5 => rmp::encode::write_ext_meta(out, (next() % 20) as u32, 1)
                    .map(|_| out.extend((0..next() % 20).map(|b| b as u8)))
                    .unwrap(),
                6 => rmp::encode::write_f64(out, 1.5).unwrap(),
                7 => {
                    rmp::encode::write_sint(out, (next() as i64) >> (next() % 64)).unwrap();
                }
                _ => {
                    rmp::encode::write_uint(out, next() >> (next() % 64)).unwrap();
                }
            }
        }
        let mut accepted = 0;
        for case in 0..30_000 {
            let mut data = Vec::new();
            value(&mut data, &mut next, 0);
            match case % 3 {
                0 => {}
                1 => data.truncate((next() as usize) % (data.len() + 1)),
                _ => {
                    let at = (next() as usize) % data.len();
                    data[at] = next() as u8;
                }
            }
            for depth in [64, 2] {
                let ours = scan_value(&data, depth).ok();
                assert_eq!(ours, reference_scan(&data, depth), "depth {depth}: {data:02x?}");
                accepted += ours.is_some() as u32;
            }
        }
        // Both outcomes were exercised.
        assert!(accepted > 10_000 && accepted < 55_000, "{accepted}");
    }

    /// A top-level value that is no container takes a short path (`fixed_len`, or the
    /// scalar branch of `scan_any`); wrapped in a one-element array it goes through the
    /// general loop. Both must agree on every input, which also keeps `fixed_len`'s table in
    /// step with `marker_lengths`.
    #[test]
    fn the_scalar_path_agrees_with_the_general_loop() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for case in 0..20_000 {
            let len = (next() % 12) as usize;
            let mut value: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if case < 256 && !value.is_empty() {
                value[0] = case as u8; // every marker first
            }
            let mut wrapped = vec![0x91];
            wrapped.extend_from_slice(&value);
            let alone = scan_value(&value, 64);
            let inside = scan_value(&wrapped, 64);
            match alone {
                Ok((n, values)) => assert_eq!(inside, Ok((n + 1, values + 1)), "{value:02x?}"),
                Err(_) => assert!(inside.is_err(), "{value:02x?}"),
            }
        }
    }
}
