//! [`CallTarget`]: where a generated proxy's calls go.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RpcClient;
use crate::connection::Connection;
use crate::connection::calls::CallSpec;
use crate::error::RpcError;
use crate::stream::RpcStream;

#[derive(Clone)]
enum Via {
    /// Through a client's connection, (re)connecting as needed.
    Client(RpcClient),
    /// Through one fixed connection (server-to-client calls).
    Connection(Connection),
}

/// Where a proxy's calls go: a client's connection or a fixed connection, optionally routed
/// to a peer, with an optional timeout. Generated proxies hold one.
#[derive(Clone)]
pub struct CallTarget {
    via: Via,
    route: Option<Bytes>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for CallTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTarget")
            .field(
                "via",
                &match &self.via {
                    Via::Client(_) => "client".to_string(),
                    Via::Connection(c) => format!("connection {}", c.id()),
                },
            )
            .field("routed", &self.route.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CallTarget {
    pub(crate) fn client(client: RpcClient) -> CallTarget {
        CallTarget { via: Via::Client(client), route: None, timeout: None }
    }

    pub(crate) fn connection(conn: Connection) -> CallTarget {
        CallTarget { via: Via::Connection(conn), route: None, timeout: None }
    }

    pub(crate) fn routed(mut self, route: Bytes) -> CallTarget {
        self.route = Some(route);
        self
    }

    /// The same target with calls timing out after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> CallTarget {
        CallTarget { timeout: Some(timeout), ..self.clone() }
    }

    async fn connection_and_timeout(
        &self,
    ) -> Result<(Arc<crate::connection::ConnShared>, Duration), RpcError> {
        let conn = match &self.via {
            // The usual case, a live connection, is checked without an await; connecting
            // (rare) is boxed so that its state does not enlarge every call's future.
            Via::Client(client) => match client.live_connection() {
                Some(conn) => conn,
                None => Box::pin(client.connection()).await?,
            },
            Via::Connection(conn) => conn.clone(),
        };
        let timeout = self.timeout.unwrap_or(conn.shared.limits.call_timeout);
        Ok((conn.shared, timeout))
    }

    fn spec<'a, A: ?Sized>(
        &'a self,
        controller: &'a str,
        action: &'a str,
        args: &'a A,
        timeout: Duration,
    ) -> CallSpec<'a, A> {
        CallSpec { controller, action, args, route: self.route.as_deref(), timeout }
    }

    /// Calls a unary action. `args` must serialize as an array (a tuple, or
    /// [`NoArgs`](crate::NoArgs)).
    pub async fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        controller: &str,
        action: &str,
        args: &A,
    ) -> Result<R, RpcError> {
        let (conn, timeout) = self.connection_and_timeout().await?;
        conn.call(self.spec(controller, action, args, timeout)).await
    }

    /// Calls a streaming action; resolves once the other side accepted the subscription.
    pub async fn call_stream<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        controller: &str,
        action: &str,
        args: &A,
    ) -> Result<RpcStream<R>, RpcError> {
        let (conn, timeout) = self.connection_and_timeout().await?;
        conn.call_stream::<A, R, ()>(self.spec(controller, action, args, timeout), None).await
    }

    /// Calls an action that takes an argument stream and answers one value. The items of
    /// `input` are sent as the callee grants credit.
    pub async fn call_with_stream<A, T, R>(
        &self,
        controller: &str,
        action: &str,
        args: &A,
        input: RpcStream<T>,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        T: Serialize + Send + 'static,
        R: DeserializeOwned,
    {
        let (conn, timeout) = self.connection_and_timeout().await?;
        conn.call_with_input(self.spec(controller, action, args, timeout), input).await
    }

    /// Calls an action that streams both ways.
    pub async fn call_stream_with_stream<A, T, R>(
        &self,
        controller: &str,
        action: &str,
        args: &A,
        input: RpcStream<T>,
    ) -> Result<RpcStream<R>, RpcError>
    where
        A: Serialize + ?Sized,
        T: Serialize + Send + 'static,
        R: DeserializeOwned,
    {
        let (conn, timeout) = self.connection_and_timeout().await?;
        conn.call_stream(self.spec(controller, action, args, timeout), Some(input)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client with many calls in flight holds one call future per call: rare state
    /// (connecting, waiting for a slot, chunked transfers, argument streams, progress
    /// scopes) is boxed so that the common call stays small. It was 3 KiB before.
    #[tokio::test]
    async fn a_unary_call_future_stays_small() {
        let kernel = crate::RpcKernel::new();
        let client = crate::RpcDirectClient::new(&kernel);
        client.connect().await.unwrap();
        let target = CallTarget::client((*client).clone());
        let call = target.call::<(u64,), u64>("c", "a", &(1u64,));
        let size = std::mem::size_of_val(&call);
        assert!(size <= 768, "a unary call's future takes {size} bytes");
    }
}
