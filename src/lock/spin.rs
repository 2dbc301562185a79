//! Bounded, adaptive, read-only spins, shared by the lock backends and the
//! cell's wait: on a held lock word, trying without blocking whenever it
//! reads free, before sleeping ([`spin_then_try`]: the robust mutex before
//! its sleeping `pthread_mutex_clocklock`, the semaphore backend before its liveness check
//! and `sem_clockwait`), and on a cell's notification sequence before
//! `FUTEX_WAIT` ([`spin_until_changed`], `cell/wait.rs`).
//!
//! Why spin: a locker that sleeps as soon as it finds the lock held makes
//! the holder's next release a wake-up system call, and mostly wakes after
//! the holder took the lock again (a loop of short critical sections); a
//! waiter for a notification sleeps even when the notifier, on another CPU,
//! answers within a microsecond, and a cross-CPU wake-up costs tens of
//! microseconds on a virtual machine.
//!
//! A spin only *reads* (relaxed loads, with a doubling number of
//! `spin_loop` hints between reads so that the writer keeps its cache
//! line), and ends as soon as:
//!
//! * its condition holds: the lock reads free (or, for the robust mutex,
//!   tells of an owner death) and the caller's try took it; or the
//!   sequence moved;
//! * its budget is spent (at most [`MAX_NS`]; for a timed acquire or wait,
//!   at most the time left);
//! * a `sched_yield` (one every [`YIELD_NS`] of spinning) ran another task:
//!   the CPUs are oversubscribed, and spinning would only take time from
//!   the process it waits for.
//!
//! The budget adapts per thread and per [`Budget`] (kind of spin): doubled
//! by a spin whose condition came true by itself, halved by one that was
//! spent for nothing, quartered by one that had to yield the CPU. Below
//! [`MIN_NS`] the thread stops spinning, but for one short spin every
//! [`PROBE`] calls, to find out when spinning pays again. So with two
//! processes on one CPU a waiter soon sleeps at once, as it would without
//! a spin.
//!
//! Nothing here writes shared memory: what a try does, and how owner death
//! is found and reported, is the caller's (glibc's for the robust mutex,
//! the holder word's compare-and-swap and the kernel's liveness answer for
//! the semaphore backend).

use std::cell::Cell;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

/// The longest spin, ns (about a futex sleep and wake-up on another CPU).
pub(crate) const MAX_NS: u32 = 20_000;
/// The shortest spin, ns: below it (oversubscribed) a thread does not spin,
/// but for one [`MIN_NS`] spin every [`PROBE`] calls.
pub(crate) const MIN_NS: u32 = 1_000;
/// See [`MIN_NS`]. (While backed off, the budget cell counts calls.)
pub(crate) const PROBE: u32 = 32;
/// Spin time between two `sched_yield`s, ns.
pub(crate) const YIELD_NS: u32 = 2_000;
/// A `sched_yield` that took longer than this ran another task.
const SWITCHED_NS: u32 = 1_500;
/// The most `spin_loop` hints between two reads of the word.
const MAX_PAUSE: u32 = 64;

thread_local! {
    /// This thread's spin budget for a held robust mutex, ns.
    static ROBUST_LOCK: Cell<u32> = const { Cell::new(MAX_NS) };
    /// This thread's spin budget for a held semaphore-backend lock, ns.
    static SEM_LOCK: Cell<u32> = const { Cell::new(MAX_NS) };
    /// This thread's spin budget for a notification (`wait_while`), ns.
    static WAIT: Cell<u32> = const { Cell::new(MAX_NS) };
}

/// Which of the thread's spin budgets a spin uses and adapts: each kind of
/// wait learns on its own whether spinning pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Budget {
    /// A held robust mutex (`RobustMutex`, `ShmCell<T, RobustMutex>`).
    RobustLock,
    /// A held `ShmCell<T, NamedSemaphore>` lock.
    SemLock,
    /// A cell's notification (`wait_while`).
    Wait,
}

impl Budget {
    fn key(self) -> &'static LocalKey<Cell<u32>> {
        match self {
            Budget::RobustLock => &ROBUST_LOCK,
            Budget::SemLock => &SEM_LOCK,
            Budget::Wait => &WAIT,
        }
    }

    /// The budget now, ns (while backed off: the calls since).
    pub(crate) fn get(self) -> u32 {
        self.key().with(Cell::get)
    }

    /// Sets the budget (tests; and a spin that keeps it).
    pub(crate) fn set(self, ns: u32) {
        self.key().with(|b| b.set(ns));
    }
}

/// How a spin ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spun {
    /// The condition came true (for [`spin_until_changed`], the sequence
    /// changed).
    Go,
    /// The budget is spent.
    Spent,
    /// A `sched_yield` ran another task: the CPUs are oversubscribed.
    Oversubscribed,
}

/// Spins while `free()` is false, within the thread's `budget` (and at
/// most `limit`); each time it reads true calls `try_lock`, an attempt
/// that never sleeps. Returns the first answer of `try_lock` that is not
/// `None` (the lock taken, an owner death, an error to report), or `None`
/// when the budget is spent: then the caller sleeps its own way.
///
/// Why not take the lock the sleeping way as soon as it reads free: with a
/// holder that re-locks within nanoseconds (a loop of short critical
/// sections), the lock is often held again by the time the spinner's
/// compare-and-swap runs, and a locker that then sleeps costs a wake-up
/// system call and a sleep for a lock that is free again within
/// nanoseconds.
#[inline(never)]
pub(crate) fn spin_then_try<R>(
    budget: Budget,
    limit: Option<Duration>,
    mut free: impl FnMut() -> bool,
    mut try_lock: impl FnMut() -> Option<R>,
) -> Option<R> {
    let mut answer = None;
    let mut saw_free = false;
    let before = budget.get();
    let how = adaptive(budget, limit, || {
        if !free() {
            return false;
        }
        saw_free = true;
        answer = try_lock();
        answer.is_some()
    });
    if how == Spun::Spent && saw_free {
        // The lock read free but other lockers were quicker: it is passed
        // on at a high rate (short critical sections), which is when
        // spinning pays most. Spent, but not for nothing: the budget stays.
        budget.set(before);
    }
    answer
}

/// Spins while `seq` still reads `seen`, within this thread's budget and
/// at most `limit`: before a `FUTEX_WAIT` on a notification sequence, so
/// that a notification that comes within microseconds (a hand-off between
/// two processes on two CPUs) costs no sleep and no cross-CPU wake-up.
#[cold]
#[inline(never)]
pub(crate) fn spin_until_changed(
    seq: &std::sync::atomic::AtomicU32,
    seen: u32,
    limit: Option<Duration>,
) -> Spun {
    adaptive(Budget::Wait, limit, || {
        seq.load(std::sync::atomic::Ordering::Relaxed) != seen
    })
}

/// Spins until `done()`, within the thread's `budget` (at most `limit`),
/// and adapts the budget to how the spin ended.
fn adaptive(budget: Budget, limit: Option<Duration>, done: impl FnMut() -> bool) -> Spun {
    let mut ns = budget.get();
    if ns < MIN_NS {
        // Backed off (oversubscribed): no spin, but every PROBE-th call a
        // short one, to find out when spinning pays again.
        budget.set(ns + 1);
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
    budget.set(next);
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_condition_that_holds_ends_the_spin_at_once() {
        let t = Instant::now();
        assert_eq!(spin_for(Duration::MAX, || true).0, Spun::Go);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_live_holder_ends_the_spin_within_its_budget() {
        let t = Instant::now();
        let (how, _) = spin_for(Duration::from_nanos(MAX_NS.into()), || false);
        assert_ne!(how, Spun::Go);
        // The budget, plus one pause and one yield that may have run
        // another task on a loaded machine.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    /// The condition comes true under a spinner (a lock word another
    /// process writes): the spinner sees it on its next read. The writer
    /// is a thread here: what is tested is the spinner's reading.
    #[test]
    fn a_change_during_a_spin_is_seen() {
        let w = Arc::new(AtomicBool::new(false));
        let w2 = Arc::clone(&w);
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            w2.store(true, Ordering::Relaxed);
        });
        let t = Instant::now();
        let mut how = Spun::Spent;
        while how != Spun::Go && t.elapsed() < Duration::from_secs(10) {
            how = spin_for(Duration::MAX, || w.load(Ordering::Relaxed)).0;
        }
        setter.join().unwrap();
        assert_eq!(how, Spun::Go);
    }

    #[test]
    fn backed_off_threads_probe_every_probe_th_call() {
        for budget in [Budget::RobustLock, Budget::SemLock] {
            budget.set(0);
            let first = (1..=PROBE * 2)
                .find(|_| spin_then_try(budget, None, || true, || Some(0)).is_some());
            assert_eq!(first, Some(PROBE), "one probe per {PROBE} calls");
            assert!(budget.get() >= MIN_NS, "a probe that went restores");
        }
    }

    #[test]
    fn budget_adapts_within_bounds() {
        let budget = Budget::SemLock;
        budget.set(MIN_NS);
        assert_eq!(spin_then_try(budget, None, || true, || Some(0)), Some(0));
        assert_eq!(budget.get(), (MIN_NS * 2).min(MAX_NS));
        for _ in 0..10 {
            spin_then_try(budget, None, || true, || Some(0));
        }
        assert_eq!(budget.get(), MAX_NS);
        let mut tries = 0;
        assert_eq!(
            spin_then_try(
                budget,
                None,
                || false,
                || {
                    tries += 1;
                    Some(0)
                }
            ),
            None
        );
        assert_eq!(tries, 0, "a held word is never tried");
        let b = budget.get();
        assert!(
            b == MAX_NS / 2 || b == MAX_NS / 4,
            "spent or oversubscribed: {b}"
        );
    }

    #[test]
    fn lost_races_keep_the_budget() {
        let budget = Budget::SemLock;
        budget.set(MAX_NS);
        // Free every time, but every try lost.
        assert_eq!(spin_then_try(budget, None, || true, || None::<u32>), None);
        let b = budget.get();
        assert!(
            b == MAX_NS || b == MAX_NS / 4,
            "kept, or oversubscribed: {b}"
        );
    }

    #[test]
    fn a_limit_shortens_the_spin() {
        let budget = Budget::SemLock;
        budget.set(MAX_NS);
        let t = Instant::now();
        assert_eq!(
            spin_then_try(budget, Some(Duration::ZERO), || false, || Some(0)),
            None
        );
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn budgets_are_separate() {
        Budget::SemLock.set(0);
        Budget::RobustLock.set(MAX_NS);
        Budget::Wait.set(MIN_NS);
        assert_eq!(
            (
                Budget::SemLock.get(),
                Budget::RobustLock.get(),
                Budget::Wait.get()
            ),
            (0, MAX_NS, MIN_NS)
        );
    }
}
