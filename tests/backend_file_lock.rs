//! The backend suite for `ShmCell<T, FileLock>`, and the flock backend's
//! own cases: the held marker after exec, a forgotten guard, a thread that
//! exits holding, fork with a guard held, threads sharing one handle, two
//! handles in one process, and the lock kind recorded in the header.

mod common;

use std::cell::UnsafeCell;
use std::time::Duration;

use common::suite::{consistent, ledger, repair, Ledger, A0};
use common::{Child, TestName, BOUND};
use shmsync::{Error, FileLock, LockError, RobustMutex, ShmCell};

type Cell = ShmCell<Ledger, FileLock>;

fn main() {
    let suite = backend_suite!(FileLock);
    let own: [(&str, common::TestFn); 11] = [
        (
            "holder_killed_after_forking_a_worker",
            holder_killed_after_forking_a_worker,
        ),
        (
            "foreign_flock_excludes_the_cell",
            foreign_flock_excludes_the_cell,
        ),
        ("exec_while_holding", exec_while_holding),
        (
            "forgotten_guard_and_dropped_handle",
            forgotten_guard_and_dropped_handle,
        ),
        (
            "owner_died_guard_holder_killed_again",
            owner_died_guard_holder_killed_again,
        ),
        (
            "thread_exit_keeps_lock_until_process_exits",
            thread_exit_keeps_lock_until_process_exits,
        ),
        (
            "fork_with_guard_child_is_not_the_holder",
            fork_with_guard_child_is_not_the_holder,
        ),
        (
            "threads_sharing_one_handle_exclude",
            threads_sharing_one_handle_exclude,
        ),
        (
            "two_handles_in_one_process_exclude",
            two_handles_in_one_process_exclude,
        ),
        (
            "other_lock_kind_is_incompatible",
            other_lock_kind_is_incompatible,
        ),
        (
            "timed_lock_waits_for_a_release",
            timed_lock_waits_for_a_release,
        ),
    ];
    let all: Vec<_> = suite.into_iter().chain(own).collect();
    common::run(&all);
}

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

/// A process that `exec`s while holding the lock: its descriptors are
/// `O_CLOEXEC`, so the exec closes the one holding the `flock`, and the
/// marker makes the next locker see OwnerDied while the exec'd program
/// still runs.
fn exec_while_holding() {
    let name = TestName::new("exec");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |_| {
        let c = Cell::open(&n).unwrap();
        let mut g = c.lock().unwrap();
        g.a = 9;
        std::mem::forget(g);
        let prog = std::ffi::CString::new("/bin/sleep").unwrap();
        let arg0 = std::ffi::CString::new("sleep").unwrap();
        let arg1 = std::ffi::CString::new("60").unwrap();
        let args = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
        // SAFETY: NUL-terminated program and argument vector.
        unsafe { libc::execv(prog.as_ptr(), args.as_ptr()) };
        panic!("execv failed");
    });
    // The report pipe is close-on-exec: end of file means the exec happened.
    child.expect_report_closed();
    // SAFETY: probing our own child.
    let alive = unsafe { libc::kill(child.pid as i32, 0) } == 0;
    assert!(alive, "exec'd process alive");
    let g = expect_owner_died(cell.lock_timeout(BOUND));
    assert_eq!(g.a, 9);
    g.make_consistent();
    drop(g);
    child.kill();
}

/// `mem::forget(guard)` and then dropping the handle: the handle's
/// descriptor closes, which releases the `flock`; the marker (still HELD)
/// makes the next locker see OwnerDied at once — while the forgetting
/// process is still alive.
fn forgotten_guard_and_dropped_handle() {
    let name = TestName::new("forget");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |ctx| {
        let c = Cell::open(&n).unwrap();
        let mut g = c.lock().unwrap();
        g.b = 3;
        std::mem::forget(g);
        drop(c);
        ctx.reached_and_wait(b'F');
    });
    assert_eq!(child.expect_reached(), b'F');
    let g = expect_owner_died(cell.lock_timeout(BOUND));
    assert_eq!(g.b, 3);
    g.make_consistent();
    drop(g);
    // SAFETY: probing our own child: it was alive all along.
    let alive = unsafe { libc::kill(child.pid as i32, 0) } == 0;
    assert!(alive, "the forgetting process is still alive");
    child.kill();
    assert!(cell.try_lock().is_ok(), "clean after make_consistent");
}

/// A process that got OwnerDied and is killed before make_consistent: the
/// next locker gets OwnerDied again (not a clean lock, not NotRecoverable).
fn owner_died_guard_holder_killed_again() {
    let name = TestName::new("again");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    common::suite::spawn_holder::<FileLock>(name.as_str()).kill();
    let n = name.0.clone();
    let mut second = Child::spawn(move |ctx| {
        let c = Cell::open(&n).unwrap();
        let g = expect_owner_died(c.lock());
        assert!(g.is_inconsistent());
        ctx.reached_and_wait(b'O');
        drop(g);
    });
    assert_eq!(second.expect_reached(), b'O');
    second.kill();
    let mut g = expect_owner_died(cell.lock_timeout(BOUND));
    repair(&mut g);
    g.make_consistent();
    assert!(consistent(&g));
}

/// Documented limitation: `flock` has no per-thread robust list. A thread
/// that exits holding the lock (its guard forgotten) keeps it held for its
/// process — other processes get WouldBlock — until the process exits;
/// then the marker reports OwnerDied.
fn thread_exit_keeps_lock_until_process_exits() {
    let name = TestName::new("thr");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |ctx| {
        let c = Cell::open(&n).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut g = c.lock().unwrap();
                g.a = 7;
                std::mem::forget(g);
            });
        });
        ctx.reached_and_wait(b'T');
    });
    assert_eq!(child.expect_reached(), b'T');
    assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    child.kill();
    let g = expect_owner_died(cell.lock_timeout(BOUND));
    assert_eq!(g.a, 7);
    g.make_consistent();
}

/// A process forked while its parent holds a guard: dropping the child's
/// copy does nothing, the child's own attempt through the inherited handle
/// (a new open file description in the child) finds the lock taken, and so
/// does a third process — until the parent releases.
fn fork_with_guard_child_is_not_the_holder() {
    let name = TestName::new("fork");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let guard = cell.lock().unwrap();
    let (guard_ref, cell_ref) = (&guard, &cell);
    Child::spawn(move |_| {
        // SAFETY: the child owns a copy of the parent's memory; dropping
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
    })
    .join();
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = Cell::open(&n).unwrap();
        assert_eq!(c.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    })
    .join();
    drop(guard);
    // The inherited handle works in a child once the parent has released.
    Child::spawn(move |_| {
        let mut g = cell_ref.try_lock().expect("free after the parent released");
        g.n = 42;
    })
    .join();
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = Cell::open(&n).unwrap();
        let g = c.try_lock().expect("clean");
        assert_eq!(g.n, 42);
    })
    .join();
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
fn threads_sharing_one_handle_exclude() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 2_000;
    let name = TestName::new("threads");
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
fn two_handles_in_one_process_exclude() {
    let name = TestName::new("two");
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
fn other_lock_kind_is_incompatible() {
    let name = TestName::new("kind");
    let _cell = Cell::create(name.as_str(), ledger()).unwrap();
    match ShmCell::<Ledger, RobustMutex>::open(name.as_str()) {
        Err(Error::Incompatible { field, .. }) => assert_eq!(field, "lock_kind"),
        other => panic!("expected Incompatible, got {:?}", other.map(|_| ())),
    }
    let name2 = TestName::new("kind2");
    let _m = ShmCell::<Ledger, RobustMutex>::create(name2.as_str(), ledger()).unwrap();
    match Cell::open(name2.as_str()) {
        Err(Error::Incompatible { field, .. }) => assert_eq!(field, "lock_kind"),
        other => panic!("expected Incompatible, got {:?}", other.map(|_| ())),
    }
}

/// lock_timeout (LOCK_NB with backoff) does get the lock when another
/// process releases it before the deadline, and sees its last write.
fn timed_lock_waits_for_a_release() {
    let name = TestName::new("timed");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let mut holder = common::suite::spawn_holder::<FileLock>(name.as_str());
    holder.command(b'R');
    let g = cell.lock_timeout(BOUND).expect("lock within the bound");
    assert_eq!(g.a, 2, "the holder's last write is visible");
    drop(g);
    holder.join();
}

/// Interoperation: a program that `flock`s the object itself (here raw
/// `flock(2)` on `/dev/shm/NAME`, as `flock(1)` would) excludes the cell's
/// lockers and is excluded by them. It writes no marker, so its death is
/// not an owner death of the cell.
fn foreign_flock_excludes_the_cell() {
    use std::os::fd::AsRawFd;
    let name = TestName::new("foreign");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    for kill in [false, true] {
        let path = name.path();
        let mut foreign = Child::spawn(move |ctx| {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: plain system call on an open descriptor.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
            ctx.reached_and_wait(b'X');
            // SAFETY: as above.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }, 0);
        });
        assert_eq!(foreign.expect_reached(), b'X');
        assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
        if kill {
            foreign.kill();
        } else {
            foreign.command(b'R');
            foreign.join();
        }
        let g = cell
            .lock_timeout(BOUND)
            .expect("clean: the foreign holder wrote no marker");
        assert_eq!(*g, ledger());
        // And the other way round: the cell's holder excludes a raw flock.
        let path = name.path();
        Child::spawn(move |_| {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: plain system call on an open descriptor.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            assert_eq!(r, -1, "the cell's holder must exclude a foreign flock");
        })
        .join();
        drop(g);
    }
}

/// The pre-fork worker pattern: a holder forks a worker (no `exec`) while
/// it holds the lock, then is SIGKILLed. The worker shares the holder's
/// open file descriptions, yet the next locker must get OwnerDied while the
/// worker still runs (the backend's descriptor is detached in children).
fn holder_killed_after_forking_a_worker() {
    let name = TestName::new("prefork");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut holder = Child::spawn(move |ctx| {
        let c = Cell::open(&n).unwrap();
        let mut g = c.lock().unwrap();
        // SAFETY: this child is single-threaded; the worker only sleeps.
        let worker = unsafe { libc::fork() };
        if worker == 0 {
            loop {
                // SAFETY: plain sleep until killed.
                unsafe { libc::pause() };
            }
        }
        g.b = worker as u64; // tell the test who the worker is
        ctx.reached_and_wait(b'F');
    });
    assert_eq!(holder.expect_reached(), b'F');
    holder.kill();
    let worker = match cell.lock_timeout(BOUND) {
        Err(LockError::OwnerDied(g)) => {
            let worker = g.b as i32;
            drop(g);
            worker
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
    assert!(worker > 0);
    // SAFETY: probing and then killing the worker the holder forked.
    let alive = unsafe { libc::kill(worker, 0) } == 0;
    // SAFETY: as above.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    assert!(
        alive,
        "the worker was still running when the lock was recovered"
    );
}
