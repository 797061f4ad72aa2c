//! The serde `Deserializer`: values read from a byte slice, borrowing strings and
//! binaries from it.
//!
//! It reads what `rmp_serde` reads (every marker, structs as maps or arrays, enums as a
//! variant's name or `{variant: value}`, `i128`/`u128` as integers or 16 bytes of `bin`)
//! and hands visitors the same calls, so a type's `Deserialize` sees no difference.
//! Every read is bounds-checked, nesting is limited and no declared length is trusted beyond
//! the bytes present (see `Decoder::promise`), so it is safe on any input without a
//! pre-scan.

use std::cell::Cell;

use serde::de::{self, DeserializeSeed, Unexpected, Visitor};

use super::{EXT_STRUCT_NAME, Error};
use crate::protocol::codec::DecodeError;

/// Reads values from a slice; `&mut Decoder` is the serde `Deserializer`.
pub(crate) struct Decoder<'de> {
    data: &'de [u8],
    pos: usize,
    /// Containers that may still be opened inside the current one.
    depth_left: usize,
    /// The limit, for the error that reports it.
    max_depth: usize,
    /// Elements all containers together may still announce to serde for pre-allocation
    /// (see [`Decoder::promise`]).
    promised_left: Cell<usize>,
}

impl<'de> Decoder<'de> {
    pub(crate) fn new(data: &'de [u8], max_depth: usize) -> Decoder<'de> {
        Decoder {
            data,
            pos: 0,
            depth_left: max_depth,
            max_depth,
            promised_left: Cell::new(data.len()),
        }
    }

    /// The size hint for a container that declares `declared` elements of at least
    /// `bytes_each` bytes: what serde pre-allocates for.
    ///
    /// A declared length is only a claim. Every element takes at least one byte, so the
    /// hints of all containers of one value together never exceed its length in elements:
    /// however a hostile body nests its claims, serde reserves no more elements than the
    /// bytes present could hold, as the pre-scan guaranteed before this decoder existed.
    #[inline]
    fn promise(&self, declared: usize, bytes_each: usize) -> usize {
        let left = self.promised_left.get();
        let hint = declared.min(left / bytes_each);
        self.promised_left.set(left - hint * bytes_each);
        hint
    }

    /// Bytes read so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    fn peek(&self) -> Result<u8, Error> {
        self.data.get(self.pos).copied().ok_or_else(Error::truncated)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Error> {
        let byte = self.peek()?;
        self.pos += 1;
        Ok(byte)
    }

    #[inline]
    fn take(&mut self, len: usize) -> Result<&'de [u8], Error> {
        let data: &'de [u8] = self.data;
        let end = self.pos.checked_add(len).ok_or_else(Error::truncated)?;
        let bytes = data.get(self.pos..end).ok_or_else(Error::truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    #[inline]
    fn len8(&mut self) -> Result<usize, Error> {
        self.byte().map(usize::from)
    }

    #[inline]
    fn len16(&mut self) -> Result<usize, Error> {
        self.array().map(|b| u16::from_be_bytes(b) as usize)
    }

    #[inline]
    fn len32(&mut self) -> Result<usize, Error> {
        self.array().map(|b| u32::from_be_bytes(b) as usize)
    }

    /// Any value, visited as what it is. `bytes_as_bin`: a `bin` is visited as bytes (as
    /// opposed to a sequence of `u8`, for types that asked for a sequence).
    fn any<V: Visitor<'de>>(&mut self, visitor: V, bytes_as_bin: bool) -> Result<V::Value, Error> {
        let start = self.pos;
        let marker = self.byte()?;
        match marker {
            0x00..=0x7f => visitor.visit_u8(marker),
            0x80..=0x8f => self.map((marker & 0x0f) as usize, visitor),
            0x90..=0x9f => self.seq((marker & 0x0f) as usize, visitor),
            0xa0..=0xbf => self.str((marker & 0x1f) as usize, visitor),
            0xc0 => visitor.visit_unit(),
            0xc1 => Err(Error::malformed(self.max_depth)),
            0xc2 => visitor.visit_bool(false),
            0xc3 => visitor.visit_bool(true),
            0xc4 => {
                let len = self.len8()?;
                self.bin(len, bytes_as_bin, visitor)
            }
            0xc5 => {
                let len = self.len16()?;
                self.bin(len, bytes_as_bin, visitor)
            }
            0xc6 => {
                let len = self.len32()?;
                self.bin(len, bytes_as_bin, visitor)
            }
            0xc7..=0xc9 | 0xd4..=0xd8 => self.ext(start, visitor),
            0xca => visitor.visit_f32(f32::from_be_bytes(self.array()?)),
            0xcb => visitor.visit_f64(f64::from_be_bytes(self.array()?)),
            0xcc => visitor.visit_u8(self.byte()?),
            0xcd => visitor.visit_u16(u16::from_be_bytes(self.array()?)),
            0xce => visitor.visit_u32(u32::from_be_bytes(self.array()?)),
            0xcf => visitor.visit_u64(u64::from_be_bytes(self.array()?)),
            0xd0 => visitor.visit_i8(self.byte()? as i8),
            0xd1 => visitor.visit_i16(i16::from_be_bytes(self.array()?)),
            0xd2 => visitor.visit_i32(i32::from_be_bytes(self.array()?)),
            0xd3 => visitor.visit_i64(i64::from_be_bytes(self.array()?)),
            0xd9 => {
                let len = self.len8()?;
                self.str(len, visitor)
            }
            0xda => {
                let len = self.len16()?;
                self.str(len, visitor)
            }
            0xdb => {
                let len = self.len32()?;
                self.str(len, visitor)
            }
            0xdc => {
                let len = self.len16()?;
                self.seq(len, visitor)
            }
            0xdd => {
                let len = self.len32()?;
                self.seq(len, visitor)
            }
            0xde => {
                let len = self.len16()?;
                self.map(len, visitor)
            }
            0xdf => {
                let len = self.len32()?;
                self.map(len, visitor)
            }
            0xe0..=0xff => visitor.visit_i8(marker as i8),
        }
    }

    /// A string of `len` bytes. Bytes that are not UTF-8 are offered to the visitor as
    /// bytes before they are refused, as `rmp_serde` does.
    #[inline]
    fn str<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let bytes = self.take(len)?;
        match utf8(bytes) {
            Ok(s) => visitor.visit_borrowed_str(s),
            Err(e) => visitor
                .visit_borrowed_bytes(bytes)
                .map_err(|_: Error| Error::new(format!("a string is not UTF-8: {e}"))),
        }
    }

    fn bin<V: Visitor<'de>>(
        &mut self,
        len: usize,
        bytes_as_bin: bool,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let bytes = self.take(len)?;
        match bytes_as_bin {
            true => visitor.visit_borrowed_bytes(bytes),
            false => visitor.visit_seq(de::value::SeqDeserializer::new(bytes.iter().copied())),
        }
    }

    /// Enters a container: one level less for what it holds.
    #[inline]
    fn enter(&mut self) -> Result<(), Error> {
        match self.depth_left.checked_sub(1) {
            Some(left) => {
                self.depth_left = left;
                Ok(())
            }
            None => Err(Error::malformed(self.max_depth)),
        }
    }

    #[inline]
    fn seq<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let mut access = Elements { de: self, left: len };
        let value = visitor.visit_seq(&mut access)?;
        let left = access.left;
        self.depth_left += 1;
        match left {
            0 => Ok(value),
            _ => Err(Error::new(format!("an array of {len} had {left} elements left unread"))),
        }
    }

    #[inline]
    fn map<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let mut access = Entries { de: self, left: len };
        let value = visitor.visit_map(&mut access)?;
        let left = access.left;
        self.depth_left += 1;
        match left {
            0 => Ok(value),
            _ => Err(Error::new(format!("a map of {len} had {left} entries left unread"))),
        }
    }

    /// An ext value starting at `start` (its marker read): rare, so `rmp_serde` reads it,
    /// from its own bytes.
    #[cold]
    fn ext<V: Visitor<'de>>(&mut self, start: usize, visitor: V) -> Result<V::Value, Error> {
        let bytes = self.ext_bytes(start)?;
        self.enter()?;
        let mut inner = rmp_serde::Deserializer::from_read_ref(bytes);
        let value = de::Deserializer::deserialize_any(&mut inner, visitor);
        self.depth_left += 1;
        value.map_err(|e| Error::new(e.to_string()))
    }

    /// The bytes of the ext value whose marker was read at `start`, and moves past them.
    fn ext_bytes(&mut self, start: usize) -> Result<&'de [u8], Error> {
        let marker = self.data.get(start).copied().ok_or_else(Error::truncated)?;
        let len = match marker {
            0xd4 => 1,
            0xd5 => 2,
            0xd6 => 4,
            0xd7 => 8,
            0xd8 => 16,
            0xc7 => self.len8()?,
            0xc8 => self.len16()?,
            0xc9 => self.len32()?,
            _ => return Err(Error::new("expected a MessagePack ext value")),
        };
        // The type byte, then the data.
        self.take(1 + len)?;
        Ok(&self.data[start..self.pos])
    }
}

/// `bytes` as a `str`, if they are UTF-8.
///
/// Most strings in a body are short and ASCII: field names, enum variants, identifiers.
/// `std::str::from_utf8` spent about 75 instructions on each of them (callgrind), more
/// than the rest of reading the field; [`short_ascii`] decides the ASCII case in a few.
/// Anything longer or not ASCII takes the standard check.
#[inline]
fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.len() <= 32 && short_ascii(bytes) {
        // SAFETY: every byte is below 0x80, so the bytes are ASCII, and ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes)
}

/// Whether every byte of `bytes` is below 0x80, reading whole words: eight bytes at a time,
/// the last word overlapping the one before; under eight bytes, two overlapping reads of
/// four or of two bytes.
///
/// Callgrind, per call of the benchmark's echo (four field names and an 11-byte string on
/// each side): an OR over the bytes one at a time cost 112 instructions more than
/// `<[u8]>::is_ascii`, which goes a byte at a time below eight bytes and cost about
/// 80 more than this.
#[inline]
fn short_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    fn word<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes[at..at + N]);
        out
    }
    let n = bytes.len();
    let bits = if n >= 8 {
        let mut bits = 0;
        let mut at = 0;
        while at + 8 <= n {
            bits |= u64::from_le_bytes(word(bytes, at));
            at += 8;
        }
        bits | u64::from_le_bytes(word(bytes, n - 8))
    } else if n >= 4 {
        u64::from(u32::from_le_bytes(word(bytes, 0)) | u32::from_le_bytes(word(bytes, n - 4)))
    } else if n >= 2 {
        u64::from(u16::from_le_bytes(word(bytes, 0)) | u16::from_le_bytes(word(bytes, n - 2)))
    } else {
        bytes.first().map_or(0, |&b| u64::from(b))
    };
    bits & HIGH == 0
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.any(visitor, true)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            return visitor.visit_none();
        }
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let len = match self.peek()? {
            marker @ 0x80..=0x8f => {
                self.pos += 1;
                (marker & 0x0f) as usize
            }
            0xde => {
                self.pos += 1;
                self.len16()?
            }
            0xdf => {
                self.pos += 1;
                self.len32()?
            }
            // A unit variant, by its name.
            _ => return visitor.visit_enum(UnitVariant { de: self }),
        };
        if len != 1 {
            return Err(Error::new(format!(
                "an enum is a map of one entry, {{variant: value}}, not of {len}"
            )));
        }
        self.enter()?;
        let value = visitor.visit_enum(Variant { de: &mut *self });
        self.depth_left += 1;
        value
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == EXT_STRUCT_NAME {
            let start = self.pos;
            self.byte()?;
            let bytes = self.ext_bytes(start)?;
            let mut inner = rmp_serde::Deserializer::from_read_ref(bytes);
            return de::Deserializer::deserialize_newtype_struct(&mut inner, name, visitor)
                .map_err(|e| Error::new(e.to_string()));
        }
        visitor.visit_newtype_struct(self)
    }

    /// A unit struct is written as `[]`; `nil` is read as one too.
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.peek()? {
            0xc0 | 0x90 => {
                self.pos += 1;
                visitor.visit_unit()
            }
            _ => self.any(visitor, true),
        }
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? {
            0xc4 => visitor.visit_i128(i128::from_be_bytes(self.wide()?)),
            _ => self.any(visitor, true),
        }
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? {
            0xc4 => visitor.visit_u128(u128::from_be_bytes(self.wide()?)),
            _ => self.any(visitor, true),
        }
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.any(visitor, false)
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.any(visitor, false)
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.any(visitor, false)
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.any(visitor, false)
    }

    /// A value nobody reads (an unknown field, say) is skipped by the scan, not decoded.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let len =
            crate::protocol::codec::value_len(rest, self.depth_left).map_err(|e| match e {
                // The scan counts from here: the limit it names is what was left of ours.
                DecodeError::Malformed { .. } => Error::malformed(self.max_depth),
                other => Error(other),
            })?;
        self.pos += len;
        visitor.visit_unit()
    }

    /// Field and variant names, nearly always short strings: read without the general
    /// dispatch on the marker.
    #[inline]
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if let Some(&marker @ 0xa0..=0xbf) = self.data.get(self.pos) {
            self.pos += 1;
            return self.str((marker & 0x1f) as usize, visitor);
        }
        self.any(visitor, true)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string
        bytes byte_buf unit map
    }
}

impl Decoder<'_> {
    /// The 16 bytes of an `i128` or `u128` written as `bin`.
    fn wide(&mut self) -> Result<[u8; 16], Error> {
        self.pos += 1;
        match self.len8()? {
            16 => self.array(),
            len => Err(Error::new(format!("a 128-bit integer is 16 bytes, not {len}"))),
        }
    }
}

/// An array's elements.
struct Elements<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    /// What serde pre-allocates for: see [`Decoder::promise`].
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        Some(self.de.promise(self.left, 1))
    }
}

/// A map's entries.
struct Entries<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    /// As for arrays, with two bytes at least to an entry.
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        Some(self.de.promise(self.left, 2))
    }
}

/// An enum written as `{variant: value}`.
struct Variant<'a, 'de> {
    de: &'a mut Decoder<'de>,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        Ok((seed.deserialize(&mut *self.de)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.de.byte()? {
            0xc0 => Ok(()),
            _ => Err(Error::new("a unit variant written as a map holds nil")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self.de, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self.de, "", fields, visitor)
    }
}

/// An enum written as its variant's name (a unit variant).
struct UnitVariant<'a, 'de> {
    de: &'a mut Decoder<'de>,
}

impl<'de> de::EnumAccess<'de> for UnitVariant<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        Ok((seed.deserialize(&mut *self.de)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, Error> {
        Err(de::Error::invalid_type(Unexpected::UnitVariant, &"newtype variant"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(Unexpected::UnitVariant, &"tuple variant"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(Unexpected::UnitVariant, &"struct variant"))
    }
}

#[cfg(test)]
mod ascii_tests {
    use super::short_ascii;

    #[test]
    fn short_ascii_finds_a_high_byte_at_every_length_and_position() {
        for n in 0..=40 {
            let ascii = vec![b'a'; n];
            assert!(short_ascii(&ascii), "{n} ASCII bytes");
            for at in 0..n {
                for high in [0x80, 0xc3, 0xff] {
                    let mut bytes = ascii.clone();
                    bytes[at] = high;
                    assert!(!short_ascii(&bytes), "byte {high:#x} at {at} of {n}");
                }
            }
        }
    }
}
