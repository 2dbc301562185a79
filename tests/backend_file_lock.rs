//! The backend suite for `ShmCell<T, FileLock>`, and the flock backend's
//! own cases: the held marker after exec, a forgotten guard, a thread that
//! exits holding, fork with a guard held, threads sharing one handle, two
//! handles in one process, and the lock kind recorded in the header.

mod backend_suite;

use std::cell::UnsafeCell;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use backend_suite::{
    consistent, forked, ledger, name, repair, spawn_holder, Guard, Ledger, A0, BOUND,
};
use shmsync::testing::{self, ChildCtx};
use shmsync::{Error, FileLock, LockError, RobustMutex, ShmCell};

type Cell = ShmCell<Ledger, FileLock>;

backend_suite!(FileLock);

fn expect_owner_died<'a>(
    r: Result<
        shmsync::ShmGuard<'a, Ledger, FileLock>,
        LockError<shmsync::ShmGuard<'a, Ledger, FileLock>>,
    >,
) -> shmsync::ShmGuard<'a, Ledger, FileLock> {
    match r {
        Err(LockError::OwnerDied(g)) => g,
        Ok(_) => panic!("expected OwnerDied, got the lock clean"),
        Err(e) => panic!("expected OwnerDied, got {e:?}"),
    }
}

/// Whether process `pid` exists (a child of ours: not reaped yet).
fn alive(pid: u32) -> bool {
    // SAFETY: probing a process with signal 0 sends nothing.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Waits (bounded) until process `pid` runs the program `comm`.
fn await_exec(pid: u32, comm: &str) {
    let deadline = Instant::now() + BOUND;
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim_end() == comm {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} never exec'd {comm}");
        std::thread::yield_now();
    }
}

/// The roles of this binary's own children (`ctx.arg(0)`), the cell's
/// name being `ctx.arg(1)`; the suite's roles (`"holder"`) otherwise.
fn roles(ctx: &ChildCtx) {
    let n = ctx.arg(1);
    match ctx.arg(0) {
        "exec_holder" => {
            let c = Cell::open(n).unwrap();
            let mut g = c.lock().unwrap();
            g.a = 9;
            std::mem::forget(g);
            let prog = c"/bin/sleep";
            let args = [c"sleep".as_ptr(), c"60".as_ptr(), std::ptr::null()];
            // SAFETY: NUL-terminated program and argument vector.
            unsafe { libc::execv(prog.as_ptr(), args.as_ptr()) };
            panic!("execv failed");
        }
        "forgetter" => {
            let c = Cell::open(n).unwrap();
            let mut g = c.lock().unwrap();
            g.b = 3;
            std::mem::forget(g);
            drop(c);
            testing::point("forgotten");
        }
        "second_owner_died" => {
            let c = Cell::open(n).unwrap();
            let g = expect_owner_died(c.lock());
            assert!(g.is_inconsistent());
            testing::point("owner died");
            drop(g);
        }
        "thread_holder" => {
            let c = Cell::open(n).unwrap();
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut g = c.lock().unwrap();
                    g.a = 7;
                    std::mem::forget(g);
                });
            });
            testing::point("thread gone");
        }
        "fork_with_guard" => fork_with_guard(n),
        "foreign" => {
            let f = std::fs::File::open(n).unwrap();
            // SAFETY: plain system call on an open descriptor.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
            testing::point("flocked");
            // SAFETY: as above.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }, 0);
        }
        "foreign_try" => {
            let f = std::fs::File::open(n).unwrap();
            // SAFETY: plain system call on an open descriptor.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            assert_eq!(r, -1, "the cell's holder must exclude a foreign flock");
        }
        "prefork_holder" => {
            let c = Cell::open(n).unwrap();
            let mut g = c.lock().unwrap();
            // SAFETY: in a child's code (see backend_suite::forked); the
            // worker only sleeps until it is killed.
            let worker = unsafe { libc::fork() };
            if worker == 0 {
                loop {
                    // SAFETY: plain sleep until killed.
                    unsafe { libc::pause() };
                }
            }
            g.b = worker as u64; // tell the test who the worker is
            testing::point("forked");
        }
        _ => backend_suite::child::<FileLock>(ctx),
    }
}

/// A process that `exec`s while holding the lock: its descriptors are
/// `O_CLOEXEC`, so the exec closes the one holding the `flock`, and the
/// marker makes the next locker see OwnerDied while the exec'd program
/// still runs.
#[test]
fn exec_while_holding() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("exec");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let child = child
        .command()
        .args(["exec_holder", &name])
        .spawn()
        .unwrap();
    await_exec(child.pid(), "sleep");
    assert!(alive(child.pid()), "exec'd process alive");
    let g = expect_owner_died(cell.lock_timeout(BOUND));
    assert_eq!(g.a, 9);
    g.make_consistent();
    drop(g);
    assert!(child.kill().unwrap().killed);
}

/// `mem::forget(guard)` and then dropping the handle: the handle's
/// descriptor closes, which releases the `flock`; the marker (still HELD)
/// makes the next locker see OwnerDied at once — while the forgetting
/// process is still alive.
#[test]
fn forgotten_guard_and_dropped_handle() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("forget");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let mut child = child
        .command()
        .args(["forgetter", &name])
        .stop_at("forgotten")
        .spawn()
        .unwrap();
    child.wait_stopped().unwrap();
    let g = expect_owner_died(cell.lock_timeout(BOUND));
    assert_eq!(g.b, 3);
    g.make_consistent();
    drop(g);
    assert!(alive(child.pid()), "the forgetting process is still alive");
    child.kill().unwrap();
    assert!(cell.try_lock().is_ok(), "clean after make_consistent");
}

/// A process that got OwnerDied and is killed before make_consistent: the
/// next locker gets OwnerDied again (not a clean lock, not NotRecoverable).
#[test]
fn owner_died_guard_holder_killed_again() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("again");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    spawn_holder(child, &name).kill().unwrap();
    child
        .command()
        .args(["second_owner_died", &name])
        .kill_at("owner died")
        .unwrap();
    let mut g = expect_owner_died(cell.lock_timeout(BOUND));
    repair(&mut g);
    g.make_consistent();
    assert!(consistent(&g));
}

/// Documented limitation: `flock` has no per-thread robust list. A thread
/// that exits holding the lock (its guard forgotten) keeps it held for its
/// process — other processes get WouldBlock — until the process exits;
/// then the marker reports OwnerDied.
#[test]
fn thread_exit_keeps_lock_until_process_exits() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("thr");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let mut child = child
        .command()
        .args(["thread_holder", &name])
        .stop_at("thread gone")
        .spawn()
        .unwrap();
    child.wait_stopped().unwrap();
    assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    child.kill().unwrap();
    let g = expect_owner_died(cell.lock_timeout(BOUND));
    assert_eq!(g.a, 7);
    g.make_consistent();
}

/// The child's side of [`fork_with_guard_child_is_not_the_holder`]: it
/// holds the guard and forks.
fn fork_with_guard(n: &str) {
    let cell = Cell::open(n).unwrap();
    let guard = cell.lock().unwrap();
    let (guard_ref, cell_ref) = (&guard, &cell);
    let status = forked(move || {
        // SAFETY: the forked process owns a copy of this memory; dropping
        // its copy of the guard is what unwinding through the frame would do.
        drop(unsafe { std::ptr::read(guard_ref) });
        assert_eq!(
            cell_ref.try_lock().err().map(|e| e.kind()),
            Some("WouldBlock")
        );
        assert_eq!(
            cell_ref
                .lock_timeout(Duration::from_millis(50))
                .err()
                .map(|e| e.kind()),
            Some("TimedOut")
        );
    });
    assert_eq!(status, 0, "the forked process's checks failed");
    let status = forked(|| {
        let c = Cell::open(n).unwrap();
        assert_eq!(c.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    });
    assert_eq!(status, 0, "a third process found the lock free");
    drop(guard);
    // The inherited handle works in a forked process once the holder has
    // released.
    let status = forked(move || {
        let mut g = cell_ref.try_lock().expect("free after the parent released");
        g.n = 42;
    });
    assert_eq!(status, 0, "the inherited handle did not lock");
    let status = forked(|| {
        let c = Cell::open(n).unwrap();
        let g = c.try_lock().expect("clean");
        assert_eq!(g.n, 42);
    });
    assert_eq!(status, 0, "the lock was not clean");
}

/// A process forked while its parent holds a guard: dropping the forked
/// copy does nothing, the forked process's own attempt through the
/// inherited handle (a new open file description there) finds the lock
/// taken, and so does a third process — until the parent releases. The
/// forking is done by a child (see `backend_suite`).
#[test]
fn fork_with_guard_child_is_not_the_holder() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("fork");
    let _cell = Cell::create(name.as_str(), ledger()).unwrap();
    child
        .command()
        .args(["fork_with_guard", &name])
        .run()
        .unwrap();
}

struct Racy(UnsafeCell<u64>);
// SAFETY: only touched under the cell's lock (that is what is tested).
unsafe impl Sync for Racy {}

impl Racy {
    fn ptr(&self) -> *mut u64 {
        self.0.get()
    }
}

/// Threads sharing one handle (one open file description) exclude each
/// other: a counter outside the cell, incremented non-atomically under the
/// lock, ends exact; so does the value in the cell.
#[test]
fn threads_sharing_one_handle_exclude() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 2_000;
    let _guard = Guard::new();
    let name = name("threads");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let racy = Racy(UnsafeCell::new(0));
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for i in 0..ROUNDS {
                    let mut g = cell.lock().unwrap();
                    let p = racy.ptr();
                    // SAFETY: under the lock (the property tested).
                    let v = unsafe { p.read_volatile() };
                    if i % 16 == 0 {
                        std::thread::yield_now();
                    }
                    // SAFETY: as above.
                    unsafe { p.write_volatile(v + 1) };
                    g.a -= 1;
                    g.b += 1;
                    g.n += 1;
                }
            });
        }
    });
    // SAFETY: the threads are joined.
    assert_eq!(unsafe { *racy.0.get() }, THREADS * ROUNDS);
    let g = cell.lock().unwrap();
    assert_eq!(g.n, THREADS * ROUNDS);
    assert_eq!(g.a, A0 - THREADS * ROUNDS);
    assert!(consistent(&g));
}

/// Two handles of one process have two open file descriptions: their
/// `flock`s conflict like those of two processes — and the thread that
/// holds one is told `Deadlock` by the other, as with every backend.
#[test]
fn two_handles_in_one_process_exclude() {
    let _guard = Guard::new();
    let name = name("two");
    let one = Cell::create(name.as_str(), ledger()).unwrap();
    let two = Cell::open(name.as_str()).unwrap();
    let g = one.lock().unwrap();
    assert_eq!(two.try_lock().err().map(|e| e.kind()), Some("Deadlock"));
    assert_eq!(
        two.lock_timeout(Duration::from_millis(20))
            .err()
            .map(|e| e.kind()),
        Some("Deadlock")
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(two.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
            assert_eq!(
                two.lock_timeout(Duration::from_millis(20))
                    .err()
                    .map(|e| e.kind()),
                Some("TimedOut")
            );
        });
    });
    drop(g);
    assert!(two.try_lock().is_ok());
}

/// The header records the lock kind: a flock cell opened as a robust-mutex
/// cell (and the reverse) is Incompatible.
#[test]
fn other_lock_kind_is_incompatible() {
    let _guard = Guard::new();
    let name = name("kind");
    let _cell = Cell::create(name.as_str(), ledger()).unwrap();
    match ShmCell::<Ledger, RobustMutex>::open(name.as_str()) {
        Err(Error::Incompatible { field, .. }) => assert_eq!(field, "lock_kind"),
        other => panic!("expected Incompatible, got {:?}", other.map(|_| ())),
    }
    let name2 = backend_suite::name("kind2");
    let _m = ShmCell::<Ledger, RobustMutex>::create(name2.as_str(), ledger()).unwrap();
    match Cell::open(name2.as_str()) {
        Err(Error::Incompatible { field, .. }) => assert_eq!(field, "lock_kind"),
        other => panic!("expected Incompatible, got {:?}", other.map(|_| ())),
    }
}

/// lock_timeout (LOCK_NB with backoff) does get the lock when another
/// process releases it before the deadline, and sees its last write.
#[test]
fn timed_lock_waits_for_a_release() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("timed");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let mut holder = spawn_holder(child, &name);
    holder.resume().unwrap();
    let g = cell.lock_timeout(BOUND).expect("lock within the bound");
    assert_eq!(g.a, 2, "the holder's last write is visible");
    drop(g);
    holder.wait().unwrap();
}

/// Interoperation: a program that `flock`s the object itself (here raw
/// `flock(2)` on `/dev/shm/NAME`, as `flock(1)` would) excludes the cell's
/// lockers and is excluded by them. It writes no marker, so its death is
/// not an owner death of the cell.
#[test]
fn foreign_flock_excludes_the_cell() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("foreign");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    for kill in [false, true] {
        let path = name.path();
        let mut foreign = child
            .command()
            .args(["foreign", &path])
            .stop_at("flocked")
            .spawn()
            .unwrap();
        foreign.wait_stopped().unwrap();
        assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
        if kill {
            foreign.kill().unwrap();
        } else {
            foreign.resume().unwrap();
            foreign.wait().unwrap();
        }
        let g = cell
            .lock_timeout(BOUND)
            .expect("clean: the foreign holder wrote no marker");
        assert_eq!(*g, ledger());
        // And the other way round: the cell's holder excludes a raw flock.
        child.command().args(["foreign_try", &path]).run().unwrap();
        drop(g);
    }
}

/// The pre-fork worker pattern: a holder forks a worker (no `exec`) while
/// it holds the lock, then is SIGKILLed. The worker shares the holder's
/// open file descriptions, yet the next locker must get OwnerDied while the
/// worker still runs (the backend's descriptor is detached in children).
/// Only the holder is killed here; the worker, in its process group, goes
/// when the test kills the group.
#[test]
fn holder_killed_after_forking_a_worker() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("prefork");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let mut holder = child
        .command()
        .args(["prefork_holder", &name])
        .stop_at("forked")
        .spawn()
        .unwrap();
    holder.wait_stopped().unwrap();
    // SAFETY: signalling our own child (not reaped: its pid is its own).
    assert_eq!(unsafe { libc::kill(holder.pid() as i32, libc::SIGKILL) }, 0);
    let worker = match cell.lock_timeout(BOUND) {
        Err(LockError::OwnerDied(g)) => {
            let worker = g.b as u32;
            drop(g);
            worker
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
    assert!(worker > 0);
    let worker_alive = alive(worker);
    holder.kill().unwrap(); // the group: the worker too
    assert!(
        worker_alive,
        "the worker was still running when the lock was recovered"
    );
}
