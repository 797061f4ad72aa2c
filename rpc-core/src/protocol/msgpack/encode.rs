//! The serde `Serializer`: a value's MessagePack bytes, appended to a buffer.
//!
//! Every form is the one `rmp_serde`'s `Serializer::with_struct_map()` writes, byte for
//! byte (the tests in [`super`] check it): integers and lengths in their shortest form,
//! structs as maps keyed by field name, enums as the variant's name or `{variant: value}`,
//! `i128`/`u128` as 16 bytes of `bin`, a unit struct as `[]`.

use serde::ser::{self, Serialize};

use super::{EXT_STRUCT_NAME, Error};

/// Where encoded bytes go: the two buffers the crate encodes into.
pub(crate) trait Output {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
    /// Appends one byte, then `bytes` (a short string's header and its bytes).
    #[inline(always)]
    fn put_after(&mut self, first: u8, bytes: &[u8]) {
        self.put(&[first]);
        self.put(bytes);
    }
    /// Bytes written so far.
    fn len(&self) -> usize;
    /// The bytes written so far, to patch a length in place.
    fn written(&mut self) -> &mut [u8];
    /// Drops everything after the first `len` bytes.
    fn truncate(&mut self, len: usize);
}

impl Output for Vec<u8> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline(always)]
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn written(&mut self) -> &mut [u8] {
        self
    }

    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

impl Output for bytes::BytesMut {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    /// One capacity check and one length update for both pieces, where two appends make
    /// two of each (callgrind: 128 instructions less a call of the benchmark's echo, which
    /// writes twelve short strings: its struct's four field names and one string each way,
    /// and the call head's two names).
    #[inline(always)]
    fn put_after(&mut self, first: u8, bytes: &[u8]) {
        let n = 1 + bytes.len();
        self.reserve(n);
        let spare = &mut self.spare_capacity_mut()[..n];
        spare[0].write(first);
        // SAFETY: `spare` has `n` bytes (reserved above): `first` went to the first, `bytes`
        // fill the other `n - 1`, so all `n` are initialized before the length covers them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                spare[1..].as_mut_ptr().cast::<u8>(),
                bytes.len(),
            );
            self.set_len(self.len() + n);
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        bytes::BytesMut::len(self)
    }

    fn written(&mut self) -> &mut [u8] {
        self
    }

    fn truncate(&mut self, len: usize) {
        bytes::BytesMut::truncate(self, len);
    }
}

/// Writes an unsigned integer in its shortest form, as `rmp::encode::write_uint` does:
/// for the serializer and for the protocol's own fields (a call head's timeout, say).
#[inline]
pub(crate) fn write_uint<O: Output>(out: &mut O, v: u64) {
    if v < 0x80 {
        out.put(&[v as u8]);
    } else if v <= u8::MAX as u64 {
        out.put(&[0xcc, v as u8]);
    } else if v <= u16::MAX as u64 {
        let [a, b] = (v as u16).to_be_bytes();
        out.put(&[0xcd, a, b]);
    } else if v <= u32::MAX as u64 {
        let [a, b, c, d] = (v as u32).to_be_bytes();
        out.put(&[0xce, a, b, c, d]);
    } else {
        let [a, b, c, d, e, f, g, h] = v.to_be_bytes();
        out.put(&[0xcf, a, b, c, d, e, f, g, h]);
    }
}

/// Writes a string (its bytes, not checked here) in its shortest form, as
/// `rmp::encode::write_str` does: for the serializer and for the protocol's own fields (a
/// call head's names). Most are short, so the one-byte header is written inline.
#[inline]
pub(crate) fn write_str<O: Output>(out: &mut O, s: &[u8]) -> Result<(), Error> {
    match s.len() {
        len @ 0..32 => out.put_after(0xa0 | len as u8, s),
        len => {
            write_header(out, Header::STR, len)?;
            out.put(s);
        }
    }
    Ok(())
}

/// Writes an array's header in its shortest form, as `rmp::encode::write_array_len` does.
#[inline]
pub(crate) fn write_array_len<O: Output>(out: &mut O, len: usize) -> Result<(), Error> {
    if len < 16 {
        out.put(&[0x90 | len as u8]);
        return Ok(());
    }
    write_header(out, Header::ARRAY, len)
}

/// Writes binary data in its shortest form, as `rmp::encode::write_bin` does.
#[inline]
pub(crate) fn write_bin<O: Output>(out: &mut O, data: &[u8]) -> Result<(), Error> {
    write_header(out, Header::BIN, data.len())?;
    out.put(data);
    Ok(())
}

/// Writes the header of a string, binary, array or map of `len` (see [`Header`]).
#[inline(never)]
fn write_header<O: Output>(out: &mut O, kind: Header, len: usize) -> Result<(), Error> {
    let (bytes, n) = kind.encode(len)?;
    out.put(&bytes[..n]);
    Ok(())
}

/// Writes values into an [`Output`]; `&mut Encoder` is the serde `Serializer`.
pub(crate) struct Encoder<'o, O> {
    out: &'o mut O,
}

impl<'o, O: Output> Encoder<'o, O> {
    pub(crate) fn new(out: &'o mut O) -> Encoder<'o, O> {
        Encoder { out }
    }

    #[inline]
    fn uint(&mut self, v: u64) {
        write_uint(self.out, v);
    }

    #[inline]
    fn sint(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else if v >= -32 {
            self.out.put(&[v as i8 as u8]);
        } else if v >= i8::MIN as i64 {
            self.out.put(&[0xd0, v as i8 as u8]);
        } else if v >= i16::MIN as i64 {
            let [a, b] = (v as i16).to_be_bytes();
            self.out.put(&[0xd1, a, b]);
        } else if v >= i32::MIN as i64 {
            let [a, b, c, d] = (v as i32).to_be_bytes();
            self.out.put(&[0xd2, a, b, c, d]);
        } else {
            let [a, b, c, d, e, f, g, h] = v.to_be_bytes();
            self.out.put(&[0xd3, a, b, c, d, e, f, g, h]);
        }
    }

    // Strings, arrays and maps are mostly short (field names, small structs): their one-byte
    // headers are written inline, the longer forms by `write_header`.

    #[inline]
    fn str(&mut self, s: &str) -> Result<(), Error> {
        write_str(self.out, s.as_bytes())
    }

    #[inline]
    fn array(&mut self, len: usize) -> Result<(), Error> {
        write_array_len(self.out, len)
    }

    #[inline]
    fn map(&mut self, len: usize) -> Result<(), Error> {
        if len < 16 {
            self.out.put(&[0x80 | len as u8]);
            return Ok(());
        }
        write_header(self.out, Header::MAP, len)
    }

    /// A sequence or map of `len` elements, or of a count known only at its end.
    fn compound<'s>(
        &'s mut self,
        len: Option<usize>,
        is_map: bool,
    ) -> Result<Compound<'s, 'o, O>, Error> {
        let open = match len {
            Some(len) => {
                match is_map {
                    true => self.map(len)?,
                    false => self.array(len)?,
                }
                None
            }
            None => {
                // The 32-bit form, patched (and shortened) once the count is known.
                let start = self.out.len();
                self.out.put(&[if is_map { 0xdf } else { 0xdd }, 0, 0, 0, 0]);
                Some(Open { start, count: 0, is_map })
            }
        };
        Ok(Compound { enc: self, open })
    }
}

/// A sequence or map written before its length was known.
struct Open {
    /// Where its 5-byte placeholder header starts.
    start: usize,
    /// Elements (or map entries) written.
    count: usize,
    is_map: bool,
}

/// The serializer of every compound: sequences, tuples, maps, structs and variants.
pub(crate) struct Compound<'s, 'o, O> {
    enc: &'s mut Encoder<'o, O>,
    open: Option<Open>,
}

impl<O: Output> Compound<'_, '_, O> {
    #[inline]
    fn count(&mut self) {
        if let Some(open) = &mut self.open {
            open.count += 1;
        }
    }

    /// Writes the real header of an open compound over its placeholder, in the shortest
    /// form, and moves the elements back if that form is shorter than the placeholder.
    fn close(self) -> Result<(), Error> {
        let Some(open) = self.open else { return Ok(()) };
        let kind = if open.is_map { Header::MAP } else { Header::ARRAY };
        let (header, n) = kind.encode(open.count)?;
        let out = &mut *self.enc.out;
        let end = out.len();
        let written = out.written();
        written[open.start..open.start + n].copy_from_slice(&header[..n]);
        if n < 5 {
            written.copy_within(open.start + 5..end, open.start + n);
            out.truncate(end - (5 - n));
        }
        Ok(())
    }
}

/// The length header of one of MessagePack's sized types: its fix form (the length in
/// the marker's low bits) below `fix_limit`, then an 8-bit form (strings and binaries
/// only), then 16 and 32 bits.
#[derive(Clone, Copy)]
struct Header {
    fix: u8,
    fix_limit: usize,
    marker8: Option<u8>,
    marker16: u8,
    what: &'static str,
}

impl Header {
    const STR: Header =
        Header { fix: 0xa0, fix_limit: 32, marker8: Some(0xd9), marker16: 0xda, what: "string" };
    const BIN: Header =
        Header { fix: 0, fix_limit: 0, marker8: Some(0xc4), marker16: 0xc5, what: "binary" };
    const ARRAY: Header =
        Header { fix: 0x90, fix_limit: 16, marker8: None, marker16: 0xdc, what: "array" };
    const MAP: Header =
        Header { fix: 0x80, fix_limit: 16, marker8: None, marker16: 0xde, what: "map" };

    /// The header's bytes and how many of them are used.
    #[inline]
    fn encode(self, len: usize) -> Result<([u8; 5], usize), Error> {
        if len < self.fix_limit {
            return Ok(([self.fix | len as u8, 0, 0, 0, 0], 1));
        }
        if let Some(marker8) = self.marker8
            && len <= u8::MAX as usize
        {
            return Ok(([marker8, len as u8, 0, 0, 0], 2));
        }
        if len <= u16::MAX as usize {
            let [a, b] = (len as u16).to_be_bytes();
            return Ok(([self.marker16, a, b, 0, 0], 3));
        }
        match u32::try_from(len) {
            Ok(len) => {
                let [a, b, c, d] = len.to_be_bytes();
                Ok(([self.marker16 + 1, a, b, c, d], 5))
            }
            Err(_) => Err(Error::new(format!(
                "a {} of {len} is too long for MessagePack (at most 4 294 967 295)",
                self.what
            ))),
        }
    }
}

impl<'s, 'o, O: Output> ser::Serializer for &'s mut Encoder<'o, O> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'s, 'o, O>;
    type SerializeTuple = Compound<'s, 'o, O>;
    type SerializeTupleStruct = Compound<'s, 'o, O>;
    type SerializeTupleVariant = Compound<'s, 'o, O>;
    type SerializeMap = Compound<'s, 'o, O>;
    type SerializeStruct = Compound<'s, 'o, O>;
    type SerializeStructVariant = Compound<'s, 'o, O>;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.put(&[if v { 0xc3 } else { 0xc2 }]);
        Ok(())
    }

    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.sint(v);
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.serialize_bytes(&v.to_be_bytes())
    }

    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.uint(v);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.serialize_bytes(&v.to_be_bytes())
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        let [a, b, c, d] = v.to_be_bytes();
        self.out.put(&[0xca, a, b, c, d]);
        Ok(())
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        let [a, b, c, d, e, f, g, h] = v.to_be_bytes();
        self.out.put(&[0xcb, a, b, c, d, e, f, g, h]);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.str(v.encode_utf8(&mut [0; 4]))
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.str(v)
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        write_bin(self.out, v)
    }

    #[inline]
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.put(&[0xc0]);
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.array(0)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.str(variant)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        if name == EXT_STRUCT_NAME {
            return self.ext(value);
        }
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.map(1)?;
        self.str(variant)?;
        value.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        self.compound(len, false)
    }

    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Error> {
        self.compound(Some(len), false)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        self.compound(Some(len), false)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        self.map(1)?;
        self.str(variant)?;
        self.compound(Some(len), false)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        self.compound(len, true)
    }

    #[inline]
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        self.compound(Some(len), true)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        self.map(1)?;
        self.str(variant)?;
        self.compound(Some(len), true)
    }
}

impl<O: Output> Encoder<'_, O> {
    /// A MessagePack ext value, in `rmp_serde`'s convention: a newtype struct named
    /// `_ExtStruct` around an `(i8, bytes)` tuple. Rare, so `rmp_serde` writes it.
    #[cold]
    fn ext<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        struct Ext<'a, T: ?Sized>(&'a T);
        impl<T: Serialize + ?Sized> Serialize for Ext<'_, T> {
            fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_newtype_struct(EXT_STRUCT_NAME, self.0)
            }
        }
        let bytes = rmp_serde::to_vec(&Ext(value)).map_err(|e| Error::new(e.to_string()))?;
        self.out.put(&bytes);
        Ok(())
    }
}

impl<O: Output> ser::SerializeSeq for Compound<'_, '_, O> {
    type Ok = ();
    type Error = Error;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.count();
        value.serialize(&mut *self.enc)
    }

    #[inline]
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// The compounds whose elements follow their header one by one, with nothing to count
/// (their length is always known up front): tuples, tuple structs, tuple variants.
macro_rules! positional_compound {
    ($($trait:ident::$method:ident),*) => {$(
        impl<O: Output> ser::$trait for Compound<'_, '_, O> {
            type Ok = ();
            type Error = Error;

            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                value.serialize(&mut *self.enc)
            }

            #[inline]
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )*};
}

positional_compound!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<O: Output> ser::SerializeMap for Compound<'_, '_, O> {
    type Ok = ();
    type Error = Error;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.count();
        key.serialize(&mut *self.enc)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self.enc)
    }

    #[inline]
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// Structs and struct variants: a map keyed by field name, its length known up front.
macro_rules! struct_compound {
    ($($trait:ident),*) => {$(
        impl<O: Output> ser::$trait for Compound<'_, '_, O> {
            type Ok = ();
            type Error = Error;

            #[inline]
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.enc.str(key)?;
                value.serialize(&mut *self.enc)
            }

            #[inline]
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )*};
}

struct_compound!(SerializeStruct, SerializeStructVariant);
