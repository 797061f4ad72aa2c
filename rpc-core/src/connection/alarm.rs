//! The connection's deadlines, kept off the runtime's timer wheel.
//!
//! A connection always has a deadline ahead (its keepalive, and the deadline of any call
//! it has outstanding), seconds away and almost never reached. Held as tokio timers, they
//! keep the runtime's timer wheel non-empty, and then every time a runtime thread goes to
//! sleep tokio asks the OS for a *timed* wait: the kernel arms a timer for it and cancels it
//! when a socket wakes the thread first. In a KVM guest that costs about half a microsecond
//! per sleep, twice per round trip of a unary call (measured on the benchmark VM, one core:
//! 19.7 us per call with the timers, 18.7 us without; see `BENCHMARKS.md`).
//!
//! So these deadlines are served by one thread per process instead: it sleeps until the
//! earliest [`Alarm`] of any connection and wakes the task waiting for it. Arming or moving
//! an alarm costs a short lock and, only when it becomes the earliest, a wake-up of that
//! thread; alarms move rarely (a connection's checks are computed lazily, see the read
//! loop and [`super::deadlines`]).
//!
//! When the runtime's clock is paused (`tokio::time::pause`, `#[tokio::test(start_paused =
//! true)]`), only the runtime's own timers fire as it advances its clock, so a connection
//! that starts on a paused clock uses them instead (decided once, in [`runtime_clock_is_paused`]).

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use parking_lot::{Condvar, Mutex};
use tokio::time::Instant;

/// A sleep until a deadline that can be moved, like a pinned `tokio::time::Sleep`, served
/// by the alarm thread (or by the runtime's timers on a paused clock). Completes once the
/// deadline has passed, and again on every poll until it is [`reset`](Alarm::reset).
pub(crate) struct Alarm {
    inner: Inner,
}

enum Inner {
    /// The runtime's clock is paused: its own timer, which it advances.
    Runtime(Pin<Box<tokio::time::Sleep>>),
    Thread {
        entry: Arc<Entry>,
        /// Bumped by every reset; the thread's items of older generations are stale.
        generation: u64,
    },
}

/// What the alarm thread shares with one [`Alarm`].
struct Entry {
    /// The generation armed now; queued items of other generations are stale.
    armed: AtomicU64,
    /// The highest generation whose deadline has passed.
    fired: AtomicU64,
    waker: AtomicWaker,
}

impl Alarm {
    /// An alarm at `deadline`. `runtime_timers`: use the runtime's timers (see the module
    /// docs); [`runtime_clock_is_paused`] says when.
    pub(crate) fn at(deadline: Instant, runtime_timers: bool) -> Alarm {
        if runtime_timers {
            return Alarm { inner: Inner::Runtime(Box::pin(tokio::time::sleep_until(deadline))) };
        }
        let entry = Arc::new(Entry {
            armed: AtomicU64::new(1),
            fired: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        });
        Clockwork::get().arm(on_thread_clock(deadline), 1, &entry);
        Alarm { inner: Inner::Thread { entry, generation: 1 } }
    }

    /// Moves the deadline (earlier or later); the alarm is pending again until then.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        match &mut self.inner {
            Inner::Runtime(sleep) => sleep.as_mut().reset(deadline),
            Inner::Thread { entry, generation } => {
                retire(entry, *generation);
                *generation += 1;
                entry.armed.store(*generation, Ordering::Release);
                Clockwork::get().arm(on_thread_clock(deadline), *generation, entry);
            }
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if let Inner::Thread { entry, generation } = &self.inner {
            retire(entry, *generation);
        }
    }
}

/// Counts `generation`'s item as stale (superseded or dropped) if it is still queued,
/// that is, if it has not fired.
fn retire(entry: &Entry, generation: u64) {
    if entry.fired.load(Ordering::Acquire) < generation {
        Clockwork::get().stale.fetch_add(1, Ordering::Relaxed);
    }
}

impl Future for Alarm {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().inner {
            Inner::Runtime(sleep) => sleep.as_mut().poll(cx),
            Inner::Thread { entry, generation } => {
                if entry.fired.load(Ordering::Acquire) >= *generation {
                    return Poll::Ready(());
                }
                // Registered before looking again, so a firing in between wakes this poll.
                entry.waker.register(cx.waker());
                match entry.fired.load(Ordering::Acquire) >= *generation {
                    true => Poll::Ready(()),
                    false => Poll::Pending,
                }
            }
        }
    }
}

/// `deadline` on the alarm thread's clock. Tokio's clock may be ahead of the OS's (a test
/// that paused it, advanced it and resumed it), so the deadline is carried over as a
/// distance from now rather than as the same instant.
fn on_thread_clock(deadline: Instant) -> std::time::Instant {
    std::time::Instant::now() + deadline.saturating_duration_since(Instant::now())
}

/// Whether the current runtime's clock is paused, so that only its own timers fire.
///
/// A running clock moves within the two microseconds this spins; a paused one moves only
/// when the runtime advances it, which it never does while this task runs without
/// awaiting. Called once per connection, when it starts.
pub(crate) fn runtime_clock_is_paused() -> bool {
    let before = Instant::now();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_micros(2) {
        std::hint::spin_loop();
    }
    Instant::now() == before
}

/// One armed deadline in the alarm thread's queue.
struct Item {
    deadline: std::time::Instant,
    generation: u64,
    entry: Weak<Entry>,
}

impl Item {
    /// Its alarm, if this item is that alarm's current deadline (not superseded by a reset,
    /// and the alarm not dropped).
    fn live_entry(&self) -> Option<Arc<Entry>> {
        self.entry.upgrade().filter(|e| e.armed.load(Ordering::Acquire) == self.generation)
    }
}

impl PartialEq for Item {
    fn eq(&self, other: &Item) -> bool {
        self.deadline == other.deadline
    }
}

impl Eq for Item {}

impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Item) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Item {
    /// Reversed: the earliest deadline is the greatest, on top of the max-heap.
    fn cmp(&self, other: &Item) -> CmpOrdering {
        other.deadline.cmp(&self.deadline)
    }
}

/// The alarm thread's side: the queue of armed deadlines and the condition it sleeps on.
struct Clockwork {
    queue: Mutex<BinaryHeap<Item>>,
    earlier: Condvar,
    /// Items superseded by a reset or left by a dropped alarm, still queued: they leave at
    /// their deadline, or sooner when they outnumber the live ones (see [`Clockwork::arm`]).
    stale: AtomicUsize,
}

/// Below this many queued items, stale ones are left to leave at their deadline.
const COMPACT_ABOVE: usize = 1024;

impl Clockwork {
    /// The process's alarm thread, started by the first alarm.
    fn get() -> &'static Clockwork {
        static CLOCKWORK: OnceLock<&'static Clockwork> = OnceLock::new();
        CLOCKWORK.get_or_init(|| {
            let clockwork: &'static Clockwork = Box::leak(Box::new(Clockwork {
                queue: Mutex::new(BinaryHeap::new()),
                earlier: Condvar::new(),
                stale: AtomicUsize::new(0),
            }));
            std::thread::Builder::new()
                .name("rpc-alarm".into())
                .spawn(move || clockwork.run())
                .expect("the OS refused to start the alarm thread");
            clockwork
        })
    }

    /// Queues `entry`'s `generation` for `deadline`, waking the thread if it sleeps past it.
    ///
    /// Items of older generations, and those of dropped alarms, stay queued until their own
    /// deadline and are skipped then; once they are more than half of a large queue they
    /// are dropped here in one pass, so that a server opening and closing many connections
    /// does not hold an item per closed connection for a keepalive interval.
    fn arm(&self, deadline: std::time::Instant, generation: u64, entry: &Arc<Entry>) {
        let mut queue = self.queue.lock();
        let stale = self.stale.load(Ordering::Relaxed);
        if queue.len() > COMPACT_ABOVE && stale * 2 > queue.len() {
            queue.retain(|item| item.live_entry().is_some());
            self.stale.store(0, Ordering::Relaxed);
        }
        let wake = queue.peek().is_none_or(|top| deadline < top.deadline);
        queue.push(Item { deadline, generation, entry: Arc::downgrade(entry) });
        drop(queue);
        if wake {
            self.earlier.notify_one();
        }
    }

    /// Completes a due item's alarm and wakes its task; a stale item only leaves the count.
    fn fire(&self, item: Item) {
        let Some(entry) = item.live_entry() else {
            let _ =
                self.stale.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            return;
        };
        entry.fired.fetch_max(item.generation, Ordering::AcqRel);
        // Every connection's deadlines depend on this thread: a waker that panics must not
        // end it.
        let woken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.waker.wake()));
        if woken.is_err() {
            tracing::error!("a task's waker panicked when its alarm fired");
        }
    }

    /// The thread: fires what is due, sleeps until the next deadline or an earlier arming.
    fn run(&self) {
        let mut due = Vec::new();
        let mut queue = self.queue.lock();
        loop {
            let now = std::time::Instant::now();
            while queue.peek().is_some_and(|top| top.deadline <= now) {
                if let Some(item) = queue.pop() {
                    due.push(item);
                }
            }
            if !due.is_empty() {
                // Wake the tasks without holding the queue: waking may run scheduler code.
                parking_lot::MutexGuard::unlocked(&mut queue, || {
                    due.drain(..).for_each(|item| self.fire(item))
                });
                continue;
            }
            match queue.peek().map(|top| top.deadline) {
                Some(deadline) => {
                    self.earlier.wait_until(&mut queue, deadline);
                }
                None => self.earlier.wait(&mut queue),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn thread_alarm(after: Duration) -> Alarm {
        Alarm::at(Instant::now() + after, false)
    }

    /// Awaits `alarm`, failing the test instead of hanging if it never completes.
    async fn within_2s(alarm: impl Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(2), alarm).await.expect("the alarm never fired");
    }

    #[tokio::test]
    async fn an_alarm_completes_at_its_deadline_not_before() {
        let start = Instant::now();
        within_2s(thread_alarm(Duration::from_millis(30))).await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(30), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[tokio::test]
    async fn an_earlier_alarm_wakes_the_thread_sleeping_for_a_later_one() {
        let _late = thread_alarm(Duration::from_secs(3600));
        let start = Instant::now();
        within_2s(thread_alarm(Duration::from_millis(20))).await;
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_reset_moves_the_deadline_both_ways() {
        let start = Instant::now();
        let mut alarm = thread_alarm(Duration::from_millis(10));
        alarm.reset(Instant::now() + Duration::from_millis(80));
        within_2s(&mut alarm).await;
        assert!(start.elapsed() >= Duration::from_millis(80), "{:?}", start.elapsed());
        // Fired alarms stay complete until reset; reset earlier than the old deadline.
        within_2s(&mut alarm).await;
        alarm.reset(Instant::now() + Duration::from_secs(3600));
        alarm.reset(Instant::now() + Duration::from_millis(10));
        let again = Instant::now();
        within_2s(alarm).await;
        assert!(again.elapsed() < Duration::from_secs(2), "{:?}", again.elapsed());
    }

    #[tokio::test]
    async fn a_stale_deadline_does_not_complete_a_reset_alarm() {
        let mut alarm = thread_alarm(Duration::from_millis(10));
        alarm.reset(Instant::now() + Duration::from_secs(3600));
        let fired = tokio::time::timeout(Duration::from_millis(100), &mut alarm).await;
        assert!(fired.is_err(), "the first deadline's firing completed the reset alarm");
    }

    #[tokio::test]
    async fn dropped_alarms_are_skipped() {
        for _ in 0..100 {
            drop(thread_alarm(Duration::from_millis(1)));
        }
        within_2s(thread_alarm(Duration::from_millis(20))).await;
    }

    #[tokio::test]
    async fn stale_items_are_dropped_once_they_outnumber_the_live_ones() {
        // Alarms far in the future, dropped at once: without compaction every one of them
        // would stay queued for an hour.
        for _ in 0..20 * COMPACT_ABOVE {
            drop(thread_alarm(Duration::from_secs(3600)));
        }
        let queued = Clockwork::get().queue.lock().len();
        // Other tests share the thread: allow their few live alarms.
        assert!(queued <= 3 * COMPACT_ABOVE, "{queued} items queued");
        within_2s(thread_alarm(Duration::from_millis(10))).await;
    }

    #[tokio::test]
    async fn a_waker_that_panics_does_not_stop_the_thread() {
        struct Panics;
        impl futures::task::ArcWake for Panics {
            fn wake_by_ref(_: &Arc<Self>) {
                panic!("this waker panics on purpose");
            }
        }
        let waker = futures::task::waker(Arc::new(Panics));
        let mut cx = Context::from_waker(&waker);
        let mut doomed = thread_alarm(Duration::from_millis(5));
        assert!(Pin::new(&mut doomed).poll(&mut cx).is_pending());
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The thread fired `doomed` (its waker panicked) and still serves the next alarm.
        within_2s(thread_alarm(Duration::from_millis(10))).await;
        assert!(Pin::new(&mut doomed).poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn a_clock_resumed_ahead_of_the_os_clock_keeps_alarms_relative() {
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(3600)).await;
        tokio::time::resume();
        let start = std::time::Instant::now();
        within_2s(thread_alarm(Duration::from_millis(20))).await;
        assert!(start.elapsed() >= Duration::from_millis(20), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_running_clock_is_not_paused() {
        assert!(!runtime_clock_is_paused());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_is_seen_and_its_timers_serve_the_alarm() {
        assert!(runtime_clock_is_paused());
        let start = Instant::now();
        let mut alarm = Alarm::at(start + Duration::from_secs(3600), true);
        (&mut alarm).await;
        // The runtime advanced its clock an hour, at once.
        assert!(start.elapsed() >= Duration::from_secs(3600));
        alarm.reset(Instant::now() + Duration::from_secs(60));
        alarm.await;
        assert!(start.elapsed() >= Duration::from_secs(3660));
    }
}
