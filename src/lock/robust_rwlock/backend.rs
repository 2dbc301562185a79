//! The lock backend `ShmCell<T, RobustRwLock>`: the exclusive side of the
//! [`Backend`] trait; the shared side is `ShmCell::read` & co. in
//! `cell/read.rs`, over [`RwShared::read_acquire`].

use std::io;
use std::ptr::NonNull;

use super::{RobustRwLock, RwLocal, RwShared};
use crate::error::{Error, RawLockError};
use crate::lock::describe::{LockArea, LockInfo};
use crate::lock::sealed::Backend;
use crate::lock::{Acquire, Acquired, LockBackend};
use crate::segment::{LockKind, Segment};

#[allow(private_interfaces)] // sealed trait, see lock/mod.rs
impl Backend for RobustRwLock {
    const KIND: LockKind = LockKind::RobustRwLock;
    type Shared = RwShared;
    type Local = RwLocal;

    unsafe fn init_shared(p: NonNull<RwShared>, _seg: &Segment) -> io::Result<()> {
        // SAFETY: forwarded from the caller (valid, aligned, zeroed, unused).
        unsafe { RwShared::init(p) }
    }

    fn attach(_seg: &Segment) -> Result<RwLocal, Error> {
        Ok(RwLocal::new())
    }

    #[inline]
    fn acquire(
        shared: &RwShared,
        local: &RwLocal,
        seg: &Segment,
        how: Acquire,
    ) -> Result<Acquired, RawLockError> {
        shared.write_acquire(local, seg.fd(), how)
    }

    #[inline]
    unsafe fn release(shared: &RwShared, _: &RwLocal, _: &Segment, consistent: bool) {
        // SAFETY: forwarded from the caller.
        unsafe { shared.write_release(consistent) }
    }

    unsafe fn make_consistent(_: &RwShared, _: &RwLocal, _: &Segment) {
        // Nothing to do now: the pthread mutex was made consistent when the
        // death was seen, and the release with `consistent == true` clears
        // the damage mark (a death before it keeps the mark: correct, the
        // repairing writer died holding the lock).
    }

    fn keep_alive_while_held(local: &RwLocal) {
        local.keep_alive();
    }

    fn detach(shared: &RwShared, local: &RwLocal, _seg: &Segment) {
        shared.detach(local);
    }

    fn describe(area: &LockArea<'_>) -> LockInfo {
        super::inspect::describe(area)
    }
}

impl LockBackend for RobustRwLock {}
