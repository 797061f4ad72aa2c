use rpc_core::controller;

#[controller("store")]
pub trait Store {
    async fn put<T>(&self, value: T) -> u64;
}

fn main() {}
