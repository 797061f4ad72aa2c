use rpc_core::controller;

#[controller("users")]
pub trait Users {
    async fn hello(&self, title: &str) -> String;
}

fn main() {}
