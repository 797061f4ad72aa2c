#![no_main]
//! Fuzz target `chunk_frames`: see `rpc_core::fuzzing::chunk_frames`.

// Until rpc-core exposes `pub mod fuzzing`, the module is compiled here from its source.
#[allow(unused_imports)]
use rpc_core::*;
#[path = "../../rpc-core/src/fuzzing.rs"]
#[allow(dead_code)]
mod fuzzing;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzzing::chunk_frames(data));
