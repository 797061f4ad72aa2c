use rpc_core::controller;

#[controller("users")]
pub trait Users {
    #[action(grup = "admin")]
    async fn delete(&self, id: u64);
}

fn main() {}
