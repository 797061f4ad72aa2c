#![no_main]
//! Fuzz target `server_bytes`: see `rpc_core::fuzzing::server_bytes`.

use rpc_core::fuzzing;

use libfuzzer_sys::fuzz_target;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| rt.block_on(fuzzing::server_bytes(data)));
});
