//! Thread identities that cannot be recycled (issue 12, section 7), and
//! what `exec` does to a `FileLock` holder (the README's backend table).

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use shmsync::testing::{self, TestName};
use shmsync::{FileLock, LockBackend, LockError, RobustMutex, ShmCell};

/// A thread exits holding the lock (its guard forgotten); new threads of
/// the same process — which glibc gives the dead thread's stack, so the
/// same thread-local addresses — must not be told they hold it.
fn new_threads_are_not_the_dead_holder<L: LockBackend>(name: &str) {
    let cell = ShmCell::<u64, L>::open(name).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| std::mem::forget(cell.lock().unwrap()));
    });
    for _ in 0..8 {
        let seen = std::thread::scope(|s| {
            s.spawn(|| {
                let r = match cell.try_lock() {
                    Ok(g) => {
                        drop(g);
                        Ok(())
                    }
                    // Reported as an owner death (robust mutex: the kernel
                    // saw the thread exit): repair and go on.
                    Err(LockError::OwnerDied(g)) => {
                        g.make_consistent();
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let t = cell.lock_timeout(Duration::from_millis(20)).map(drop);
                (r.map_err(|e| e.kind()), t.map_err(|e| e.kind()))
            })
            .join()
            .unwrap()
        });
        assert!(
            seen.0 != Err("Deadlock") && seen.1 != Err("Deadlock"),
            "a new thread was taken for the dead holder: {seen:?}"
        );
    }
}

#[test]
fn file_lock_new_thread_is_not_the_dead_holder() {
    let child = testing::child!(|ctx| new_threads_are_not_the_dead_holder::<FileLock>(ctx.arg(0)));
    let name = TestName::new("tid");
    let _cell = ShmCell::<u64, FileLock>::create(&name, 0).unwrap();
    child.arg(&name).run().unwrap();
}

#[test]
fn robust_mutex_new_thread_is_not_the_dead_holder() {
    let child =
        testing::child!(|ctx| new_threads_are_not_the_dead_holder::<RobustMutex>(ctx.arg(0)));
    let name = TestName::new("tid");
    let _cell = ShmCell::<u64, RobustMutex>::create(&name, 0).unwrap();
    child.arg(&name).run().unwrap();
}

/// The README's table: a `FileLock` holder that `exec`s loses its lock at
/// once (the descriptor is close-on-exec) and the next locker gets
/// `OwnerDied` while the process still lives.
#[test]
fn file_lock_exec_is_an_owner_death_at_once() {
    let child = testing::child!(|ctx| {
        let cell = ShmCell::<u64, FileLock>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g = 7;
        std::mem::forget(g);
        let err = std::process::Command::new("sleep").arg("60").exec();
        panic!("exec failed: {err}");
    });
    let name = TestName::new("exec");
    let cell = ShmCell::<u64, FileLock>::create(&name, 0).unwrap();
    let running = child.arg(&name).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let guard = loop {
        match cell.try_lock() {
            Err(LockError::WouldBlock) => {}
            Err(LockError::OwnerDied(g)) => break g,
            Ok(g) if *g == 0 => {} // the child has not locked yet
            Ok(g) => panic!("the exec'd holder's update was not reported: {}", *g),
            Err(e) => panic!("unexpected {e:?}"),
        }
        assert!(Instant::now() < deadline, "the lock was never released");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(*guard, 7);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", running.pid())).unwrap();
    assert_eq!(
        comm.trim(),
        "sleep",
        "the holder lives on as the exec'd program"
    );
    guard.make_consistent();
    drop(guard);
    drop(running.kill());
}
