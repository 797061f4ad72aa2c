//! TLS with rustls, shared by the TCP transport and `rpc-ws` (for `wss://`).
//!
//! What this module adds to plain rustls:
//!
//! - **ALPN.** The TCP transport speaks the protocol id [`ALPN_RPC`] (`"rpc/1"`). If a
//!   config's `alpn_protocols` is empty it is set to that id; if it lists other ids, the id
//!   is added. rustls alone accepts a client that offers no ALPN at all, so the server also
//!   checks after the handshake that `"rpc/1"` was negotiated, and so does the client
//!   (`ROBUSTNESS.md` §7.4). A TLS client of another protocol (HTTPS, say) is refused.
//! - **Client certificates.** When the server config verifies client certificates (mutual
//!   TLS, e.g. with `rustls::server::WebPkiClientVerifier`), the verified certificate's
//!   identity (its subject common name, else its first DNS subject alternative name) becomes
//!   [`TransportInfo::peer_identity`](rpc_core::transport::TransportInfo), which handlers read
//!   with `ctx.connection().transport().peer_identity`.
//! - **No 0-RTT.** `max_early_data_size` is forced to 0 (early data can be replayed).
//! - **No panics on configuration.** The library never builds a rustls config itself, so no
//!   process-wide crypto provider has to be installed: pass configs built with
//!   `builder_with_provider`.
//!
//! Deadlines are the caller's: the servers and clients of this crate and `rpc-ws` bound the
//! handshake with [`Limits::handshake_timeout`](rpc_core::Limits).
//!
//! ```
//! use std::sync::Arc;
//! use rpc_tcp::tls::{TlsAcceptor, ALPN_RPC};
//!
//! # fn run(config: rustls::ServerConfig) {
//! let acceptor = TlsAcceptor::new(config, ALPN_RPC, true);
//! # let _ = acceptor;
//! # }
//! ```

use std::io;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

pub use tokio_rustls::{
    client::TlsStream as ClientTlsStream, server::TlsStream as ServerTlsStream,
};

/// The ALPN protocol id of this framework's protocol over TLS: `"rpc/1"`.
pub const ALPN_RPC: &[u8] = b"rpc/1";

/// The ALPN id a WebSocket server or client uses (`wss://` runs HTTP/1.1 first).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

fn with_alpn(mut list: Vec<Vec<u8>>, alpn: &[u8]) -> Vec<Vec<u8>> {
    if !list.iter().any(|p| p == alpn) {
        list.push(alpn.to_vec());
    }
    list
}

/// The server side of TLS: a rustls server config plus the ALPN rule.
///
/// ```no_run
/// # async fn run(socket: tokio::net::TcpStream, config: rustls::ServerConfig) -> std::io::Result<()> {
/// let acceptor = rpc_tcp::tls::TlsAcceptor::new(config, rpc_tcp::tls::ALPN_RPC, true);
/// let (tls_stream, identity) = acceptor.accept(socket).await?;
/// println!("client certificate: {identity:?}");
/// # drop(tls_stream); Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    alpn: Vec<u8>,
    require_alpn: bool,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("alpn", &String::from_utf8_lossy(&self.alpn))
            .field("require_alpn", &self.require_alpn)
            .finish()
    }
}

impl TlsAcceptor {
    /// Wraps `config`, adding `alpn` to its ALPN list; with `require_alpn`, a client that did
    /// not negotiate `alpn` is refused after the handshake. 0-RTT is turned off.
    pub fn new(mut config: rustls::ServerConfig, alpn: &[u8], require_alpn: bool) -> TlsAcceptor {
        config.alpn_protocols = with_alpn(std::mem::take(&mut config.alpn_protocols), alpn);
        config.max_early_data_size = 0;
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            alpn: alpn.to_vec(),
            require_alpn,
        }
    }

    /// Runs the server handshake over `stream` (no deadline: wrap it in one). Returns the
    /// TLS stream and the verified identity of the client certificate, if one was presented.
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<(ServerTlsStream<IO>, Option<String>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self.inner.accept(stream).await?;
        let (_, conn) = tls.get_ref();
        if self.require_alpn && conn.alpn_protocol() != Some(&self.alpn[..]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the TLS client did not negotiate the ALPN protocol {:?}",
                    String::from_utf8_lossy(&self.alpn)
                ),
            ));
        }
        let identity = conn.peer_certificates().and_then(peer_identity);
        Ok((tls, identity))
    }
}

/// The client side of TLS: a rustls client config, the server name to verify, and the ALPN
/// rule.
///
/// ```no_run
/// # async fn run(socket: tokio::net::TcpStream, config: rustls::ClientConfig) -> std::io::Result<()> {
/// let connector = rpc_tcp::tls::TlsConnector::new(config, rpc_tcp::tls::ALPN_RPC, true);
/// let tls_stream = connector.connect("example.com", socket).await?;
/// # drop(tls_stream); Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
    alpn: Vec<u8>,
    require_alpn: bool,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("alpn", &String::from_utf8_lossy(&self.alpn))
            .field("require_alpn", &self.require_alpn)
            .finish()
    }
}

impl TlsConnector {
    /// Wraps `config`, adding `alpn` to its ALPN list; with `require_alpn`, a server that did
    /// not negotiate `alpn` is refused after the handshake. Early data is turned off.
    pub fn new(mut config: rustls::ClientConfig, alpn: &[u8], require_alpn: bool) -> TlsConnector {
        config.alpn_protocols = with_alpn(std::mem::take(&mut config.alpn_protocols), alpn);
        config.enable_early_data = false;
        TlsConnector {
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
            alpn: alpn.to_vec(),
            require_alpn,
        }
    }

    /// Runs the client handshake over `stream`, verifying the server's certificate for
    /// `server_name` (a DNS name or an IP address). No deadline: wrap it in one.
    pub async fn connect<IO>(
        &self,
        server_name: &str,
        stream: IO,
    ) -> io::Result<ClientTlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = server_name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(name.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{server_name:?} is not a valid TLS server name: {e}"),
            )
        })?;
        let tls = self.inner.connect(name, stream).await?;
        let (_, conn) = tls.get_ref();
        if self.require_alpn && conn.alpn_protocol() != Some(&self.alpn[..]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the TLS server did not negotiate the ALPN protocol {:?}",
                    String::from_utf8_lossy(&self.alpn)
                ),
            ));
        }
        Ok(tls)
    }
}

/// The identity of the first (end-entity) certificate of a verified chain: its subject
/// common name, else its first DNS subject alternative name. `None` if the chain is empty or
/// the certificate has neither.
///
/// ```
/// assert_eq!(rpc_tcp::tls::peer_identity(&[]), None);
/// ```
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<String> {
    let der = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().find_map(|cn| cn.as_str().ok()) {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(cn: Option<&str>, sans: &[&str]) -> CertificateDer<'static> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn identity_is_the_common_name_first() {
        assert_eq!(
            peer_identity(&[cert(Some("alice"), &["alice.example"])]).as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn identity_falls_back_to_the_first_dns_name() {
        let chain = [cert(None, &["10.0.0.1", "bob.example", "other.example"])];
        assert_eq!(peer_identity(&chain).as_deref(), Some("bob.example"));
    }

    #[test]
    fn no_identity_without_either_or_for_garbage() {
        assert_eq!(peer_identity(&[cert(None, &[])]), None);
        assert_eq!(peer_identity(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]), None);
        assert_eq!(peer_identity(&[]), None);
    }

    #[test]
    fn alpn_is_added_once() {
        let list = with_alpn(vec![b"h2".to_vec()], ALPN_RPC);
        assert_eq!(list, vec![b"h2".to_vec(), ALPN_RPC.to_vec()]);
        assert_eq!(with_alpn(list.clone(), ALPN_RPC), list);
    }
}
