#![no_main]
//! Fuzz target `connection_ops`: see `rpc_core::fuzzing::connection_ops`.

// Until rpc-core exposes `pub mod fuzzing`, the module is compiled here from its source.
#[allow(unused_imports)]
use rpc_core::*;
#[path = "../../rpc-core/src/fuzzing.rs"]
#[allow(dead_code)]
mod fuzzing;

use libfuzzer_sys::fuzz_target;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| rt.block_on(fuzzing::connection_ops(data)));
});
