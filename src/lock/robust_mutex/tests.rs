//! The try of `RobustMutex` on a not-recoverable mutex, in one
//! process: the state is glibc's and the kernel's robust list, which a
//! thread that exits holding the mutex drives the same way a killed
//! process does (the cross-process cases are in `tests/`).

use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{word, RobustMutex};
use crate::error::LockError;
use crate::sys::{self, errno};

/// A mutex in memory of its own (never moved: boxed), made not
/// recoverable: a thread dies holding it, the next locker drops its
/// owner-died guard unrepaired.
fn not_recoverable() -> Box<RobustMutex> {
    // SAFETY: zeroed bytes are valid storage for a pthread_mutex_t, which
    // `init` overwrites before any use.
    let m: Box<RobustMutex> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: fresh, aligned, unused, and the box is never moved from.
    unsafe { RobustMutex::init(NonNull::from(&*m)) }.unwrap();
    let addr = &*m as *const RobustMutex as usize;
    std::thread::spawn(move || {
        // SAFETY: the box outlives the thread (joined below).
        let m = unsafe { &*(addr as *const RobustMutex) };
        std::mem::forget(m.lock().unwrap());
    })
    .join()
    .unwrap();
    match m.lock() {
        Err(LockError::OwnerDied(g)) => drop(g),
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        m.owner_word().load(Ordering::Relaxed),
        word::NOT_RECOVERABLE
    );
    m
}

#[test]
fn glibc_trylock_wedges_a_not_recoverable_mutex() {
    // The premise of `try_now`'s check: without it, the word would keep
    // this thread's tid after the answer.
    let m = not_recoverable();
    // SAFETY: an initialised mutex, borrowed for the call.
    let ret = unsafe { sys::pthread::mutex_trylock(m.raw()) };
    assert_eq!(ret, errno::ENOTRECOVERABLE);
    let w = m.futex().load(Ordering::Relaxed);
    assert_eq!(w & word::TID_MASK, sys::proc::gettid(), "word {w:#x}");
    // Free it by hand, so that the mutex can be dropped.
    m.futex().store(0, Ordering::Release);
}

#[test]
fn a_try_on_a_not_recoverable_mutex_leaves_the_word_free() {
    let m = not_recoverable();
    // The check before the try.
    assert_eq!(m.try_now(), errno::ENOTRECOVERABLE);
    assert_eq!(m.futex().load(Ordering::Relaxed), 0);
    // The try itself, as when the mutex became not recoverable between
    // the check and the call: glibc's clocklock gives the word back.
    // SAFETY: an initialised mutex, borrowed for the call.
    let ret = unsafe { sys::pthread::mutex_clocklock_monotonic(m.raw(), None) };
    assert_eq!(ret, errno::ENOTRECOVERABLE);
    assert_eq!(m.futex().load(Ordering::Relaxed), 0);
    // Every lock call answers NotRecoverable, none waits.
    assert!(matches!(m.try_lock(), Err(LockError::NotRecoverable)));
    let r = m.lock_timeout(Duration::from_millis(200));
    assert!(matches!(r, Err(LockError::NotRecoverable)));
    assert!(matches!(m.lock(), Err(LockError::NotRecoverable)));
}
