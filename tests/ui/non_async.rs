use rpc_core::controller;

#[controller("users")]
pub trait Users {
    fn hello(&self, title: String) -> String;
}

fn main() {}
