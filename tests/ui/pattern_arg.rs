use rpc_core::controller;

#[controller("geo")]
pub trait Geo {
    async fn distance(&self, (x, y): (f64, f64)) -> f64;
}

fn main() {}
