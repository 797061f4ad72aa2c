//! The calls-in-flight budget the remote granted in its Hello (`max_calls`, `max_streams`):
//! a count of free slots that each outgoing call takes and gives back when it ends.
//!
//! Every call takes and returns a slot, so this sits on the hot path. tokio's `Semaphore`
//! did the job but its release always takes a mutex; callgrind counted about 180
//! instructions per call for the pair. Here taking a slot is one compare-and-swap and giving
//! it back one atomic add; only a caller that finds no slot free registers with a
//! [`Notify`] and waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

/// Set in [`Slots::free`] once the connection closed: nobody takes a slot any more.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// A connection's free call slots (or stream slots).
pub(crate) struct Slots {
    /// Free slots, with [`CLOSED`] set once closed.
    free: AtomicUsize,
    /// Callers waiting in [`Slots::take`]; a slot given back wakes one only if some wait.
    waiting: AtomicUsize,
    freed: Notify,
}

/// Why [`Slots::try_take`] found no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// Every slot is taken.
    Full,
    /// The connection closed.
    Closed,
}

/// One slot taken; dropping it gives the slot back.
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Slots {
    /// `n` free slots (capped below the closed bit).
    pub(crate) fn new(n: usize) -> Arc<Slots> {
        Arc::new(Slots {
            free: AtomicUsize::new(n.min(CLOSED - 1)),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Takes a slot if one is free, without waiting.
    pub(crate) fn try_take(self: &Arc<Self>) -> Result<Slot, NoSlot> {
        let mut free = self.free.load(SeqCst);
        loop {
            if free & CLOSED != 0 {
                return Err(NoSlot::Closed);
            }
            if free == 0 {
                return Err(NoSlot::Full);
            }
            match self.free.compare_exchange_weak(free, free - 1, SeqCst, SeqCst) {
                Ok(_) => return Ok(Slot(self.clone())),
                Err(now) => free = now,
            }
        }
    }

    /// Takes a slot, waiting until one is given back; fails once the connection closed.
    pub(crate) async fn take(self: &Arc<Self>) -> Result<Slot, NoSlot> {
        match self.try_take() {
            Err(NoSlot::Full) => {}
            taken => return taken,
        }
        self.waiting.fetch_add(1, SeqCst);
        let _registered = Registered(self);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking again: a slot given back after this look wakes us.
            freed.as_mut().enable();
            match self.try_take() {
                Err(NoSlot::Full) => freed.await,
                taken => return taken,
            }
        }
    }

    /// Refuses every later take and wakes those waiting (they fail with `Closed`).
    pub(crate) fn close(&self) {
        self.free.fetch_or(CLOSED, SeqCst);
        self.freed.notify_waiters();
    }

    fn give_back(&self) {
        self.free.fetch_add(1, SeqCst);
        // Both sides use SeqCst: either a waiter's `waiting` increment is seen here, or its
        // look at `free` (made after registering) sees this slot.
        if self.waiting.load(SeqCst) > 0 {
            self.freed.notify_one();
        }
    }
}

/// Counts a caller in [`Slots::waiting`] for as long as it waits (also when its wait is
/// dropped by a timeout).
struct Registered<'a>(&'a Slots);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn slots_are_counted_and_given_back_on_drop() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        assert_eq!(slots.try_take().unwrap_err(), NoSlot::Full);
        drop(a);
        let c = slots.try_take().unwrap();
        drop((b, c));
        slots.close();
        assert_eq!(slots.try_take().unwrap_err(), NoSlot::Closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_gets_the_slot_given_back_and_close_wakes_the_rest() {
        let slots = Slots::new(1);
        let held = slots.try_take().unwrap();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no slot is free yet");
        drop(held);
        let taken = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(taken.expect("the waiter was not woken").unwrap(), Ok(()));

        let held = slots.try_take().unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.take().await.map(drop) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        slots.close();
        for w in waiters {
            let r = tokio::time::timeout(Duration::from_secs(5), w).await.unwrap().unwrap();
            assert_eq!(r, Err(NoSlot::Closed));
        }
        drop(held);
        assert_eq!(slots.waiting.load(SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_takers_never_exceed_the_budget() {
        // 8 tasks take and give back 2 000 times each from 3 slots; the number held at once
        // never exceeds 3, and every taker finishes (no wake-up is lost).
        let slots = Slots::new(3);
        let held = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (slots, held) = (slots.clone(), held.clone());
                tokio::spawn(async move {
                    for i in 0..2000 {
                        let slot = slots.take().await.unwrap();
                        assert!(held.fetch_add(1, SeqCst) < 3, "more slots held than exist");
                        if i % 7 == 0 {
                            tokio::task::yield_now().await;
                        }
                        held.fetch_sub(1, SeqCst);
                        drop(slot);
                    }
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        for r in tokio::time::timeout(Duration::from_secs(20), all).await.expect("a taker hung") {
            r.unwrap();
        }
        assert_eq!(slots.try_take().map(drop), Ok(()));
    }

    #[tokio::test]
    async fn a_wait_dropped_by_its_timeout_leaves_no_registration() {
        let slots = Slots::new(1);
        let _held = slots.try_take().unwrap();
        let r = tokio::time::timeout(Duration::from_millis(10), slots.take()).await;
        assert!(r.is_err());
        assert_eq!(slots.waiting.load(SeqCst), 0);
    }
}
