//! Counters of a kernel, read as a [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a kernel's counters.
///
/// ```
/// let kernel = rpc_core::RpcKernel::new();
/// let stats = kernel.stats();
/// assert_eq!(stats.connections, 0);
/// assert_eq!(stats.active_calls, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since start.
    pub total_connections: u64,
    /// Calls started by remotes since start.
    pub calls: u64,
    /// Calls running now.
    pub active_calls: u64,
    /// Result streams open now.
    pub active_streams: u64,
    /// Result streams opened since start.
    pub total_streams: u64,
    /// Frames sent.
    pub messages_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Peer aliases registered now.
    pub peers: u64,
    /// Calls that ended in an error (any kind, denials included).
    pub failed_calls: u64,
    /// Calls the security policy denied.
    pub access_denied: u64,
    /// Successful authentications (re-authentications included).
    pub authentications: u64,
    /// Rejected tokens.
    pub authentication_failures: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) total_connections: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) active_calls: AtomicU64,
    pub(crate) active_streams: AtomicU64,
    pub(crate) total_streams: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) failed_calls: AtomicU64,
    pub(crate) access_denied: AtomicU64,
    pub(crate) authentications: AtomicU64,
    pub(crate) authentication_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            connections: self.connections.load(Relaxed),
            total_connections: self.total_connections.load(Relaxed),
            calls: self.calls.load(Relaxed),
            active_calls: self.active_calls.load(Relaxed),
            active_streams: self.active_streams.load(Relaxed),
            total_streams: self.total_streams.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            peers: 0,
            failed_calls: self.failed_calls.load(Relaxed),
            access_denied: self.access_denied.load(Relaxed),
            authentications: self.authentications.load(Relaxed),
            authentication_failures: self.authentication_failures.load(Relaxed),
        }
    }
}
