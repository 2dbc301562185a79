//! Lock backends: the locks a [`ShmCell`](crate::ShmCell) can be guarded by.
//!
//! A backend keeps some state in the segment (`Shared`, zeroed and then
//! initialised by the creator) and some per handle (`Local`). The trait is
//! sealed: the crate's guarantees (owner death is always reported, a lock
//! held by a forked parent is never released by the child) depend on each
//! backend's details.

pub(crate) mod describe;
pub(crate) mod file_lock;
pub(crate) mod named_semaphore;
pub(crate) mod per_process;
pub(crate) mod robust_mutex;
pub(crate) mod robust_rwlock;
pub(crate) mod spin;

use std::io;
use std::ptr::NonNull;

use crate::error::{Error, RawLockError};
use crate::segment::{LockKind, Segment};
use crate::sys::time::Monotonic;
use describe::{LockArea, LockInfo};

pub use file_lock::{FileLock, FileLockGuard, FileLockOptions, FileLockSharedGuard};
pub use named_semaphore::{NamedSemaphore, SemaphoreError, SemaphoreOptions, MAX_SEM_NAME};
pub use robust_mutex::{RobustMutex, RobustMutexGuard};
pub use robust_rwlock::{RobustRwLock, READER_SLOTS};

/// How long an acquire may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Acquire {
    /// Until the lock is free.
    Block,
    /// Not at all: `WouldBlock` if taken.
    Try,
    /// Until the deadline: `TimedOut` after it.
    Until(Monotonic),
}

/// A successful acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The lock was free or released normally.
    Clean,
    /// The previous holder died holding it; the caller holds it now.
    OwnerDied,
}

// The trait is public only so that `LockBackend` can name it as a
// supertrait (the sealing pattern); its module is private, so its signature
// types may stay crate-private.
#[allow(private_interfaces, private_bounds)]
pub(crate) mod sealed {
    use super::*;

    /// The operations every backend provides. Not public API.
    pub trait Backend: Sized + 'static {
        /// The kind recorded in the header.
        const KIND: LockKind;
        /// The longest cell name (bytes after the `/`) this backend can
        /// serve; checked before anything is created.
        const MAX_NAME: usize = crate::segment::MAX_SHM_NAME;
        /// State kept in the segment (zeroed before `init_shared`).
        type Shared: 'static;
        /// State kept per handle.
        type Local: Send + Sync;

        /// Initialises the shared state of a new segment `seg` (which is
        /// still being built: its name and descriptor are valid), and makes
        /// any companion object the backend needs.
        ///
        /// # Safety
        ///
        /// `p` is valid, aligned and zeroed, and no other process can see
        /// it yet (the creator holds the initialisation lock).
        unsafe fn init_shared(p: NonNull<Self::Shared>, seg: &Segment) -> io::Result<()>;

        /// Whether a handle dropped while one of its guards still holds the
        /// lock (a `mem::forget`ten guard) must keep its mapping: true when
        /// the kernel keeps a pointer into it (the robust-futex list).
        const KEEP_MAPPING_WHILE_HELD: bool = true;

        /// Called when a handle is dropped while one of its guards still
        /// holds the lock (a `mem::forget`ten guard): the per-handle state
        /// that proves the holder alive must then outlive the handle, for
        /// as long as the process lives (nothing by default).
        fn keep_alive_while_held(_local: &Self::Local) {}

        /// Builds the per-handle state of a handle to `seg`.
        fn attach(seg: &Segment) -> Result<Self::Local, Error>;

        /// Acquires the lock. Every path maps its errors through the
        /// backend's one mapping function.
        fn acquire(
            shared: &Self::Shared,
            local: &Self::Local,
            seg: &Segment,
            how: Acquire,
        ) -> Result<Acquired, RawLockError>;

        /// Releases the lock; `consistent == false` after an unrepaired
        /// owner death leaves it not recoverable.
        ///
        /// # Safety
        ///
        /// The calling thread holds the lock through this handle.
        unsafe fn release(
            shared: &Self::Shared,
            local: &Self::Local,
            seg: &Segment,
            consistent: bool,
        );

        /// Declares the state repaired after an owner death.
        ///
        /// # Safety
        ///
        /// The calling thread holds the lock, acquired with `OwnerDied`.
        unsafe fn make_consistent(shared: &Self::Shared, local: &Self::Local, seg: &Segment);

        /// Called by a handle's drop (unless it keeps its mapping), before
        /// the segment is unmapped: lets go of per-handle state kept in the
        /// segment (a reader slot). Nothing by default.
        fn detach(_shared: &Self::Shared, _local: &Self::Local, _seg: &Segment) {}

        /// Reads the shared state from outside (`pread`, never a mapping,
        /// never the lock), for [`inspect`](crate::inspect).
        fn describe(area: &LockArea<'_>) -> LockInfo;

        /// Removes the objects a cell `name` of this kind made besides its
        /// segment (none by default).
        fn unlink_companions(_name: &str) -> Result<(), Error> {
            Ok(())
        }
    }
}

/// A lock that can guard a [`ShmCell`](crate::ShmCell): [`RobustMutex`]
/// (the default), [`FileLock`], [`NamedSemaphore`], [`RobustRwLock`]. Sealed.
pub trait LockBackend: sealed::Backend {}

/// The registry of backends by the kind a header records: the one place
/// that maps a [`LockKind`] to its backend's code (a new backend is its
/// folder, a `LockKind` and an arm here).
macro_rules! by_kind {
    ($kind:expr, $b:ident => $e:expr, External => $ext:expr) => {
        match $kind {
            LockKind::RobustMutex => {
                type $b = RobustMutex;
                $e
            }
            LockKind::FileLock => {
                type $b = FileLock;
                $e
            }
            LockKind::NamedSemaphore => {
                type $b = NamedSemaphore;
                $e
            }
            LockKind::RobustRwLock => {
                type $b = RobustRwLock;
                $e
            }
            LockKind::External => $ext,
        }
    };
}

/// Removes the objects a cell of lock kind `kind` made besides its segment.
pub(crate) fn unlink_companions(kind: LockKind, name: &str) -> Result<(), Error> {
    by_kind!(kind, B => <B as sealed::Backend>::unlink_companions(name), External => Ok(()))
}

/// The lock of an object read from outside, by the backend its header
/// names (`External` and unknown kinds: nothing known).
pub(crate) fn describe(area: &LockArea<'_>) -> LockInfo {
    let kind = area.info.lock_kind();
    match kind {
        None => LockInfo::unknown(None),
        Some(k) => {
            by_kind!(k, B => <B as sealed::Backend>::describe(area), External => LockInfo::unknown(kind))
        }
    }
}
