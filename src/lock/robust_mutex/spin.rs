//! Bounded, adaptive, read-only spins: on a held robust mutex's lock word,
//! trying without blocking whenever it reads free, before
//! `pthread_mutex_lock` ([`spin_then_try`]), and on a cell's notification
//! sequence before `FUTEX_WAIT` ([`spin_until_changed`], `cell/wait.rs`).
//!
//! glibc's robust mutex never spins: a locker that finds it held sets
//! `FUTEX_WAITERS` and calls `FUTEX_WAIT` at once, and an unlock that finds
//! `FUTEX_WAITERS` calls `FUTEX_WAKE`. When the holder re-locks within
//! nanoseconds (a loop of short critical sections), the waiter's
//! `FUTEX_WAIT` mostly returns at once (the word changed) and each
//! `FUTEX_WAITERS` bit it sets costs the holder a `FUTEX_WAKE` system call
//! (`BENCHMARKS.md` counts them). A waiter for a notification sleeps even
//! when the notifier, on another CPU, answers within a microsecond, and a
//! cross-CPU wake-up costs tens of microseconds on a virtual machine.
//!
//! A spin only *reads* (relaxed loads, with a doubling number of
//! `spin_loop` hints between reads so that the writer keeps its cache
//! line), and ends as soon as:
//!
//! * its condition holds: the lock word is free (owner tid 0) or has
//!   `FUTEX_OWNER_DIED` (then `pthread_mutex_lock` takes the lock or
//!   reports `EOWNERDEAD` at once: a spinner never delays the owner-death
//!   report, the kernel sets the bit when the owner dies and the next read
//!   sees it); or the sequence moved;
//! * its budget is spent (at most [`MAX_NS`]; for a wait, at most the
//!   caller's timeout);
//! * a `sched_yield` (one every [`YIELD_NS`] of spinning) ran another task:
//!   the CPUs are oversubscribed, and spinning would only take time from
//!   the process it waits for.
//!
//! The budget adapts per thread and per kind of spin: doubled by a spin
//! whose condition came true by itself, halved by one that was spent for
//! nothing, quartered by one that had to yield the CPU. Below [`MIN_NS`]
//! the thread stops spinning, but for one short spin every [`PROBE`] calls,
//! to find out when spinning pays again. So with two processes on one CPU
//! a waiter soon sleeps at once, as it did before (measured: hand-off
//! round trip on one CPU unchanged, on two CPUs far below a semaphore
//! pair's).
//!
//! Nothing here writes shared memory: the lock, its robust-list entry and
//! the owner-death protocol all stay inside glibc (`pthread_mutex_lock`,
//! and the non-blocking `pthread_mutex_clocklock` that `spin_then_try`'s
//! caller passes in), and the wait protocol is unchanged, so robustness is
//! glibc's and `wait.rs`'s.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::word;

/// The longest spin, ns (about a futex sleep and wake-up on another CPU).
pub(crate) const MAX_NS: u32 = 20_000;
/// The shortest spin, ns: below it (oversubscribed) a thread does not spin,
/// but for one [`MIN_NS`] spin every [`PROBE`] calls.
pub(crate) const MIN_NS: u32 = 1_000;
/// See [`MIN_NS`]. (While backed off, the budget cell counts calls.)
const PROBE: u32 = 32;
/// Spin time between two `sched_yield`s, ns.
pub(crate) const YIELD_NS: u32 = 2_000;
/// A `sched_yield` that took longer than this ran another task.
const SWITCHED_NS: u32 = 1_500;
/// The most `spin_loop` hints between two reads of the word.
const MAX_PAUSE: u32 = 64;

thread_local! {
    /// This thread's spin budget for a held lock, ns.
    static BUDGET: Cell<u32> = const { Cell::new(MAX_NS) };
    /// This thread's spin budget for a notification (`wait_while`), ns.
    static WAIT_BUDGET: Cell<u32> = const { Cell::new(MAX_NS) };
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
    /// The word is free or tells of an owner death (or, for
    /// [`spin_until_changed`], it changed).
    Go,
    /// The budget is spent.
    Spent,
    /// A `sched_yield` ran another task: the CPUs are oversubscribed.
    Oversubscribed,
}

/// Spins while `futex` shows a live holder, within this thread's budget;
/// each time the word reads free (or owner-died) calls `try_lock`, a
/// non-blocking attempt that never sets `FUTEX_WAITERS` (glibc's robust
/// clocklock with an expired deadline: `ETIMEDOUT` without entering the
/// kernel when the lock is held again). Returns the first answer of
/// `try_lock` that is not `None` (the lock taken, or an owner death, or an
/// error to report), or `None` when the budget is spent: then the caller
/// blocks in `pthread_mutex_lock`.
///
/// Why not call `pthread_mutex_lock` as soon as the word reads free: with
/// a holder that re-locks within nanoseconds (a loop of short critical
/// sections), the word is often held again by the time the spinner's
/// compare-and-swap runs. `pthread_mutex_lock` would then set
/// `FUTEX_WAITERS` and sleep, and every one of those bits costs the holder
/// a `FUTEX_WAKE` system call on its next unlock: measured with
/// `SHMSYNC_BENCH_PROBE=1`, half of each process's time went to the kernel
/// with two processes contending.
#[cold]
#[inline(never)]
pub(crate) fn spin_then_try(
    futex: &AtomicU32,
    mut try_lock: impl FnMut() -> Option<i32>,
) -> Option<i32> {
    let mut answer = None;
    let mut saw_free = false;
    let budget = BUDGET.with(Cell::get);
    let how = adaptive(&BUDGET, None, || {
        if !go(futex.load(Ordering::Relaxed)) {
            return false;
        }
        saw_free = true;
        answer = try_lock();
        answer.is_some()
    });
    if how == Spun::Spent && saw_free {
        // The word read free but other lockers were quicker: the lock is
        // passed on at a high rate (short critical sections), which is
        // when spinning pays most. Spent, but not for nothing: the budget
        // stays.
        BUDGET.with(|b| b.set(budget));
    }
    answer
}

/// Spins while `seq` still reads `seen`, within this thread's budget and
/// at most `limit`: before a `FUTEX_WAIT` on a notification sequence, so
/// that a notification that comes within microseconds (a hand-off between
/// two processes on two CPUs) costs no sleep and no cross-CPU wake-up.
/// Read-only, like [`spin_then_try`]'s reads.
#[cold]
#[inline(never)]
pub(crate) fn spin_until_changed(seq: &AtomicU32, seen: u32, limit: Option<Duration>) -> Spun {
    adaptive(&WAIT_BUDGET, limit, || seq.load(Ordering::Relaxed) != seen)
}

/// Spins until `done()`, within the thread's `budget` (at most `limit`),
/// and adapts the budget to how the spin ended.
fn adaptive(
    budget: &'static std::thread::LocalKey<Cell<u32>>,
    limit: Option<Duration>,
    done: impl FnMut() -> bool,
) -> Spun {
    let mut ns = budget.with(Cell::get);
    if ns < MIN_NS {
        // Backed off (oversubscribed): no spin, but every PROBE-th call a
        // short one, to find out when spinning pays again.
        budget.with(|b| b.set(ns + 1));
        if ns + 1 < PROBE {
            return Spun::Spent;
        }
        ns = MIN_NS;
    }
    let mut for_ns = Duration::from_nanos(u64::from(ns));
    if let Some(l) = limit {
        for_ns = for_ns.min(l);
    }
    let (how, switched) = spin_for(for_ns, done);
    let next = match how {
        // Even when the wait was over after a yield that ran another task:
        // that task did the work, the spin did not.
        _ if switched && ns / 4 < MIN_NS => 0,
        _ if switched => ns / 4,
        Spun::Go => ns.saturating_mul(2).min(MAX_NS),
        // Spent for nothing: halve (below MIN_NS, stop but probe).
        Spun::Spent | Spun::Oversubscribed if ns / 2 < MIN_NS => 0,
        Spun::Spent | Spun::Oversubscribed => ns / 2,
    };
    budget.with(|b| b.set(next));
    how
}

/// Spins until `done()` or `budget`; also says whether a `sched_yield`
/// ran another task (then it stops: the CPUs are oversubscribed).
fn spin_for(budget: Duration, mut done: impl FnMut() -> bool) -> (Spun, bool) {
    let start = Instant::now();
    let every = Duration::from_nanos(u64::from(YIELD_NS));
    let mut next_yield = every;
    let mut pause = 1;
    loop {
        if done() {
            return (Spun::Go, false);
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
            return (Spun::Spent, false);
        }
        if spent >= next_yield {
            let t = Instant::now();
            std::thread::yield_now();
            if t.elapsed() > Duration::from_nanos(u64::from(SWITCHED_NS)) {
                let how = if done() {
                    Spun::Go
                } else {
                    Spun::Oversubscribed
                };
                return (how, true);
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
        assert_eq!(
            spin_for(Duration::MAX, || go(w.load(Ordering::Relaxed))).0,
            Spun::Go
        );
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_live_holder_ends_the_spin_within_its_budget() {
        let w = AtomicU32::new(TID | WAITERS);
        let t = Instant::now();
        let (how, _) = spin_for(Duration::from_nanos(MAX_NS.into()), || {
            go(w.load(Ordering::Relaxed))
        });
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
            how = spin_for(Duration::MAX, || go(w.load(Ordering::Relaxed))).0;
        }
        setter.join().unwrap();
        assert_eq!(how, Spun::Go);
    }

    #[test]
    fn backed_off_threads_probe_every_probe_th_call() {
        let free = AtomicU32::new(0);
        BUDGET.with(|b| b.set(0));
        let first = (1..=PROBE * 2).find(|_| spin_then_try(&free, || Some(0)).is_some());
        assert_eq!(first, Some(PROBE), "one probe per {PROBE} calls");
        assert!(
            BUDGET.with(Cell::get) >= MIN_NS,
            "a probe that went restores"
        );
    }

    #[test]
    fn budget_adapts_within_bounds() {
        let held = AtomicU32::new(TID);
        let free = AtomicU32::new(0);
        BUDGET.with(|b| b.set(MIN_NS));
        assert_eq!(spin_then_try(&free, || Some(0)), Some(0));
        assert_eq!(BUDGET.with(Cell::get), (MIN_NS * 2).min(MAX_NS));
        for _ in 0..10 {
            spin_then_try(&free, || Some(0));
        }
        assert_eq!(BUDGET.with(Cell::get), MAX_NS);
        let mut tries = 0;
        assert_eq!(
            spin_then_try(&held, || {
                tries += 1;
                Some(0)
            }),
            None
        );
        assert_eq!(tries, 0, "a held word is never tried");
        let b = BUDGET.with(Cell::get);
        assert!(
            b == MAX_NS / 2 || b == MAX_NS / 4,
            "spent or oversubscribed: {b}"
        );
    }
}
