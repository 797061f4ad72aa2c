use rpc_core::action;

pub struct Users;

impl Users {
    #[action(name = "hello")]
    pub async fn hello(&self) {}
}

fn main() {}
