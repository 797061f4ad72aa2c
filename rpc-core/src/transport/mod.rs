//! What a transport must do: move bytes. Framing, calls and everything else live above.
//!
//! A transport is split into a [`TransportReader`] (owned by the connection's read loop) and a
//! [`TransportWriter`] (owned by its single writer task). [`ByteStream`] adapts any tokio
//! `AsyncRead`/`AsyncWrite` pair (TCP, TLS, Unix sockets, `tokio::io::duplex`); [`memory`]
//! connects two connections in one process with no socket at all. The WebSocket transport
//! lives in `rpc-ws`.

pub mod memory;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a connection knows about the transport under it; visible to handlers through
/// [`Connection`](crate::Connection).
#[derive(Debug, Clone, Default)]
pub struct TransportInfo {
    /// The remote address, for network transports.
    pub remote_addr: Option<SocketAddr>,
    /// A short name: `"memory"`, `"tcp"`, `"tls"`, `"ws"`, `"wss"`.
    pub kind: &'static str,
    /// The verified identity of the remote's TLS client certificate (its subject, or the
    /// first DNS name), when mutual TLS is in use.
    pub peer_identity: Option<String>,
}

/// A bidirectional byte transport.
pub trait Transport: Send + 'static {
    /// The read half.
    type Reader: TransportReader;
    /// The write half.
    type Writer: TransportWriter;
    /// Facts about the transport.
    fn info(&self) -> TransportInfo;
    /// Splits the transport into its two halves.
    fn split(self) -> (Self::Reader, Self::Writer);
}

/// The read half of a transport.
pub trait TransportReader: Send + 'static {
    /// Appends received bytes to `buf` (whose spare capacity the caller has reserved) and
    /// returns how many; `Ok(0)` means the remote closed in an orderly way. Must be
    /// cancel-safe: dropping the future loses no bytes.
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;

    /// Whether the transport receives whole buffers (WebSocket messages, in-memory
    /// batches): the connection then calls [`read_bytes`](Self::read_bytes) instead of
    /// [`read`](Self::read) and cuts frames out of each buffer without copying it.
    const RECEIVES_BUFFERS: bool = false;

    /// The next received buffer, owned; an empty one means the remote closed in an orderly
    /// way. Called only when [`RECEIVES_BUFFERS`](Self::RECEIVES_BUFFERS) is true; must be
    /// cancel-safe.
    fn read_bytes(&mut self) -> impl Future<Output = io::Result<Bytes>> + Send {
        async {
            Err(io::Error::other("this transport reads into a buffer (TransportReader::read)"))
        }
    }

    /// The connection's frame limit, live: the pre-auth limit until the remote
    /// authenticates, the full one from the moment it has. The connection checks every
    /// frame's length itself; a transport that buffers whole messages below the connection
    /// (WebSocket) keeps `frame_limit` to refuse a larger message as it starts arriving
    /// instead of buffering it first. Called before the first frame is read and again when
    /// the connection is set up. The default does nothing.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use rpc_core::transport::TransportReader;
    ///
    /// struct Reader { frame_limit: Option<Arc<AtomicUsize>> }
    ///
    /// impl TransportReader for Reader {
    ///     async fn read(&mut self, _buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
    ///         // A message-based transport would refuse a message above this as it starts.
    ///         let _limit = self.frame_limit.as_ref().map(|l| l.load(Ordering::Acquire));
    ///         Ok(0)
    ///     }
    ///
    ///     fn follow_frame_limit(&mut self, frame_limit: Arc<AtomicUsize>) {
    ///         self.frame_limit = Some(frame_limit);
    ///     }
    /// }
    /// ```
    fn follow_frame_limit(&mut self, frame_limit: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let _ = frame_limit;
    }
}

/// The write half of a transport.
pub trait TransportWriter: Send + 'static {
    /// Writes all of `data` (one or more whole frames).
    fn write(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the write direction after everything written so far.
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// A transport over any tokio byte stream halves.
///
/// ```
/// use rpc_core::transport::{ByteStream, TransportInfo};
///
/// let (a, _b) = tokio::io::duplex(64 << 10);
/// let (read, write) = tokio::io::split(a);
/// let transport = ByteStream::new(read, write, TransportInfo { kind: "duplex", ..Default::default() });
/// # let _ = transport;
/// ```
pub struct ByteStream<R, W> {
    reader: R,
    writer: W,
    info: TransportInfo,
}

impl<R, W> ByteStream<R, W> {
    /// Wraps a read half and a write half.
    pub fn new(reader: R, writer: W, info: TransportInfo) -> ByteStream<R, W> {
        ByteStream { reader, writer, info }
    }
}

/// The read half of a [`ByteStream`].
pub struct ByteStreamReader<R>(R);
/// The write half of a [`ByteStream`].
pub struct ByteStreamWriter<W>(W);

impl<R, W> Transport for ByteStream<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Reader = ByteStreamReader<R>;
    type Writer = ByteStreamWriter<W>;

    fn info(&self) -> TransportInfo {
        self.info.clone()
    }

    fn split(self) -> (Self::Reader, Self::Writer) {
        (ByteStreamReader(self.reader), ByteStreamWriter(self.writer))
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> TransportReader for ByteStreamReader<R> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.0.read_buf(buf).await
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> TransportWriter for ByteStreamWriter<W> {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_all(&data).await?;
        // Layers such as TLS keep the tail of what they encrypted until flushed: without
        // this, the last frames of a batch could wait for the next write.
        self.0.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}
