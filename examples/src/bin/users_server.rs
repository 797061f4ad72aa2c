//! The server half of the shared-contract example: implements `examples::Users`.
//!
//! ```text
//! cargo run -p examples --bin users_server -- 127.0.0.1:8081
//! ```

use examples::{UsersImpl, UsersServer};
use rpc_core::RpcKernel;
use rpc_tcp::RpcTcpServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".into());
    let kernel = RpcKernel::new();
    kernel.register(UsersServer::new(UsersImpl::new()));
    let server = RpcTcpServer::bind(addr, kernel).await?;
    println!("listening on {}", server.local_addr()?);
    server
        .serve_with_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
