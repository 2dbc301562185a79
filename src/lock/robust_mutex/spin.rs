//! A bounded, adaptive spin on a held robust mutex's lock word, before
//! `pthread_mutex_lock` (which may sleep).
//!
//! glibc's robust mutex never spins: a locker that finds it held sets
//! `FUTEX_WAITERS` and calls `FUTEX_WAIT` at once, and an unlock that finds
//! `FUTEX_WAITERS` calls `FUTEX_WAKE`. When the holder re-locks within
//! nanoseconds (a loop of short critical sections), the waiter's
//! `FUTEX_WAIT` mostly returns at once (the word changed) and each
//! `FUTEX_WAITERS` bit it sets costs the holder a `FUTEX_WAKE` system call
//! (measured in `BENCHMARKS.md`: about 7 futex calls per 1000 locks with two
//! processes, half as many with this spin).
//!
//! The spin only *reads* the word (relaxed loads, with a doubling number of
//! `spin_loop` hints between reads so that the holder keeps its cache
//! line), and ends as soon as:
//!
//! * the word is free (owner tid 0): `pthread_mutex_lock` takes it;
//! * `FUTEX_OWNER_DIED` is set: `pthread_mutex_lock` reports `EOWNERDEAD`
//!   at once (a spinner never delays the owner-death report: the kernel
//!   sets the bit when the owner dies, and the next read sees it);
//! * its budget ([`MAX_NS`], adapted per thread) is spent;
//! * a `sched_yield` (one every [`YIELD_NS`] of spinning) gave the CPU to
//!   another task: the CPUs are oversubscribed, so spinning would only
//!   take time from the holder. The thread's budget is then quartered
//!   (down to [`MIN_NS`]); a spin that sees the lock free doubles it again.
//!
//! Nothing here writes shared memory: the lock, its robust-list entry and
//! the owner-death protocol all stay inside `pthread_mutex_lock`, so
//! robustness is glibc's, unchanged.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::word;

/// The longest spin, ns (about a futex sleep and wake-up on another CPU).
pub(crate) const MAX_NS: u32 = 20_000;
/// The shortest spin, ns, once oversubscription was seen.
pub(crate) const MIN_NS: u32 = 1_000;
/// Spin time between two `sched_yield`s, ns.
pub(crate) const YIELD_NS: u32 = 2_000;
/// A `sched_yield` that took longer than this ran another task.
const SWITCHED_NS: u32 = 20_000;
/// The most `spin_loop` hints between two reads of the word.
const MAX_PAUSE: u32 = 64;

thread_local! {
    /// This thread's spin budget, ns.
    static BUDGET: Cell<u32> = const { Cell::new(MAX_NS) };
}

/// Whether a locker may take the lock now, or must hear now that its owner
/// died.
#[inline]
fn go(w: u32) -> bool {
    w & word::TID_MASK == 0 || w & word::OWNER_DIED != 0
}

/// How a spin ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spun {
    /// The word is free or tells of an owner death.
    Go,
    /// The budget is spent.
    Spent,
    /// A `sched_yield` ran another task: the CPUs are oversubscribed.
    Oversubscribed,
}

/// Spins while `futex` shows a live holder, within this thread's budget.
#[cold]
#[inline(never)]
pub(crate) fn spin(futex: &AtomicU32) -> Spun {
    let budget = BUDGET.with(Cell::get);
    let how = spin_for(futex, budget);
    let next = match how {
        Spun::Go => budget.saturating_mul(2).min(MAX_NS),
        Spun::Spent => budget,
        Spun::Oversubscribed => (budget / 4).max(MIN_NS),
    };
    BUDGET.with(|b| b.set(next));
    how
}

fn spin_for(futex: &AtomicU32, budget_ns: u32) -> Spun {
    let start = Instant::now();
    let budget = Duration::from_nanos(u64::from(budget_ns));
    let every = Duration::from_nanos(u64::from(YIELD_NS));
    let mut next_yield = every;
    let mut pause = 1;
    loop {
        if go(futex.load(Ordering::Relaxed)) {
            return Spun::Go;
        }
        for _ in 0..pause {
            std::hint::spin_loop();
        }
        if pause < MAX_PAUSE {
            pause *= 2;
            continue;
        }
        let spent = start.elapsed();
        if spent >= budget {
            return Spun::Spent;
        }
        if spent >= next_yield {
            let t = Instant::now();
            std::thread::yield_now();
            if t.elapsed() > Duration::from_nanos(u64::from(SWITCHED_NS)) {
                return if go(futex.load(Ordering::Relaxed)) {
                    Spun::Go
                } else {
                    Spun::Oversubscribed
                };
            }
            next_yield = start.elapsed() + every;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
    fn owner_died_ends_the_spin_at_once() {
        let w = AtomicU32::new(word::OWNER_DIED | WAITERS);
        let t = Instant::now();
        assert_eq!(spin_for(&w, u32::MAX), Spun::Go);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_live_holder_ends_the_spin_within_its_budget() {
        let w = AtomicU32::new(TID | WAITERS);
        let t = Instant::now();
        let how = spin_for(&w, MAX_NS);
        assert_ne!(how, Spun::Go);
        // The budget, plus one pause and one yield that may have run
        // another task on a loaded machine.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    /// The word changes under a spinner (the kernel sets OWNER_DIED when
    /// the owner dies): the spinner sees it on its next read. The writer is
    /// a thread here: what is tested is the spinner's reading, not the
    /// kernel's (the process-level test is `tests/robust_spin.rs`).
    #[test]
    fn owner_death_during_a_spin_is_seen() {
        let w = Arc::new(AtomicU32::new(TID));
        let w2 = Arc::clone(&w);
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            w2.store(word::OWNER_DIED, Ordering::Relaxed);
        });
        let t = Instant::now();
        let mut how = Spun::Spent;
        while how != Spun::Go && t.elapsed() < Duration::from_secs(10) {
            how = spin_for(&w, u32::MAX);
        }
        setter.join().unwrap();
        assert_eq!(how, Spun::Go);
    }

    #[test]
    fn budget_adapts_within_bounds() {
        let held = AtomicU32::new(TID);
        let free = AtomicU32::new(0);
        BUDGET.with(|b| b.set(MIN_NS));
        assert_eq!(spin(&free), Spun::Go);
        assert_eq!(BUDGET.with(Cell::get), (MIN_NS * 2).min(MAX_NS));
        for _ in 0..10 {
            spin(&free);
        }
        assert_eq!(BUDGET.with(Cell::get), MAX_NS);
        let how = spin(&held);
        let b = BUDGET.with(Cell::get);
        match how {
            Spun::Spent => assert_eq!(b, MAX_NS),
            Spun::Oversubscribed => assert_eq!(b, (MAX_NS / 4).max(MIN_NS)),
            Spun::Go => panic!("a held word never lets a spinner go"),
        }
    }
}
