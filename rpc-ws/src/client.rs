//! [`RpcWebSocketClient`].

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::client::BoxFuture;
use rpc_core::transport::TransportInfo;
use rpc_core::{Connection, Connector, Limits, RpcClient, RpcError, RpcKernel};
use rpc_tcp::tls::{ALPN_HTTP1, TlsConnector};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use crate::server::timed_out;
use crate::socket::WsSocket;
use crate::transport::{max_message_size, websocket_config};

/// The TLS settings of a `wss://` client: the connector, or why none could be built.
#[derive(Clone)]
enum Tls {
    Ready(TlsConnector),
    Failed(String),
}

/// A client config trusting the Mozilla roots (webpki-roots), with the ring provider passed
/// explicitly (no process-wide provider needed).
fn default_tls() -> Tls {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => Tls::Ready(TlsConnector::new(
            builder.with_root_certificates(roots).with_no_client_auth(),
            ALPN_HTTP1,
            false,
        )),
        Err(e) => Tls::Failed(format!("no usable TLS configuration: {e}")),
    }
}

struct WsConnector {
    url: String,
    /// For `wss://`: the explicit config's connector, or the default one, built on first use.
    tls: parking_lot::Mutex<Option<Tls>>,
    timeout: Duration,
}

impl WsConnector {
    fn tls(&self) -> Tls {
        self.tls.lock().get_or_insert_with(default_tls).clone()
    }
}

impl Connector for WsConnector {
    fn connect(&self, kernel: RpcKernel) -> BoxFuture<'static, Result<Connection, RpcError>> {
        let request = self.url.as_str().into_client_request();
        let url = self.url.clone();
        let timeout = self.timeout;
        let secure = request.as_ref().is_ok_and(|r| r.uri().scheme_str() == Some("wss"));
        let tls = secure.then(|| self.tls());
        Box::pin(async move {
            let request = request.map_err(|e| {
                RpcError::disconnected(format!("invalid WebSocket URL {url:?}: {e}"))
            })?;
            let uri = request.uri();
            let (host, port) = match (uri.scheme_str(), uri.host()) {
                (Some("ws"), Some(host)) => (host.to_string(), uri.port_u16().unwrap_or(80)),
                (Some("wss"), Some(host)) => (host.to_string(), uri.port_u16().unwrap_or(443)),
                _ => {
                    return Err(RpcError::disconnected(format!(
                        "invalid WebSocket URL {url:?}: expected ws://host[:port]/path or wss://..."
                    )));
                }
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let addr = host.trim_start_matches('[').trim_end_matches(']');
            let stream = tokio::time::timeout_at(deadline, TcpStream::connect((addr, port)))
                .await
                .map_err(|_| {
                    RpcError::disconnected(format!(
                        "connecting timed out after {timeout:?} (Limits::handshake_timeout)"
                    ))
                })?
                .map_err(|e| RpcError::disconnected(format!("could not connect to {url}: {e}")))?;
            stream.set_nodelay(true).map_err(|e| RpcError::disconnected(e.to_string()))?;
            let remote = stream.peer_addr().ok();
            let Some(tls) = tls else {
                let info = TransportInfo { remote_addr: remote, kind: "ws", peer_identity: None };
                return upgrade(kernel, request, stream, info, deadline, timeout).await;
            };
            let connector = match tls {
                Tls::Ready(connector) => connector,
                Tls::Failed(reason) => return Err(RpcError::disconnected(reason)),
            };
            let stream = tokio::time::timeout_at(deadline, connector.connect(&host, stream))
                .await
                .map_err(|_| timed_out("TLS", timeout))?
                .map_err(|e| RpcError::disconnected(format!("TLS handshake failed: {e}")))?;
            let info = TransportInfo { remote_addr: remote, kind: "wss", peer_identity: None };
            upgrade(kernel, request, stream, info, deadline, timeout).await
        })
    }
}

async fn upgrade<S>(
    kernel: RpcKernel,
    request: Request,
    stream: S,
    info: TransportInfo,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Connection, RpcError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = websocket_config(&kernel.limits());
    let (ws, _response) = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    .map_err(|_| timed_out("WebSocket upgrade", timeout))?
    .map_err(|e| RpcError::disconnected(format!("WebSocket upgrade failed: {e}")))?;
    // tungstenite did the upgrade; frames are ours to read and write (`socket`). The server
    // sends nothing before our Hello (`PROTOCOL.md` section 5), so tungstenite holds no
    // bytes of it.
    let max_message = max_message_size(&kernel.limits());
    kernel.dial(WsSocket::new(ws.into_inner(), info, false, max_message)).await
}

/// A client over WebSocket: an [`RpcClient`] (it derefs to one) that dials a `ws://` or
/// `wss://` URL.
///
/// Dialing, TLS and the upgrade together must finish within `Limits::handshake_timeout`
/// (default 10 s). `wss://` URLs verify the server against the Mozilla root certificates
/// unless a config is given ([`RpcWebSocketClient::connect_tls`]). When the connection
/// drops, calls in flight and open streams end at once with `Disconnected`; the next call
/// dials again, and [`RpcClient::on_connect`] is where to restore what the application needs
/// (nothing is restored implicitly).
///
/// ```no_run
/// # async fn run() -> Result<(), rpc_core::RpcError> {
/// let client = rpc_ws::RpcWebSocketClient::connect("ws://127.0.0.1:8082/rpc").await?;
/// let lazy = rpc_ws::RpcWebSocketClient::new("wss://example.com/rpc"); // on the first call
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RpcWebSocketClient {
    client: RpcClient,
}

impl RpcWebSocketClient {
    /// Connects now (and fails if the server cannot be reached or refuses the upgrade).
    pub async fn connect(url: impl Into<String>) -> Result<RpcWebSocketClient, RpcError> {
        let client = RpcWebSocketClient::new(url);
        client.client.connect().await?;
        Ok(client)
    }

    /// A client that connects on its first call, and again on the next call after a
    /// disconnect.
    pub fn new(url: impl Into<String>) -> RpcWebSocketClient {
        RpcWebSocketClient::with_limits(url, Limits::default())
    }

    /// As [`RpcWebSocketClient::new`], with the given limits (call timeout, frame size,
    /// handshake deadline, ...).
    pub fn with_limits(url: impl Into<String>, limits: Limits) -> RpcWebSocketClient {
        RpcWebSocketClient::build(url.into(), None, limits)
    }

    /// Connects now to a `wss://` URL, verifying the server with `config` (its roots; a
    /// client certificate for mutual TLS). ALPN `"http/1.1"` is added to the config.
    ///
    /// ```no_run
    /// # async fn run(client_config: rustls::ClientConfig) -> Result<(), rpc_core::RpcError> {
    /// let client = rpc_ws::RpcWebSocketClient::connect_tls("wss://localhost:8443/rpc", client_config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_tls(
        url: impl Into<String>,
        config: rustls::ClientConfig,
    ) -> Result<RpcWebSocketClient, RpcError> {
        let client = RpcWebSocketClient::new_tls(url, config);
        client.client.connect().await?;
        Ok(client)
    }

    /// As [`RpcWebSocketClient::connect_tls`], connecting on the first call.
    pub fn new_tls(url: impl Into<String>, config: rustls::ClientConfig) -> RpcWebSocketClient {
        RpcWebSocketClient::with_limits_tls(url, config, Limits::default())
    }

    /// As [`RpcWebSocketClient::new_tls`], with the given limits.
    pub fn with_limits_tls(
        url: impl Into<String>,
        config: rustls::ClientConfig,
        limits: Limits,
    ) -> RpcWebSocketClient {
        let tls = Tls::Ready(TlsConnector::new(config, ALPN_HTTP1, false));
        RpcWebSocketClient::build(url.into(), Some(tls), limits)
    }

    fn build(url: String, tls: Option<Tls>, limits: Limits) -> RpcWebSocketClient {
        let connector = WsConnector {
            url,
            tls: parking_lot::Mutex::new(tls),
            timeout: limits.handshake_timeout,
        };
        RpcWebSocketClient { client: RpcClient::with_limits(connector, limits) }
    }

    /// The underlying client.
    pub fn client(&self) -> &RpcClient {
        &self.client
    }
}

impl Deref for RpcWebSocketClient {
    type Target = RpcClient;

    fn deref(&self) -> &RpcClient {
        &self.client
    }
}
