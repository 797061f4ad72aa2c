//! Deadlines of the unary calls this side has outstanding: one timer per connection, not
//! one per call.
//!
//! A tokio timer per call costs a wheel insertion and removal (about a thousand
//! instructions) on every call, though nearly every call is answered long before its
//! deadline. Instead, each pending call carries its deadline in the pending table, and one
//! task per connection sleeps until the earliest deadline any call registered. When it
//! wakes it scans the table once: calls past their deadline are cancelled at the remote and
//! dropped from the table (their waiting caller sees its answer channel close after the
//! deadline and reports a timeout), and the sleep is set to the earliest deadline left.
//!
//! The sleep is an alarm, served off the runtime's timer wheel (see [`super::alarm`]).
//! Registering costs one atomic `fetch_min`; the scan runs at most once per deadline that
//! actually comes due, batching calls whose deadlines fall within a millisecond of it. The
//! task starts with the first call that registers a deadline, so connections that never
//! call (most server connections) have none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnShared;

/// No deadline registered.
const NONE: u64 = u64::MAX;

/// How far past the earliest deadline the sweep runs, so that calls started together time
/// out in one scan (tokio's own timers round to the millisecond too).
const BATCH: Duration = Duration::from_millis(1);

/// The connection's deadline clock (see the module docs).
pub(crate) struct CallDeadlines {
    /// Deadlines are nanoseconds since this instant.
    epoch: Instant,
    /// The earliest deadline registered since the last scan, or [`NONE`].
    next: AtomicU64,
    /// Wakes the sweeper when a deadline earlier than its sleep arrives.
    earlier: Notify,
    started: AtomicBool,
}

impl CallDeadlines {
    pub(crate) fn new() -> CallDeadlines {
        CallDeadlines {
            epoch: Instant::now(),
            next: AtomicU64::new(NONE),
            earlier: Notify::new(),
            started: AtomicBool::new(false),
        }
    }

    fn offset(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos().min(NONE as u128 - 1) as u64
    }
}

impl ConnShared {
    /// Makes sure a call registered with `deadline` in the pending table is timed out then.
    pub(crate) fn watch_deadline(self: &Arc<Self>, deadline: Instant) {
        let deadlines = &self.deadlines;
        let at = deadlines.offset(deadline);
        if deadlines.next.fetch_min(at, Ordering::AcqRel) > at {
            deadlines.earlier.notify_one();
        }
        if !deadlines.started.load(Ordering::Relaxed)
            && !deadlines.started.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(sweep(self.clone()));
        }
    }

    /// Cancels every pending call whose deadline has passed; returns the earliest deadline
    /// left (as an offset), or [`NONE`].
    fn expire_calls(&self, now: Instant) -> u64 {
        let mut expired = Vec::new();
        let mut earliest = NONE;
        for (&id, pending) in self.outbound.lock().iter() {
            if pending.answered() {
                // Answered in time: its caller is about to take the answer.
                continue;
            }
            match pending.deadline {
                Some(deadline) if deadline <= now => expired.push(id),
                Some(deadline) => earliest = earliest.min(self.deadlines.offset(deadline)),
                None => {}
            }
        }
        for id in expired {
            // Dropping the entry wakes its caller, who reads the timeout from its own
            // clock.
            self.cancel_outbound(id);
        }
        earliest
    }
}

/// The connection's sweeper task; ends when the connection closes.
async fn sweep(conn: Arc<ConnShared>) {
    let deadlines = &conn.deadlines;
    loop {
        let next = deadlines.next.load(Ordering::Acquire);
        let due = async {
            match next {
                NONE => std::future::pending().await,
                at => {
                    let wake = deadlines.epoch + Duration::from_nanos(at) + BATCH;
                    conn.alarm_at(wake).await
                }
            }
        };
        tokio::select! {
            _ = due => {}
            _ = deadlines.earlier.notified() => continue,
            _ = conn.closed() => return,
        }
        // Forget the deadline being served before scanning: a call registering meanwhile
        // either is in the table for the scan or lowers `next` again after it.
        deadlines.next.store(NONE, Ordering::Release);
        let left = conn.expire_calls(Instant::now());
        deadlines.next.fetch_min(left, Ordering::AcqRel);
    }
}
