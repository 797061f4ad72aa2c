use rpc_core::{controller, Context};

#[controller("me")]
pub trait Me {
    async fn whoami(&self, ctx: &Context, again: &Context) -> String;
}

fn main() {}
