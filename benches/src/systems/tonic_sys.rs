//! tonic (gRPC over HTTP/2), with the service and client written by hand exactly as
//! tonic-build generates them from
//!
//! ```proto
//! service Bench {
//!   rpc Echo(Small) returns (Small);
//!   rpc EchoBytes(Blob) returns (Blob);
//!   rpc Stream(StreamReq) returns (stream Item);
//! }
//! ```
//!
//! so no `protoc` is needed. HTTP/2 allows 1024 concurrent streams per connection here (the
//! default would cap the 256-in-flight workload); TCP_NODELAY on both sides.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::codegen::{BoxFuture, BoxStream, Context, Poll, Service, StdError, http};
use tonic::transport::{Channel, Endpoint};

use crate::proto::{BlobPb, ItemPb, SmallPb, StreamReqPb, payload, small_pb};
use crate::systems::Rpc;

// ------------------------------------------------------------------------------------------
// Server, as generated.

#[tonic::codegen::async_trait]
pub trait Bench: Send + Sync + 'static {
    async fn echo(
        &self,
        request: tonic::Request<SmallPb>,
    ) -> Result<tonic::Response<SmallPb>, tonic::Status>;
    async fn echo_bytes(
        &self,
        request: tonic::Request<BlobPb>,
    ) -> Result<tonic::Response<BlobPb>, tonic::Status>;
    type StreamStream: tonic::codegen::tokio_stream::Stream<Item = Result<ItemPb, tonic::Status>>
        + Send
        + 'static;
    async fn stream(
        &self,
        request: tonic::Request<StreamReqPb>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status>;
}

pub struct BenchServer<T> {
    inner: Arc<T>,
}

impl<T> BenchServer<T> {
    pub fn new(inner: T) -> Self {
        Self { inner: Arc::new(inner) }
    }
}

impl<T> Clone for BenchServer<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<T, B> Service<http::Request<B>> for BenchServer<T>
where
    T: Bench,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            "/bench.Bench/Echo" => {
                struct EchoSvc<T: Bench>(pub Arc<T>);
                impl<T: Bench> tonic::server::UnaryService<SmallPb> for EchoSvc<T> {
                    type Response = SmallPb;
                    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;
                    fn call(&mut self, request: tonic::Request<SmallPb>) -> Self::Future {
                        let inner = Arc::clone(&self.0);
                        Box::pin(async move { <T as Bench>::echo(&inner, request).await })
                    }
                }
                let inner = self.inner.clone();
                Box::pin(async move {
                    let method = EchoSvc(inner);
                    let codec = tonic_prost::ProstCodec::default();
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok(grpc.unary(method, req).await)
                })
            }
            "/bench.Bench/EchoBytes" => {
                struct EchoBytesSvc<T: Bench>(pub Arc<T>);
                impl<T: Bench> tonic::server::UnaryService<BlobPb> for EchoBytesSvc<T> {
                    type Response = BlobPb;
                    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;
                    fn call(&mut self, request: tonic::Request<BlobPb>) -> Self::Future {
                        let inner = Arc::clone(&self.0);
                        Box::pin(async move { <T as Bench>::echo_bytes(&inner, request).await })
                    }
                }
                let inner = self.inner.clone();
                Box::pin(async move {
                    let method = EchoBytesSvc(inner);
                    let codec = tonic_prost::ProstCodec::default();
                    let mut grpc = tonic::server::Grpc::new(codec)
                        .max_decoding_message_size(16 << 20)
                        .max_encoding_message_size(16 << 20);
                    Ok(grpc.unary(method, req).await)
                })
            }
            "/bench.Bench/Stream" => {
                struct StreamSvc<T: Bench>(pub Arc<T>);
                impl<T: Bench> tonic::server::ServerStreamingService<StreamReqPb> for StreamSvc<T> {
                    type Response = ItemPb;
                    type ResponseStream = T::StreamStream;
                    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;
                    fn call(&mut self, request: tonic::Request<StreamReqPb>) -> Self::Future {
                        let inner = Arc::clone(&self.0);
                        Box::pin(async move { <T as Bench>::stream(&inner, request).await })
                    }
                }
                let inner = self.inner.clone();
                Box::pin(async move {
                    let method = StreamSvc(inner);
                    let codec = tonic_prost::ProstCodec::default();
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok(grpc.server_streaming(method, req).await)
                })
            }
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers
                    .insert(tonic::Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                Ok(response)
            }),
        }
    }
}

impl<T> tonic::server::NamedService for BenchServer<T> {
    const NAME: &'static str = "bench.Bench";
}

// ------------------------------------------------------------------------------------------
// Client, as generated.

#[derive(Debug, Clone)]
pub struct BenchClient {
    inner: tonic::client::Grpc<Channel>,
}

impl BenchClient {
    pub fn new(channel: Channel) -> Self {
        let inner = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        Self { inner }
    }

    pub async fn echo(
        &mut self,
        request: impl tonic::IntoRequest<SmallPb>,
    ) -> Result<tonic::Response<SmallPb>, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static("/bench.Bench/Echo");
        let mut req = request.into_request();
        req.extensions_mut().insert(tonic::codegen::GrpcMethod::new("bench.Bench", "Echo"));
        self.inner.unary(req, path, codec).await
    }

    pub async fn echo_bytes(
        &mut self,
        request: impl tonic::IntoRequest<BlobPb>,
    ) -> Result<tonic::Response<BlobPb>, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static("/bench.Bench/EchoBytes");
        let mut req = request.into_request();
        req.extensions_mut().insert(tonic::codegen::GrpcMethod::new("bench.Bench", "EchoBytes"));
        self.inner.unary(req, path, codec).await
    }

    pub async fn stream(
        &mut self,
        request: impl tonic::IntoRequest<StreamReqPb>,
    ) -> Result<tonic::Response<tonic::codec::Streaming<ItemPb>>, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static("/bench.Bench/Stream");
        let mut req = request.into_request();
        req.extensions_mut().insert(tonic::codegen::GrpcMethod::new("bench.Bench", "Stream"));
        self.inner.server_streaming(req, path, codec).await
    }
}

// ------------------------------------------------------------------------------------------
// The benchmark's service and client.

struct Impl;

#[tonic::codegen::async_trait]
impl Bench for Impl {
    async fn echo(
        &self,
        request: tonic::Request<SmallPb>,
    ) -> Result<tonic::Response<SmallPb>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    async fn echo_bytes(
        &self,
        request: tonic::Request<BlobPb>,
    ) -> Result<tonic::Response<BlobPb>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    type StreamStream = BoxStream<ItemPb>;

    async fn stream(
        &self,
        request: tonic::Request<StreamReqPb>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let n = request.into_inner().n;
        let items = futures::stream::iter((0..n).map(|v| Ok(ItemPb { v })));
        Ok(tonic::Response::new(Box::pin(items)))
    }
}

pub async fn server() -> (SocketAddr, Box<dyn Any>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(1024)
        .add_service(BenchServer::new(Impl));
    tokio::spawn(router.serve_with_incoming(incoming));
    (addr, Box::new(()))
}

pub async fn connect(addr: SocketAddr) -> BenchClient {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    BenchClient::new(channel)
}

pub struct TonicRpc {
    client: BenchClient,
    data: bytes::Bytes,
}

pub async fn client(addr: SocketAddr, payload_len: usize) -> TonicRpc {
    TonicRpc { client: connect(addr).await, data: payload(payload_len).into() }
}

impl Rpc for TonicRpc {
    async fn echo(&self) {
        let mut c = self.client.clone();
        let r = c.echo(small_pb()).await.unwrap().into_inner();
        debug_assert_eq!(r, small_pb());
    }

    async fn echo_bytes(&self) {
        let mut c = self.client.clone();
        let r = c.echo_bytes(BlobPb { data: self.data.clone() }).await.unwrap().into_inner();
        assert_eq!(r.data.len(), self.data.len());
    }

    async fn stream(&self, n: u64) -> Option<u64> {
        let mut c = self.client.clone();
        let mut s = c.stream(StreamReqPb { n }).await.unwrap().into_inner();
        let mut got = 0;
        while let Some(item) = s.message().await.unwrap() {
            debug_assert_eq!(item.v, got);
            got += 1;
        }
        Some(got)
    }
}

pub async fn idle_connection(addr: SocketAddr) -> BenchClient {
    let mut c = connect(addr).await;
    c.echo(small_pb()).await.unwrap();
    c
}
