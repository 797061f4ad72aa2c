use rpc_core::controller;

#[controller]
pub trait Users {
    async fn hello(&self, title: String) -> String;
}

fn main() {}
