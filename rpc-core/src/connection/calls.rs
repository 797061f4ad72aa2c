//! Calls this side started: the pending table, the call future, cancellation on drop.
//!
//! Cancel safety: dropping a call's future before it resolved removes its entry and sends a
//! Cancel frame, so the remote drops the handler. Dropping a stream does the same.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ConnShared;
use crate::error::{ErrorKind, RpcError};
use crate::protocol::codec;
use crate::protocol::frame::{Frame, Kind};
use crate::protocol::message::{self, CallHead};
use crate::stream::RpcStream;

/// Where the answer to a pending call goes.
pub(crate) enum Pending {
    /// A unary call (or Auth): the one answer frame.
    Unary(oneshot::Sender<Frame>),
    /// A streaming call: StreamOpen, items, then End or Error.
    Stream(mpsc::UnboundedSender<Frame>),
}

/// Removes a pending entry and cancels the call at the remote, unless disarmed.
struct CallGuard<'a> {
    conn: &'a Arc<ConnShared>,
    id: u32,
    armed: bool,
    sent: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if self.sent {
                self.conn.cancel_outbound(self.id);
            } else {
                self.conn.outbound.lock().remove(&self.id);
            }
        }
    }
}

impl ConnShared {
    /// Forgets call `id` and tells the remote to stop it.
    pub(crate) fn cancel_outbound(&self, id: u32) {
        if self.outbound.lock().remove(&id).is_some() {
            let _ = self.outbox.push(Kind::Cancel, id, None, |_| Ok(()));
        }
    }

    /// Registers a pending call; fails if the connection closed meanwhile.
    fn register(&self, id: u32, pending: Pending) -> Result<(), RpcError> {
        let mut table = self.outbound.lock();
        if table.len() >= self.limits.max_outbound_calls {
            return Err(RpcError::busy(format!(
                "{} calls are already outstanding on this connection (Limits::max_outbound_calls)",
                table.len()
            )));
        }
        table.insert(id, pending);
        drop(table);
        // `close` sets the flag before draining the table: checking after the insert means
        // either close drains this entry or this check sees the flag.
        if self.is_closed() {
            self.outbound.lock().remove(&id);
            return Err(self.disconnect_error());
        }
        Ok(())
    }

    fn push_call<A: Serialize + ?Sized>(
        &self,
        id: u32,
        controller: &str,
        action: &str,
        args: &A,
        route: Option<&[u8]>,
        timeout: Duration,
        window: u32,
    ) -> Result<(), RpcError> {
        let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        self.outbox
            .push(Kind::Call, id, route, |buf| {
                CallHead::encode_start(buf, controller, action);
                codec::encode_into(buf, args)?;
                CallHead::encode_tail(buf, Some(timeout_ms), window);
                Ok(())
            })
            .map_err(|e| e.into_rpc_error(self.limits.frame_limit()))
    }

    /// Calls `controller.action(args)` and decodes the reply as `R`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        self: &Arc<Self>,
        controller: &str,
        action: &str,
        args: &A,
        route: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<R, RpcError> {
        let deadline = Instant::now() + timeout;
        let _slot = self.acquire_slot(deadline, controller, action, timeout).await?;
        let id = self.alloc_id()?;
        let (tx, rx) = oneshot::channel();
        self.register(id, Pending::Unary(tx))?;
        let mut guard = CallGuard { conn: self, id, armed: true, sent: false };
        self.push_call(id, controller, action, args, route, timeout, 0)?;
        guard.sent = true;
        let frame = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => {
                guard.armed = false;
                return Err(self.disconnect_error());
            }
            Err(_) => return Err(timeout_error(controller, action, timeout)),
        };
        guard.armed = false;
        if frame.kind == Kind::StreamOpen {
            // The remote streams where we expect one value: stop its producer.
            let _ = self.outbox.push(Kind::Cancel, id, None, |_| Ok(()));
        }
        decode_reply(frame)
    }

    /// Calls a streaming action; resolves once the remote accepted the subscription.
    pub(crate) async fn call_stream<A: Serialize + ?Sized, T: DeserializeOwned>(
        self: &Arc<Self>,
        controller: &str,
        action: &str,
        args: &A,
        route: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<RpcStream<T>, RpcError> {
        let deadline = Instant::now() + timeout;
        let slot = match tokio::time::timeout_at(deadline, self.call_slots.clone().acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(self.disconnect_error()),
            Err(_) => return Err(timeout_error(controller, action, timeout)),
        };
        let id = self.alloc_id()?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.register(id, Pending::Stream(tx))?;
        let mut guard = CallGuard { conn: self, id, armed: true, sent: false };
        let window = self.limits.stream_window.max(1);
        self.push_call(id, controller, action, args, route, timeout, window)?;
        guard.sent = true;
        let first = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                guard.armed = false;
                return Err(self.disconnect_error());
            }
            Err(_) => return Err(timeout_error(controller, action, timeout)),
        };
        match first.kind {
            Kind::StreamOpen => {
                guard.armed = false;
                Ok(RpcStream::remote(rx, self.clone(), id, window, slot))
            }
            Kind::Error => {
                guard.armed = false;
                Err(decode_error(&first))
            }
            Kind::Reply => Err(RpcError::protocol(format!(
                "`{controller}.{action}` answered with a value, not a stream: the two sides disagree on its signature"
            ))),
            other => Err(RpcError::protocol(format!("unexpected {other:?} before StreamOpen"))),
        }
    }

    /// Waits (until `deadline`) for one of the calls-in-flight slots the remote granted.
    async fn acquire_slot(
        &self,
        deadline: Instant,
        controller: &str,
        action: &str,
        timeout: Duration,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, RpcError> {
        match tokio::time::timeout_at(deadline, self.call_slots.acquire()).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_)) => Err(self.disconnect_error()),
            Err(_) => Err(timeout_error(controller, action, timeout)),
        }
    }

    /// Authenticates this connection with `token`; returns the session's user name.
    pub(crate) async fn authenticate(
        self: &Arc<Self>,
        token: &crate::Token,
        timeout: Duration,
    ) -> Result<String, RpcError> {
        let id = self.alloc_id()?;
        let (tx, rx) = oneshot::channel();
        self.register(id, Pending::Unary(tx))?;
        let mut guard = CallGuard { conn: self, id, armed: true, sent: false };
        self.outbox
            .push(Kind::Auth, id, None, |buf| {
                buf.extend_from_slice(token.raw());
                Ok(())
            })
            .map_err(|e| e.into_rpc_error(self.limits.frame_limit()))?;
        guard.sent = true;
        let frame = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => {
                guard.armed = false;
                return Err(RpcError::unauthenticated(
                    "authentication failed: the connection closed",
                ));
            }
            Err(_) => return Err(RpcError::unauthenticated("authentication timed out")),
        };
        guard.armed = false;
        decode_reply::<(String,)>(frame).map(|(name,)| name)
    }
}

fn timeout_error(controller: &str, action: &str, timeout: Duration) -> RpcError {
    RpcError::new(
        ErrorKind::Timeout,
        format!(
            "`{controller}.{action}` did not answer within {timeout:?} (raise it with with_timeout or Limits::call_timeout)"
        ),
    )
}

fn decode_error(frame: &Frame) -> RpcError {
    message::decode_error(&frame.body)
        .unwrap_or_else(|e| RpcError::protocol(format!("malformed Error frame: {e}")))
}

fn decode_reply<R: DeserializeOwned>(frame: Frame) -> Result<R, RpcError> {
    match frame.kind {
        Kind::Reply => codec::decode_value(&frame.body).map_err(|e| {
            RpcError::protocol(format!(
                "the reply did not decode into the expected type ({e}): the two sides disagree on the action's signature"
            ))
        }),
        Kind::Error => Err(decode_error(&frame)),
        Kind::StreamOpen => {
            Err(RpcError::protocol("the action answered with a stream where a value was expected"))
        }
        other => Err(RpcError::protocol(format!("unexpected {other:?} frame as a reply"))),
    }
}

/// Routes a response frame to the call waiting for it.
pub(crate) fn on_response(conn: &Arc<ConnShared>, frame: Frame) {
    let mut table = conn.outbound.lock();
    let ends = matches!(frame.kind, Kind::Reply | Kind::Error | Kind::End);
    let entry = if ends { table.remove(&frame.id) } else { None };
    match entry {
        Some(Pending::Unary(tx)) => {
            drop(table);
            let _ = tx.send(frame);
        }
        Some(Pending::Stream(tx)) => {
            drop(table);
            let _ = tx.send(frame);
        }
        None if !ends => match table.get(&frame.id) {
            Some(Pending::Stream(tx)) => {
                let _ = tx.send(frame);
            }
            Some(Pending::Unary(_)) if frame.kind == Kind::StreamOpen => {
                let Some(Pending::Unary(tx)) = table.remove(&frame.id) else {
                    return;
                };
                drop(table);
                let _ = tx.send(frame);
            }
            // A late frame for a call this side already gave up on: expected, ignored.
            _ => {}
        },
        None => {}
    }
}
