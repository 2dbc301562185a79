//! Recovery that is hard to get wrong (issue 12, section 4): converting an
//! `OwnerDied` error for `?` does not brick the cell, an explicit drop of an
//! unrepaired guard still does (POSIX), `lock_or_repair` locks and repairs
//! in one call, a handle finds out that its cell was unlinked, and two
//! handles locked from one thread answer `Deadlock` with every backend.

use std::time::Duration;

use shmsync::testing::{self, ChildCtx, ChildSpec, TestName};
use shmsync::{FileLock, LockBackend, LockError, NamedSemaphore, RobustMutex, ShmCell, ShmSafe};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Transfer {
    from: u64,
    to: u64,
}
// SAFETY: two integers, repr(C), every bit pattern valid, no pointers.
unsafe impl ShmSafe for Transfer {}

const TOTAL: u64 = 100;
const START: Transfer = Transfer { from: TOTAL, to: 0 };
const RECREATED: Transfer = Transfer { from: 1, to: 2 };
const HALF_DONE: Transfer = Transfer {
    from: TOTAL - 70,
    to: 0,
};

/// One `#[test]` per backend; `child!` stays first in each test's body.
macro_rules! per_backend {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[test]
            fn robust_mutex() {
                let child = testing::child!(|ctx| super::child::<RobustMutex>(ctx));
                super::$scenario::<RobustMutex>(child);
            }

            #[test]
            fn file_lock() {
                let child = testing::child!(|ctx| super::child::<FileLock>(ctx));
                super::$scenario::<FileLock>(child);
            }

            #[test]
            fn named_semaphore() {
                let child = testing::child!(|ctx| super::child::<NamedSemaphore>(ctx));
                super::$scenario::<NamedSemaphore>(child);
            }
        }
    };
}

/// Every child of this file: `ctx.arg(1)` says what it does with the cell
/// `ctx.arg(0)`.
fn child<L: LockBackend>(ctx: &ChildCtx) {
    let name = ctx.arg(0);
    let cell = ShmCell::<Transfer, L>::open(name).unwrap();
    match ctx.arg(1) {
        // Debits 70 and waits at a point to be killed.
        "die" => {
            let mut t = cell.lock().unwrap();
            t.from -= 70;
            testing::point("debited");
            t.to += 70;
        }
        // Debits 70 and panics (the process dies after unwinding).
        "panic" => {
            let mut t = cell.lock().unwrap();
            t.from -= 70;
            panic!("panic half-way through a transfer");
        }
        // The README's way: convert for `?`, return the error.
        "convert" => {
            let err = cell
                .lock()
                .map(|t| *t)
                .map_err(|e| e.without_guard())
                .expect_err("the holder was killed");
            assert!(matches!(err, LockError::OwnerDied(())), "{err:?}");
        }
        "expect-not-recoverable" => {
            let err = cell.lock().map(|t| *t).expect_err("not recoverable");
            assert!(matches!(err, LockError::NotRecoverable), "{err:?}");
        }
        // Two handles of one cell, locked from this one thread.
        "two-handles" => {
            let other = ShmCell::<Transfer, L>::open(name).unwrap();
            let _held = cell.lock().unwrap();
            let again = other.lock().map(|t| *t).expect_err("held by this thread");
            assert!(matches!(again, LockError::Deadlock), "lock: {again:?}");
            let timed = other
                .lock_timeout(Duration::from_secs(60))
                .map(|t| *t)
                .expect_err("held by this thread");
            assert!(
                matches!(timed, LockError::Deadlock),
                "lock_timeout: {timed:?}"
            );
        }
        // The one-line way: lock, repairing an interrupted transfer.
        "repair" => {
            let t = cell.lock_or_repair(|t| t.from = TOTAL - t.to).unwrap();
            assert_eq!(*t, START);
        }
        // Holds a handle while the parent unlinks and recreates the cell.
        "watch-unlink" => {
            assert!(!cell.is_unlinked());
            testing::point("opened");
            assert!(cell.is_unlinked(), "the name was unlinked meanwhile");
            // The orphan still works, and is not the cell of that name.
            assert_eq!(*cell.lock().unwrap(), START);
            let new = ShmCell::<Transfer, L>::open(name).unwrap();
            assert!(!new.is_unlinked());
            assert_eq!(*new.lock().unwrap(), RECREATED);
        }
        other => panic!("unknown role {other}"),
    }
}

fn killed_mid_transfer(child: &ChildSpec, name: &TestName) {
    let ended = child.arg(name).arg("die").kill_at("debited").unwrap();
    assert!(ended.killed);
}

/// `.map_err(|e| e.without_guard())?` — the README's waiting example — on
/// an owner death: every process is told `OwnerDied` again afterwards,
/// until someone repairs the value (before: `NotRecoverable` for ever).
fn without_guard_keeps_the_cell<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("conv");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    killed_mid_transfer(&child, &name);
    child.arg(&name).arg("convert").run().unwrap();
    // Another process (this one) is told again, and can repair.
    match cell.lock() {
        Err(LockError::OwnerDied(mut t)) => {
            assert_eq!(*t, HALF_DONE);
            t.from = TOTAL - t.to;
            t.make_consistent();
        }
        Ok(_) => panic!("the conversion hid the owner death"),
        Err(e) => panic!("expected OwnerDied again, got {e:?}"),
    }
    assert_eq!(*cell.lock().expect("repaired"), START);
    // This process converts too: the next one (a child) is still told.
    killed_mid_transfer(&child, &name);
    let err = cell
        .lock()
        .map(|t| *t)
        .map_err(LockError::without_guard)
        .unwrap_err();
    assert!(matches!(err, LockError::OwnerDied(())), "{err:?}");
    child.arg(&name).arg("convert").run().unwrap();
}

per_backend!(without_guard_keeps_the_cell);

/// POSIX's rule stays for an explicit drop of an unrepaired guard.
fn dropped_unrepaired_guard_is_not_recoverable<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("nr");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    killed_mid_transfer(&child, &name);
    let guard = cell
        .lock()
        .unwrap_err()
        .into_owner_died()
        .expect("OwnerDied");
    drop(guard);
    child
        .arg(&name)
        .arg("expect-not-recoverable")
        .run()
        .unwrap();
    assert!(matches!(
        cell.lock().map(|t| *t),
        Err(LockError::NotRecoverable)
    ));
}

per_backend!(dropped_unrepaired_guard_is_not_recoverable);

/// The same for an owner death reported by the `suspect` word only (a
/// holder that panicked), where the backend's own lock state is clean.
fn dropped_unrepaired_suspect_guard_is_not_recoverable<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("nrs");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    let panicked = child.arg(&name).arg("panic").run().unwrap_err();
    assert_eq!(panicked.kind(), "Panicked", "{panicked:?}");
    let guard = cell
        .lock()
        .unwrap_err()
        .into_owner_died()
        .expect("OwnerDied");
    assert_eq!(*guard, HALF_DONE);
    drop(guard);
    child
        .arg(&name)
        .arg("expect-not-recoverable")
        .run()
        .unwrap();
    assert!(matches!(
        cell.lock().map(|t| *t),
        Err(LockError::NotRecoverable)
    ));
}

per_backend!(dropped_unrepaired_suspect_guard_is_not_recoverable);

/// Two handles to one cell locked from the same thread: `Deadlock` (the
/// `FileLock` backend used to block for ever in `lock()`).
fn two_handles_one_thread_deadlock<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("twoh");
    let _cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    child
        .arg(&name)
        .arg("two-handles")
        .bound(Duration::from_secs(10))
        .run()
        .unwrap();
}

per_backend!(two_handles_one_thread_deadlock);

/// `lock_or_repair` after a kill and after a panic: the guard comes back
/// repaired, and the next locker (another process) finds the lock clean.
fn lock_or_repair_repairs<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("lor");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    // Clean: the closure is not called.
    let t = cell
        .lock_or_repair(|_| panic!("nothing to repair"))
        .unwrap();
    assert_eq!(*t, START);
    drop(t);
    killed_mid_transfer(&child, &name);
    child.arg(&name).arg("repair").run().unwrap();
    assert_eq!(*cell.lock().expect("repaired by the child"), START);
    let panicked = child.arg(&name).arg("panic").run().unwrap_err();
    assert_eq!(panicked.kind(), "Panicked", "{panicked:?}");
    child.arg(&name).arg("repair").run().unwrap();
    assert_eq!(*cell.lock().expect("repaired by the child"), START);
}

per_backend!(lock_or_repair_repairs);

/// A handle finds out that its cell was unlinked and recreated.
fn unlinked_cell_is_noticed<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("unl");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    let mut running = child
        .arg(&name)
        .arg("watch-unlink")
        .stop_at("opened")
        .spawn()
        .unwrap();
    running.wait_stopped().unwrap();
    assert!(!cell.is_unlinked());
    ShmCell::<Transfer, L>::unlink(&name).unwrap();
    assert!(cell.is_unlinked());
    let new = ShmCell::<Transfer, L>::create(&name, RECREATED).unwrap();
    assert!(!new.is_unlinked());
    running.resume().unwrap();
    running.wait().unwrap();
}

per_backend!(unlinked_cell_is_noticed);
