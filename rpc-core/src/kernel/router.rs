//! Peer routing: clients register under an alias and call each other through the server.
//!
//! The bookkeeping follows WAMP routers: the server stamps the caller's identity on every
//! routed call (a caller cannot claim another's), forwards bodies without decoding them,
//! tracks each routed call so that answers go back only to the call that is open, cancels at
//! the callee when the caller leaves, fails the caller at once when the callee leaves or the
//! alias is unknown, and asks the security policy on every register and every call.
//!
//! A routed call holds a slot on the caller's connection (so a source has at most
//! `Limits::max_calls_in_flight` routed calls open) and one of the callee's advertised call
//! slots (so a slow callee makes callers see `Busy`, never makes the server buffer).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;

use crate::connection::calls::{Pending, Sink};
use crate::connection::inbound::{Inbound, reserve_slot};
use crate::connection::{ConnShared, Connection};
use crate::error::{ErrorKind, RpcError};
use crate::protocol::codec;
use crate::protocol::frame::{Frame, Kind};
use crate::protocol::message::{self, RouteSource};

/// Aliases of the live connections that registered as peers.
#[derive(Default)]
pub(crate) struct Router {
    peers: Mutex<HashMap<String, Connection>>,
}

impl Router {
    /// The connection registered under `alias`.
    fn lookup(&self, alias: &str) -> Option<Arc<ConnShared>> {
        self.peers.lock().get(alias).map(|c| c.shared.clone()).filter(|c| !c.is_closed())
    }

    /// Frees `alias` if `conn_id` holds it.
    pub(crate) fn release(&self, alias: &str, conn_id: u64) {
        let mut peers = self.peers.lock();
        if peers.get(alias).is_some_and(|c| c.id() == conn_id) {
            peers.remove(alias);
        }
    }

    /// How many aliases are registered.
    pub(crate) fn len(&self) -> usize {
        self.peers.lock().len()
    }
}

fn unreachable_peer(alias: &str) -> RpcError {
    // The same error whether the alias is unknown or the policy forbids it: callers cannot
    // probe which aliases exist.
    RpcError::new(ErrorKind::PeerNotFound, format!("no peer `{alias}` is reachable"))
}

/// Handles PeerRegister (`[alias]`) and PeerUnregister (`[]`) from a client.
#[inline(never)]
pub(crate) fn handle_registration(conn: &Arc<ConnShared>, frame: Frame) {
    let id = frame.id;
    if conn.is_local_id(id) || id == 0 {
        return conn.protocol_error(id, "peer registration with an id from this side's id space");
    }
    if frame.kind == Kind::PeerUnregister {
        if let Some(alias) = conn.peer_alias.lock().take() {
            conn.kernel.router().release(&alias, conn.id);
        }
        let _ = conn.outbox.push(Kind::Reply, id, None, |buf| codec::encode_into(buf, &()));
        return;
    }
    let alias = match message::decode_route_target(&frame.body) {
        Ok(alias) if !alias.is_empty() && alias.len() <= 256 => alias.to_string(),
        _ => {
            return conn.send_error(id, &RpcError::bad_arguments("a peer alias is 1 to 256 bytes"));
        }
    };
    let conn = conn.clone();
    tokio::spawn(async move {
        let session = conn.session.read().clone();
        let security = conn.kernel.security_or_default();
        if !security.is_allowed_to_register_as_peer(&session, &alias).await {
            tracing::info!(connection = conn.id, %alias, "peer registration denied");
            let e =
                RpcError::access_denied(format!("this session may not register as peer `{alias}`"));
            return conn.send_error(id, &e);
        }
        let result = {
            let mut own = conn.peer_alias.lock();
            let mut peers = conn.kernel.router().peers.lock();
            match (&*own, peers.get(&alias)) {
                (Some(current), _) if *current != alias => Err(RpcError::new(
                    ErrorKind::AlreadyRegistered,
                    format!(
                        "this connection is already registered as `{current}`; unregister first"
                    ),
                )),
                (_, Some(holder)) if holder.id() != conn.id && !holder.is_closed() => {
                    Err(RpcError::new(
                        ErrorKind::AlreadyRegistered,
                        format!("peer `{alias}` is already registered by another connection"),
                    ))
                }
                _ if conn.is_closed() => Err(conn.disconnect_error()),
                _ => {
                    peers.insert(alias.clone(), Connection { shared: conn.clone() });
                    *own = Some(alias.clone());
                    Ok(())
                }
            }
        };
        match result {
            Ok(()) => {
                tracing::debug!(connection = conn.id, %alias, "peer registered");
                let _ = conn.outbox.push(Kind::Reply, id, None, |buf| codec::encode_into(buf, &()));
            }
            Err(e) => conn.send_error(id, &e),
        }
    });
}

/// Handles a Call whose route section names a target alias: checks the policy, then
/// forwards the call (body untouched) to the target with the caller's identity stamped on.
pub(crate) fn route_call(conn: &Arc<ConnShared>, frame: Frame) {
    let id = frame.id;
    let Some(route) = frame.route.as_ref() else { return };
    let alias = match message::decode_route_target(route) {
        Ok(alias) => alias.to_string(),
        Err(_) => return conn.protocol_error(id, "malformed route target"),
    };
    // A streaming call asks for a window; a Call that starts a chunked one is unary.
    let stream = frame.kind == Kind::Call
        && message::CallHead::decode(&frame.body, conn.limits.depth_limit())
            .is_ok_and(|h| h.window > 0);
    let Some(mut table) = reserve_slot(conn, id, stream) else { return };
    let caller = conn.clone();
    let task = tokio::spawn(async move {
        let session = caller.session.read().clone();
        let security = caller.kernel.security_or_default();
        let allowed = security.is_allowed_to_send_to_peer(&session, &alias).await;
        let callee = if allowed { caller.kernel.router().lookup(&alias) } else { None };
        let Some(callee) = callee else {
            tracing::debug!(connection = caller.id, %alias, allowed, "routed call refused");
            return caller.answer_error(id, &unreachable_peer(&alias));
        };
        // Wait (bounded) for one of the callee's call slots: the caller's own slot is held
        // meanwhile, so at most max_calls_in_flight calls per caller wait here, each holding
        // only its Call frame.
        let slots = if stream { callee.stream_slots.clone() } else { callee.call_slots.clone() };
        let wait = caller.limits.call_timeout;
        let slot = match tokio::time::timeout(wait, slots.take()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return caller.answer_error(id, &unreachable_peer(&alias)),
            Err(_) => {
                let e = RpcError::busy(format!(
                    "the peer had no room for another call within {wait:?}; retry later"
                ));
                return caller.answer_error(id, &e);
            }
        };
        if let Err(e) = forward_call(&caller, id, &callee, &session, frame, slot, stream) {
            caller.answer_error(id, &e);
        }
    });
    table.insert(id, Inbound::Routing { abort: task.abort_handle(), queued: Vec::new() });
}

fn forward_call(
    caller: &Arc<ConnShared>,
    caller_id: u32,
    callee: &Arc<ConnShared>,
    session: &crate::Session,
    frame: Frame,
    slot: crate::connection::slots::Slot,
    stream: bool,
) -> Result<(), RpcError> {
    let callee_id = callee.alloc_id()?;
    let sink = Sink::Routed { caller: Arc::downgrade(caller), caller_id, _slot: slot };
    callee.register_pending(callee_id, Pending::new(sink))?;
    let source = RouteSource {
        connection_id: caller.id,
        alias: caller.peer_alias.lock().clone(),
        username: (!session.is_anonymous()).then(|| session.username().to_string()),
    };
    let mut stamp = BytesMut::new();
    source.encode(&mut stamp);
    // Under the caller's table lock, so that frames the reader forwards once the entry says
    // Routed cannot overtake the first frame and the ones queued during the policy check.
    let mut table = caller.inbound.lock();
    let queued = match table.get_mut(&caller_id) {
        Some(entry @ Inbound::Routing { .. }) => {
            let routed = Inbound::Routed { callee: callee.clone(), callee_id, stream };
            match std::mem::replace(entry, routed) {
                Inbound::Routing { queued, .. } => queued,
                _ => Vec::new(),
            }
        }
        _ => {
            // The caller cancelled meanwhile.
            drop(table);
            callee.outbound.lock().remove(&callee_id);
            return Ok(());
        }
    };
    // A Call, or the first Chunk of a large one: either way the body is forwarded untouched.
    if let Err(e) = callee.outbox.push_raw(frame.kind, callee_id, Some(&stamp), &frame.body) {
        table.remove(&caller_id);
        drop(table);
        callee.outbound.lock().remove(&callee_id);
        let e = e.into_rpc_error(callee.limits.frame_limit());
        callee.on_push_error(&e);
        return Err(RpcError::new(
            ErrorKind::PeerNotFound,
            format!("the peer could not take the call: {e}"),
        ));
    }
    for frame in queued {
        crate::connection::calls::forward(callee, frame.kind, callee_id, &frame.body);
    }
    Ok(())
}
