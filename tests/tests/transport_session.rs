//! A policy can derive the session from the transport alone (the verified mTLS client
//! identity), with no token: `Security::session_for_connection`.

use rpc_core::{
    Connection, Context, ErrorKind, RpcError, RpcKernel, Security, Session, controller,
};
use tests::{pki, transport_tests};

#[controller("me")]
pub trait Me {
    async fn whoami(&self, ctx: &Context) -> String;
}

struct MeImpl;
impl Me for MeImpl {
    async fn whoami(&self, ctx: &Context) -> String {
        ctx.session().username().to_string()
    }
}

/// Certificates are identities; without one, a connection must present a token.
struct CertificatesOrNothing;
impl Security for CertificatesOrNothing {
    async fn session_for_connection(&self, conn: &Connection) -> Result<Option<Session>, RpcError> {
        Ok(conn.transport().peer_identity.as_ref().map(|id| Session::new(format!("cert:{id}"))))
    }
    fn allow_anonymous(&self) -> bool {
        false
    }
}

fn kernel() -> RpcKernel {
    let kernel = RpcKernel::new();
    kernel.register(MeServer::new(MeImpl));
    kernel.set_security(CertificatesOrNothing);
    kernel
}

transport_tests! {
    setup = kernel;

    async fn a_verified_certificate_is_the_session(h: Harness) {
        let client = h.client();
        let result = client.controller::<MeClient>().whoami().await;
        if h.kind.is_tls() {
            assert_eq!(result.unwrap(), format!("cert:{}", pki::CLIENT_IDENTITY));
        } else {
            // No certificate and anonymous access off: refused, the handler never ran.
            assert_eq!(result.unwrap_err().kind(), ErrorKind::Unauthenticated);
        }
        h.shutdown().await;
    }
}
