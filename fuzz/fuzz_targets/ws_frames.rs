#![no_main]
//! Fuzz target `ws_frames`: see `rpc_ws::fuzzing::ws_frames`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rpc_ws::fuzzing::ws_frames(data);
});
