//! The lock backend `ShmCell<T, RobustMutex>`: the mutex itself is the
//! shared state; nothing per handle.

use std::io;
use std::ptr::NonNull;

use super::RobustMutex;
use crate::error::{Error, RawLockError};
use crate::lock::describe::{LockArea, LockInfo};
use crate::lock::sealed::Backend;
use crate::lock::{Acquire, Acquired, LockBackend};
use crate::segment::{LockKind, Segment};

#[allow(private_interfaces)] // sealed trait, see lock/mod.rs
impl Backend for RobustMutex {
    const KIND: LockKind = LockKind::RobustMutex;
    type Shared = RobustMutex;
    type Local = ();

    unsafe fn init_shared(p: NonNull<RobustMutex>, _seg: &Segment) -> io::Result<()> {
        // SAFETY: forwarded from the caller (valid, aligned, unused).
        unsafe { RobustMutex::init(p) }
    }

    fn attach(_seg: &Segment) -> Result<(), Error> {
        Ok(())
    }

    #[inline(always)]
    fn acquire(
        shared: &RobustMutex,
        _: &(),
        _: &Segment,
        how: Acquire,
    ) -> Result<Acquired, RawLockError> {
        shared
            .acquire(how)
            .inspect(|_| crate::steps::step("mutex:locked"))
    }

    #[inline(always)]
    unsafe fn release(shared: &RobustMutex, _: &(), _: &Segment, consistent: bool) {
        // SAFETY: forwarded from the caller. glibc itself marks an
        // unrepaired owner-died mutex not recoverable on unlock.
        unsafe {
            if consistent {
                shared.release();
            } else {
                shared.release_unrepaired();
            }
        }
    }

    unsafe fn make_consistent(shared: &RobustMutex, _: &(), _: &Segment) {
        // SAFETY: forwarded from the caller.
        unsafe { shared.consistent() }
    }

    fn describe(area: &LockArea<'_>) -> LockInfo {
        super::inspect::describe(area)
    }
}

impl LockBackend for RobustMutex {}
