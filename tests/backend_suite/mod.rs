//! The backend suite, written once and run for every lock kind `L` by
//! `tests/backend_*.rs` through [`backend_suite!`], on
//! `shmsync::testing` under the default (parallel) libtest harness; and
//! the helpers those binaries share.
//!
//! # How a suite test runs
//!
//! [`backend_suite!`] generates, in a module `suite`, one `#[test]` per
//! scenario. Each begins with one `testing::child!` whose code is
//! [`child::<L>`]: it dispatches on its first argument, the *role*
//! (`"holder"`, `"kill_loop_worker"`, …), so that every child a scenario
//! starts is a role of that one declaration, typed by the same `L`. The
//! rest of the test is the scenario function (`round_trip::<L>(child)`).
//! libtest knows the test as `suite::round_trip`, which is also the name
//! the `child!` finds from its marker function, so the child re-runs it.
//!
//! # Rules kept here
//!
//! * Names come from [`name`]: a `TestName` recorded for the test's
//!   [`Guard`], which fails the test if anything under a name it made is
//!   still in `/dev/shm` after the test (the old runner's sweep).
//! * The guard also arms a [`Watchdog`]: a test thread blocked in
//!   `lock()` or `wait_while` on a child that never lets go aborts the
//!   binary with the test's name instead of hanging `cargo test`.
//! * Anything that changes process-wide state or forks runs in a child
//!   (see `shmsync::testing`, "What a child's code may do"); [`forked`]
//!   is only called from child code.
#![allow(dead_code)]

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmsync::testing::{self, ChildCtx, ChildSpec, Running, TestName, Watchdog};
use shmsync::{LockBackend, LockError, ShmCell, ShmGuard, ShmSafe};

/// Default bound for a test's own waits.
pub const BOUND: Duration = Duration::from_secs(20);
/// Watchdog for a whole test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

thread_local! {
    static NAMES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// A unique name for this test, removed on drop, and checked by the
/// test's [`Guard`] to leave nothing behind.
pub fn name(tag: &str) -> TestName {
    let n = TestName::new(tag);
    NAMES.with(|v| v.borrow_mut().push(n.to_string()));
    n
}

/// Per-test guard: a watchdog for the whole test, and at its end (a test
/// that did not fail otherwise) no object under any name made with
/// [`name`] in this test may remain. Declare it right after the test's
/// `child!`, before the names (locals drop in reverse order).
pub struct Guard {
    _watchdog: Watchdog,
}

impl Guard {
    pub fn new() -> Guard {
        NAMES.with(|v| v.borrow_mut().clear());
        Guard {
            _watchdog: Watchdog::arm(TEST_TIMEOUT),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let names = NAMES.with(|v| std::mem::take(&mut *v.borrow_mut()));
        if std::thread::panicking() {
            return;
        }
        let left: Vec<String> = names.iter().flat_map(|n| testing::leftovers(n)).collect();
        if !left.is_empty() {
            for f in &left {
                let _ = std::fs::remove_file(format!("/dev/shm/{f}"));
            }
            panic!("the test left objects in /dev/shm: {left:?}");
        }
    }
}

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

pub fn kind<G>(r: &Result<G, LockError<G>>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(e) => e.kind(),
    }
}

/// In a child's code only (a process of its own, whose only other thread
/// is libtest's main thread, parked): forks; the forked process runs `f`
/// and exits 0, or 101 if it panicked. Returns its exit code (negative:
/// the signal that ended it), reaped within [`BOUND`].
pub fn forked(f: impl FnOnce()) -> i32 {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: called from a child's code, where the only other thread is
    // libtest's main thread waiting for the test's result (it holds no
    // lock the forked process could need).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(()) => 0,
            Err(_) => 101,
        };
        let _ = std::io::stderr().flush();
        // SAFETY: leave without unwinding into the child's other code.
        unsafe { libc::_exit(code) };
    }
    let status = wait_pid(pid, BOUND).unwrap_or_else(|| {
        // SAFETY: signalling and reaping our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_pid(pid, BOUND);
        panic!("forked process {pid} did not end within {BOUND:?}");
    });
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    }
}

/// Waits for our child `pid` to end and reaps it, at most `bound`.
fn wait_pid(pid: libc::pid_t, bound: Duration) -> Option<i32> {
    let deadline = Instant::now() + bound;
    loop {
        let mut status = 0;
        // SAFETY: reaping our own child, without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        assert!(r == 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A page of `AtomicU64` counters in a file next to a test's segment
/// (`NAME.ctr`, which the `TestName` removes), shared by the test and its
/// children: every process maps it.
pub struct SharedCounters {
    ptr: *mut AtomicU64,
}

const COUNTERS: usize = 512;

impl SharedCounters {
    fn path(name: &str) -> String {
        format!("/dev/shm{name}.ctr")
    }

    /// Makes the counters of the test name `name` (all zero).
    pub fn create(name: &str) -> SharedCounters {
        SharedCounters::map(name, true)
    }

    /// Maps the counters the test made for `name`.
    pub fn open(name: &str) -> SharedCounters {
        SharedCounters::map(name, false)
    }

    fn map(name: &str, create: bool) -> SharedCounters {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .open(SharedCounters::path(name))
            .expect("counters file");
        if create {
            f.set_len((COUNTERS * 8) as u64).unwrap();
        }
        // SAFETY: a fresh shared mapping of the whole (page-sized) file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                COUNTERS * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        SharedCounters { ptr: p.cast() }
    }

    pub fn get(&self, i: usize) -> &AtomicU64 {
        assert!(i < COUNTERS);
        // SAFETY: the mapping holds COUNTERS zero-initialised AtomicU64
        // (page-aligned) and lives as long as `self`.
        unsafe { &*self.ptr.add(i) }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: our mapping, no borrows outlive `self`.
        unsafe { libc::munmap(self.ptr.cast(), COUNTERS * 8) };
    }
}

/// A small deterministic PRNG (xorshift64*), seeded per test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The point where a [`spawn_holder`] child holds the lock.
pub const HOLDING: &str = "holding";

/// Starts the `"holder"` role of `child` on `name`: it opens the cell,
/// locks, writes `a = 1` (a half-done update) and stops at [`HOLDING`].
/// Resumed, it finishes with `a = 2` and releases. Returns it stopped,
/// holding the lock.
pub fn spawn_holder(child: ChildSpec, name: &str) -> Running {
    let mut holder = child
        .command()
        .args(["holder", name])
        .stop_at(HOLDING)
        .spawn()
        .unwrap();
    holder.wait_stopped().unwrap();
    holder
}

/// Every child role of the suite, for lock kind `L`: `ctx.arg(0)` is the
/// role, `ctx.arg(1)` the cell's name.
pub fn child<L: LockBackend>(ctx: &ChildCtx) {
    let name = ctx.arg(1);
    match ctx.arg(0) {
        "holder" => {
            let cell = ShmCell::<Ledger, L>::open(name).expect("child open");
            let mut g = cell.lock().expect("child lock");
            g.a = 1;
            testing::point(HOLDING);
            // Resumed: finish with a marker the waiter must see.
            std::thread::sleep(Duration::from_millis(20));
            g.a = 2;
        }
        "round_trip_write" => {
            let c = ShmCell::<Ledger, L>::open(name).unwrap();
            let mut g = c.lock().unwrap();
            assert_eq!(*g, ledger());
            g.a -= 5;
            g.b += 5;
            g.n = 5;
        }
        "round_trip_read" => {
            let c = ShmCell::<Ledger, L>::open(name).unwrap();
            assert_eq!(
                *c.lock().unwrap(),
                Ledger {
                    a: A0 - 6,
                    b: 6,
                    n: 6
                }
            );
        }
        "not_recoverable_elsewhere" => {
            let c = ShmCell::<Ledger, L>::open(name).unwrap();
            for op in [Op::Try, Op::Try, Op::Timeout] {
                assert_eq!(kind(&attempt(&c, op)), "NotRecoverable");
            }
        }
        "kill_loop_worker" => kill_loop_worker::<L>(ctx),
        "fork_with_guard" => fork_with_guard::<L>(name),
        other => panic!("no role {other:?} in the backend suite"),
    }
}

/// Create in one process, open in another: both see each other's writes.
pub fn round_trip<L: LockBackend>(child: ChildSpec) {
    let name = name("rt");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    child
        .command()
        .args(["round_trip_write", &name])
        .run()
        .unwrap();
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
    child
        .command()
        .args(["round_trip_read", &name])
        .run()
        .unwrap();
}

/// Table row "free": every op succeeds.
pub fn table_free<L: LockBackend>(_child: ChildSpec) {
    let name = name("free");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    for op in OPS {
        let r = attempt(&cell, op);
        assert_eq!(kind(&r), "Ok", "{op:?} on a free lock");
        assert_eq!(*r.unwrap(), ledger());
    }
}

/// Table row "held by another live process": lock waits for the release,
/// try_lock → WouldBlock, lock_timeout → TimedOut.
pub fn table_held<L: LockBackend>(child: ChildSpec) {
    let name = name("held");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    let mut holder = spawn_holder(child, &name);
    assert_eq!(kind(&attempt(&cell, Op::Try)), "WouldBlock");
    assert_eq!(kind(&attempt(&cell, Op::Timeout)), "TimedOut");
    // lock() must wait for the holder and then see its last write.
    holder.resume().unwrap();
    let g = cell.lock().expect("lock after release");
    assert_eq!(g.a, 2, "lock returned before the holder's release");
    drop(g);
    holder.wait().unwrap();
}

/// Table row "holder killed": every op returns OwnerDied with the guard and
/// the half-done value; after make_consistent the lock is clean again.
pub fn table_holder_killed<L: LockBackend>(child: ChildSpec) {
    for op in OPS {
        let name = name("killed");
        let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
        spawn_holder(child, &name).kill().unwrap();
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
pub fn table_not_recoverable<L: LockBackend>(child: ChildSpec) {
    for op in OPS {
        let name = name("nr");
        let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
        spawn_holder(child, &name).kill().unwrap();
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
pub fn not_recoverable_does_not_wedge<L: LockBackend>(child: ChildSpec) {
    let name = name("wedge");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    spawn_holder(child, &name).kill().unwrap();
    drop(
        cell.lock()
            .err()
            .and_then(LockError::into_owner_died)
            .expect("OwnerDied"),
    );
    child
        .command()
        .args(["not_recoverable_elsewhere", &name])
        .run()
        .unwrap();
    assert_eq!(
        kind(&cell.lock_timeout(Duration::from_millis(300))),
        "NotRecoverable"
    );
    assert_eq!(kind(&cell.try_lock()), "NotRecoverable");
    assert_eq!(kind(&cell.lock()), "NotRecoverable");
}

/// Whether a ledger found after an owner death shows at most one
/// interrupted transfer (the dead holder's): consistent, or stopped after
/// `a -= 1`, or after `b += 1` but before `n += 1`.
pub fn at_most_one_partial(l: &Ledger) -> bool {
    consistent(l) || (l.a + 1 == A0 - l.n && l.b == l.n) || (l.a + 1 == A0 - l.n && l.b == l.n + 1)
}

const KILL_LOOP_WORKERS: usize = 2;
const SEEN_BY_WORKERS: usize = 10;

/// A kill-loop worker: `name`, worker index, spins inside, spins outside.
fn kill_loop_worker<L: LockBackend>(ctx: &ChildCtx) {
    let parse = |i: usize| -> u64 { ctx.arg(i).parse().unwrap() };
    let (w, inside, outside) = (parse(2) as usize, parse(3), parse(4));
    let counters = SharedCounters::open(ctx.arg(1));
    let c = ShmCell::<Ledger, L>::open(ctx.arg(1)).unwrap();
    testing::point("started");
    loop {
        let mut g = match c.lock() {
            Ok(g) => g,
            Err(LockError::OwnerDied(mut g)) => {
                assert!(at_most_one_partial(&g), "worker found {:?}", *g);
                counters.get(SEEN_BY_WORKERS).fetch_add(1, Ordering::SeqCst);
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
        counters.get(w).fetch_add(1, Ordering::SeqCst);
        for _ in 0..outside {
            std::hint::spin_loop();
        }
    }
}

/// Two workers transfer concurrently; each cycle one of them, chosen at
/// random, is SIGKILLed at a random moment (usually inside the critical
/// section, often while the other is blocked in `lock()`, so the "kernel
/// hands a dead owner's lock to a waiter" path runs too). Workers repair
/// what they find; after each kill the parent locks and checks that the
/// state shows at most one interrupted transfer, that after repair it is
/// consistent, and that no committed transfer (one whose unlock returned)
/// was lost.
pub fn kill_loop<L: LockBackend>(child: ChildSpec) {
    const CYCLES: u32 = 200;
    let name = name("loop");
    let cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    let counters = SharedCounters::create(&name);
    let committed = |c: &SharedCounters| {
        (0..KILL_LOOP_WORKERS)
            .map(|w| c.get(w).load(Ordering::SeqCst))
            .sum::<u64>()
    };
    let mut rng = Rng::new(0x5eed ^ std::process::id() as u64);
    let mut workers: Vec<Option<Running>> = (0..KILL_LOOP_WORKERS).map(|_| None).collect();
    let (mut by_parent, mut clean) = (0u32, 0u32);
    for cycle in 0..CYCLES {
        for (w, slot) in workers.iter_mut().enumerate() {
            if slot.is_none() {
                let (inside, outside) = (100 + rng.below(400), rng.below(100));
                let mut worker = child
                    .command()
                    .args([
                        "kill_loop_worker".to_string(),
                        name.to_string(),
                        w.to_string(),
                        inside.to_string(),
                        outside.to_string(),
                    ])
                    .spawn()
                    .unwrap();
                worker.wait_point("started").unwrap();
                *slot = Some(worker);
            }
        }
        let target = committed(&counters) + 1 + rng.below(50);
        let deadline = Instant::now() + BOUND;
        while committed(&counters) < target {
            assert!(Instant::now() < deadline, "cycle {cycle}: no progress");
            std::thread::yield_now();
        }
        let victim = rng.below(KILL_LOOP_WORKERS as u64) as usize;
        let ended = workers[victim].take().expect("victim").kill().unwrap();
        assert!(ended.killed, "cycle {cycle}: worker had ended: {ended:?}");
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
        let slack = u64::from(cycle) + 1 + KILL_LOOP_WORKERS as u64;
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
    for w in workers.into_iter().flatten() {
        w.kill().unwrap();
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

/// The child's side of [`fork_with_guard_does_not_unlock`].
fn fork_with_guard<L: LockBackend>(name: &str) {
    let cell = ShmCell::<Ledger, L>::open(name).unwrap();
    let guard = cell.lock().unwrap();
    let guard_ref = &guard;
    let status = forked(|| {
        // SAFETY: the forked process owns a copy of this memory; dropping
        // its copy of the guard is what unwinding through the frame would
        // do.
        drop(unsafe { std::ptr::read(guard_ref) });
        let fresh = ShmCell::<Ledger, L>::open(name).unwrap();
        assert_eq!(fresh.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    });
    assert_eq!(status, 0, "the forked process's checks failed");
    let status = forked(|| {
        let c = ShmCell::<Ledger, L>::open(name).unwrap();
        assert_eq!(c.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    });
    assert_eq!(status, 0, "a third process found the lock free");
    drop(guard);
    let status = forked(|| {
        let c = ShmCell::<Ledger, L>::open(name).unwrap();
        assert!(c.try_lock().is_ok());
    });
    assert_eq!(
        status, 0,
        "the lock was not free after the holder's release"
    );
}

/// A process forked while it holds a guard drops its copy: the lock stays
/// held by the forking process (for `flock`, the forked one shares the
/// open file description, so an unlock there would release the lock). The
/// forking happens in a child (see the module docs).
pub fn fork_with_guard_does_not_unlock<L: LockBackend>(child: ChildSpec) {
    let name = name("fork");
    let _cell = ShmCell::<Ledger, L>::create(name.as_str(), ledger()).unwrap();
    child
        .command()
        .args(["fork_with_guard", &name])
        .run()
        .unwrap();
}

/// Locking twice from one thread through one handle is reported as
/// Deadlock on every acquire path; another thread of the process still
/// finds the lock taken.
pub fn relock_same_thread_is_deadlock<L: LockBackend>(_child: ChildSpec) {
    let name = name("relock");
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

/// The suite for one lock kind: a module `suite` with one `#[test]` per
/// scenario above (`suite::round_trip`, …). Each test declares the suite's
/// child (its roles are [`child`]) first, then arms a [`Guard`].
#[macro_export]
macro_rules! backend_suite {
    ($l:ty) => {
        mod suite {
            #[allow(unused_imports)]
            use super::*;
            $crate::backend_suite!(@tests $l;
                round_trip,
                table_free,
                table_held,
                table_holder_killed,
                table_not_recoverable,
                not_recoverable_does_not_wedge,
                kill_loop,
                relock_same_thread_is_deadlock,
                fork_with_guard_does_not_unlock,
            );
        }
    };
    (@tests $l:ty; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let child =
                    ::shmsync::testing::child!($crate::backend_suite::child::<$l>);
                let _guard = $crate::backend_suite::Guard::new();
                $crate::backend_suite::$test::<$l>(child);
            }
        )*
    };
}
