//! The lean multiplexing client the issue describes as "the overhead a framework need not
//! add": raw's server and wire (each frame carries a call id), and on the client a future per
//! call, an id → oneshot map, one reader task and one writer task that writes everything
//! queued in one go. No limits, deadlines, cancellation, errors or security: what is left is
//! the bare cost of multiplexing calls over one connection, measured beside ours.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use super::Rpc;
use super::raw::{OP_ID_BYTES, OP_ID_ECHO, encode_id_frame, next_frame};
use crate::proto::{Small, payload, small};

struct Shared {
    pending: Mutex<HashMap<u32, oneshot::Sender<BytesMut>>>,
    next_id: AtomicU32,
    out: Mutex<BytesMut>,
    queued: Notify,
}

pub struct Lean {
    shared: Arc<Shared>,
    small: Small,
    data: Vec<u8>,
}

impl Lean {
    pub async fn connect(addr: SocketAddr, payload_len: usize) -> Lean {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(0),
            out: Mutex::new(BytesMut::with_capacity(8 << 10)),
            queued: Notify::new(),
        });
        let writer = shared.clone();
        tokio::spawn(async move {
            loop {
                writer.queued.notified().await;
                let batch = writer.out.lock().unwrap().split();
                if !batch.is_empty() && wr.write_all(&batch).await.is_err() {
                    return;
                }
            }
        });
        let reader = shared.clone();
        tokio::spawn(async move {
            let mut inb = BytesMut::with_capacity(64 << 10);
            loop {
                inb.reserve(64 << 10);
                match rd.read_buf(&mut inb).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Some((_, mut body)) = next_frame(&mut inb) {
                    let id = body.get_u32();
                    let waiter = reader.pending.lock().unwrap().remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(body);
                    }
                }
            }
        });
        Lean { shared, small: small(), data: payload(payload_len) }
    }

    /// Sends one call and waits for its answer's body.
    async fn call<T: Serialize + ?Sized>(&self, op: u8, value: &T) -> BytesMut {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(id, tx);
        encode_id_frame(&mut self.shared.out.lock().unwrap(), op, id, value);
        self.shared.queued.notify_one();
        rx.await.expect("the connection closed")
    }
}

impl Rpc for Lean {
    async fn echo(&self) {
        let body = self.call(OP_ID_ECHO, &self.small).await;
        let r: Small = rmp_serde::from_slice(&body).unwrap();
        debug_assert_eq!(r, self.small);
    }

    async fn echo_bytes(&self) {
        let data = serde_bytes::Bytes::new(&self.data);
        let body = self.call(OP_ID_BYTES, data).await;
        let b: &serde_bytes::Bytes = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(b.len(), self.data.len());
    }

    async fn stream(&self, _n: u64) -> Option<u64> {
        None
    }
}
