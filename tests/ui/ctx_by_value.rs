use rpc_core::{controller, Context};

#[controller("me")]
pub trait Me {
    async fn whoami(&self, ctx: Context) -> String;
}

fn main() {}
