//! The client half of the shared-contract example: calls `examples::Users` through the
//! generated `UsersClient`.
//!
//! ```text
//! cargo run -p examples --bin users_client -- 127.0.0.1:8081
//! ```

use examples::UsersClient;
use rpc_tcp::RpcTcpClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".into());
    let client = RpcTcpClient::connect(addr).await?;
    let users = client.controller::<UsersClient>();
    println!("{}", users.hello("from the contract client".into()).await?);
    println!("{:?}", users.get_user(1).await?);
    Ok(())
}
