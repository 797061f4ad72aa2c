//! The values every system moves: one small struct, a byte payload, stream items (u64).

use serde::{Deserialize, Serialize};

/// The small struct of the unary and throughput workloads (about 40 bytes encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Small {
    pub id: u64,
    pub name: String,
    pub flag: bool,
    pub value: f64,
}

pub fn small() -> Small {
    Small { id: 42, name: "hello world".into(), flag: true, value: 1.5 }
}

/// The same struct for gRPC, as prost would generate it from
/// `message Small { uint64 id = 1; string name = 2; bool flag = 3; double value = 4; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SmallPb {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(bool, tag = "3")]
    pub flag: bool,
    #[prost(double, tag = "4")]
    pub value: f64,
}

pub fn small_pb() -> SmallPb {
    SmallPb { id: 42, name: "hello world".into(), flag: true, value: 1.5 }
}

/// `message Blob { bytes data = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlobPb {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: bytes::Bytes,
}

/// `message StreamReq { uint64 n = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamReqPb {
    #[prost(uint64, tag = "1")]
    pub n: u64,
}

/// `message Item { uint64 v = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemPb {
    #[prost(uint64, tag = "1")]
    pub v: u64,
}

pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// The payload as text, for JSON-RPC (whose natural carrier of bytes is a string).
pub fn payload_text(len: usize) -> String {
    (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}
