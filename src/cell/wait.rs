//! Waiting for a cell's value to change, without busy loops: a sequence
//! word and a waiter count in the segment header, non-private `futex(2)`.
//!
//! # Protocol
//!
//! Two live words of the header (offsets 148 and 152) serve every lock
//! backend alike:
//!
//! * `notify_seq` — bumped by every notification; waiters sleep on it with
//!   `FUTEX_WAIT`.
//! * `notify_waiters` — how many processes are between registering and
//!   waking up; a notification makes the `FUTEX_WAKE` system call only when
//!   it is non-zero.
//!
//! A waiter, holding the lock, checks its predicate; while it holds:
//! registers (`notify_waiters += 1`), reads `notify_seq`, releases the lock
//! through the backend's `release` (with the guard's consistency), sleeps
//! with `FUTEX_WAIT(notify_seq, seen)`, deregisters, and re-acquires through
//! the same path as [`ShmCell::lock`], then checks the predicate again. A
//! notifier bumps `notify_seq` and then reads `notify_waiters`.
//!
//! **No lost wake-up.** The value only changes under the lock. A change made
//! before the waiter took the lock is seen by its predicate. A change made
//! after the waiter released the lock comes after its registration and its
//! read of `notify_seq` (the lock orders them), so the notification that
//! follows the change sees the waiter counted and bumps the word past the
//! value the waiter sleeps on: the kernel either finds the word changed
//! (`EAGAIN`) or has the waiter queued when `FUTEX_WAKE` comes. Both
//! sides use sequentially consistent atomics, so even a notification sent
//! without the lock cannot miss a waiter that registered before it.
//!
//! **What the kernel does not do.** The robust list that reports a dead lock
//! holder knows nothing of `notify_seq`: when the process that would notify
//! dies, nobody wakes the waiters. [`ShmGuard::wait_while_timeout`] is the
//! answer (see its docs). A waiter killed while asleep leaves
//! `notify_waiters` one too high for good; that costs later notifications a
//! needless `FUTEX_WAKE` each, never a lost wake-up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ShmCell, ShmGuard};
use crate::error::LockError;
use crate::lock::spin::{spin_until_changed, Spun};
use crate::lock::{Acquire, LockBackend};
use crate::shm_safe::ShmSafe;
use crate::sys;
use crate::sys::errno;
use crate::sys::time::Monotonic;

/// Whether [`ShmGuard::wait_while_timeout`] returned because its time ran
/// out (like std's `WaitTimeoutResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// `true` when the timeout elapsed while the predicate still held; the
    /// guard returned with it holds the lock all the same.
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

impl<'a, T: ShmSafe, L: LockBackend> ShmGuard<'a, T, L> {
    /// Sleeps while `condition` holds: releases the lock, waits with
    /// `futex(FUTEX_WAIT)` until the cell is notified, re-acquires the lock
    /// and checks `condition` again. Returns the guard, holding the lock,
    /// once `condition` returns `false` (at once if it does on the first
    /// call). Uses no CPU while asleep.
    ///
    /// Another process must call [`ShmCell::notify_all`] (or
    /// [`notify_one`](ShmCell::notify_one)) after changing the value under
    /// the lock; notifications are never lost, and spurious wake-ups are
    /// absorbed by the loop. `condition` must depend only on the value (on
    /// what is changed under the lock).
    ///
    /// # If the notifier dies
    ///
    /// The kernel wakes nobody on the cell's behalf when a process dies.
    /// If the holder dies *holding the lock*, the next re-acquire (after a
    /// notification) reports it. But if the only process that would notify
    /// dies before it notifies, **this call sleeps forever**. When the
    /// other side may die, use [`wait_while_timeout`](Self::wait_while_timeout)
    /// in a loop and check on it at each timeout.
    ///
    /// # Errors
    ///
    /// The re-acquire is [`ShmCell::lock`]'s own path and reports what it
    /// does: [`LockError::OwnerDied`] with the guard when a holder died
    /// meanwhile (the wait stops there: repair, `make_consistent`, then wait
    /// again if you like), [`LockError::NotRecoverable`], [`LockError::Os`].
    /// A guard that is [inconsistent](Self::is_inconsistent) (an owner
    /// death not yet repaired) is not released to wait — that would leave
    /// the lock not recoverable for everyone: it comes straight back as
    /// [`LockError::OwnerDied`], still holding the lock; repair, call
    /// [`make_consistent`](Self::make_consistent), then wait.
    /// `LockError::Os` with `EPERM` when the guard was inherited through
    /// `fork` (this process does not hold the lock).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use shmsync::ShmCell;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cell = ShmCell::<u64>::open_or_create("/jobs", 0)?;
    /// // consumer: wait for work, take it, tell the producers
    /// let mut jobs = cell
    ///     .lock()
    ///     .and_then(|g| g.wait_while(|jobs| *jobs == 0))
    ///     .map_err(|e| e.without_guard())?;
    /// *jobs -= 1;
    /// drop(jobs);
    /// cell.notify_all();
    /// # Ok(()) }
    /// ```
    pub fn wait_while<F>(self, mut condition: F) -> Result<Self, LockError<Self>>
    where
        F: FnMut(&mut T) -> bool,
    {
        let mut guard = self;
        while condition(&mut guard) {
            guard = guard.sleep(None)?;
        }
        Ok(guard)
    }

    /// Like [`wait_while`](Self::wait_while), but sleeps at most `timeout`
    /// in total, measured on `CLOCK_MONOTONIC` from the call: spurious
    /// wake-ups and signals keep the original deadline. Returns the guard,
    /// holding the lock again, and whether the time ran out with
    /// `condition` still true.
    ///
    /// The timeout bounds the sleep, not the re-acquire, which waits for
    /// the lock like [`ShmCell::lock`] (as std's `Condvar` does): a holder
    /// that keeps the lock delays the return, a holder that dies makes it
    /// [`LockError::OwnerDied`].
    ///
    /// # The answer to a dead notifier
    ///
    /// Nothing wakes a waiter when the process that should notify it dies:
    /// the kernel's robust list only marks the lock. Wait in slices, and at
    /// each timeout find out whether the other side still lives (a pid in
    /// the value, a heartbeat); if it died holding the lock, the re-acquire
    /// already said so with `OwnerDied`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use shmsync::{LockError, ShmCell};
    ///
    /// # fn peer_is_alive() -> bool { true }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cell = ShmCell::<u64>::open("/jobs")?;
    /// let mut guard = cell.lock().map_err(|e| e.without_guard())?;
    /// loop {
    ///     match guard.wait_while_timeout(|jobs| *jobs == 0, Duration::from_secs(1)) {
    ///         Ok((g, res)) if res.timed_out() => {
    ///             if !peer_is_alive() {
    ///                 return Err("the producer is gone".into());
    ///             }
    ///             guard = g;
    ///         }
    ///         Ok((g, _)) => {
    ///             guard = g;
    ///             break;
    ///         }
    ///         Err(LockError::OwnerDied(g)) => {
    ///             // the producer died holding the lock: repair, then go on
    ///             g.make_consistent();
    ///             guard = g;
    ///         }
    ///         Err(e) => return Err(e.without_guard().into()),
    ///     }
    /// }
    /// *guard -= 1;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`wait_while`](Self::wait_while).
    pub fn wait_while_timeout<F>(
        self,
        mut condition: F,
        timeout: Duration,
    ) -> Result<(Self, WaitTimeoutResult), LockError<Self>>
    where
        F: FnMut(&mut T) -> bool,
    {
        let deadline = Monotonic::now().after(timeout);
        let mut guard = self;
        while condition(&mut guard) {
            let left = deadline.remaining();
            if left.is_zero() {
                return Ok((guard, WaitTimeoutResult(true)));
            }
            guard = guard.sleep(Some(left))?;
        }
        Ok((guard, WaitTimeoutResult(false)))
    }

    /// One round of the protocol: register, release, sleep on the
    /// sequence (at most `timeout`), deregister, re-acquire.
    fn sleep(self, timeout: Option<Duration>) -> Result<Self, LockError<Self>> {
        if self.is_inconsistent() {
            // Releasing an unrepaired owner death would make the lock not
            // recoverable for every process: hand it back instead.
            return Err(LockError::OwnerDied(self));
        }
        let Some((cell, consistent)) = self.disarm() else {
            return Err(LockError::Os(errno::error(errno::EPERM)));
        };
        let header = cell.seg.header();
        header.notify_waiters.fetch_add(1, Ordering::SeqCst);
        crate::steps::step("wait:registered");
        let seen = header.notify_seq.load(Ordering::SeqCst);
        // SAFETY: `disarm` said this process holds the lock, and the guard
        // was this thread's (`ShmGuard` is `!Send`); its `Drop` will not
        // run, so the lock is released exactly once.
        unsafe { cell.release(consistent) };
        crate::steps::step("wait:released");
        // A notification within microseconds (another CPU) needs no sleep.
        let slept = match spin_until_changed(&header.notify_seq, seen, timeout) {
            Spun::Go => Ok(()),
            _ => sys::futex::wait(&header.notify_seq, seen, timeout),
        };
        crate::steps::step("wait:woken");
        header.notify_waiters.fetch_sub(1, Ordering::SeqCst);
        crate::steps::step("wait:relock");
        slept.map_err(LockError::Os)?;
        cell.acquire(Acquire::Block)
    }
}

impl<T: ShmSafe, L: LockBackend> ShmCell<T, L> {
    /// Wakes every process waiting in [`ShmGuard::wait_while`] or
    /// [`wait_while_timeout`](ShmGuard::wait_while_timeout) on this cell,
    /// so that each re-checks its predicate: bumps the cell's sequence word
    /// and calls `futex(FUTEX_WAKE)` only if someone waits (otherwise it
    /// costs one atomic add and one load).
    ///
    /// Call it after changing the value — with or without the lock; after
    /// dropping the guard is cheaper, as the woken waiters then find the
    /// lock free. Dropping a guard does **not** notify by itself: a guard
    /// cannot tell a change from a read, and the lock path stays free of
    /// notification costs.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }

    /// Tells the waiters that one of them may proceed: **wakes every
    /// waiting process**, exactly like [`notify_all`](Self::notify_all).
    ///
    /// Waking only one cannot keep the promise that notifications are never
    /// lost: the waiter the kernel picks may die (be killed) after it is
    /// woken and before it takes the lock back and looks at the value —
    /// its death is then no owner death, nothing records that it took the
    /// wake-up, and the others, in an untimed wait, would sleep on although
    /// the value lets one of them go. Woken together, each re-checks its
    /// predicate under the lock; the first to see the value takes it, the
    /// others go back to sleep. The cost is those extra wake-ups.
    pub fn notify_one(&self) {
        self.notify(u32::MAX);
    }

    #[inline]
    fn notify(&self, n: u32) {
        let header = self.seg.header();
        header.notify_seq.fetch_add(1, Ordering::SeqCst);
        if header.notify_waiters.load(Ordering::SeqCst) != 0 {
            crate::steps::step("notify:bumped");
            // Cannot fail: the word is mapped, aligned and shared.
            let woke = sys::futex::wake(&header.notify_seq, n);
            debug_assert!(woke.is_ok(), "FUTEX_WAKE failed: {woke:?}");
            crate::steps::step("notify:woken");
        }
    }
}
