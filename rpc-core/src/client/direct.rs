//! [`RpcDirectClient`]: a client joined to a kernel in the same process.

use std::ops::Deref;

use super::{BoxFuture, Connector, RpcClient};
use crate::connection::Connection;
use crate::error::RpcError;
use crate::kernel::RpcKernel;
use crate::transport::memory;

/// Connects to a kernel in the same process through [`memory::pair`].
struct MemoryConnector {
    server: RpcKernel,
}

impl Connector for MemoryConnector {
    fn connect(&self, kernel: RpcKernel) -> BoxFuture<'static, Result<Connection, RpcError>> {
        let server = self.server.clone();
        Box::pin(async move {
            let (client_end, server_end) = memory::pair();
            let accepting = tokio::spawn(async move { server.accept(server_end).await });
            let conn = kernel.dial(client_end).await?;
            match accepting.await {
                Ok(Ok(_)) => Ok(conn),
                Ok(Err(e)) => Err(e),
                Err(e) => {
                    Err(RpcError::disconnected(format!("the in-memory server task failed: {e}")))
                }
            }
        })
    }
}

/// An in-memory client of a kernel: the same API and the same protocol as a network client,
/// with no socket. For tests and for calling a kernel from inside its own process.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let kernel = rpc_core::RpcKernel::new();
/// let client = rpc_core::RpcDirectClient::new(&kernel);
/// client.connect().await.unwrap();
/// assert_eq!(kernel.stats().connections, 1);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct RpcDirectClient {
    client: RpcClient,
}

impl RpcDirectClient {
    /// A client of `kernel` (connects on the first call).
    pub fn new(kernel: &RpcKernel) -> RpcDirectClient {
        RpcDirectClient::with_limits(kernel, crate::Limits::default())
    }

    /// A client of `kernel` whose own side enforces `limits` (call timeout, ...).
    pub fn with_limits(kernel: &RpcKernel, limits: crate::Limits) -> RpcDirectClient {
        RpcDirectClient {
            client: RpcClient::with_limits(MemoryConnector { server: kernel.clone() }, limits),
        }
    }
}

impl Deref for RpcDirectClient {
    type Target = RpcClient;

    fn deref(&self) -> &RpcClient {
        &self.client
    }
}
