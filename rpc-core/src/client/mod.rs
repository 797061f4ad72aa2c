//! The calling side: [`RpcClient`] (one logical connection that dials lazily and redials after
//! a disconnect), [`CallTarget`] (what generated proxies call through) and
//! [`RpcDirectClient`] (in memory, for tests).
//!
//! Transports provide a [`Connector`]; `rpc-tcp` and `rpc-ws` wrap an `RpcClient` in their
//! own client types.

mod direct;
mod progress;
mod target;

pub use direct::RpcDirectClient;
pub use progress::{Progress, Transfer};
pub use target::CallTarget;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::connection::Connection;
use crate::error::{ErrorKind, RpcError};
use crate::kernel::RpcKernel;
use crate::kernel::controller::{Controller, ControllerClient};
use crate::kernel::security::Token;
use crate::limits::Limits;

/// A boxed future, as [`Connector`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens a new connection for a client: dial the transport, then
/// [`RpcKernel::dial`] over it with the client's kernel.
pub trait Connector: Send + Sync + 'static {
    /// Opens a connection whose back-calls `kernel` serves.
    fn connect(&self, kernel: RpcKernel) -> BoxFuture<'static, Result<Connection, RpcError>>;
}

/// Closes a draining connection once no call of this side is outstanding on it (bounded by
/// the call timeout).
fn retire(conn: Connection) {
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + conn.shared.limits.call_timeout;
        while !conn.shared.outbound.lock().is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        conn.close();
    });
}

/// Another client, reached through the server's peer routing.
#[derive(Clone, Debug)]
pub struct PeerHandle {
    target: CallTarget,
}

impl PeerHandle {
    /// A typed proxy for the controller `C` the peer offers.
    pub fn controller<C: ControllerClient>(&self) -> C {
        C::from_target(self.target.clone())
    }
}

/// The state of a client's connection, observable with [`RpcClient::state`].
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    /// No connection was made yet.
    Idle,
    /// Connected (the `u32` counts connections made so far: above 1 means reconnected).
    Connected(u32),
    /// The connection closed, for the given reason; the next call reconnects.
    Disconnected(RpcError),
}

/// A hook run after each new connection.
type ConnectHook = Arc<dyn Fn(&RpcClient) + Send + Sync>;

struct ClientInner {
    connector: Box<dyn Connector>,
    kernel: RpcKernel,
    current: Mutex<Option<Connection>>,
    connecting: tokio::sync::Mutex<()>,
    token: Mutex<Option<Token>>,
    token_generation: AtomicU32,
    connections_made: AtomicU32,
    state: watch::Sender<ConnectionState>,
    on_connect: Mutex<Vec<ConnectHook>>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        if let Some(conn) = self.current.get_mut().take() {
            conn.close();
        }
    }
}

/// A client: calls controllers on the other side, offers controllers back, and keeps one
/// connection that it opens on the first call and reopens on the next call after a
/// disconnect. Cheap to clone; clones share the connection.
///
/// Calls in flight and open streams end with `Disconnected` at once when the connection
/// closes; a reconnect restores nothing implicitly (peer aliases and subscriptions are the
/// application's to re-establish, for which [`RpcClient::on_connect`] is the hook).
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").field("state", &*self.inner.state.borrow()).finish()
    }
}

impl RpcClient {
    /// A client that connects with `connector` on its first call.
    pub fn new(connector: impl Connector) -> RpcClient {
        RpcClient::with_limits(connector, Limits::default())
    }

    /// A client whose connections enforce `limits` (call timeout, frame size, ...).
    pub fn with_limits(connector: impl Connector, limits: Limits) -> RpcClient {
        let (state, _) = watch::channel(ConnectionState::Idle);
        RpcClient {
            inner: Arc::new(ClientInner {
                connector: Box::new(connector),
                kernel: RpcKernel::with_limits(limits),
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                token: Mutex::new(None),
                token_generation: AtomicU32::new(0),
                connections_made: AtomicU32::new(0),
                state,
                on_connect: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A typed proxy for the controller `C` on the other side.
    pub fn controller<C: ControllerClient>(&self) -> C {
        C::from_target(CallTarget::client(self.clone()))
    }

    /// Registers this client under a peer alias on the server, so that other clients can call
    /// its controllers through [`RpcClient::peer`]. The server's policy must allow it (by
    /// default it does not); an alias held by another live connection is refused
    /// (`AlreadyRegistered`). The alias is freed when the connection closes: after a
    /// reconnect, register again (see [`RpcClient::on_connect`]).
    pub async fn register_as_peer(&self, alias: &str) -> Result<(), RpcError> {
        let conn = self.connection().await?;
        let mut body = bytes::BytesMut::new();
        crate::protocol::message::encode_route_target(&mut body, alias);
        let timeout = conn.shared.limits.call_timeout;
        conn.shared.request::<()>(crate::protocol::Kind::PeerRegister, &body, timeout).await
    }

    /// Releases this client's peer alias.
    pub async fn unregister_as_peer(&self) -> Result<(), RpcError> {
        let conn = self.connection().await?;
        let timeout = conn.shared.limits.call_timeout;
        conn.shared.request::<()>(crate::protocol::Kind::PeerUnregister, &[0x90], timeout).await
    }

    /// The peer registered under `alias`, reached through the server.
    ///
    /// ```no_run
    /// # use rpc_core::{controller, RpcClient};
    /// #[controller("printer")]
    /// pub trait Printer {
    ///     async fn print(&self, doc: String) -> u32;
    /// }
    /// # async fn run(client: RpcClient) -> Result<(), rpc_core::RpcError> {
    /// let printer = client.peer("printer-1").controller::<PrinterClient>();
    /// let pages = printer.print("hello".into()).await?;
    /// # Ok(()) }
    /// ```
    pub fn peer(&self, alias: &str) -> PeerHandle {
        let mut route = bytes::BytesMut::new();
        crate::protocol::message::encode_route_target(&mut route, alias);
        PeerHandle { target: CallTarget::client(self.clone()).routed(route.freeze()) }
    }

    /// The kernel that serves the calls made to this client (back-controllers and routed
    /// peer calls): give it a [`Security`](crate::Security) policy or middleware like any
    /// server's.
    pub fn kernel(&self) -> &RpcKernel {
        &self.inner.kernel
    }

    /// Offers a controller the other side (or, routed, a peer) may call.
    pub fn register_controller<C: Controller>(&self, controller: C) -> &Self {
        self.inner.kernel.register(controller);
        self
    }

    /// Sets the token that authenticates this client. Authentication runs before the next
    /// call goes out (on the open connection, replacing its session whole, or on the next
    /// connection).
    pub fn set_token<T: serde::Serialize + ?Sized>(&self, token: &T) -> &Self {
        match Token::new(token) {
            Ok(token) => *self.inner.token.lock() = Some(token),
            Err(e) => tracing::error!("the token could not be encoded: {e}"),
        }
        self.inner.token_generation.fetch_add(1, Ordering::AcqRel);
        self
    }

    /// The connection state, as a watch channel: `state().borrow()` is the current state,
    /// `state().changed().await` waits for the next change.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// Runs `hook` after each new connection is made (and authenticated): the place to
    /// re-register peer aliases or re-subscribe after a reconnect.
    pub fn on_connect(&self, hook: impl Fn(&RpcClient) + Send + Sync + 'static) -> &Self {
        self.inner.on_connect.lock().push(Arc::new(hook));
        self
    }

    /// Connects now if not connected (and authenticates if a token is set).
    pub async fn connect(&self) -> Result<(), RpcError> {
        self.connection().await.map(|_| ())
    }

    /// Closes the connection; calls in flight fail with `Disconnected`. The next call
    /// connects again.
    pub async fn disconnect(&self) {
        let conn = self.inner.current.lock().take();
        if let Some(conn) = conn {
            conn.close();
            self.inner.state.send_replace(ConnectionState::Disconnected(RpcError::disconnected(
                "disconnected by the application",
            )));
        }
    }

    /// The live connection, opening (and authenticating) one if needed.
    pub async fn connection(&self) -> Result<Connection, RpcError> {
        let generation = self.inner.token_generation.load(Ordering::Acquire);
        if let Some(conn) = self.usable(generation) {
            return Ok(conn);
        }
        let _connecting = self.inner.connecting.lock().await;
        let generation = self.inner.token_generation.load(Ordering::Acquire);
        if let Some(conn) = self.usable(generation) {
            return Ok(conn);
        }
        let existing = self.inner.current.lock().clone();
        if let Some(conn) = existing.clone().filter(|c| c.shared.is_usable()) {
            // Connected, but the token changed: authenticate again before the next call.
            return match self.authenticate(&conn, generation).await {
                Ok(()) => Ok(conn),
                Err(e) => {
                    self.lost(&conn, e.clone());
                    Err(e)
                }
            };
        }
        if let Some(old) = existing {
            if !old.is_closed() {
                // Draining (GoAway ShuttingDown, or its ids nearly used up): let its calls
                // finish, then close it, while new calls use a fresh connection.
                retire(old.clone());
            }
            self.lost(&old, old.shared.disconnect_error());
        }
        let conn = self.inner.connector.connect(self.inner.kernel.clone()).await.map_err(|e| {
            if e.kind() == ErrorKind::Disconnected {
                e
            } else {
                RpcError::disconnected(e.to_string())
            }
        })?;
        if let Err(e) = self.authenticate(&conn, generation).await {
            conn.shared.close(e.clone(), None);
            self.inner.state.send_replace(ConnectionState::Disconnected(e.clone()));
            return Err(e);
        }
        *self.inner.current.lock() = Some(conn.clone());
        let made = self.inner.connections_made.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner.state.send_replace(ConnectionState::Connected(made));
        self.watch_close(&conn);
        let hooks = self.inner.on_connect.lock().clone();
        for hook in hooks {
            hook(self);
        }
        Ok(conn)
    }

    /// The current connection if calls can use it as it is (no connecting or
    /// authenticating needed first).
    pub(crate) fn live_connection(&self) -> Option<Connection> {
        self.usable(self.inner.token_generation.load(Ordering::Acquire))
    }

    fn usable(&self, generation: u32) -> Option<Connection> {
        let current = self.inner.current.lock();
        current
            .as_ref()
            .filter(|c| {
                c.shared.is_usable()
                    && c.shared.auth_generation.load(Ordering::Acquire) == generation
            })
            .cloned()
    }

    async fn authenticate(&self, conn: &Connection, generation: u32) -> Result<(), RpcError> {
        let token = self.inner.token.lock().clone();
        if let Some(token) = token {
            let timeout = conn.shared.limits.auth_timeout;
            conn.shared.authenticate(&token, timeout).await.map_err(|e| {
                if e.kind() == ErrorKind::Unauthenticated {
                    e
                } else {
                    RpcError::unauthenticated(e.to_string())
                }
            })?;
        }
        conn.shared.auth_generation.store(generation, Ordering::Release);
        Ok(())
    }

    fn lost(&self, conn: &Connection, reason: RpcError) {
        let mut current = self.inner.current.lock();
        if current
            .as_ref()
            .is_some_and(|c| c.id() == conn.id() && std::ptr::eq(&*c.shared, &*conn.shared))
        {
            *current = None;
            drop(current);
            self.inner.state.send_replace(ConnectionState::Disconnected(reason));
        }
    }

    /// Publishes the disconnect in [`RpcClient::state`] as soon as the connection closes.
    fn watch_close(&self, conn: &Connection) {
        let weak = Arc::downgrade(&self.inner);
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.closed().await;
            if let Some(inner) = weak.upgrade() {
                RpcClient { inner }.lost(&conn, conn.shared.disconnect_error());
            }
        });
    }
}
