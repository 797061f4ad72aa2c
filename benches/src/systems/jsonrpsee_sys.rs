//! jsonrpsee over WebSocket (JSON). Limits raised: 1024 concurrent requests per client, the
//! subscription buffer holds a whole 200 000-item stream, 20 000 connections per server.
//! Bytes travel as a JSON string (JSON's natural carrier of a blob).

use std::any::Any;
use std::net::SocketAddr;

use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee::server::{RpcModule, Server, ServerConfig};
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};

use crate::proto::{Small, payload_text, small};
use crate::systems::Rpc;

pub async fn server() -> (SocketAddr, Box<dyn Any>) {
    let config = ServerConfig::builder()
        .max_connections(20_000)
        .max_subscriptions_per_connection(1024)
        .set_message_buffer_capacity(1024)
        .max_request_body_size(16 << 20)
        .max_response_body_size(16 << 20)
        .ws_only()
        .build();
    let server = Server::builder().set_config(config).build("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let mut module = RpcModule::new(());
    module.register_method("echo", |params, _, _| params.one::<Small>()).unwrap();
    module.register_method("echo_text", |params, _, _| params.one::<String>()).unwrap();
    module
        .register_subscription(
            "sub_stream",
            "stream_item",
            "unsub_stream",
            |params, pending, _, _| async move {
                let n: u64 = params.one()?;
                let sink = pending.accept().await?;
                for i in 0..n {
                    sink.send(serde_json::value::to_raw_value(&i)?).await?;
                }
                Ok(())
            },
        )
        .unwrap();
    let handle = server.start(module);
    (addr, Box::new(handle))
}

pub async fn connect(addr: SocketAddr, stream_items: u64) -> WsClient {
    WsClientBuilder::default()
        .max_concurrent_requests(1024)
        .max_buffer_capacity_per_subscription(stream_items as usize + 1024)
        .max_request_size(16 << 20)
        .max_response_size(16 << 20)
        .build(format!("ws://{addr}"))
        .await
        .unwrap()
}

pub struct JsonRpc {
    client: WsClient,
    small: Small,
    text: String,
}

pub async fn client(addr: SocketAddr, payload_len: usize, stream_items: u64) -> JsonRpc {
    JsonRpc {
        client: connect(addr, stream_items).await,
        small: small(),
        text: payload_text(payload_len),
    }
}

impl Rpc for JsonRpc {
    async fn echo(&self) {
        let r: Small = self.client.request("echo", rpc_params![&self.small]).await.unwrap();
        debug_assert_eq!(r, self.small);
    }

    async fn echo_bytes(&self) {
        let r: String = self.client.request("echo_text", rpc_params![&self.text]).await.unwrap();
        assert_eq!(r.len(), self.text.len());
    }

    async fn stream(&self, n: u64) -> Option<u64> {
        let mut sub = self
            .client
            .subscribe::<u64, _>("sub_stream", rpc_params![n], "unsub_stream")
            .await
            .unwrap();
        let mut got = 0;
        while got < n {
            match sub.next().await {
                Some(Ok(v)) => {
                    debug_assert_eq!(v, got);
                    got += 1;
                }
                other => panic!("jsonrpsee stream ended after {got} items: {other:?}"),
            }
        }
        Some(got)
    }
}

pub async fn idle_connection(addr: SocketAddr) -> WsClient {
    let c = connect(addr, 16).await;
    let _: Small = c.request("echo", rpc_params![small()]).await.unwrap();
    c
}
