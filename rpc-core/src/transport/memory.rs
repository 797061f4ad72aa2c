//! Two connection ends in one process, joined by bounded channels of byte batches.
//!
//! Every byte still goes through the real framing and protocol, so a test over memory
//! exercises the same code as one over TCP, minus the kernel's socket buffers.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::{Transport, TransportInfo, TransportReader, TransportWriter};

/// Batches in flight per direction before a writer waits.
const CAPACITY: usize = 64;

/// One end of an in-memory pair.
pub struct MemoryTransport {
    rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
}

/// Two joined ends: what one writes, the other reads.
///
/// ```
/// let (client_end, server_end) = rpc_core::transport::memory::pair();
/// # drop((client_end, server_end));
/// ```
pub fn pair() -> (MemoryTransport, MemoryTransport) {
    let (a_tx, a_rx) = mpsc::channel(CAPACITY);
    let (b_tx, b_rx) = mpsc::channel(CAPACITY);
    (MemoryTransport { rx: a_rx, tx: b_tx }, MemoryTransport { rx: b_rx, tx: a_tx })
}

/// The read half of a [`MemoryTransport`].
pub struct MemoryReader {
    rx: mpsc::Receiver<Bytes>,
}

/// The write half of a [`MemoryTransport`].
pub struct MemoryWriter {
    tx: Option<mpsc::Sender<Bytes>>,
}

impl Transport for MemoryTransport {
    type Reader = MemoryReader;
    type Writer = MemoryWriter;

    fn info(&self) -> TransportInfo {
        TransportInfo { kind: "memory", ..TransportInfo::default() }
    }

    fn split(self) -> (MemoryReader, MemoryWriter) {
        (MemoryReader { rx: self.rx }, MemoryWriter { tx: Some(self.tx) })
    }
}

impl TransportReader for MemoryReader {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let batch = self.read_bytes().await?;
        buf.extend_from_slice(&batch);
        Ok(batch.len())
    }

    const RECEIVES_BUFFERS: bool = true;

    async fn read_bytes(&mut self) -> io::Result<Bytes> {
        Ok(self.rx.recv().await.unwrap_or_default())
    }
}

impl TransportWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        tx.send(data).await.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    async fn close(&mut self) -> io::Result<()> {
        self.tx = None;
        Ok(())
    }
}
