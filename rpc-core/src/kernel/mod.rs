//! The kernel: the registry of controllers, the security policy, and the connections it
//! serves. One kernel serves every transport at once.
//!
//! - [`controller`]: what generated code implements ([`Controller`], [`ActionInfo`]).
//! - [`responder`]: how an action answers.
//! - [`context`]: what a handler can ask about its call.
//! - [`security`]: the policy ([`Security`], [`Session`](security::Session), [`Token`](security::Token)).
//! - [`stats`] holds the counters.
//! - [`events`] and [`middleware`]: observing and wrapping calls.

pub mod context;
pub mod controller;
pub mod events;
pub mod middleware;
pub mod responder;
pub(crate) mod router;
pub mod security;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use parking_lot::{Mutex, RwLock};

use crate::connection::{ConnShared, Connection};
use crate::error::RpcError;
use crate::limits::Limits;
use crate::transport::Transport;
use controller::{ActionInfo, Controller, ControllerDescriptor};
use security::{DefaultSecurity, Security, SharedSecurity};
use stats::{Counters, Stats};

type Listener = Arc<dyn Fn(&events::Event) + Send + Sync>;

type Factory = Arc<dyn Fn(&Connection) -> Arc<dyn Controller> + Send + Sync>;

enum Source {
    Shared(Arc<dyn Controller>),
    PerConnection(Factory),
}

/// A table keyed by controller or action name, looked up once per call.
///
/// Only the server inserts (at registration); callers only look up, so a caller choosing
/// names cannot crowd one bucket, and a multiply per eight bytes ([`NameHasher`]) replaces
/// SipHash. Keys are the names' bytes: a call's names are looked up as they arrived,
/// unchecked as UTF-8 (a name that matches a registered one is valid UTF-8 by construction).
type NameMap<V> = HashMap<&'static [u8], V, std::hash::BuildHasherDefault<NameHasher>>;

/// Hashes a name eight bytes at a time, each step a folded multiply (foldhash's and
/// aHash's mixing step: the 128-bit product's halves xored together).
///
/// A slice key hashes its length, then its bytes. FNV-1a, before, took each of those bytes
/// (the length's eight too) one at a time. A plain multiply per word (FxHash) was tried:
/// it carries a difference only toward the high bits, and 12 of 2 000 generated names
/// shared a full hash (the unit test below); folding the product carries it both ways.
/// Collisions cost only a comparison: the table holds the registered names alone.
#[derive(Default)]
struct NameHasher(u64);

impl NameHasher {
    const K: u64 = 0x5851_f42d_4c95_7f2d;

    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(Self::K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            self.mix(u64::from_le_bytes(le));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut le = [0u8; 8];
            le[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(le));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

struct Entry {
    name: &'static str,
    actions: &'static [ActionInfo],
    index: NameMap<usize>,
    source: Source,
}

/// A controller and action found for a call.
pub(crate) struct Resolved {
    pub(crate) controller: Arc<dyn Controller>,
    pub(crate) controller_name: &'static str,
    pub(crate) index: usize,
    pub(crate) action: &'static ActionInfo,
}

struct KernelInner {
    registry: RwLock<NameMap<Entry>>,
    security: RwLock<Option<SharedSecurity>>,
    limits: Arc<Limits>,
    connections: Mutex<HashMap<u64, Connection>>,
    next_connection_id: AtomicU64,
    handshakes: AtomicU64,
    inflight_bytes: AtomicU64,
    counters: Counters,
    router: router::Router,
    listeners: RwLock<Vec<Listener>>,
    has_listeners: AtomicBool,
    /// Set once a policy or a middleware layer is installed (they cannot be removed): until
    /// then every call skips the locks that read them.
    has_security: AtomicBool,
    has_middleware: AtomicBool,
    middleware: RwLock<middleware::Chain>,
}

/// A handshake in progress, counted toward [`Limits::max_handshakes`] until dropped or
/// handed to [`RpcKernel::accept_counted`]. Transports with handshakes of their own (TLS,
/// WebSocket upgrades) take one at TCP accept, so slow handshakes count from the start.
pub struct HandshakeGuard(RpcKernel);

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.0.inner.handshakes.fetch_sub(1, Relaxed);
    }
}

/// The registry of controllers and the policy that guards them. Cheap to clone: clones share
/// everything.
///
/// ```
/// use rpc_core::{controller, RpcDirectClient, RpcKernel};
///
/// #[controller("greeter")]
/// pub trait Greeter {
///     async fn hello(&self, name: String) -> String;
/// }
///
/// struct English;
/// impl Greeter for English {
///     async fn hello(&self, name: String) -> String {
///         format!("Hello {name}")
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let kernel = RpcKernel::new();
/// kernel.register(GreeterServer::new(English));
///
/// let client = RpcDirectClient::new(&kernel);
/// let greeter = client.controller::<GreeterClient>();
/// assert_eq!(greeter.hello("World".into()).await.unwrap(), "Hello World");
/// # });
/// ```
#[derive(Clone)]
pub struct RpcKernel {
    inner: Arc<KernelInner>,
}

impl Default for RpcKernel {
    fn default() -> Self {
        RpcKernel::new()
    }
}

impl std::fmt::Debug for RpcKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.inner.registry.read().values().map(|e| e.name).collect();
        f.debug_struct("RpcKernel").field("controllers", &names).finish()
    }
}

impl RpcKernel {
    /// A kernel with the default [`Limits`].
    pub fn new() -> RpcKernel {
        RpcKernel::with_limits(Limits::default())
    }

    /// A kernel enforcing `limits` on every connection it serves.
    pub fn with_limits(limits: Limits) -> RpcKernel {
        RpcKernel {
            inner: Arc::new(KernelInner {
                registry: RwLock::new(NameMap::default()),
                security: RwLock::new(None),
                limits: Arc::new(limits),
                connections: Mutex::new(HashMap::new()),
                next_connection_id: AtomicU64::new(1),
                handshakes: AtomicU64::new(0),
                inflight_bytes: AtomicU64::new(0),
                counters: Counters::default(),
                router: router::Router::default(),
                listeners: RwLock::new(Vec::new()),
                has_listeners: AtomicBool::new(false),
                has_security: AtomicBool::new(false),
                has_middleware: AtomicBool::new(false),
                middleware: RwLock::new(Arc::new([])),
            }),
        }
    }

    /// The limits this kernel enforces.
    pub fn limits(&self) -> Arc<Limits> {
        self.inner.limits.clone()
    }

    /// Registers a controller shared by every connection.
    ///
    /// # Panics
    /// If a controller of the same name is already registered: two controllers answering to
    /// one name is a configuration error, reported at start-up rather than at the first call.
    pub fn register<C: Controller>(&self, controller: C) -> &Self {
        let controller: Arc<dyn Controller> = Arc::new(controller);
        let (name, actions) = (controller.name(), controller.actions());
        self.insert(name, actions, Source::Shared(controller));
        self
    }

    /// Registers a controller created per connection, on the connection's first call to it,
    /// and dropped when the connection closes.
    ///
    /// # Panics
    /// As [`RpcKernel::register`].
    pub fn register_with<C, F>(&self, factory: F) -> &Self
    where
        C: Controller + ControllerDescriptor,
        F: Fn(&Connection) -> C + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move |conn| Arc::new(factory(conn)) as Arc<dyn Controller>);
        self.insert(C::NAME, C::ACTIONS, Source::PerConnection(factory));
        self
    }

    fn insert(&self, name: &'static str, actions: &'static [ActionInfo], source: Source) {
        let index = actions.iter().enumerate().map(|(i, a)| (a.name.as_bytes(), i)).collect();
        let mut registry = self.inner.registry.write();
        assert!(
            !registry.contains_key(name.as_bytes()),
            "a controller named `{name}` is already registered on this kernel"
        );
        registry.insert(name.as_bytes(), Entry { name, actions, index, source });
    }

    /// Whether a controller of that name is registered.
    pub fn has_controller(&self, name: &str) -> bool {
        self.inner.registry.read().contains_key(name.as_bytes())
    }

    /// Sets the security policy (replacing the default: anonymous calls allowed, tokens
    /// rejected, peers denied).
    pub fn set_security<S: Security>(&self, security: S) -> &Self {
        *self.inner.security.write() = Some(Arc::new(security));
        self.inner.has_security.store(true, Release);
        self
    }

    /// Calls `listener` with every [`Event`](events::Event) of this kernel (connections,
    /// authentication, access decisions, actions with timings).
    ///
    /// ```
    /// use rpc_core::{Event, RpcKernel};
    ///
    /// let kernel = RpcKernel::new();
    /// kernel.on_event(|event| {
    ///     if let Event::ActionFinished { controller, action, elapsed, outcome, .. } = event {
    ///         println!("{controller}.{action} took {elapsed:?}: {outcome:?}");
    ///     }
    /// });
    /// ```
    pub fn on_event(&self, listener: impl Fn(&events::Event) + Send + Sync + 'static) -> &Self {
        self.inner.listeners.write().push(Arc::new(listener));
        self.inner.has_listeners.store(true, Relaxed);
        self
    }

    /// Whether anyone listens to events (cheap; checked before building one).
    pub(crate) fn observed(&self) -> bool {
        self.inner.has_listeners.load(Relaxed)
    }

    /// Delivers an event to every listener; `event` is only built if someone listens.
    pub(crate) fn emit(&self, event: impl FnOnce() -> events::Event) {
        if !self.observed() {
            return;
        }
        let event = event();
        let listeners = self.inner.listeners.read().clone();
        for listener in listeners {
            listener(&event);
        }
    }

    /// Adds a layer around every action this kernel runs; the first added is the outermost.
    pub fn add_middleware<M: middleware::Middleware>(&self, layer: M) -> &Self {
        let mut chain = self.inner.middleware.write();
        let mut layers: Vec<Arc<dyn middleware::DynMiddleware>> = chain.iter().cloned().collect();
        layers.push(Arc::new(layer));
        *chain = layers.into();
        self.inner.has_middleware.store(true, Release);
        self
    }

    pub(crate) fn middleware(&self) -> Option<middleware::Chain> {
        if !self.inner.has_middleware.load(Acquire) {
            return None;
        }
        let chain = self.inner.middleware.read();
        (!chain.is_empty()).then(|| chain.clone())
    }

    /// Whether calls pass through a policy or middleware (either may wait, so such calls
    /// run as a whole future rather than inline); two atomic loads, no lock.
    pub(crate) fn has_call_layers(&self) -> bool {
        self.inner.has_security.load(Acquire) || self.inner.has_middleware.load(Acquire)
    }

    pub(crate) fn security(&self) -> Option<SharedSecurity> {
        if !self.inner.has_security.load(Acquire) {
            return None;
        }
        self.inner.security.read().clone()
    }

    pub(crate) fn security_or_default(&self) -> SharedSecurity {
        self.security().unwrap_or_else(|| Arc::new(DefaultSecurity))
    }

    /// Applies the policy's `transform_error` to an error about to leave.
    pub(crate) fn present_error(&self, error: RpcError) -> RpcError {
        match self.security() {
            Some(security) => security.transform_error(error),
            None => error,
        }
    }

    /// Finds the controller and action for a call on `conn`, by the names' bytes as they
    /// arrived (see [`CallHead`](crate::protocol::message::CallHead)).
    pub(crate) fn resolve(
        &self,
        conn: &Arc<ConnShared>,
        controller: &[u8],
        action: &[u8],
    ) -> Result<Resolved, RpcError> {
        let registry = self.inner.registry.read();
        let entry = registry.get(controller).ok_or_else(|| {
            let controller = String::from_utf8_lossy(controller);
            RpcError::not_found(format!("no controller `{controller}` is registered"))
        })?;
        let index = *entry.index.get(action).ok_or_else(|| {
            let action = String::from_utf8_lossy(action);
            RpcError::not_found(format!("no action `{action}` on controller `{}`", entry.name))
        })?;
        let instance = match &entry.source {
            Source::Shared(c) => c.clone(),
            Source::PerConnection(factory) => {
                let mut local = conn.local_controllers.lock();
                match local.get(entry.name) {
                    Some(c) => c.clone(),
                    None => {
                        let c = factory(&Connection { shared: conn.clone() });
                        local.insert(entry.name, c.clone());
                        c
                    }
                }
            }
        };
        Ok(Resolved {
            controller: instance,
            controller_name: entry.name,
            index,
            action: &entry.actions[index],
        })
    }

    /// Serves one already-established transport (accepted socket, upgraded WebSocket, ...)
    /// as the accepting side; returns once the handshake is done and the connection runs.
    pub async fn accept<T: Transport>(&self, transport: T) -> Result<Connection, RpcError> {
        crate::connection::driver::accept(transport, self.clone()).await
    }

    /// As [`RpcKernel::accept`], for a transport whose own handshake was already counted
    /// with [`RpcKernel::begin_handshake`].
    pub async fn accept_counted<T: Transport>(
        &self,
        transport: T,
        handshake: HandshakeGuard,
    ) -> Result<Connection, RpcError> {
        crate::connection::driver::accept_with(transport, self.clone(), Some(handshake)).await
    }

    /// Opens a connection over `transport` as the dialing side; this kernel serves the calls
    /// the remote makes back.
    pub async fn dial<T: Transport>(&self, transport: T) -> Result<Connection, RpcError> {
        crate::connection::driver::dial(transport, self.clone()).await
    }

    /// Whether a new connection would be refused (too many open or in their handshake).
    /// Transports that can refuse before any protocol byte (WebSocket: HTTP 503 before the
    /// upgrade) ask this first.
    pub fn at_capacity(&self) -> bool {
        let limits = &self.inner.limits;
        self.inner.counters.connections.load(Relaxed) as usize >= limits.max_connections
            || self.inner.handshakes.load(Relaxed) as usize >= limits.max_handshakes
    }

    /// Counts a handshake in progress until the guard drops; `None` if at capacity (refuse
    /// the connection).
    pub fn begin_handshake(&self) -> Option<HandshakeGuard> {
        if self.at_capacity() {
            return None;
        }
        self.inner.handshakes.fetch_add(1, Relaxed);
        Some(HandshakeGuard(self.clone()))
    }

    /// The live connections this kernel accepted (for broadcasts).
    pub fn connections(&self) -> Vec<Connection> {
        self.inner.connections.lock().values().cloned().collect()
    }

    /// A snapshot of the kernel's counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        stats.peers = self.inner.router.len() as u64;
        stats
    }

    pub(crate) fn router(&self) -> &router::Router {
        &self.inner.router
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.inner.next_connection_id.fetch_add(1, Relaxed)
    }

    pub(crate) fn connection_opened(&self, conn: &Connection) {
        self.emit(|| events::Event::ConnectionOpened {
            connection: conn.id(),
            remote_addr: conn.remote_addr(),
            transport: conn.transport().kind,
        });
        let c = &self.inner.counters;
        c.connections.fetch_add(1, Relaxed);
        c.total_connections.fetch_add(1, Relaxed);
        self.inner.connections.lock().insert(conn.id(), conn.clone());
        if conn.is_closed() {
            self.connection_closed(conn.id(), &conn.shared.disconnect_error());
        }
    }

    pub(crate) fn connection_closed(&self, id: u64, reason: &RpcError) {
        if self.inner.connections.lock().remove(&id).is_some() {
            self.inner.counters.connections.fetch_sub(1, Relaxed);
            self.emit(|| events::Event::ConnectionClosed {
                connection: id,
                reason: reason.to_string(),
            });
        }
    }

    pub(crate) fn stats_call_started(&self) {
        self.inner.counters.calls.fetch_add(1, Relaxed);
        self.inner.counters.active_calls.fetch_add(1, Relaxed);
    }

    pub(crate) fn stats_call_ended(&self) {
        self.inner.counters.active_calls.fetch_sub(1, Relaxed);
    }

    /// Counts argument bytes toward `Limits::max_kernel_inflight_bytes`; false if full.
    pub(crate) fn reserve_inflight(&self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        let held = self.inner.inflight_bytes.fetch_add(bytes, Relaxed);
        if held + bytes > self.inner.limits.max_kernel_inflight_bytes as u64 {
            self.inner.inflight_bytes.fetch_sub(bytes, Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn release_inflight(&self, bytes: usize) {
        self.inner.inflight_bytes.fetch_sub(bytes as u64, Relaxed);
    }

    pub(crate) fn stats_call_failed(&self) {
        self.inner.counters.failed_calls.fetch_add(1, Relaxed);
    }

    pub(crate) fn stats_access_denied(&self) {
        self.inner.counters.access_denied.fetch_add(1, Relaxed);
    }

    pub(crate) fn stats_authenticated(&self) {
        self.inner.counters.authentications.fetch_add(1, Relaxed);
    }

    pub(crate) fn stats_auth_failed(&self) {
        self.inner.counters.authentication_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn stats_stream_opened(&self) {
        self.inner.counters.active_streams.fetch_add(1, Relaxed);
        self.inner.counters.total_streams.fetch_add(1, Relaxed);
    }

    pub(crate) fn stats_stream_closed(&self) {
        self.inner.counters.active_streams.fetch_sub(1, Relaxed);
    }

    pub(crate) fn stats_sent(&self, frames: u64, bytes: u64) {
        self.inner.counters.messages_out.fetch_add(frames, Relaxed);
        self.inner.counters.bytes_out.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn stats_received(&self, bytes: u64) {
        self.inner.counters.bytes_in.fetch_add(bytes, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn hash(name: &[u8]) -> u64 {
        std::hash::BuildHasherDefault::<NameHasher>::default().hash_one(name)
    }

    #[test]
    fn names_hash_apart_and_spread_over_the_low_bits() {
        let names: Vec<Vec<u8>> = (0..1000)
            .flat_map(|i| [format!("action{i}"), format!("a_longer_controller_name_{i}")])
            .map(String::into_bytes)
            .collect();
        let hashes: std::collections::HashSet<u64> = names.iter().map(|n| hash(n)).collect();
        assert_eq!(hashes.len(), names.len(), "no two names share a hash");
        // hashbrown picks the bucket from the low bits: they must differ too.
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 2047).collect();
        assert!(buckets.len() > 1000, "{} of 2048 buckets used by 2000 names", buckets.len());
        // The zero padding of a short tail is told apart by the length hashed first.
        assert_ne!(hash(b"echo"), hash(b"echo\0"));
        assert_ne!(hash(b""), hash(b"\0"));
    }
}
