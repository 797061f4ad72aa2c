//! MessagePack for serde, written for this crate's hot path.
//!
//! Every call encodes its arguments and its answer and decodes both on the other side, so
//! this is the code a small call spends most of its instructions in. `rmp_serde` does the
//! same job through `io::Write` and `io::Read` one field at a time; this module writes
//! into the frame's buffer and reads from the frame's bytes directly, which took about
//! half the instructions per call (see `BENCHMARKS.md`, session 8).
//!
//! The format is exactly `rmp_serde`'s with `with_struct_map()` (structs as maps keyed by
//! field name): both encoders write the same bytes for the same value, and a value either
//! one wrote decodes the same with either. The tests below hold both to it.
//!
//! [`codec`](super::codec) is the way in: its functions apply the depth limit, refuse
//! trailing bytes and map this module's [`Error`] to the crate's error types.

mod decode;
mod encode;

use std::fmt;

use serde::{Deserialize, Serialize};

use super::codec::DecodeError;

pub(crate) use encode::{Output, write_array_len, write_bin, write_str, write_uint};

/// The newtype-struct name by which `rmp_serde` marks a MessagePack ext value (a tuple of
/// its type and its bytes); ext values are handed to `rmp_serde` as they are rare.
const EXT_STRUCT_NAME: &str = "_ExtStruct";

/// Why a value could not be encoded or decoded: serde's message (a type's own, like
/// "invalid type: string \"x\", expected u32"), or one of the ways a body can be
/// malformed, as [`DecodeError`] names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(DecodeError);

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error(DecodeError::Type(message.into()))
    }

    fn truncated() -> Error {
        Error(DecodeError::Truncated)
    }

    /// Bad syntax (the reserved marker 0xc1) or nesting beyond `max_depth`: what the
    /// pre-scan ([`value_len`](super::codec::value_len)) calls malformed, by the same name.
    fn malformed(max_depth: usize) -> Error {
        Error(DecodeError::Malformed { max_depth })
    }

    /// The error as the crate's [`DecodeError`].
    pub(crate) fn into_decode_error(self) -> DecodeError {
        self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Error {
        Error::new(message.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Error {
        Error::new(message.to_string())
    }
}

/// Appends `value`'s MessagePack encoding to `out`.
#[inline]
pub(crate) fn encode<O: Output, T: Serialize + ?Sized>(
    out: &mut O,
    value: &T,
) -> Result<(), Error> {
    value.serialize(&mut encode::Encoder::new(out))
}

/// Decodes the value at the start of `data`, nested at most `max_depth` levels deep, and
/// returns it with the number of bytes it took.
#[inline]
pub(crate) fn decode<'de, T: Deserialize<'de>>(
    data: &'de [u8],
    max_depth: usize,
) -> Result<(T, usize), Error> {
    let mut decoder = decode::Decoder::new(data, max_depth);
    let value = T::deserialize(&mut decoder)?;
    Ok((value, decoder.position()))
}

#[cfg(test)]
mod tests;
