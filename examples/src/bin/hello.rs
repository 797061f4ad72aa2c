//! The README's first command: a server and a client in one process, talking over TCP.
//!
//! ```text
//! cargo run -p examples --bin hello
//! ```

use examples::{CannotSaveUser, User, UsersClient, UsersImpl, UsersServer};
use futures::StreamExt;
use rpc_core::RpcKernel;
use rpc_tcp::{RpcTcpClient, RpcTcpServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // Server: one kernel, one controller, TCP on a free port.
    let kernel = RpcKernel::new();
    kernel.register(UsersServer::new(UsersImpl::new()));
    let server = RpcTcpServer::bind("127.0.0.1:0", kernel.clone()).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = stopped.await;
    }));
    println!("server listening on {addr}");

    // Client: a typed proxy generated from the shared trait.
    let client = RpcTcpClient::connect(addr).await?;
    let users = client.controller::<UsersClient>();

    let greeting = users.hello("World".into()).await?;
    println!("client -> users.hello(\"World\")   = {greeting:?}");

    let (a, b) = tokio::join!(users.get_user(1), users.get_user(2));
    println!("client -> users.get_user(1)        = {:?}", a?);
    match b {
        Err(e) => match e.downcast::<CannotSaveUser>() {
            Some(typed) => println!("client -> users.get_user(2)        = typed error {typed:?}"),
            None => println!("client -> users.get_user(2)        = error {e}"),
        },
        Ok(user) => println!("client -> users.get_user(2)        = {user:?}"),
    }

    let grace = User { id: 2, first_name: "Grace".into(), last_name: "Hopper".into() };
    users.save_user(grace).await?;
    println!(
        "client -> users.save_user(Grace)   = ok; get_user(2) = {:?}",
        users.get_user(2).await?
    );

    let mut ticks = users.ticks(10, 5).await?;
    let mut seen = Vec::new();
    while let Some(tick) = ticks.next().await {
        seen.push(tick?);
    }
    println!("client -> users.ticks(10, 5)       = {seen:?}");
    println!("client -> users.whoami()           = {:?}", users.whoami().await?);

    let stats = kernel.stats();
    println!(
        "server stats: {} calls, {} streams, {} bytes in, {} bytes out",
        stats.calls, stats.total_streams, stats.bytes_in, stats.bytes_out
    );

    let _ = stop.send(());
    serving.await??;
    Ok(())
}
