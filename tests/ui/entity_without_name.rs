use rpc_core::Entity;

#[derive(Entity)]
pub struct User {
    pub id: u64,
}

fn main() {}
