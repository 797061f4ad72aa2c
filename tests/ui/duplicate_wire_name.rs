use rpc_core::controller;

#[controller("users")]
pub trait Users {
    async fn get(&self, id: u64) -> String;
    #[action(name = "get")]
    async fn fetch(&self, id: u64) -> String;
}

fn main() {}
