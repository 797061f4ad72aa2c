use std::rc::Rc;

use rpc_core::controller;

#[controller("users")]
pub trait Users {
    async fn hello(&self, title: String) -> String;
}

struct UsersImpl;

impl Users for UsersImpl {
    async fn hello(&self, title: String) -> String {
        // An `Rc` held across an `.await`: the action's future is not `Send`.
        let title = Rc::new(title);
        std::future::ready(()).await;
        title.to_string()
    }
}

fn main() {}
