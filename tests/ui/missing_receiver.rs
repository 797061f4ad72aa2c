use rpc_core::controller;

#[controller("math")]
pub trait Math {
    async fn add(a: i64, b: i64) -> i64;
}

fn main() {}
