use rpc_core::controller;

pub struct Secret(u64);

#[controller("vault")]
pub trait Vault {
    async fn store(&self, label: String, secret: Secret) -> u64;
}

fn main() {}
