use rpc_core::controller;

#[controller("counter")]
pub trait Counter {
    async fn increment(&mut self) -> u64;
}

fn main() {}
