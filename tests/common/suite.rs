//! The backend suite: written once, run for every lock kind `L` by
//! `tests/backend_*.rs` through [`backend_suite!`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shmsync::{LockBackend, LockError, ShmCell, ShmGuard, ShmSafe};

use super::{Child, TestName, BOUND};

/// A two-field invariant plus a count of committed transfers:
/// `a + b == TOTAL` and `a == A0 - n` whenever the lock is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Ledger {
    pub a: u64,
    pub b: u64,
    pub n: u64,
}
// SAFETY: three integers, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Ledger {
    const TYPE_TAG: u64 = 0x1ed6e7;
}

pub const A0: u64 = 1_000_000;
pub const TOTAL: u64 = A0;

pub fn ledger() -> Ledger {
    Ledger { a: A0, b: 0, n: 0 }
}

/// Rolls a ledger back to its last complete transfer.
pub fn repair(l: &mut Ledger) {
    l.a = A0 - l.n;
    l.b = l.n;
}

pub fn consistent(l: &Ledger) -> bool {
    l.a + l.b == TOTAL && l.a == A0 - l.n
}

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Lock,
    Try,
    Timeout,
}

pub const OPS: [Op; 3] = [Op::Lock, Op::Try, Op::Timeout];

pub type Attempt<'a, L> = Result<ShmGuard<'a, Ledger, L>, LockError<ShmGuard<'a, Ledger, L>>>;

pub fn attempt<L: LockBackend>(cell: &ShmCell<Ledger, L>, op: Op) -> Attempt<'_, L> {
    match op {
        Op::Lock => cell.lock(),
        Op::Try => cell.try_lock(),
        Op::Timeout => cell.lock_timeout(Duration::from_millis(100)),
    }
}

fn kind<G>(r: &Result<G, LockError<G>>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(e) => e.kind(),
    }
}

/// A child that opens `name`, locks, writes `a = 1` (a half-done update),
/// reports and blocks. Returns it, holding the lock.
pub fn spawn_holder<L: LockBackend>(name: &str) -> Child {
    let name = name.to_string();
    let mut child = Child::spawn(move |ctx| {
        let cell = ShmCell::<Ledger, L>::open(&name).expect("child open");
        let mut g = cell.lock().expect("child lock");
        g.a = 1;
        if ctx.reached_and_wait(b'H') == b'R' {
            // Told to release: finish with a marker the waiter must see.
            std::thread::sleep(Duration::from_millis(20));
            g.a = 2;
            drop(g);
        }
    });
    assert_eq!(child.expect_reached(), b'H');
    child
}

/// Create in one process, open in another: both see each other's writes.
pub fn round_trip<L: LockBackend>() {
    let name = TestName::new("rt");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |_| {
        let c = ShmCell::<Ledger, L>::open(&n).unwrap();
        let mut g = c.lock().unwrap();
        assert_eq!(*g, ledger());
        g.a -= 5;
        g.b += 5;
        g.n = 5;
    });
    child.join();
    {
        let mut g = cell.lock().unwrap();
        assert_eq!(
            *g,
            Ledger {
                a: A0 - 5,
                b: 5,
                n: 5
            }
        );
        g.n = 6;
        g.a -= 1;
        g.b += 1;
    }
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = ShmCell::<Ledger, L>::open(&n).unwrap();
        assert_eq!(
            *c.lock().unwrap(),
            Ledger {
                a: A0 - 6,
                b: 6,
                n: 6
            }
        );
    })
    .join();
}

/// Table row "free": every op succeeds.
pub fn table_free<L: LockBackend>() {
    let name = TestName::new("free");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    for op in OPS {
        let r = attempt(&cell, op);
        assert_eq!(kind(&r), "Ok", "{op:?} on a free lock");
        assert_eq!(*r.unwrap(), ledger());
    }
}

/// Table row "held by another live process": lock waits for the release,
/// try_lock → WouldBlock, lock_timeout → TimedOut.
pub fn table_held<L: LockBackend>() {
    let name = TestName::new("held");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    let mut holder = spawn_holder::<L>(name.as_str());
    assert_eq!(kind(&attempt(&cell, Op::Try)), "WouldBlock");
    assert_eq!(kind(&attempt(&cell, Op::Timeout)), "TimedOut");
    // lock() must wait for the holder and then see its last write.
    holder.command(b'R');
    let g = cell.lock().expect("lock after release");
    assert_eq!(g.a, 2, "lock returned before the holder's release");
    drop(g);
    holder.join();
}

/// Table row "holder killed": every op returns OwnerDied with the guard and
/// the half-done value; after make_consistent the lock is clean again.
pub fn table_holder_killed<L: LockBackend>() {
    for op in OPS {
        let name = TestName::new("killed");
        let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
        let mut holder = spawn_holder::<L>(name.as_str());
        holder.kill();
        match attempt(&cell, op) {
            Err(LockError::OwnerDied(mut g)) => {
                assert_eq!(g.a, 1, "{op:?}: the dead holder's write is visible");
                assert!(g.is_inconsistent());
                repair(&mut g);
                g.make_consistent();
            }
            other => panic!("{op:?} after the holder was killed: {}", kind(&other)),
        }
        let g =
            attempt(&cell, op).unwrap_or_else(|e| panic!("{op:?} after recovery: {}", e.kind()));
        assert!(consistent(&g));
    }
}

/// Table row "not recoverable": an owner-died guard dropped without
/// make_consistent leaves every op answering NotRecoverable, in every
/// process.
pub fn table_not_recoverable<L: LockBackend>() {
    for op in OPS {
        let name = TestName::new("nr");
        let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
        spawn_holder::<L>(name.as_str()).kill();
        let g = attempt(&cell, Op::Lock)
            .err()
            .and_then(LockError::into_owner_died)
            .expect("OwnerDied");
        drop(g); // not repaired
        assert_eq!(kind(&attempt(&cell, op)), "NotRecoverable", "{op:?}");
    }
}

/// After an unrepaired owner death, another process's try_lock and exit
/// must not wedge the lock: lock_timeout still answers NotRecoverable.
pub fn not_recoverable_does_not_wedge<L: LockBackend>() {
    let name = TestName::new("wedge");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    spawn_holder::<L>(name.as_str()).kill();
    drop(
        cell.lock()
            .err()
            .and_then(LockError::into_owner_died)
            .expect("OwnerDied"),
    );
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = ShmCell::<Ledger, L>::open(&n).unwrap();
        for op in [Op::Try, Op::Try, Op::Timeout] {
            assert_eq!(kind(&attempt(&c, op)), "NotRecoverable");
        }
    })
    .join();
    assert_eq!(
        kind(&cell.lock_timeout(Duration::from_millis(300))),
        "NotRecoverable"
    );
    assert_eq!(kind(&cell.try_lock()), "NotRecoverable");
    assert_eq!(kind(&cell.lock()), "NotRecoverable");
}

/// A page of anonymous shared memory for counters shared with forked
/// children (not a crate object: it vanishes with the processes).
pub struct SharedCounters {
    ptr: *mut AtomicU64,
}

impl SharedCounters {
    pub fn new() -> SharedCounters {
        // SAFETY: a fresh anonymous shared mapping of one page.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        SharedCounters { ptr: p.cast() }
    }

    pub fn get(&self, i: usize) -> &AtomicU64 {
        assert!(i < 512);
        // SAFETY: the page holds 512 zero-initialised AtomicU64 and lives as
        // long as `self`.
        unsafe { &*self.ptr.add(i) }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: our mapping, no borrows outlive `self`.
        unsafe { libc::munmap(self.ptr.cast(), 4096) };
    }
}

/// Whether a ledger found after an owner death shows at most one
/// interrupted transfer (the dead holder's): consistent, or stopped after
/// `a -= 1`, or after `b += 1` but before `n += 1`.
pub fn at_most_one_partial(l: &Ledger) -> bool {
    consistent(l) || (l.a + 1 == A0 - l.n && l.b == l.n) || (l.a + 1 == A0 - l.n && l.b == l.n + 1)
}

/// Two workers transfer concurrently; each cycle one of them, chosen at
/// random, is SIGKILLed at a random moment (usually inside the critical
/// section, often while the other is blocked in `lock()`, so the "kernel
/// hands a dead owner's lock to a waiter" path runs too). Workers repair
/// what they find; after each kill the parent locks and checks that the
/// state shows at most one interrupted transfer, that after repair it is
/// consistent, and that no committed transfer (one whose unlock returned)
/// was lost.
pub fn kill_loop<L: LockBackend>() {
    const CYCLES: u32 = 200;
    const WORKERS: usize = 2;
    const SEEN_BY_WORKERS: usize = 10;
    let name = TestName::new("loop");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    let counters = SharedCounters::new();
    let committed = |c: &SharedCounters| {
        (0..WORKERS)
            .map(|w| c.get(w).load(Ordering::SeqCst))
            .sum::<u64>()
    };
    let mut rng = super::Rng::new(0x5eed ^ std::process::id() as u64);
    let mut workers: Vec<Option<Child>> = (0..WORKERS).map(|_| None).collect();
    let (mut by_parent, mut clean) = (0u32, 0u32);
    for cycle in 0..CYCLES {
        for (w, slot) in workers.iter_mut().enumerate() {
            if slot.is_none() {
                let (inside, outside) = (100 + rng.below(400) as u32, rng.below(100) as u32);
                let n = name.0.clone();
                let base = counters.ptr as usize;
                let mut child = Child::spawn(move |ctx| {
                    // SAFETY: the shared page is mapped in the child too.
                    let counter = |i: usize| unsafe { &*(base as *const AtomicU64).add(i) };
                    let c = ShmCell::<Ledger, L>::open(&n).unwrap();
                    ctx.reached(b'S');
                    loop {
                        let mut g = match c.lock() {
                            Ok(g) => g,
                            Err(LockError::OwnerDied(mut g)) => {
                                assert!(at_most_one_partial(&g), "worker found {:?}", *g);
                                counter(SEEN_BY_WORKERS).fetch_add(1, Ordering::SeqCst);
                                repair(&mut g);
                                g.make_consistent();
                                g
                            }
                            Err(e) => panic!("worker: {e}"),
                        };
                        assert!(consistent(&g), "worker found {:?} after a clean lock", *g);
                        g.a -= 1;
                        for _ in 0..inside {
                            std::hint::spin_loop();
                        }
                        g.b += 1;
                        g.n += 1;
                        drop(g);
                        counter(w).fetch_add(1, Ordering::SeqCst);
                        for _ in 0..outside {
                            std::hint::spin_loop();
                        }
                    }
                });
                assert_eq!(child.expect_reached(), b'S');
                *slot = Some(child);
            }
        }
        let target = committed(&counters) + 1 + rng.below(50);
        let deadline = std::time::Instant::now() + BOUND;
        while committed(&counters) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "cycle {cycle}: no progress"
            );
            std::thread::yield_now();
        }
        let victim = rng.below(WORKERS as u64) as usize;
        let status = workers[victim].take().expect("victim").kill();
        assert!(
            libc::WIFSIGNALED(status),
            "cycle {cycle}: worker had ended: {}",
            super::describe(status)
        );
        // Every other cycle the checker stays out of the way, so that the
        // surviving worker is the one to find a dead holder's lock (and the
        // next cycle's progress requires it to recover).
        if cycle % 2 == 1 {
            continue;
        }
        let g = match cell.lock_timeout(BOUND) {
            Ok(g) => {
                clean += 1;
                g
            }
            Err(LockError::OwnerDied(mut g)) => {
                by_parent += 1;
                assert!(at_most_one_partial(&g), "cycle {cycle}: {:?}", *g);
                repair(&mut g);
                g.make_consistent();
                g
            }
            Err(e) => panic!("cycle {cycle}: {e}"),
        };
        assert!(consistent(&g), "cycle {cycle}: invariant broken: {:?}", *g);
        // While we hold the lock nobody commits. Counters are bumped after
        // the unlock, so each kill may leave one transfer committed but
        // never counted, and a live worker may not have counted its last.
        let c = committed(&counters);
        let slack = u64::from(cycle) + 1 + WORKERS as u64;
        assert!(
            g.n >= c,
            "cycle {cycle}: committed transfer lost ({} < {c})",
            g.n
        );
        assert!(
            g.n <= c + slack,
            "cycle {cycle}: phantom transfers ({} > {c}+{slack})",
            g.n
        );
        drop(g); // workers resume
    }
    for w in workers.iter_mut().flatten() {
        w.kill();
    }
    let by_workers = counters.get(SEEN_BY_WORKERS).load(Ordering::SeqCst);
    println!(
        "    kill loop: {CYCLES} kills, {by_workers} owner-died recoveries by a waiting worker, \
         {by_parent} by the checker, {clean} clean; {} transfers",
        committed(&counters)
    );
    assert!(
        by_workers + by_parent as u64 > 0,
        "no kill landed inside the critical section"
    );
    assert!(
        by_workers > 0,
        "no worker ever recovered a dead holder's lock"
    );
}

/// A process forked while its parent holds a guard drops its copy: the
/// lock stays held by the parent (for `flock`, the child shares the open
/// file description, so an unlock there would release the parent's lock).
pub fn fork_with_guard_does_not_unlock<L: LockBackend>() {
    let name = TestName::new("fork");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    let guard = cell.lock().unwrap();
    let guard_ref = &guard;
    let n = name.0.clone();
    Child::spawn(move |_| {
        // SAFETY: the child owns a copy of the parent's memory; dropping
        // its copy of the guard is what unwinding through the frame would do.
        drop(unsafe { std::ptr::read(guard_ref) });
        let fresh = ShmCell::<Ledger, L>::open(&n).unwrap();
        assert_eq!(fresh.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    })
    .join();
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = ShmCell::<Ledger, L>::open(&n).unwrap();
        assert_eq!(c.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    })
    .join();
    drop(guard);
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = ShmCell::<Ledger, L>::open(&n).unwrap();
        assert!(c.try_lock().is_ok());
    })
    .join();
}

/// Locking twice from one thread through one handle is reported as
/// Deadlock on every acquire path; another thread of the process still
/// finds the lock taken.
pub fn relock_same_thread_is_deadlock<L: LockBackend>() {
    let name = TestName::new("relock");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    let g = cell.lock().unwrap();
    for op in OPS {
        assert_eq!(kind(&attempt(&cell, op)), "Deadlock", "{op:?}");
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(kind(&attempt(&cell, Op::Try)), "WouldBlock");
            assert_eq!(kind(&attempt(&cell, Op::Timeout)), "TimedOut");
        });
    });
    drop(g);
    assert_eq!(kind(&attempt(&cell, Op::Try)), "Ok");
}

/// The suite for one backend, as `(name, fn)` pairs for [`super::run`].
#[macro_export]
macro_rules! backend_suite {
    ($l:ty) => {
        [
            ("round_trip", common::suite::round_trip::<$l> as fn()),
            ("table_free", common::suite::table_free::<$l>),
            ("table_held", common::suite::table_held::<$l>),
            (
                "table_holder_killed",
                common::suite::table_holder_killed::<$l>,
            ),
            (
                "table_not_recoverable",
                common::suite::table_not_recoverable::<$l>,
            ),
            (
                "not_recoverable_does_not_wedge",
                common::suite::not_recoverable_does_not_wedge::<$l>,
            ),
            ("kill_loop", common::suite::kill_loop::<$l>),
            (
                "relock_same_thread_is_deadlock",
                common::suite::relock_same_thread_is_deadlock::<$l>,
            ),
            (
                "fork_with_guard_does_not_unlock",
                common::suite::fork_with_guard_does_not_unlock::<$l>,
            ),
        ]
    };
}
