//! Holds this codec to its promise: it is a drop-in for `rmp_serde` on the crate's path.
//!
//! * [`encode`] writes exactly the bytes `rmp_serde::to_vec_named` writes, over the whole
//!   serde data model, into an empty buffer or after bytes already there;
//! * [`decode`] reads back everything `rmp_serde` writes, structs as maps or as arrays;
//! * on arbitrary MessagePack, well-formed or mangled, [`decode`] accepts what
//!   `rmp_serde::from_slice` accepts, hands the visitor the same calls, and refuses what it
//!   refuses (one quirk of `rmp_serde` excepted: a negative integer read as a `u128`);
//! * truncated input, input nested too deeply, unknown fields and strings that are not
//!   UTF-8 are refused or skipped cleanly: no panic, no stack overflow, no misread byte.

use std::any::type_name;
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Debug};
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::BytesMut;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use super::{Error, decode, encode};
use crate::protocol::codec::{DEFAULT_MAX_DEPTH, value_len};

/// The depth limit the tests decode with unless they test the limit itself.
const DEPTH: usize = 128;

// ---------------------------------------------------------------------------------------
// Types covering the serde data model.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UnitStruct;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Newtype(u32);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TupleStruct(i8, String, bool);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    id: u64,
    name: String,
    tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Outer {
    inner: Inner,
    list: Vec<Inner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    maybe: Option<Inner>,
    pair: (i16, bool),
    blob: ByteBuf,
    choice: Choice,
    unit: UnitStruct,
    newtype: Newtype,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Choice {
    Unit,
    Newtype(i32),
    Tuple(u8, String),
    Struct { a: u16, b: Option<String> },
}

/// A struct with a flattened map: serde writes it as a map of unknown length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Flat {
    id: u32,
    #[serde(flatten)]
    extra: BTreeMap<String, u32>,
}

/// A struct with a flattened struct between two fields of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FlatStruct {
    before: bool,
    #[serde(flatten)]
    inner: Inner,
    after: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Tagged {
    Empty,
    Point { x: i32, y: i32 },
    Wrapped(Inner),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Int(i64),
    Text(String),
    List(Vec<u8>),
    Record(Inner),
    Nothing,
}

/// A sequence that does not tell its length up front, as an iterator of unknown size
/// does: `serialize_seq(None)`.
#[derive(Debug)]
struct UnsizedSeq<T>(Vec<T>);

impl<T: Serialize> Serialize for UnsizedSeq<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for element in &self.0 {
            seq.serialize_element(element)?;
        }
        seq.end()
    }
}

/// A map that does not tell its length up front: `serialize_map(None)`.
#[derive(Debug)]
struct UnsizedMap<K, V>(Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for UnsizedMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn inner(id: u64) -> Inner {
    Inner { id, name: format!("inner {id}"), tags: vec!["t".into(); id as usize % 4] }
}

fn outer(note: Option<&str>) -> Outer {
    Outer {
        inner: inner(1),
        list: (2..5).map(inner).collect(),
        note: note.map(String::from),
        maybe: Some(inner(300)),
        pair: (-200, true),
        blob: ByteBuf::from(vec![0xc1; 40]),
        choice: Choice::Struct { a: 65535, b: Some("b".into()) },
        unit: UnitStruct,
        newtype: Newtype(70_000),
    }
}

fn flat(extras: u32) -> Flat {
    Flat { id: 9, extra: (0..extras).map(|i| (format!("k{i}"), i)).collect() }
}

fn choices() -> Vec<Choice> {
    vec![
        Choice::Unit,
        Choice::Newtype(-70_000),
        Choice::Tuple(255, "tuple".into()),
        Choice::Struct { a: 1, b: None },
        Choice::Struct { a: 256, b: Some("x".repeat(40)) },
    ]
}

/// Each integer type is checked at every MessagePack boundary it can hold.
const INTEGER_BOUNDARIES: &[i128] = &[
    0,
    1,
    127,
    128,
    255,
    256,
    32_767,
    32_768,
    65_535,
    65_536,
    2_147_483_647,
    2_147_483_648,
    4_294_967_295,
    4_294_967_296,
    i64::MAX as i128,
    i64::MAX as i128 + 1,
    u64::MAX as i128,
    u64::MAX as i128 + 1,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32_768,
    -32_769,
    -2_147_483_648,
    -2_147_483_649,
    i64::MIN as i128,
    i64::MIN as i128 - 1,
    i128::MIN,
    i128::MAX,
];

/// Something done to each value of [`every_value`].
trait Visit {
    fn value<T: Serialize + DeserializeOwned + PartialEq + Debug>(&mut self, value: &T);
}

/// Calls `$visit.value` with every boundary of [`INTEGER_BOUNDARIES`] each type can hold.
macro_rules! integers_at_boundaries {
    ($visit:expr; $($ty:ty),*) => {$(
        for &v in INTEGER_BOUNDARIES {
            if let Ok(v) = <$ty>::try_from(v) {
                $visit.value(&v);
            }
        }
    )*};
}

/// The values both directions are checked on: every kind of the serde data model, at the
/// lengths where MessagePack changes form. (Floats, which do not equal themselves when NaN,
/// and values only written, never read, are checked separately.)
fn every_value(v: &mut impl Visit) {
    v.value(&true);
    v.value(&false);
    integers_at_boundaries!(v; u8, u16, u32, u64, usize, u128, i8, i16, i32, i64, isize);
    for i in INTEGER_BOUNDARIES {
        v.value(i);
    }
    v.value(&u128::MAX);
    for c in ['a', '\0', '\u{7f}', '\u{80}', 'é', '€', '😀'] {
        v.value(&c);
    }
    for len in [0, 1, 31, 32, 33, 255, 256, 65_535, 65_536] {
        v.value(&"x".repeat(len));
        v.value(&ByteBuf::from(vec![0xa5; len]));
    }
    v.value(&"é€😀 ünïcödé".to_string());
    v.value(&"é".repeat(16)); // 32 bytes, none of them ASCII
    v.value(&None::<u8>);
    v.value(&Some(255u8));
    v.value(&Some("some".to_string()));
    v.value(&Some(inner(5)));
    v.value(&());
    v.value(&UnitStruct);
    v.value(&Newtype(u32::MAX));
    v.value(&TupleStruct(-33, "t".into(), false));
    v.value(&(1u8,));
    v.value(&(1u8, "two".to_string(), -3i64, (), UnitStruct));
    v.value(&[1u16, 300, 70, 65535]);
    for len in [0, 1, 15, 16, 65_535, 65_536] {
        v.value(&(0..len).collect::<Vec<u32>>());
    }
    v.value(&vec!["a".to_string(), String::new(), "x".repeat(300)]);
    v.value(&vec![Some(true), None, Some(false)]);
    v.value(&vec![vec![1u8, 2], vec![], vec![255; 20]]);
    for len in [0, 1, 15, 16, 65_535, 70_000] {
        v.value(&(0..len).map(|i| (i, u32::MAX - i)).collect::<BTreeMap<u32, u32>>());
    }
    for len in [0, 15, 16, 300] {
        v.value(&(0..len).map(|i| (format!("{i}"), i)).collect::<HashMap<String, u32>>());
    }
    v.value(&inner(0));
    v.value(&outer(None));
    v.value(&outer(Some("note")));
    for choice in choices() {
        v.value(&choice);
    }
    v.value(&choices());
    v.value(
        &choices().into_iter().enumerate().map(|(i, c)| (i as u8, c)).collect::<HashMap<_, _>>(),
    );
    // 1 + `extras` entries, in a map written before its length is known.
    for extras in [0, 1, 14, 15, 16, 300] {
        v.value(&flat(extras));
    }
    v.value(&(0..20).map(flat).collect::<Vec<_>>());
    v.value(&FlatStruct { before: true, inner: inner(3), after: Some(7) });
    v.value(&FlatStruct { before: false, inner: inner(17), after: None });
    v.value(&Tagged::Empty);
    v.value(&Tagged::Point { x: -1, y: i32::MAX });
    v.value(&Tagged::Wrapped(inner(2)));
    v.value(&vec![Tagged::Empty, Tagged::Point { x: 0, y: 0 }]);
    v.value(&Untagged::Int(-129));
    v.value(&Untagged::Text("text".into()));
    v.value(&Untagged::List(vec![1, 2, 3]));
    v.value(&Untagged::Record(inner(4)));
    v.value(&Untagged::Nothing);
}

const F32S: &[f32] = &[
    0.0,
    -0.0,
    1.5,
    -2.25e10,
    f32::MIN_POSITIVE,
    1e-45, // subnormal
    f32::MAX,
    f32::MIN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
];

const F64S: &[f64] = &[
    0.0,
    -0.0,
    1.5,
    -2.25e300,
    f64::MIN_POSITIVE,
    5e-324, // subnormal
    f64::MAX,
    f64::MIN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
];

/// The floats, with NaNs of other payloads and signs.
fn floats() -> (Vec<f32>, Vec<f64>) {
    let mut f32s = F32S.to_vec();
    f32s.extend([f32::from_bits(0x7fc0_0001), f32::from_bits(0xffbf_ffff)]);
    let mut f64s = F64S.to_vec();
    f64s.extend([f64::from_bits(0x7ff8_0000_0000_0001), f64::from_bits(0xfff0_0000_0000_0001)]);
    (f32s, f64s)
}

/// Up to 200 characters of `value`'s `Debug`, for a failure's message.
fn describe(value: &impl Debug) -> String {
    let text = format!("{value:?}");
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}… ({} characters)", &text[..at], text.len()),
        None => text,
    }
}

/// The bytes around offset `at`, for a failure's message.
fn around(bytes: &[u8], at: usize) -> String {
    let start = at.saturating_sub(8);
    let end = (at + 8).min(bytes.len());
    format!("{:02x?}", &bytes[start.min(end)..end])
}

// ---------------------------------------------------------------------------------------
// 1. Encoding.
// ---------------------------------------------------------------------------------------

/// Bytes already in the buffer before a value is encoded; they must stay as they are.
const PREFIX: &[u8] = &[0xdd, 0, 0, 0, 5, 0xc1, 0x90];

/// Fails unless `ours` is `expected`, naming the value (`what`) and the first difference.
fn assert_same_bytes(what: impl Fn() -> String, ours: &[u8], expected: &[u8]) {
    if ours == expected {
        return;
    }
    let at = ours.iter().zip(expected).position(|(a, b)| a != b);
    let at = at.unwrap_or(ours.len().min(expected.len()));
    panic!(
        "{}: we wrote {} bytes, rmp_serde {}; first difference at offset {at}: \
         ours {}, rmp_serde's {}",
        what(),
        ours.len(),
        expected.len(),
        around(ours, at),
        around(expected, at),
    );
}

/// Encodes `value` into an empty `Vec`, after [`PREFIX`] in a `Vec` and after it in a
/// `BytesMut`, and checks each against `rmp_serde::to_vec_named`.
fn assert_encodes_like_rmp<T: Serialize + Debug + ?Sized>(value: &T) {
    let what = || describe(&value);
    let expected = rmp_serde::to_vec_named(value).expect("rmp_serde encodes it");
    let mut vec = Vec::new();
    encode(&mut vec, value).unwrap_or_else(|e| panic!("{}: {e}", what()));
    assert_same_bytes(what, &vec, &expected);

    let mut prefixed = PREFIX.to_vec();
    encode(&mut prefixed, value).unwrap_or_else(|e| panic!("{}: {e}", what()));
    assert!(prefixed.starts_with(PREFIX), "{}: the prefix changed (Vec)", what());
    assert_same_bytes(what, &prefixed[PREFIX.len()..], &expected);

    let mut buf = BytesMut::from(PREFIX);
    encode(&mut buf, value).unwrap_or_else(|e| panic!("{}: {e}", what()));
    assert!(buf.starts_with(PREFIX), "{}: the prefix changed (BytesMut)", what());
    assert_same_bytes(what, &buf[PREFIX.len()..], &expected);
}

/// Checks each value's encoding and counts them.
struct EncodeCheck(usize);

impl Visit for EncodeCheck {
    fn value<T: Serialize + DeserializeOwned + PartialEq + Debug>(&mut self, value: &T) {
        assert_encodes_like_rmp(value);
        self.0 += 1;
    }
}

/// Lengths at which an unsized sequence or map's header changes form: it is written as a
/// 5-byte placeholder and shortened when the count is known.
const UNSIZED_LENGTHS: [u32; 7] = [0, 1, 15, 16, 65_535, 65_536, 70_000];

/// Checks the encodings of values written with `serialize_seq(None)` and
/// `serialize_map(None)`, nested too; returns how many it checked.
fn check_unsized_encodings() -> usize {
    for len in UNSIZED_LENGTHS {
        assert_encodes_like_rmp(&UnsizedSeq((0..len).collect()));
        assert_encodes_like_rmp(&UnsizedMap((0..len).map(|i| (i, i % 3 == 0)).collect()));
    }
    // Open compounds inside open compounds: the inner ones shrink while the outer one is
    // still open, moving what follows them.
    assert_encodes_like_rmp(&UnsizedSeq(vec![
        UnsizedMap((0..16).map(|i| (i, UnsizedSeq(vec![i; i as usize]))).collect()),
        UnsizedMap(vec![]),
        UnsizedMap((0..3).map(|i| (i, UnsizedSeq((0..70_000).collect()))).collect()),
    ]));
    // A flattened struct of 65 536 entries: the 5-byte form is kept.
    assert_encodes_like_rmp(&flat(65_535));
    // Open compounds after sized ones, inside a sized one.
    assert_encodes_like_rmp(&(
        vec![1u8; 20],
        UnsizedSeq(vec!["a"; 17]),
        flat(2),
        UnsizedSeq(Vec::<u8>::new()),
    ));
    2 * UNSIZED_LENGTHS.len() + 3
}

#[test]
fn encodes_exactly_what_rmp_serde_writes() {
    let mut check = EncodeCheck(0);
    every_value(&mut check);

    let (f32s, f64s) = floats();
    for f in &f32s {
        assert_encodes_like_rmp(f);
    }
    for f in &f64s {
        assert_encodes_like_rmp(f);
    }
    let unsized_values = check_unsized_encodings();

    // The unsized forms, spelled out: the header is the shortest one for the count.
    let mut out = Vec::new();
    encode(&mut out, &UnsizedSeq(vec![7u8; 15])).unwrap();
    assert_eq!(out[0], 0x9f);
    assert_eq!(out.len(), 16);
    out.clear();
    encode(&mut out, &UnsizedMap(vec![(1u8, 2u8); 16])).unwrap();
    assert_eq!(out[..3], [0xde, 0x00, 0x10]);
    out.clear();
    encode(&mut out, &UnsizedSeq(vec![0u8; 65_536])).unwrap();
    assert_eq!(out[..5], [0xdd, 0x00, 0x01, 0x00, 0x00]);
    assert_eq!(out.len(), 5 + 65_536);

    let cases = check.0 + f32s.len() + f64s.len() + unsized_values;
    eprintln!("encodes_exactly_what_rmp_serde_writes: {cases} values, each into 3 buffers");
}

// ---------------------------------------------------------------------------------------
// 2. Decoding what rmp_serde writes.
// ---------------------------------------------------------------------------------------

/// Decodes `bytes` as a `T` with both decoders: ours must read what `rmp_serde` reads (or
/// refuse what it refuses), using the whole of `bytes`. Returns what we read.
fn assert_reads_like_rmp<T>(what: &str, bytes: &[u8]) -> Option<T>
where
    T: DeserializeOwned + PartialEq + Debug,
{
    let theirs = rmp_serde::from_slice::<T>(bytes);
    let ours = decode::<T>(bytes, DEPTH);
    match (theirs, ours) {
        (Ok(theirs), Ok((ours, used))) => {
            assert!(
                ours == theirs,
                "{what}: we read {}, rmp_serde {}",
                describe(&ours),
                describe(&theirs)
            );
            assert_eq!(used, bytes.len(), "{what}: bytes used");
            Some(ours)
        }
        (Err(_), Err(_)) => None,
        (theirs, ours) => {
            panic!("{what}: rmp_serde {}, ours {}", describe(&theirs), describe(&ours))
        }
    }
}

/// Checks that `value` reads back from `rmp_serde`'s bytes, with structs as maps and as
/// arrays; counts the values, those whose array form differs, and lists the array forms
/// that do not read back (a struct with a skipped field, say).
#[derive(Default)]
struct DecodeCheck {
    values: usize,
    compact: usize,
    compact_lossy: Vec<String>,
}

impl Visit for DecodeCheck {
    fn value<T: Serialize + DeserializeOwned + PartialEq + Debug>(&mut self, value: &T) {
        let what = || describe(value);
        let named = rmp_serde::to_vec_named(value).expect("rmp_serde encodes it");
        let (decoded, used) =
            decode::<T>(&named, DEPTH).unwrap_or_else(|e| panic!("{}: {e}", what()));
        assert!(decoded == *value, "{}: read back as {}", what(), describe(&decoded));
        assert_eq!(used, named.len(), "{}: bytes used", what());

        // Whatever follows the value is left alone (checked on the smaller values only: the
        // large ones are here for their headers, and slow to decode twice).
        if named.len() <= 1024 {
            let followed = [&named[..], &[0xc1, 0x00]].concat();
            let (_, used) =
                decode::<T>(&followed, DEPTH).unwrap_or_else(|e| panic!("{}: {e}", what()));
            assert_eq!(used, named.len(), "{}: bytes used before trailing bytes", what());
        }

        // rmp_serde's default form, structs as arrays, where it differs.
        let compact = rmp_serde::to_vec(value).expect("rmp_serde encodes it");
        if compact != named {
            let ours = assert_reads_like_rmp::<T>(type_name::<T>(), &compact);
            if ours.as_ref() != Some(value) {
                self.compact_lossy.push(what());
            }
            self.compact += 1;
        }
        self.values += 1;
    }
}

#[test]
fn decodes_what_rmp_serde_writes() {
    let mut check = DecodeCheck::default();
    every_value(&mut check);
    // Structs written as arrays read back as themselves, except where a skipped field
    // leaves the array short of one (rmp_serde cannot read that back either: checked by
    // `assert_reads_like_rmp` above).
    assert_eq!(check.compact_lossy, [describe(&outer(None))], "values lost as arrays");

    let (f32s, f64s) = floats();
    for f in &f32s {
        let bytes = rmp_serde::to_vec_named(f).unwrap();
        let (read, used) = decode::<f32>(&bytes, DEPTH).unwrap();
        assert_eq!((read.to_bits(), used), (f.to_bits(), 5), "f32 {f:?}");
        // An f32 read as an f64 widens as rmp_serde widens it.
        let ours = decode::<f64>(&bytes, DEPTH).unwrap().0;
        let theirs = rmp_serde::from_slice::<f64>(&bytes).unwrap();
        assert_eq!(ours.to_bits(), theirs.to_bits(), "f32 {f:?} as f64");
    }
    for f in &f64s {
        let bytes = rmp_serde::to_vec_named(f).unwrap();
        let (read, used) = decode::<f64>(&bytes, DEPTH).unwrap();
        assert_eq!((read.to_bits(), used), (f.to_bits(), 9), "f64 {f:?}");
    }

    // What was written with an unknown length reads as the sized type it stands for.
    for len in UNSIZED_LENGTHS {
        let seq = rmp_serde::to_vec_named(&UnsizedSeq((0..len).collect())).unwrap();
        assert_eq!(decode::<Vec<u32>>(&seq, DEPTH).unwrap(), ((0..len).collect(), seq.len()));
        let entries: Vec<(u32, bool)> = (0..len).map(|i| (i, i % 2 == 0)).collect();
        let map = rmp_serde::to_vec_named(&UnsizedMap(entries.clone())).unwrap();
        let read: (BTreeMap<u32, bool>, usize) = decode(&map, DEPTH).unwrap();
        assert_eq!(read, (entries.into_iter().collect(), map.len()));
    }

    // Borrowed strings and bytes point into the input.
    let bytes = rmp_serde::to_vec_named(&("borrowed", ByteBuf::from(vec![1, 2]))).unwrap();
    let ((text, blob), _): ((&str, &[u8]), usize) = decode(&bytes, DEPTH).unwrap();
    assert_eq!((text, blob), ("borrowed", &[1u8, 2][..]));
    assert!(bytes.as_ptr_range().contains(&text.as_ptr()));

    eprintln!(
        "decodes_what_rmp_serde_writes: {} values ({} of them also as arrays), {} floats, \
         {} unsized",
        check.values,
        check.compact,
        f32s.len() + f64s.len(),
        2 * UNSIZED_LENGTHS.len()
    );
}

// ---------------------------------------------------------------------------------------
// 3. Agreement with rmp_serde on arbitrary input.
// ---------------------------------------------------------------------------------------

/// What a `deserialize_any` visitor was handed, call for call (integers keep the width
/// they were visited with, floats their bits so that NaN equals itself).
#[derive(Debug, Clone, PartialEq)]
enum Dyn {
    Nil,
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    Str(String),
    Bytes(Vec<u8>),
    Seq(Vec<Dyn>),
    Map(Vec<(Dyn, Dyn)>),
    /// `visit_newtype_struct`: how `rmp_serde` hands over an ext value, as a sequence of
    /// its type (`i8`) and its data (bytes).
    Newtype(Box<Dyn>),
}

impl<'de> Deserialize<'de> for Dyn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Dyn, D::Error> {
        deserializer.deserialize_any(DynVisitor)
    }
}

struct DynVisitor;

impl<'de> Visitor<'de> for DynVisitor {
    type Value = Dyn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MessagePack value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Dyn, E> {
        Ok(Dyn::Bool(v))
    }

    fn visit_u8<E>(self, v: u8) -> Result<Dyn, E> {
        Ok(Dyn::U8(v))
    }

    fn visit_u16<E>(self, v: u16) -> Result<Dyn, E> {
        Ok(Dyn::U16(v))
    }

    fn visit_u32<E>(self, v: u32) -> Result<Dyn, E> {
        Ok(Dyn::U32(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Dyn, E> {
        Ok(Dyn::U64(v))
    }

    fn visit_i8<E>(self, v: i8) -> Result<Dyn, E> {
        Ok(Dyn::I8(v))
    }

    fn visit_i16<E>(self, v: i16) -> Result<Dyn, E> {
        Ok(Dyn::I16(v))
    }

    fn visit_i32<E>(self, v: i32) -> Result<Dyn, E> {
        Ok(Dyn::I32(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Dyn, E> {
        Ok(Dyn::I64(v))
    }

    fn visit_f32<E>(self, v: f32) -> Result<Dyn, E> {
        Ok(Dyn::F32(v.to_bits()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Dyn, E> {
        Ok(Dyn::F64(v.to_bits()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Dyn, E> {
        Ok(Dyn::Str(v.to_owned()))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Dyn, E> {
        Ok(Dyn::Bytes(v.to_vec()))
    }

    fn visit_unit<E>(self) -> Result<Dyn, E> {
        Ok(Dyn::Nil)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Dyn, D::Error> {
        Ok(Dyn::Newtype(Box::new(Dyn::deserialize(d)?)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dyn, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        Ok(Dyn::Seq(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dyn, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Dyn::Map(entries))
    }
}

/// A typed target of the fuzz test: a struct whose fields may be left out.
#[derive(Debug, PartialEq, Deserialize)]
struct Record {
    a: u8,
    #[serde(default)]
    b: Option<String>,
    #[serde(default)]
    c: Vec<i16>,
}

/// xorshift64: a fixed stream of pseudo-random numbers, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings the typed targets look for (fields, variants, the internal tag), so that some
/// generated maps and strings decode into them.
const WORDS: &[&str] = &[
    "a", "b", "c", "id", "name", "tags", "Unit", "Newtype", "Tuple", "Struct", "type", "Point",
    "x", "y", "",
];

/// Bytes past which the generator writes only one-byte values.
const BUDGET: usize = 120;

/// Generated values are shorter than this (longer ones are drawn again), and so are the
/// inputs made of them, which take at most 3 bytes more.
const MAX_VALUE_LEN: usize = 197;

/// Deepest nesting the generator writes.
const MAX_NESTING: usize = 6;

/// Writes one well-formed MessagePack value of a random kind and form; past [`BUDGET`]
/// bytes, only one-byte values.
fn gen_value(rng: &mut Rng, out: &mut Vec<u8>, depth: usize) {
    if out.len() >= BUDGET {
        out.push(*rng.pick(&[0x00, 0x7f, 0xe0, 0xff, 0xc0, 0xc2, 0xc3, 0x90, 0x80, 0xa0]));
        return;
    }
    let containers = depth < MAX_NESTING;
    match rng.below(if containers { 22 } else { 18 }) {
        0 => out.push(rng.byte() & 0x7f),
        1 => out.push(0xe0 | (rng.byte() & 0x1f)),
        2..=5 => {
            let log = rng.below(4);
            out.push([0xcc, 0xcd, 0xce, 0xcf][log]);
            gen_int_bytes(rng, out, 1 << log);
        }
        6..=8 => {
            let log = rng.below(4);
            out.push([0xd0, 0xd1, 0xd2, 0xd3][log]);
            gen_int_bytes(rng, out, 1 << log);
        }
        9 => {
            out.push(0xca);
            let bits = match rng.below(2) {
                0 => rng.next() as u32,
                _ => {
                    *rng.pick(&[0, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x3fc0_0000])
                }
            };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        10 => {
            out.push(0xcb);
            let bits = match rng.below(2) {
                0 => rng.next(),
                _ => *rng.pick(&[0, 1 << 63, 0x7ff0 << 48, 0x7ff8 << 48, 0x3ff8 << 48]),
            };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        11 => out.push(0xc0),
        12 => out.push(*rng.pick(&[0xc2, 0xc3])),
        13 | 14 => gen_str(rng, out),
        15 | 16 => {
            let len = if rng.below(2) == 0 { 16 } else { rng.below(21) };
            let marker = *rng.pick(&[0xc4, 0xc5, 0xc6]);
            write_header(out, marker, len);
            out.extend((0..len).map(|_| rng.byte()));
        }
        17 => gen_ext(rng, out),
        18 | 19 => {
            let len = gen_count(rng, out.len());
            match rng.below(3) {
                0 if len < 16 => out.push(0x90 | len as u8),
                0 | 1 => write_header(out, 0xdc, len),
                _ => write_header(out, 0xdd, len),
            }
            for _ in 0..len {
                gen_value(rng, out, depth + 1);
            }
        }
        _ => {
            let len = gen_count(rng, out.len());
            match rng.below(3) {
                0 if len < 16 => out.push(0x80 | len as u8),
                0 | 1 => write_header(out, 0xde, len),
                _ => write_header(out, 0xdf, len),
            }
            for _ in 0..len {
                match rng.below(4) {
                    0 => gen_value(rng, out, depth + 1),
                    _ => gen_str(rng, out),
                }
                gen_value(rng, out, depth + 1);
            }
        }
    }
}

/// The element count of a generated container: mostly small, sometimes 15 to 17 (where
/// the fix forms end) near the start of an input.
fn gen_count(rng: &mut Rng, written: usize) -> usize {
    match rng.below(10) {
        0 if written < 40 => 15 + rng.below(3),
        _ => rng.below(5),
    }
}

/// `width` big-endian bytes of an integer: random, small, all ones, or a sign boundary.
fn gen_int_bytes(rng: &mut Rng, out: &mut Vec<u8>, width: usize) {
    let kind = rng.below(4);
    for i in 0..width {
        out.push(match kind {
            0 => rng.byte(),
            1 if i + 1 == width => rng.byte() & 0x7f,
            1 => 0,
            2 => 0xff,
            _ if i == 0 => *rng.pick(&[0x7f, 0x80]),
            _ => *rng.pick(&[0x00, 0xff]),
        });
    }
}

/// Writes `marker` and `len` in the width that marker takes (8, 16 or 32 bits).
fn write_header(out: &mut Vec<u8>, marker: u8, len: usize) {
    out.push(marker);
    match marker {
        0xc4 | 0xc7 | 0xd9 => out.push(len as u8),
        0xc5 | 0xc8 | 0xda | 0xdc | 0xde => out.extend_from_slice(&(len as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(len as u32).to_be_bytes()),
    }
}

/// A string in any of its forms: a word, ASCII, multi-byte UTF-8, or not UTF-8 at all.
fn gen_str(rng: &mut Rng, out: &mut Vec<u8>) {
    let content: Vec<u8> = match rng.below(6) {
        0 | 1 => rng.pick(WORDS).as_bytes().to_vec(),
        2 => (0..rng.below(40)).map(|_| b' ' + rng.byte() % 95).collect(),
        3 => (0..rng.below(12))
            .map(|_| *rng.pick(&['é', '€', '😀', 'a', '\u{7f}', '\u{80}']))
            .collect::<String>()
            .into_bytes(),
        4 => (0..rng.below(8)).map(|_| rng.byte()).collect(),
        _ => {
            // ASCII around the 32 bytes the decoder's fast path covers, one byte not.
            let mut bytes: Vec<u8> =
                (0..28 + rng.below(8)).map(|_| b'a' + rng.byte() % 26).collect();
            let at = rng.below(bytes.len());
            bytes[at] = *rng.pick(&[0x80, 0xc3, 0xff]);
            bytes
        }
    };
    let len = content.len();
    match rng.below(4) {
        0 if len < 32 => out.push(0xa0 | len as u8),
        0 | 1 => write_header(out, 0xd9, len),
        2 => write_header(out, 0xda, len),
        _ => write_header(out, 0xdb, len),
    }
    out.extend_from_slice(&content);
}

/// An ext value: fixext 1 to 16, or ext 8, 16 or 32.
fn gen_ext(rng: &mut Rng, out: &mut Vec<u8>) {
    let len = match rng.below(8) {
        0 => {
            out.push(*rng.pick(&[0xd4, 0xd5, 0xd6, 0xd7, 0xd8]));
            1usize << (out[out.len() - 1] - 0xd4)
        }
        kind => {
            let len = rng.below(20);
            write_header(out, [0xc7, 0xc8, 0xc9][kind % 3], len);
            len
        }
    };
    out.push(rng.byte()); // its type
    out.extend((0..len).map(|_| rng.byte()));
}

/// A generated input: a well-formed value, or one truncated, overwritten, followed by
/// bytes, or with a byte inserted.
fn gen_input(rng: &mut Rng) -> Vec<u8> {
    let mut input = Vec::new();
    gen_value(rng, &mut input, 0);
    while input.len() >= MAX_VALUE_LEN {
        input.clear();
        gen_value(rng, &mut input, 0);
    }
    let at = rng.below(input.len());
    let byte = match rng.below(2) {
        0 => rng.byte(),
        _ => *rng.pick(&[0x00, 0x7f, 0x80, 0x91, 0xa5, 0xc0, 0xc1, 0xc4, 0xd4, 0xdc, 0xdf, 0xff]),
    };
    match rng.below(8) {
        0..=3 => {}
        4 => input.truncate(at),
        5 => input[at] = byte,
        6 => input.extend((0..1 + rng.below(3)).map(|_| rng.byte())),
        _ => input.insert(at, byte),
    }
    input
}

/// What the two decoders did with one target, over all inputs.
#[derive(Default, Debug)]
struct Outcomes {
    /// Inputs both read as the same value.
    read: usize,
    /// Inputs both refused.
    refused: usize,
    /// Inputs `rmp_serde` read and we refused, by a quirk of `rmp_serde`'s (see
    /// [`Quirk`]).
    quirks: usize,
}

/// What the two decoders did, per target, and where they differed.
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<&'static str, Outcomes>,
    disagreements: Vec<String>,
}

/// Inputs of a target that `rmp_serde` reads, by a quirk, and that we refuse: a
/// disagreement there is expected and counted, not reported. Any other disagreement on
/// them (we read what `rmp_serde` refuses, or read it differently) is still reported.
type Quirk = fn(&[u8]) -> bool;

/// No quirk: every disagreement is reported.
fn none(_: &[u8]) -> bool {
    false
}

/// `rmp_serde` reads a negative integer as a `u128` by casting it from `i128`: -1 is
/// `u128::MAX` to it. Serde's own `u128` refuses a negative number, and so do we.
fn negative_integer(input: &[u8]) -> bool {
    matches!(input.first(), Some(0xd0..=0xd3 | 0xe0..=0xff))
}

impl Tally {
    /// Decodes `input` as a `T` with both decoders and records whether they agree: both
    /// read the same value (compared through `key`) from the same bytes, or both refuse.
    fn compare<T, K>(&mut self, target: &'static str, input: &[u8], key: fn(T) -> K, quirk: Quirk)
    where
        T: DeserializeOwned,
        K: PartialEq + Debug,
    {
        let theirs = catch_unwind(AssertUnwindSafe(|| rmp_serde::from_slice::<T>(input).map(key)));
        let ours = catch_unwind(AssertUnwindSafe(|| decode::<T>(input, DEPTH)));
        let outcome = self.outcomes.entry(target).or_default();
        let disagreement = match (theirs, ours) {
            (Ok(Ok(theirs)), Ok(Ok((ours, used)))) => {
                let ours = key(ours);
                // rmp_serde reads the value and ignores what follows it: it used the length
                // of the value at the start of the input.
                let len = value_len(input, DEPTH).ok();
                if ours == theirs && Some(used) == len {
                    outcome.read += 1;
                    return;
                }
                format!("rmp_serde read {theirs:?}; we read {ours:?} from {used} bytes of {len:?}")
            }
            (Ok(Err(_)), Ok(Err(_))) => {
                outcome.refused += 1;
                return;
            }
            (Ok(Ok(_)), Ok(Err(_))) if quirk(input) => {
                outcome.quirks += 1;
                return;
            }
            (Ok(Ok(theirs)), Ok(Err(e))) => format!("rmp_serde read {theirs:?}; we refused: {e}"),
            (Ok(Err(e)), Ok(Ok((ours, used)))) => {
                format!("rmp_serde refused ({e}); we read {:?} from {used} bytes", key(ours))
            }
            (Err(_), _) => "rmp_serde panicked".to_string(),
            (_, Err(_)) => "we panicked".to_string(),
        };
        self.disagreements.push(format!("{target} from {input:02x?}: {disagreement}"));
    }
}

fn same<T>(value: T) -> T {
    value
}

/// Decodes `input` into every target with both decoders.
fn compare_all(tally: &mut Tally, input: &[u8]) {
    tally.compare::<Dyn, _>("Dyn", input, same, none);
    tally.compare::<u8, _>("u8", input, same, none);
    tally.compare::<i16, _>("i16", input, same, none);
    tally.compare::<u64, _>("u64", input, same, none);
    tally.compare::<i128, _>("i128", input, same, none);
    tally.compare::<u128, _>("u128", input, same, negative_integer);
    tally.compare::<f64, _>("f64", input, f64::to_bits, none);
    tally.compare::<String, _>("String", input, same, none);
    tally.compare::<ByteBuf, _>("ByteBuf", input, same, none);
    tally.compare::<Vec<u32>, _>("Vec<u32>", input, same, none);
    tally.compare::<Option<bool>, _>("Option<bool>", input, same, none);
    tally.compare::<BTreeMap<String, u32>, _>("BTreeMap<String, u32>", input, same, none);
    tally.compare::<UnitStruct, _>("UnitStruct", input, same, none);
    tally.compare::<Record, _>("Record", input, same, none);
    tally.compare::<Choice, _>("Choice", input, same, none);
    tally.compare::<Tagged, _>("Tagged", input, same, none);
    tally.compare::<Untagged, _>("Untagged", input, same, none);
}

/// Inputs chosen by hand: the empty input, the reserved marker, each enum form (and an
/// enum's map in an array of one), 128-bit integers as `bin`, and ext values of every form.
const HAND_PICKED: &[&[u8]] = &[
    &[],
    &[0xc1],
    &[0x81, 0xa4, b'U', b'n', b'i', b't', 0xc0],
    &[0x81, 0xa7, b'N', b'e', b'w', b't', b'y', b'p', b'e', 0xd0, 0x80],
    &[0x81, 0xa5, b'T', b'u', b'p', b'l', b'e', 0x92, 0xcc, 0xff, 0xa1, b'x'],
    &[0x81, 0xa6, b'S', b't', b'r', b'u', b'c', b't', 0x81, 0xa1, b'a', 0x05],
    &[0xa4, b'U', b'n', b'i', b't'],
    &[0x00],
    &[0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02],
    &[0x92, 0x01, 0xc0],
    &[0x91, 0xa4, b'U', b'n', b'i', b't', 0xc0],
    &[0x91, 0xa4, b'U', b'n', b'i', b't'],
    &[0xc4, 16, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    &[0xc4, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    &[0xd4, 0x01, 0x02],
    &[0xd8, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
    &[0xc7, 0x00, 0x05],
    &[0xc8, 0x00, 0x01, 0x80, 0x09],
    &[0xc9, 0x00, 0x00, 0x00, 0x02, 0x7f, 0x09, 0x08],
    &[0x91, 0xd4, 0x01, 0x02],
    &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
];

/// Generated inputs per run.
const FUZZ_CASES: usize = 20_000;

#[test]
fn agrees_with_rmp_serde_on_arbitrary_input() {
    let mut tally = Tally::default();
    for input in HAND_PICKED {
        compare_all(&mut tally, input);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut longest = 0;
    for _ in 0..FUZZ_CASES {
        let input = gen_input(&mut rng);
        longest = longest.max(input.len());
        compare_all(&mut tally, &input);
    }
    assert!(longest < 200, "the generator wrote {longest} bytes");
    eprintln!(
        "agrees_with_rmp_serde_on_arbitrary_input: {} inputs",
        HAND_PICKED.len() + FUZZ_CASES
    );
    for (target, outcomes) in &tally.outcomes {
        eprintln!("  {target}: {outcomes:?}");
    }
    assert!(
        tally.disagreements.is_empty(),
        "{} disagreements, the first ones:\n{}",
        tally.disagreements.len(),
        tally.disagreements.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    // Every target read some inputs and refused others: the inputs reach past the checks
    // at the door.
    for (target, outcomes) in &tally.outcomes {
        assert!(outcomes.read > 0 && outcomes.refused > 0, "{target}: {outcomes:?}");
    }
}

/// The quirk [`agrees_with_rmp_serde_on_arbitrary_input`] leaves out, spelled out, and
/// one it need not: `rmp_serde` 1.3 reads enums from maps and strings only, as we do, not
/// from an array of one element (`rmp::decode::marker_to_len` takes maps only).
#[test]
fn rmp_serde_quirks_we_do_not_share() {
    assert_eq!(rmp_serde::from_slice::<u128>(&[0xff]).unwrap(), u128::MAX);
    assert_eq!(rmp_serde::from_slice::<u128>(&[0xd0, 0x80]).unwrap(), u128::MAX - 127);
    assert!(decode::<u128>(&[0xff], DEPTH).is_err());
    assert!(decode::<u128>(&[0xd0, 0x80], DEPTH).is_err());
    assert_eq!(decode::<i128>(&[0xff], DEPTH), Ok((-1, 1)));

    let unit_in_array = [0x91, 0xa4, b'U', b'n', b'i', b't', 0xc0];
    assert!(rmp_serde::from_slice::<Choice>(&unit_in_array).is_err());
    assert!(decode::<Choice>(&unit_in_array, DEPTH).is_err());
}

// ---------------------------------------------------------------------------------------
// 4. Truncation.
// ---------------------------------------------------------------------------------------

/// Every prefix of `value`'s encoding fails to decode, as a `T` and as a [`Dyn`]; returns
/// how many prefixes were tried.
fn assert_every_prefix_fails<T: Serialize + DeserializeOwned + Debug>(value: &T) -> usize {
    let mut bytes = Vec::new();
    encode(&mut bytes, value).unwrap();
    for len in 0..bytes.len() {
        let prefix = &bytes[..len];
        let typed = decode::<T>(prefix, DEPTH);
        assert!(
            typed.is_err(),
            "{} from {len} of {} bytes: {typed:?}",
            describe(value),
            bytes.len()
        );
        let any = decode::<Dyn>(prefix, DEPTH);
        assert!(
            any.is_err(),
            "Dyn from {len} of {} bytes of {}: {any:?}",
            bytes.len(),
            describe(value)
        );
    }
    bytes.len()
}

#[test]
fn every_truncation_fails_cleanly() {
    let mut prefixes = 0;
    prefixes += assert_every_prefix_fails(&outer(Some("note")));
    prefixes += assert_every_prefix_fails(&choices());
    prefixes += assert_every_prefix_fails(&flat(20));
    prefixes +=
        assert_every_prefix_fails(&FlatStruct { before: true, inner: inner(3), after: Some(1) });
    prefixes += assert_every_prefix_fails(&vec![Tagged::Empty, Tagged::Wrapped(inner(2))]);
    prefixes += assert_every_prefix_fails(&Tagged::Point { x: 1, y: -1 });
    prefixes += assert_every_prefix_fails(&Untagged::Record(inner(3)));
    prefixes += assert_every_prefix_fails(&Untagged::Int(i64::MIN));
    prefixes += assert_every_prefix_fails(&(i128::MIN, u128::MAX, u64::MAX, i64::MIN, -129i16));
    prefixes += assert_every_prefix_fails(&(1.5f32, -0.0f64, 'é', "x".repeat(300)));
    prefixes += assert_every_prefix_fails(&ByteBuf::from(vec![0x91; 300]));
    prefixes += assert_every_prefix_fails(
        &(0..20u32).map(|i| (i.to_string(), i)).collect::<HashMap<_, _>>(),
    );
    prefixes +=
        assert_every_prefix_fails(&(UnitStruct, Newtype(1), TupleStruct(1, "t".into(), true)));
    // Ext values, which the decoder hands to rmp_serde.
    for ext in
        [&[0xd4u8, 0x01, 0x02][..], &[0xc7, 0x03, 0x05, 1, 2, 3], &[0x91, 0xd6, 0xff, 0, 0, 0, 1]]
    {
        assert!(decode::<Dyn>(ext, DEPTH).is_ok());
        for len in 0..ext.len() {
            assert!(decode::<Dyn>(&ext[..len], DEPTH).is_err(), "{:02x?}", &ext[..len]);
        }
        prefixes += ext.len();
    }
    eprintln!("every_truncation_fails_cleanly: {prefixes} prefixes");
}

// ---------------------------------------------------------------------------------------
// 5. Nesting.
// ---------------------------------------------------------------------------------------

/// A value made only of nesting: `[[[...[]...]]]`.
#[derive(Debug, PartialEq, Deserialize)]
struct Nest(Vec<Nest>);

/// A chain of structs: `{"child": {"child": ... nil}}`.
#[derive(Debug, PartialEq, Deserialize)]
struct Node {
    child: Option<Box<Node>>,
}

/// `depth` arrays of one element around `nil`.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x91; depth];
    bytes.push(0xc0);
    bytes
}

/// `depth` arrays, the innermost empty: a [`Nest`] `depth` levels deep.
fn nest(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x91; depth - 1];
    bytes.push(0x90);
    bytes
}

/// `depth` maps `{"child": ...}` around `nil`: a [`Node`] `depth` levels deep.
fn nodes(depth: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..depth {
        bytes.extend_from_slice(&[0x81, 0xa5, b'c', b'h', b'i', b'l', b'd']);
    }
    bytes.push(0xc0);
    bytes
}

/// A [`Record`] holding, in a field it does not have, `inner` arrays around `nil`: it is
/// `inner + 1` levels deep.
fn record_around(inner: usize) -> Vec<u8> {
    let mut bytes = vec![0x82, 0xa3, b'z', b'z', b'z'];
    bytes.extend(nested_arrays(inner));
    bytes.extend_from_slice(&[0xa1, b'a', 0x07]);
    bytes
}

/// Decodes `bytes` as a `T` at the limit `depth` (it must read all of them) and one below
/// (it must refuse).
fn assert_exact_limit<T: DeserializeOwned + Debug>(what: &str, bytes: &[u8], depth: usize) {
    match decode::<T>(bytes, depth) {
        Ok((_, used)) => assert_eq!(used, bytes.len(), "{what} {depth} deep"),
        Err(e) => panic!("{what} {depth} deep, limit {depth}: {e}"),
    }
    let refused = decode::<T>(bytes, depth - 1);
    assert!(refused.is_err(), "{what} {depth} deep, limit {}: {refused:?}", depth - 1);
}

#[test]
fn nesting_beyond_the_limit_is_refused() {
    let depths = [1, 2, 3, 15, 16, 17, 64, 127, 128];
    for depth in depths {
        assert_exact_limit::<Dyn>("arrays as Dyn", &nested_arrays(depth), depth);
        assert_exact_limit::<Nest>("Nest", &nest(depth), depth);
        assert_exact_limit::<Dyn>("maps as Dyn", &nodes(depth), depth);
        assert_exact_limit::<Node>("Node", &nodes(depth), depth);
        // The skipped value of an unknown field counts its levels too.
        assert_exact_limit::<Record>("an unknown field", &record_around(depth - 1), depth);
    }
    // Siblings each as deep as the limit allows: the depth comes back after each.
    for depth in [2, 17, 64] {
        let mut siblings = vec![0x93];
        for _ in 0..3 {
            siblings.extend(nested_arrays(depth - 1));
        }
        assert_exact_limit::<Dyn>("siblings as Dyn", &siblings, depth);
    }
    // A scalar needs no level at all; an empty container needs one.
    assert_eq!(decode::<Dyn>(&[0x05], 0), Ok((Dyn::U8(5), 1)));
    assert!(decode::<Dyn>(&[0x90], 0).is_err());
    assert!(decode::<Dyn>(&[0x80], 0).is_err());

    // Far deeper than any limit: refused, without overflowing the stack.
    const VERY_DEEP: usize = 10_000;
    for limit in [DEFAULT_MAX_DEPTH, DEPTH] {
        let refused: [Result<(), Error>; 5] = [
            decode::<Dyn>(&nested_arrays(VERY_DEEP), limit).map(drop),
            decode::<Nest>(&nest(VERY_DEEP), limit).map(drop),
            decode::<Dyn>(&nodes(VERY_DEEP), limit).map(drop),
            decode::<Node>(&nodes(VERY_DEEP), limit).map(drop),
            decode::<Record>(&record_around(VERY_DEEP), limit).map(drop),
        ];
        for (i, result) in refused.iter().enumerate() {
            assert!(result.is_err(), "value {i}, {VERY_DEEP} deep, limit {limit}");
        }
    }
    eprintln!(
        "nesting_beyond_the_limit_is_refused: {} limits checked",
        depths.len() * 5 + 3 + 3 + 10
    );
}

// ---------------------------------------------------------------------------------------
// 6. Unknown fields.
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Deserialize)]
struct Picky {
    a: u32,
    b: String,
    c: Vec<i8>,
}

/// A map holding `Picky`'s three fields among unknown ones whose values are of every kind
/// that takes more than one byte, with bytes in them that look like markers.
fn picky_among_strangers() -> Vec<u8> {
    use rmp::encode::{
        write_array_len, write_bin, write_ext_meta, write_map_len, write_str, write_uint,
    };
    let mut b = Vec::new();
    write_map_len(&mut b, 11).unwrap();
    write_str(&mut b, "nested").unwrap();
    write_array_len(&mut b, 2).unwrap();
    write_array_len(&mut b, 1).unwrap();
    write_map_len(&mut b, 1).unwrap();
    write_str(&mut b, "k").unwrap();
    write_str(&mut b, "v").unwrap();
    write_uint(&mut b, 300).unwrap();
    write_str(&mut b, "a").unwrap();
    write_uint(&mut b, 70_000).unwrap();
    write_str(&mut b, "text").unwrap();
    write_str(&mut b, &"\u{91}long ".repeat(60)).unwrap();
    write_str(&mut b, "blob").unwrap();
    write_bin(&mut b, &[0xc1; 300]).unwrap();
    write_str(&mut b, "ext8").unwrap();
    write_ext_meta(&mut b, 3, 5).unwrap();
    b.extend_from_slice(&[0xdd, 0xff, 0xff]);
    write_str(&mut b, "fixext16").unwrap();
    write_ext_meta(&mut b, 16, -1).unwrap();
    b.extend_from_slice(&[0xdf; 16]);
    write_str(&mut b, "b").unwrap();
    write_str(&mut b, "after").unwrap();
    write_str(&mut b, "deep").unwrap();
    b.extend(nested_arrays(20));
    write_str(&mut b, "bad utf-8").unwrap();
    b.extend_from_slice(&[0xa2, 0xff, 0xfe]);
    write_str(&mut b, "c").unwrap();
    write_array_len(&mut b, 3).unwrap();
    b.extend_from_slice(&[0x01, 0xff, 0xd0, 0x80]);
    write_uint(&mut b, 99).unwrap(); // an unknown integer key
    write_map_len(&mut b, 16).unwrap();
    for i in 0..16 {
        write_uint(&mut b, i).unwrap();
        write_str(&mut b, "").unwrap();
    }
    b
}

/// How many entries a map has, every key and value skipped unread (`IgnoredAny`).
#[derive(Debug, PartialEq)]
struct SkippedEntries(usize);

impl<'de> Deserialize<'de> for SkippedEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = SkippedEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SkippedEntries, A::Error> {
                let mut entries = 0;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    entries += 1;
                }
                Ok(SkippedEntries(entries))
            }
        }
        deserializer.deserialize_map(Count)
    }
}

#[test]
fn ignored_fields_are_skipped_whole() {
    let bytes = picky_among_strangers();
    let expected = Picky { a: 70_000, b: "after".into(), c: vec![1, -1, -128] };
    assert_eq!(decode::<Picky>(&bytes, DEPTH), Ok((expected, bytes.len())));
    assert_reads_like_rmp::<Picky>("Picky among strangers", &bytes);

    // With bytes after the map: the value ends where the map ends.
    let mut followed = bytes.clone();
    followed.extend_from_slice(&[0xc1, 0xc1]);
    assert_eq!(decode::<Picky>(&followed, DEPTH).map(|(_, used)| used), Ok(bytes.len()));

    // Every value skipped whole, read as `IgnoredAny`, and read in full as `Dyn`.
    assert_eq!(decode::<SkippedEntries>(&bytes, DEPTH), Ok((SkippedEntries(11), bytes.len())));
    let (read, used) = decode::<Dyn>(&bytes, DEPTH).unwrap();
    assert_eq!((rmp_serde::from_slice::<Dyn>(&bytes).unwrap(), bytes.len()), (read, used));

    // An unknown field whose value is malformed or cut short spoils the whole.
    let mut reserved = bytes.clone();
    let at = bytes.windows(4).position(|w| w == b"deep").unwrap() + 4;
    reserved[at + 20] = 0xc1; // the nil inside the 20 arrays
    assert!(decode::<Picky>(&reserved, DEPTH).is_err());
    let mut short = vec![0x82, 0xa1, b'z', 0xc5, 0x01, 0x00];
    short.extend_from_slice(&[0; 10]);
    assert!(decode::<Picky>(&short, DEPTH).is_err());
    eprintln!("ignored_fields_are_skipped_whole: 11 fields, 8 of them unknown; 6 decodes");
}

// ---------------------------------------------------------------------------------------
// 7. Strings that are not UTF-8.
// ---------------------------------------------------------------------------------------

/// `content` as a MessagePack string, whether or not it is UTF-8.
fn str_of(content: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    rmp::encode::write_str_len(&mut bytes, content.len() as u32).unwrap();
    bytes.extend_from_slice(content);
    bytes
}

/// `content` is UTF-8: it reads as that `String`, as `rmp_serde` reads it.
fn assert_reads_as_string(content: &str) {
    let bytes = str_of(content.as_bytes());
    assert_eq!(
        decode::<String>(&bytes, DEPTH),
        Ok((content.to_string(), bytes.len())),
        "{content:?}"
    );
    assert_eq!(decode::<&str>(&bytes, DEPTH), Ok((content, bytes.len())), "{content:?}");
    assert_reads_like_rmp::<String>(content, &bytes);
}

/// `content` is not UTF-8: it is refused as a `String` but read as bytes, as `rmp_serde`
/// offers them.
fn assert_refused_as_string(content: &[u8]) {
    let bytes = str_of(content);
    match decode::<String>(&bytes, DEPTH) {
        Err(e) => assert!(e.to_string().contains("UTF-8"), "{content:02x?}: {e}"),
        Ok(read) => panic!("{content:02x?} read as the String {read:?}"),
    }
    assert!(decode::<char>(&bytes, DEPTH).is_err(), "{content:02x?} as char");
    assert!(rmp_serde::from_slice::<String>(&bytes).is_err(), "{content:02x?}");
    let expected = ByteBuf::from(content.to_vec());
    assert_eq!(decode::<ByteBuf>(&bytes, DEPTH), Ok((expected.clone(), bytes.len())));
    assert_eq!(rmp_serde::from_slice::<ByteBuf>(&bytes).unwrap(), expected);
    assert_eq!(decode::<Dyn>(&bytes, DEPTH), Ok((Dyn::Bytes(content.to_vec()), bytes.len())));
}

#[test]
fn non_utf8_strings() {
    let mut cases = 0;
    // ASCII up to and past the 32 bytes of the decoder's fast path.
    for len in [0, 1, 2, 31, 32, 33, 64, 300] {
        assert_reads_as_string(&"abcdefghijklmnopqrstuvwxyz0123456789".repeat(9)[..len]);
        assert_reads_as_string(&"\u{7f}".repeat(len));
        cases += 2;
    }
    // Multi-byte UTF-8 of up to 32 bytes, and a multi-byte character at every position.
    for s in ["é", "€", "😀", "é€😀", &"é".repeat(16), &"😀".repeat(8), &"€".repeat(10), "\u{80}"]
    {
        assert_reads_as_string(s);
        cases += 1;
    }
    for len in [2, 31, 32, 33] {
        for at in 0..len - 1 {
            let mut s = "a".repeat(len - 2);
            s.insert(at, 'é');
            assert_reads_as_string(&s);
            cases += 1;
        }
    }
    // One byte of 0x80 or more in ASCII, at every position, short and long: the fast path
    // must hand it to the full check, which refuses it.
    for len in [1, 2, 31, 32, 33, 40] {
        for at in 0..len {
            for bad in [0xff, 0x80, 0xc3, 0xfe] {
                let mut content = vec![b'a'; len];
                content[at] = bad;
                assert_refused_as_string(&content);
                cases += 1;
            }
        }
    }
    // Malformed sequences: an overlong form, a surrogate, a cut-short character, a code
    // point beyond U+10FFFF.
    for content in [
        &[0xc0, 0x80][..],
        &[0xed, 0xa0, 0x80],
        b"abc\xe2\x82",
        &[0xf4, 0x90, 0x80, 0x80],
        &[0xe2, 0x82, b'a', b'a'],
    ] {
        assert_refused_as_string(content);
        cases += 1;
    }
    eprintln!("non_utf8_strings: {cases} strings");
}

/// A sequence of itself that records the size hint serde is given at every level.
struct Claims;

thread_local! {
    static HINTS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Claims, D::Error> {
        struct ClaimsVisitor;
        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("nested arrays")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Claims, A::Error> {
                HINTS.with(|h| h.borrow_mut().push(seq.size_hint().unwrap_or(0)));
                while seq.next_element::<Claims>()?.is_some() {}
                Ok(Claims)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
                HINTS.with(|h| h.borrow_mut().push(map.size_hint().unwrap_or(0)));
                while map.next_entry::<Claims, Claims>()?.is_some() {}
                Ok(Claims)
            }
        }
        deserializer.deserialize_any(ClaimsVisitor)
    }
}

/// What serde may pre-allocate is bounded by the bytes present, however a body nests its
/// claims: every level of arrays (or maps) declaring 4 billion elements, with 100 bytes
/// after them, gets size hints that add up to no more than the body's length.
#[test]
fn nested_claims_reserve_no_more_than_the_bytes() {
    for (header, what) in
        [([0xdd, 0xff, 0xff, 0xff, 0xff], "arrays"), ([0xdf, 0xff, 0xff, 0xff, 0xff], "maps")]
    {
        let mut body: Vec<u8> = header.iter().copied().cycle().take(5 * 50).collect();
        body.extend([0x90; 100]);
        HINTS.with(|h| h.borrow_mut().clear());
        assert!(decode::<Claims>(&body, DEPTH).is_err(), "the claims are not backed");
        let hints = HINTS.with(|h| h.borrow().clone());
        // The 50 levels, then the empty arrays read inside the innermost.
        assert_eq!(hints.len(), 150, "{what}: every level was opened");
        let total: usize = hints.iter().sum();
        assert!(total <= body.len(), "{what}: hints {hints:?} add up to {total} > {}", body.len());
    }
    // A value whose claims are backed keeps its hints whole.
    let honest = [0x93, 0x92, 0x90, 0x90, 0x91, 0x90, 0x90];
    HINTS.with(|h| h.borrow_mut().clear());
    assert!(decode::<Claims>(&honest, DEPTH).is_ok());
    assert_eq!(HINTS.with(|h| h.borrow().clone()), [3, 2, 0, 0, 1, 0, 0]);
}
