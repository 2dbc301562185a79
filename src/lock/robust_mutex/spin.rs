//! The robust mutex's spin on its held lock word (the machinery, shared
//! with the semaphore backend and the cell's wait, is
//! [`crate::lock::spin`]): reads only, tries without blocking whenever the
//! word reads free, before the sleeping lock ([`spin_then_try`]).
//!
//! glibc's robust mutex never spins: a locker that finds it held sets
//! `FUTEX_WAITERS` and calls `FUTEX_WAIT` at once, and an unlock that finds
//! `FUTEX_WAITERS` calls `FUTEX_WAKE`. When the holder re-locks within
//! nanoseconds (a loop of short critical sections), the waiter's
//! `FUTEX_WAIT` mostly returns at once (the word changed) and each
//! `FUTEX_WAITERS` bit it sets costs the holder a `FUTEX_WAKE` system call
//! (`BENCHMARKS.md` counts them).
//!
//! The spin ends as soon as the word is free (owner tid 0) or has
//! `FUTEX_OWNER_DIED` (then the try takes the lock or reports `EOWNERDEAD`
//! at once: a spinner never delays the owner-death report, the kernel sets
//! the bit when the owner dies and the next read sees it). The lock, its
//! robust-list entry and the owner-death protocol all stay inside glibc
//! (the non-blocking `pthread_mutex_clocklock` that `spin_then_try`'s
//! caller passes in, and the sleeping one after a spent spin), so
//! robustness is glibc's.

use std::sync::atomic::{AtomicU32, Ordering};

use super::word;
use crate::lock::spin::{self, Budget};

/// Whether a locker may take the lock now, or must hear now that its owner
/// died.
#[inline]
fn go(w: u32) -> bool {
    w & word::TID_MASK == 0 || w & word::OWNER_DIED != 0
}

/// Spins while `futex` shows a live holder, within this thread's budget;
/// each time the word reads free (or owner-died) calls `try_lock`, a
/// non-blocking attempt that never sets `FUTEX_WAITERS` (glibc's robust
/// clocklock with an expired deadline: `ETIMEDOUT` without entering the
/// kernel when the lock is held again). Returns the first answer of
/// `try_lock` that is not `None` (the lock taken, or an owner death, or an
/// error to report), or `None` when the budget is spent: then the caller
/// sleeps in glibc (`RobustMutex::sleep_in_slices`).
///
/// Why not call `pthread_mutex_lock` as soon as the word reads free: it
/// would set `FUTEX_WAITERS` and sleep whenever its compare-and-swap loses
/// to a holder that re-locked, and every one of those bits costs the
/// holder a `FUTEX_WAKE` system call on its next unlock: measured with
/// `SHMSYNC_BENCH_PROBE=1`, half of each process's time went to the kernel
/// with two processes contending.
#[cold]
#[inline(never)]
pub(crate) fn spin_then_try(
    futex: &AtomicU32,
    try_lock: impl FnMut() -> Option<i32>,
) -> Option<i32> {
    spin::spin_then_try(
        Budget::RobustLock,
        None,
        || go(futex.load(Ordering::Relaxed)),
        try_lock,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: u32 = 4242;
    const WAITERS: u32 = 0x8000_0000;

    #[test]
    fn go_on_free_or_owner_died_only() {
        assert!(go(0));
        assert!(go(WAITERS), "free with waiters left set");
        assert!(!go(TID));
        assert!(!go(TID | WAITERS));
        assert!(go(word::OWNER_DIED));
        assert!(go(word::OWNER_DIED | WAITERS));
        assert!(go(TID | word::OWNER_DIED));
    }

    #[test]
    fn a_held_word_is_never_tried_and_owner_died_is() {
        Budget::RobustLock.set(spin::MAX_NS);
        let held = AtomicU32::new(TID | WAITERS);
        let mut tries = 0;
        let got = spin_then_try(&held, || {
            tries += 1;
            Some(0)
        });
        assert_eq!((got, tries), (None, 0));
        Budget::RobustLock.set(spin::MAX_NS);
        let died = AtomicU32::new(word::OWNER_DIED | WAITERS);
        assert_eq!(spin_then_try(&died, || Some(130)), Some(130));
    }
}
