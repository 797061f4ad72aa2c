//! [`Limits`]: every bound a connection enforces, with its default and what hitting it does.
//!
//! Per-request limits answer that request with an error and keep the connection; abuse of the
//! connection itself closes it with a machine-readable reason (a `GoAway` frame, see
//! `PROTOCOL.md`). The defaults follow the survey in `ROBUSTNESS.md` §1.

use std::time::Duration;

/// Bounds on what one connection (and the whole kernel) may use.
///
/// Built with [`Limits::default`] and adjusted with the builder methods:
///
/// ```
/// use std::time::Duration;
/// use rpc_core::Limits;
///
/// let limits = Limits::default()
///     .max_frame_size(4 << 20)
///     .max_calls_in_flight(500)
///     .call_timeout(Duration::from_secs(5));
/// assert_eq!(limits.max_frame_size, 4 << 20);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame (length prefix excluded) accepted once authenticated. Default 1 MiB.
    /// A larger declared length closes the connection (`GoAway` code `TooLarge`) before any
    /// of it is buffered. Outbound messages above it are cut into chunks (or, for a frame
    /// that cannot be chunked, fail that call with [`ErrorKind::TooLarge`](crate::ErrorKind)).
    pub max_frame_size: usize,
    /// Largest frame accepted before the connection authenticated. Default 16 KiB.
    pub max_preauth_frame_size: usize,
    /// Largest reassembled (chunked) message. Default 8 MiB plus 64 KiB, so that an 8 MiB
    /// payload fits with its envelope; a larger declared total fails that call with
    /// `TooLarge`.
    pub max_message_size: usize,
    /// Bytes the frame reader reserves beyond those it has received. Default 64 KiB: a
    /// header declaring 1 MiB does not make the server allocate 1 MiB up front.
    pub read_reservation: usize,
    /// Deepest nesting of arrays and maps in any body. Default 64 (safe on a 2 MiB stack in a
    /// debug build); deeper → `BadArguments` for arguments, protocol error elsewhere.
    pub max_depth: usize,
    /// Calls the remote side may have running here at once. Default 100; one more → `Busy`
    /// at once. A cancelled call keeps its slot until its handler has really ended.
    pub max_calls_in_flight: usize,
    /// Calls this side may have outstanding to the remote at once (a safety bound beside the
    /// remote's advertised budget, for which calls wait). Default 10 000; one more fails
    /// with `Busy`.
    pub max_outbound_calls: usize,
    /// Calls whose arguments hold at most this many MessagePack values (the argument array,
    /// each element, map key and value count) start on the connection's read loop: a handler that answers
    /// without waiting then costs no task at all, and its answer leaves with the batch of
    /// that read. Larger calls start in a task of their own, so that decoding them runs
    /// beside the connection's other calls. Default 4096; 0 starts every call in its own
    /// task (for handlers that compute for long before their first `.await`).
    pub max_inline_values: u64,
    /// Open streams (subscriptions) per connection. Default 1024; one more → `Busy`.
    pub max_streams: usize,
    /// Credit a stream's producer may run ahead of its consumer, in bytes, for the streams
    /// the remote starts toward this side: argument streams of the calls it serves. Each
    /// item costs its encoded size plus 64
    /// ([`stream_item_cost`](crate::protocol::message::stream_item_cost)). Default 256 KiB:
    /// about 4 000 small items or four 64 KiB ones; an unread argument stream holds at most
    /// this much (plus one item) in this side's memory. Credit is returned in halves of it.
    /// It also caps what a caller may ask for a result stream of this side: up to 16 times
    /// this, and this when the caller asks nothing.
    pub stream_window: u32,
    /// The window this side asks for on the streams it calls (its subscriptions), in the
    /// same bytes of item cost. Default 1 MiB, larger than [`Limits::stream_window`]
    /// because this side chose to open these streams and reads them itself: the window must
    /// cover a credit round trip, or a fast producer stalls once per half window. On a VM
    /// whose cross-core wake-ups cost about 30 us, 256 KiB kept a stream of small items at
    /// 0.57x raw tokio's rate and 1 MiB at 0.87x (`BENCHMARKS.md`). An unread subscription
    /// holds at most the granted window in this side's memory.
    pub result_stream_window: u32,
    /// Outbound bytes queued for a connection that does not read, above which it is closed as
    /// a slow consumer (`GoAway` code `SlowConsumer`). Default 8 MiB.
    pub max_outbound_queue: usize,
    /// How long a single write may block before the connection is closed. Default 10 s.
    pub write_timeout: Duration,
    /// From accept to the first frame of the protocol handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// From accept to authenticated, when the kernel requires authentication. Default 10 s.
    pub auth_timeout: Duration,
    /// How long a started frame may take to arrive whole. Default 30 s.
    pub frame_timeout: Duration,
    /// Idle time after which a Ping is sent. Default 30 s.
    pub keepalive_interval: Duration,
    /// Unanswered Pings after which the connection is closed as lost. Default 2.
    pub keepalive_misses: u32,
    /// Protocol errors tolerated per minute before the connection is closed. Default 100.
    pub max_protocol_errors: u32,
    /// Default deadline of a call made by this side. Default 30 s; per call with
    /// `with_timeout`. The deadline travels with the call so the server stops the handler.
    pub call_timeout: Duration,
    /// Upper bound the server applies to deadlines requested by callers. Default 5 min.
    pub max_call_timeout: Duration,
    /// Size above which a message is cut into chunks (and the size of each chunk). Default
    /// 256 KiB.
    pub chunk_size: usize,
    /// Chunk bytes a sender may have in flight per message before the receiver grants more.
    /// Default 1 MiB: a large transfer never floods the connection, and small calls
    /// interleave with it.
    pub chunk_window: usize,
    /// Calls a server may have outstanding to one client (back-controllers) at once.
    /// Default 64; one more fails at once with `Busy` rather than queue on the server.
    pub max_calls_to_client: usize,
    /// Argument bytes held by the calls running on one connection. Default 16 MiB; a call
    /// that would pass it is answered `Busy` (decoded values can be ~40x their wire size).
    pub max_inflight_bytes: usize,
    /// Argument bytes held by the calls running in the whole kernel. Default 512 MiB.
    pub max_kernel_inflight_bytes: usize,
    /// Cancels a connection may send per minute before it is closed (GoAway
    /// `TooManyErrors`): the HTTP/2 rapid-reset defence. Default 1024.
    pub max_cancels: u32,
    /// Connections a kernel serves at once. Default 10 000; one more is refused at once with
    /// GoAway `ServerFull` (WebSocket: HTTP 503 before the upgrade).
    pub max_connections: usize,
    /// Connections still in their handshake at once. Default 256; more are refused the same
    /// way (slowloris defence, with `handshake_timeout`).
    pub max_handshakes: usize,
    /// Chunked messages a connection reassembles at once. Default 4; one more fails that call
    /// with `Busy`.
    pub max_reassemblies: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 1 << 20,
            max_preauth_frame_size: 16 << 10,
            max_message_size: (8 << 20) + (64 << 10),
            read_reservation: 64 << 10,
            max_depth: 64,
            max_calls_in_flight: 100,
            max_outbound_calls: 10_000,
            max_inline_values: 4096,
            max_streams: 1024,
            stream_window: 256 << 10,
            result_stream_window: 1 << 20,
            max_outbound_queue: 8 << 20,
            write_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_misses: 2,
            max_protocol_errors: 100,
            call_timeout: Duration::from_secs(30),
            max_call_timeout: Duration::from_secs(300),
            chunk_size: 256 << 10,
            chunk_window: 1 << 20,
            max_reassemblies: 4,
            max_calls_to_client: 64,
            max_inflight_bytes: 16 << 20,
            max_kernel_inflight_bytes: 512 << 20,
            max_cancels: 1024,
            max_connections: 10_000,
            max_handshakes: 256,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl Limits {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Limits::max_frame_size`] (clamped to 4 KiB ..= 16 MiB when used).
    max_frame_size: usize,
    /// Sets [`Limits::max_preauth_frame_size`].
    max_preauth_frame_size: usize,
    /// Sets [`Limits::max_message_size`].
    max_message_size: usize,
    /// Sets [`Limits::read_reservation`].
    read_reservation: usize,
    /// Sets [`Limits::max_depth`] (clamped to 1 ..= 128 when used).
    max_depth: usize,
    /// Sets [`Limits::max_calls_in_flight`].
    max_calls_in_flight: usize,
    /// Sets [`Limits::max_outbound_calls`].
    max_outbound_calls: usize,
    /// Sets [`Limits::max_inline_values`].
    max_inline_values: u64,
    /// Sets [`Limits::max_streams`].
    max_streams: usize,
    /// Sets [`Limits::stream_window`].
    stream_window: u32,
    /// Sets [`Limits::result_stream_window`].
    result_stream_window: u32,
    /// Sets [`Limits::max_outbound_queue`].
    max_outbound_queue: usize,
    /// Sets [`Limits::write_timeout`].
    write_timeout: Duration,
    /// Sets [`Limits::handshake_timeout`].
    handshake_timeout: Duration,
    /// Sets [`Limits::auth_timeout`].
    auth_timeout: Duration,
    /// Sets [`Limits::frame_timeout`].
    frame_timeout: Duration,
    /// Sets [`Limits::keepalive_interval`].
    keepalive_interval: Duration,
    /// Sets [`Limits::keepalive_misses`].
    keepalive_misses: u32,
    /// Sets [`Limits::max_protocol_errors`].
    max_protocol_errors: u32,
    /// Sets [`Limits::call_timeout`].
    call_timeout: Duration,
    /// Sets [`Limits::max_call_timeout`].
    max_call_timeout: Duration,
    /// Sets [`Limits::chunk_size`] (clamped to 1 KiB ..= the frame limit when used).
    chunk_size: usize,
    /// Sets [`Limits::chunk_window`].
    chunk_window: usize,
    /// Sets [`Limits::max_reassemblies`].
    max_reassemblies: usize,
    /// Sets [`Limits::max_calls_to_client`].
    max_calls_to_client: usize,
    /// Sets [`Limits::max_inflight_bytes`].
    max_inflight_bytes: usize,
    /// Sets [`Limits::max_kernel_inflight_bytes`].
    max_kernel_inflight_bytes: usize,
    /// Sets [`Limits::max_cancels`].
    max_cancels: u32,
    /// Sets [`Limits::max_connections`].
    max_connections: usize,
    /// Sets [`Limits::max_handshakes`].
    max_handshakes: usize,
}

impl Limits {
    /// The frame limit actually enforced (clamped to 4 KiB ..= 16 MiB).
    pub fn frame_limit(&self) -> usize {
        self.max_frame_size.clamp(4 << 10, 16 << 20)
    }

    /// The chunk size actually used (at least 1 KiB, and leaving room for headers within the
    /// frame limit).
    pub(crate) fn chunk_limit(&self) -> usize {
        self.chunk_size.clamp(1 << 10, self.frame_limit() - 64)
    }

    /// The depth limit actually enforced (clamped to 1 ..= 128).
    pub(crate) fn depth_limit(&self) -> usize {
        self.max_depth.clamp(1, 128)
    }
}
