//! The backend suite and the robust mutex's own owner-death paths (thread
//! exit, exec, fork with a guard held, a forgotten guard), across processes.

mod common;

use std::time::Duration;

use common::suite::{ledger, Ledger};
use common::{Child, TestName};
use shmsync::{LockError, RobustMutex, ShmCell};

fn main() {
    let suite = backend_suite!(RobustMutex);
    let own: [(&str, common::TestFn); 4] = [
        ("thread_exit_while_holding", thread_exit_while_holding),
        ("exec_while_holding", exec_while_holding),
        (
            "forgotten_guard_and_dropped_handle",
            forgotten_guard_and_dropped_handle,
        ),
        (
            "dropping_other_handles_while_held_leaks_nothing",
            dropping_other_handles_while_held_leaks_nothing,
        ),
    ];
    let all: Vec<_> = suite.into_iter().chain(own).collect();
    common::run(&all);
}

/// A thread of another process exits holding the lock (the process lives
/// on): the next locker gets OwnerDied.
fn thread_exit_while_holding() {
    let name = TestName::new("thr");
    let cell = ShmCell::<Ledger>::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |ctx| {
        let c = ShmCell::<Ledger>::open(&n).unwrap();
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
    match cell.lock_timeout(common::BOUND) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.a, 7);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
    child.kill();
}

/// A process that `exec`s while holding the lock releases it as dead: the
/// next locker gets OwnerDied while the exec'd program still runs.
fn exec_while_holding() {
    let name = TestName::new("exec");
    let cell = ShmCell::<Ledger>::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |_| {
        let c = ShmCell::<Ledger>::open(&n).unwrap();
        let mut g = c.lock().unwrap();
        g.a = 9;
        std::mem::forget(g);
        let prog = c"/bin/sleep";
        let args = [c"sleep".as_ptr(), c"60".as_ptr(), std::ptr::null()];
        // SAFETY: NUL-terminated program and argument vector.
        unsafe { libc::execv(prog.as_ptr(), args.as_ptr()) };
        panic!("execv failed");
    });
    // The report pipe is close-on-exec: end of file means the exec happened.
    child.expect_report_closed();
    // SAFETY: probing our own child.
    let alive = unsafe { libc::kill(child.pid as i32, 0) };
    assert_eq!(alive, 0, "the exec'd process is alive");
    match cell.lock_timeout(common::BOUND) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.a, 9);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
    child.kill();
}

/// `mem::forget(guard)` then dropping the handle must not unmap the held
/// mutex: when the process dies, the next locker gets OwnerDied, not a hang.
fn forgotten_guard_and_dropped_handle() {
    let name = TestName::new("forget");
    let cell = ShmCell::<Ledger>::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |ctx| {
        let c = ShmCell::<Ledger>::open(&n).unwrap();
        let mut g = c.lock().unwrap();
        g.b = 3;
        std::mem::forget(g);
        drop(c);
        ctx.reached_and_wait(b'F');
    });
    assert_eq!(child.expect_reached(), b'F');
    child.kill();
    match cell.lock_timeout(Duration::from_secs(5)) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.b, 3);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
}

fn fd_and_map_counts() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("shmsync-t-"))
        .count();
    (fds, maps)
}

/// A forgotten-guard leak must be precise: handles dropped while *another*
/// handle of this process holds the lock are unmapped and closed.
fn dropping_other_handles_while_held_leaks_nothing() {
    let name = TestName::new("noleak");
    let cell = ShmCell::<Ledger>::create(name.as_str(), ledger()).unwrap();
    let guard = cell.lock().unwrap();
    let before = fd_and_map_counts();
    for _ in 0..100 {
        let other = ShmCell::<Ledger>::open(name.as_str()).unwrap();
        assert_eq!(other.try_lock().err().map(|e| e.kind()), Some("Deadlock"));
        drop(other);
    }
    assert_eq!(
        fd_and_map_counts(),
        before,
        "dropped handles leaked fds or mappings"
    );
    drop(guard);
    // And the deliberate leak: a forgotten guard keeps its handle's mapping.
    let other = ShmCell::<Ledger>::open(name.as_str()).unwrap();
    std::mem::forget(other.lock().unwrap());
    drop(other);
    let after = fd_and_map_counts();
    assert_eq!(
        (after.0, after.1),
        (before.0 + 1, before.1 + 1),
        "a forgotten guard's mapping must stay"
    );
}
