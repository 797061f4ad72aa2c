#![no_main]
//! Fuzz target `chunk_frames`: see `rpc_core::fuzzing::chunk_frames`.

use rpc_core::fuzzing;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzzing::chunk_frames(data));
