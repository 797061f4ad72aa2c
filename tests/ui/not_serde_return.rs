use rpc_core::controller;

pub struct Handle(u64);

#[controller("files")]
pub trait Files {
    async fn open(&self, path: String) -> Handle;
}

fn main() {}
