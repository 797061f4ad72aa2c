#![no_main]
//! Fuzz target `message_decoders`: see `rpc_core::fuzzing::message_decoders`.

use rpc_core::fuzzing;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzzing::message_decoders(data));
