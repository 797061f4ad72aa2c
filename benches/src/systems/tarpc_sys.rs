//! tarpc over TCP (bincode, length-delimited frames, TCP_NODELAY), limits raised so that 256
//! calls can be in flight. tarpc has no server streaming.

use std::any::Any;
use std::net::SocketAddr;

use futures::StreamExt;
use serde_bytes::ByteBuf;
use tarpc::server::Channel;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context, server};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::proto::{Small, payload, small};
use crate::systems::Rpc;

#[tarpc::service]
pub trait TBench {
    async fn echo(s: Small) -> Small;
    async fn echo_bytes(data: ByteBuf) -> ByteBuf;
}

#[derive(Clone)]
struct TServer;

impl TBench for TServer {
    async fn echo(self, _: context::Context, s: Small) -> Small {
        s
    }

    async fn echo_bytes(self, _: context::Context, data: ByteBuf) -> ByteBuf {
        data
    }
}

fn framed(stream: TcpStream) -> Framed<TcpStream, LengthDelimitedCodec> {
    stream.set_nodelay(true).unwrap();
    Framed::new(stream, LengthDelimitedCodec::builder().max_frame_length(16 << 20).new_codec())
}

pub async fn server() -> (SocketAddr, Box<dyn Any>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let transport = tarpc::serde_transport::new(framed(stream), Bincode::default());
            let config = server::Config { pending_response_buffer: 1024 };
            let channel = server::BaseChannel::new(config, transport);
            tokio::spawn(channel.execute(TServer.serve()).for_each(|response| async move {
                tokio::spawn(response);
            }));
        }
    });
    (addr, Box::new(()))
}

pub async fn connect(addr: SocketAddr) -> TBenchClient {
    let stream = TcpStream::connect(addr).await.unwrap();
    let transport = tarpc::serde_transport::new(framed(stream), Bincode::default());
    let mut config = client::Config::default();
    config.max_in_flight_requests = 1024;
    config.pending_request_buffer = 1024;
    TBenchClient::new(config, transport).spawn()
}

pub struct TarpcRpc {
    client: TBenchClient,
    small: Small,
    data: ByteBuf,
}

pub async fn client(addr: SocketAddr, payload_len: usize) -> TarpcRpc {
    TarpcRpc {
        client: connect(addr).await,
        small: small(),
        data: ByteBuf::from(payload(payload_len)),
    }
}

impl Rpc for TarpcRpc {
    async fn echo(&self) {
        let r = self.client.echo(context::current(), self.small.clone()).await.unwrap();
        debug_assert_eq!(r, self.small);
    }

    async fn echo_bytes(&self) {
        let r = self.client.echo_bytes(context::current(), self.data.clone()).await.unwrap();
        assert_eq!(r.len(), self.data.len());
    }

    async fn stream(&self, _n: u64) -> Option<u64> {
        None
    }
}

/// One connection that made one call, kept open.
pub async fn idle_connection(addr: SocketAddr) -> TBenchClient {
    let c = connect(addr).await;
    c.echo(context::current(), small()).await.unwrap();
    c
}
