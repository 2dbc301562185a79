//! A panic is an owner death (issue 12, section 3): a guard dropped while
//! its thread unwinds makes the next locker — in another process, with any
//! backend — get `OwnerDied(guard)` with the half-done value, whether the
//! panic is caught (the process lives on) or not (it dies after unwinding).

use std::panic::AssertUnwindSafe;

use shmsync::testing::{self, ChildCtx, ChildError, ChildSpec, TestName};
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
/// What a transfer of 70 leaves when it panics between debit and credit.
const HALF_DONE: Transfer = Transfer {
    from: TOTAL - 70,
    to: 0,
};

/// One `#[test]` per backend; `child!` stays first in each test's body.
macro_rules! per_backend {
    ($scenario:ident, $child:ident) => {
        mod $scenario {
            use super::*;

            #[test]
            fn robust_mutex() {
                let child = testing::child!(|ctx| super::$child::<RobustMutex>(ctx));
                super::$scenario::<RobustMutex>(child);
            }

            #[test]
            fn file_lock() {
                let child = testing::child!(|ctx| super::$child::<FileLock>(ctx));
                super::$scenario::<FileLock>(child);
            }

            #[test]
            fn named_semaphore() {
                let child = testing::child!(|ctx| super::$child::<NamedSemaphore>(ctx));
                super::$scenario::<NamedSemaphore>(child);
            }
        }
    };
}

/// Debits 70 under the lock and panics before crediting.
fn transfer_and_panic<L: LockBackend>(cell: &ShmCell<Transfer, L>) {
    let mut t = cell.lock().expect("the lock is clean");
    t.from -= 70;
    panic!("panic half-way through a transfer");
}

/// The next locker (this process, not the one that panicked) must be told.
fn expect_owner_died_then_repair<L: LockBackend>(cell: &ShmCell<Transfer, L>) {
    match cell.lock() {
        Err(LockError::OwnerDied(mut t)) => {
            assert_eq!(
                *t, HALF_DONE,
                "the half-done value is what the next locker sees"
            );
            t.from = TOTAL - t.to;
            t.make_consistent();
        }
        Ok(t) => panic!(
            "a guard dropped in a panic unlocked cleanly: got Ok({:?})",
            *t
        ),
        Err(e) => panic!("expected OwnerDied, got {e:?}"),
    }
    // Repaired: the next lock is clean and sees the repair.
    let t = cell.lock().expect("clean after make_consistent");
    assert_eq!(*t, START);
}

fn caught_child<L: LockBackend>(ctx: &ChildCtx) {
    let cell = ShmCell::<Transfer, L>::open(ctx.arg(0)).unwrap();
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| transfer_and_panic(&cell)));
    assert!(caught.is_err(), "the transfer panicked");
    // The process lives on, its handle open, holding nothing.
    testing::point("caught");
}

fn caught<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("panic-caught");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    let mut running = child.arg(&name).stop_at("caught").spawn().unwrap();
    assert_eq!(running.wait_stopped().unwrap(), "caught");
    expect_owner_died_then_repair(&cell);
    // The child reported its (caught) panic; only its survival mattered.
    let _ = running.kill();
}

per_backend!(caught, caught_child);

fn uncaught_child<L: LockBackend>(ctx: &ChildCtx) {
    let cell = ShmCell::<Transfer, L>::open(ctx.arg(0)).unwrap();
    transfer_and_panic(&cell);
}

fn uncaught<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("panic-uncaught");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    match child.arg(&name).run() {
        Err(ChildError::Panicked { message, .. }) => {
            assert!(message.contains("half-way"), "{message}")
        }
        other => panic!("the child should have panicked: {other:?}"),
    }
    expect_owner_died_then_repair(&cell);
}

per_backend!(uncaught, uncaught_child);

fn normal_drop_child<L: LockBackend>(ctx: &ChildCtx) {
    let cell = ShmCell::<Transfer, L>::open(ctx.arg(0)).unwrap();
    let mut t = cell.lock().unwrap();
    t.from -= 70;
    t.to += 70;
}

/// The other side: a guard dropped without a panic unlocks cleanly.
fn normal_drop<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("panic-none");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    child.arg(&name).run().unwrap();
    let t = cell.lock().expect("a normal drop unlocks cleanly");
    assert_eq!(*t, Transfer { from: 30, to: 70 });
}

per_backend!(normal_drop, normal_drop_child);

fn locked_while_unwinding_child<L: LockBackend>(ctx: &ChildCtx) {
    /// Completes a transfer from its `Drop`, which runs during the panic.
    struct FinishOnUnwind<'a, L: LockBackend>(&'a ShmCell<Transfer, L>);
    impl<L: LockBackend> Drop for FinishOnUnwind<'_, L> {
        fn drop(&mut self) {
            let mut t = self.0.lock().expect("the lock is clean");
            t.from -= 70;
            t.to += 70;
        }
    }
    let cell = ShmCell::<Transfer, L>::open(ctx.arg(0)).unwrap();
    let _finish = FinishOnUnwind(&cell);
    panic!("a panic with no lock held");
}

/// Like std's poisoning: a guard taken and dropped *during* the unwinding
/// (a `Drop` that completes its update) is no interrupted update.
fn locked_while_unwinding<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("panic-drop");
    let cell = ShmCell::<Transfer, L>::create(&name, START).unwrap();
    let panicked = child.arg(&name).run().unwrap_err();
    assert_eq!(panicked.kind(), "Panicked", "{panicked:?}");
    let t = cell.lock().expect("no update was interrupted");
    assert_eq!(*t, Transfer { from: 30, to: 70 });
}

per_backend!(locked_while_unwinding, locked_while_unwinding_child);

/// `shmsync list`/`inspect` see a value left suspect by a panic: the cell
/// is shown `owner-died` (the next locker will be told), not `ready`.
#[test]
fn inspect_shows_a_panicked_holder_as_owner_died() {
    use shmsync::inspect::{self, State};
    let name = TestName::new("panic-inspect");
    let cell = ShmCell::<Transfer>::create(&name, START).unwrap();
    assert_eq!(inspect::inspect(name.as_str()).unwrap().state, State::Ready);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut g = cell.lock().unwrap();
                g.from -= 70;
                panic!("mid-transfer");
            }))
        })
        .join()
        .unwrap()
    });
    assert!(r.is_err(), "the closure panicked");
    let seen = inspect::inspect(name.as_str()).unwrap();
    assert_eq!(seen.state, State::OwnerDied, "{seen:?}");
    match cell.lock() {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(*g, HALF_DONE);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    }
    assert_eq!(inspect::inspect(name.as_str()).unwrap().state, State::Ready);
}
