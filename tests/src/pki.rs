//! Certificates made at run time with rcgen (no private key is committed): one CA, a server
//! certificate for `127.0.0.1` and `localhost`, and client certificates for mutual TLS, plus
//! rustls configs built from them with the ring provider passed explicitly.

use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The subject common name of the harness's client certificate: what handlers see as
/// `ctx.connection().transport().peer_identity` over TLS and WSS.
pub const CLIENT_IDENTITY: &str = "harness-client";

/// The ring provider, passed explicitly (no process-wide default is installed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key.
pub struct Identity {
    /// End-entity certificate first, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl Identity {
    /// The private key, for rustls.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// A CA with a server and a client certificate it issued.
pub struct TestPki {
    /// The CA certificate.
    pub ca: CertificateDer<'static>,
    /// The server's chain: SANs `127.0.0.1` and `localhost`.
    pub server: Identity,
    /// A client certificate with common name [`CLIENT_IDENTITY`].
    pub client: Identity,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    /// A fresh CA named `ca_name`, with its server and client certificates.
    pub fn generate(ca_name: &str) -> TestPki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, ca_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let ca = issuer.der().clone();
        let mut pki = TestPki {
            ca,
            server: Identity { chain: Vec::new(), key: Vec::new() },
            client: Identity { chain: Vec::new(), key: Vec::new() },
            issuer,
        };
        pki.server = pki.issue(
            "rpc test server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.client = pki.client_identity(CLIENT_IDENTITY);
        pki
    }

    /// The PKI shared by every test of this process.
    pub fn shared() -> &'static TestPki {
        static PKI: OnceLock<TestPki> = OnceLock::new();
        PKI.get_or_init(|| TestPki::generate("rpc test CA"))
    }

    /// A client certificate with common name `name`, issued by this CA.
    pub fn client_identity(&self, name: &str) -> Identity {
        self.issue(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Identity {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Identity { chain: vec![cert.der().clone(), self.ca.clone()], key: key.serialize_der() }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("CA certificate is valid");
        roots
    }

    /// A server config presenting the server certificate, without client authentication.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.server.chain.clone(), self.server.key())
            .expect("server certificate")
    }

    /// A server config that requires a client certificate issued by this CA (mutual TLS).
    pub fn server_config_mtls(&self) -> ServerConfig {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()), provider())
                .build()
                .expect("client verifier");
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server.chain.clone(), self.server.key())
            .expect("server certificate")
    }

    /// A client config trusting this CA, presenting no certificate.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }

    /// A client config trusting this CA and presenting `identity`.
    pub fn client_config_with(&self, identity: &Identity) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(identity.chain.clone(), identity.key())
            .expect("client certificate")
    }

    /// A client config trusting this CA and presenting the [`CLIENT_IDENTITY`] certificate.
    pub fn client_config_mtls(&self) -> ClientConfig {
        self.client_config_with(&self.client)
    }
}
