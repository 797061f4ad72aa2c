//! [`Blob`]: binary data that arrives without a copy.
//!
//! A `Vec<u8>` or `serde_bytes::ByteBuf` argument is copied out of the received frame into a
//! fresh allocation; for a 64 KiB payload that copy is most of what a call costs. A `Blob`
//! argument, result or stream item is instead a [`Bytes`] view into the frame the bytes came
//! in: no allocation, no copy. It encodes as MessagePack `bin`, exactly like `ByteBuf`, so the
//! two are interchangeable on the wire and a caller and a callee may each pick either.
//!
//! The view keeps the frame's buffer alive: a handler that keeps a small `Blob` cut from a
//! large message for long should [`Blob::copy_from_slice`] it.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

/// Binary data (MessagePack `bin`) that shares the received frame's memory. See the
/// [module docs](self).
///
/// ```
/// use rpc_core::Blob;
///
/// #[rpc_core::controller("files")]
/// pub trait Files {
///     /// Stores a file; the server reads it straight out of the received frame.
///     async fn put(&self, name: String, data: Blob) -> u64;
///     async fn get(&self, name: String) -> Blob;
/// }
///
/// let blob = Blob::from(vec![1, 2, 3]);
/// assert_eq!(&blob[..], &[1, 2, 3]);
/// assert_eq!(blob.len(), 3);
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(Bytes);

impl Blob {
    /// An empty blob.
    pub const fn new() -> Blob {
        Blob(Bytes::new())
    }

    /// A blob of static data (no allocation).
    pub const fn from_static(data: &'static [u8]) -> Blob {
        Blob(Bytes::from_static(data))
    }

    /// A blob holding its own copy of `data` (which then keeps no other buffer alive).
    pub fn copy_from_slice(data: &[u8]) -> Blob {
        Blob(Bytes::copy_from_slice(data))
    }

    /// The bytes, as a cheaply clonable [`Bytes`].
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes, as a [`Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Blob {
        Blob(bytes)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(data: Vec<u8>) -> Blob {
        Blob(Bytes::from(data))
    }
}

impl From<Blob> for Bytes {
    fn from(blob: Blob) -> Bytes {
        blob.0
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        deserializer.deserialize_bytes(BlobVisitor)
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("binary data")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, data: &'de [u8]) -> Result<Blob, E> {
        Ok(Blob(share_from_source(data).unwrap_or_else(|| Bytes::copy_from_slice(data))))
    }

    fn visit_bytes<E: de::Error>(self, data: &[u8]) -> Result<Blob, E> {
        Ok(Blob::copy_from_slice(data))
    }

    fn visit_byte_buf<E: de::Error>(self, data: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob::from(data))
    }

    /// An array of small integers (what a peer without a `bin` type might send).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        let mut data = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            data.push(byte);
        }
        Ok(Blob::from(data))
    }
}

scoped_tls::scoped_thread_local! {
    /// The received buffer being decoded on this thread, if the decoder set one. Scoped: it
    /// borrows the caller's `Bytes` for the length of the decode, so marking a buffer costs
    /// no reference count (it did, twice per decode, when this held a clone).
    static SOURCE: Bytes
}

/// Runs `decode` with `source` as the buffer that [`Blob`]s decoded meanwhile on this thread
/// share instead of copying (the receive paths wrap argument, reply and item decoding in it).
/// The outer source, if any, is back when this returns, also when `decode` panics.
pub(crate) fn decode_from<R>(source: &Bytes, decode: impl FnOnce() -> R) -> R {
    SOURCE.set(source, decode)
}

/// A view of `data` in the current source buffer, if `data` lies inside it.
fn share_from_source(data: &[u8]) -> Option<Bytes> {
    if data.is_empty() {
        return Some(Bytes::new());
    }
    if !SOURCE.is_set() {
        return None;
    }
    SOURCE.with(|source| {
        let start = source.as_ptr() as usize;
        let at = data.as_ptr() as usize;
        (at >= start && at + data.len() <= start + source.len()).then(|| source.slice_ref(data))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec;

    #[test]
    fn a_blob_decoded_from_a_source_shares_its_memory() {
        let encoded = Bytes::from(codec::encode_value(&Blob::from(vec![7u8; 1000])).unwrap());
        let blob: Blob = decode_from(&encoded, || codec::decode_value(&encoded)).unwrap();
        assert_eq!(&blob[..], &[7u8; 1000][..]);
        let inside = encoded.as_ptr_range();
        assert!(inside.contains(&blob.as_ptr()), "the blob points into the received buffer");
    }

    #[test]
    fn without_a_source_or_outside_it_a_blob_is_copied() {
        let encoded = codec::encode_value(&Blob::from(vec![1u8, 2, 3])).unwrap();
        let blob: Blob = codec::decode_value(&encoded).unwrap();
        assert_eq!(&blob[..], &[1, 2, 3]);
        assert!(!encoded.as_ptr_range().contains(&blob.as_ptr()));

        let unrelated = Bytes::from_static(b"unrelated");
        let blob: Blob = decode_from(&unrelated, || codec::decode_value(&encoded)).unwrap();
        assert_eq!(&blob[..], &[1, 2, 3]);
        assert!(!encoded.as_ptr_range().contains(&blob.as_ptr()));
    }

    #[test]
    fn blob_and_byte_buf_are_the_same_on_the_wire() {
        let bytes = vec![0u8, 1, 255];
        let as_blob = codec::encode_value(&Blob::from(bytes.clone())).unwrap();
        let as_buf = codec::encode_value(&serde_bytes::ByteBuf::from(bytes.clone())).unwrap();
        assert_eq!(as_blob, as_buf);
        let back: serde_bytes::ByteBuf = codec::decode_value(&as_blob).unwrap();
        assert_eq!(back.into_vec(), bytes);
        // An array of integers is accepted too.
        let as_array = codec::encode_value(&bytes).unwrap();
        assert_eq!(&codec::decode_value::<Blob>(&as_array).unwrap()[..], &bytes[..]);
    }

    #[test]
    fn the_outer_source_comes_back_after_a_nested_decode() {
        let outer = Bytes::from(codec::encode_value(&Blob::from(vec![9u8; 64])).unwrap());
        let inner = Bytes::from_static(b"inner");
        let blob: Blob = decode_from(&outer, || {
            decode_from(&inner, || ());
            codec::decode_value(&outer)
        })
        .unwrap();
        assert!(outer.as_ptr_range().contains(&blob.as_ptr()));
        assert!(!SOURCE.is_set(), "no source left behind");
    }
}
