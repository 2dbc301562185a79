//! `FileLock` as a [`ShmCell`](crate::ShmCell) lock backend:
//! `flock(LOCK_EX)` on the segment's own descriptor, plus a *held marker*
//! in the segment that turns a dead holder into [`OwnerDied`].
//!
//! What differs from the robust mutex for users is on
//! [`FileLock`](crate::FileLock)'s type docs.
//!
//! # Why the segment's own descriptor is free for `flock`
//!
//! The segment's initialisation handshake and attach tracking use
//! open-file-description *byte-range* locks (`F_OFD_SETLK` on byte 0),
//! which are independent of `flock` on the same file. Each handle has its
//! own open file description (its own `shm_open`), so the `flock`s of two
//! handles — in two processes, or in one — conflict as they should.
//!
//! # The held marker (in the segment, written only under the `flock`)
//!
//! | `state` | meaning | next locker gets |
//! |---|---|---|
//! | 0 `FREE` | released normally | the lock, clean |
//! | 1 `HELD` | a holder has it (or died with it) | `OwnerDied` |
//! | 2 `HELD_INCONSISTENT` | an owner-died guard is live, not yet made consistent | `OwnerDied` |
//! | 3 `NOT_RECOVERABLE` | an owner-died guard was dropped unrepaired | `NotRecoverable`, for ever |
//!
//! The kernel drops a `flock` when its open file description closes: the
//! holder died, `exec`'d (descriptors are `O_CLOEXEC`), or dropped its
//! handle while a guard was forgotten. In each case the holder never wrote
//! `FREE`, so the next locker finds `HELD` and reports
//! [`OwnerDied`](crate::LockError::OwnerDied). `holder_pid` names the last
//! acquirer (diagnostics only: the `flock` itself says whether it is free).
//!
//! A foreign program that `flock`s the object (`flock(1)` on
//! `/dev/shm/NAME`) excludes the cell's lockers and is excluded by them; it
//! writes no marker, so its death is not reported as an owner death.
//!
//! # Memory ordering
//!
//! `state` is written with Release after the value, and read with Acquire
//! after `flock` returns; `flock` is a system call that takes the kernel's
//! file-lock spinlock, a full barrier between the releasing and the
//! acquiring process — including for a holder that died mid-update.
//!
//! [`OwnerDied`]: crate::LockError::OwnerDied

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::local::{thread_key, LocalMutex, PerProcess, SwapFd};
use super::{flock_acquire, FileLock};
use crate::error::{Error, RawLockError};
use crate::lock::describe::{LockArea, LockInfo};
use crate::lock::sealed::Backend;
use crate::lock::{Acquire, Acquired, LockBackend};
use crate::segment::{LockKind, Segment};
use crate::sys;
use crate::sys::fd_lock::FlockOp;

/// Released normally.
const FREE: u32 = 0;
/// Held, or its holder died holding it.
const HELD: u32 = 1;
/// Held through an owner-died guard not yet made consistent.
const HELD_INCONSISTENT: u32 = 2;
/// An owner-died guard was dropped without `make_consistent`.
const NOT_RECOVERABLE: u32 = 3;

/// The flock backend's words in the segment (zeroed = `FREE`).
#[repr(C)]
pub struct FlockShared {
    state: AtomicU32,
    holder_pid: AtomicU32,
    /// The holder thread's [`thread_key`] (unique within its process),
    /// with `holder_pid`: lets a thread that finds the `flock` taken tell
    /// whether it holds it itself through another handle (`Deadlock`).
    holder_thread: AtomicU64,
}

/// Where [`FlockShared`]'s words lie, for the inspector
/// ([`inspect`](crate::inspect)), which reads them with
/// `pread` and never through a mapping.
pub(crate) mod layout {
    use super::FlockShared;

    /// Offset of the `state` word (u32).
    pub(crate) const STATE: usize = std::mem::offset_of!(FlockShared, state);
    /// Offset of the `holder_pid` word (u32).
    pub(crate) const HOLDER_PID: usize = std::mem::offset_of!(FlockShared, holder_pid);
    /// Bytes the inspector reads.
    pub(crate) const SIZE: usize = std::mem::size_of::<FlockShared>();
    /// `state`: released normally.
    pub(crate) const FREE: u32 = super::FREE;
    /// `state`: held, or its holder died holding it.
    pub(crate) const HELD: u32 = super::HELD;
    /// `state`: held through an owner-died guard not yet made consistent.
    pub(crate) const HELD_INCONSISTENT: u32 = super::HELD_INCONSISTENT;
    /// `state`: not recoverable.
    pub(crate) const NOT_RECOVERABLE: u32 = super::NOT_RECOVERABLE;
}

/// Per handle: this process's descriptor and the local lock in front of
/// `flock`.
pub struct FlockLocal {
    per_process: PerProcess<BackendHandle>,
}

impl std::fmt::Debug for FlockLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlockLocal")
    }
}

struct BackendHandle {
    /// This process's own open file description of the segment (never the
    /// segment's fd: that one is shared with every child forked from the
    /// opener). Registered with `sys::forkfds`, so a child forked while we
    /// hold the `flock` does not keep it alive after we die.
    own_fd: SwapFd,
    local: LocalMutex,
    /// This process's pid (`getpid` is a system call; the handle is
    /// rebuilt after a fork).
    pid: u32,
}

impl BackendHandle {
    fn new(own_fd: SwapFd) -> BackendHandle {
        if let Some(fd) = own_fd.raw() {
            sys::fork::register(fd);
        }
        BackendHandle {
            own_fd,
            local: LocalMutex::default(),
            pid: sys::proc::getpid(),
        }
    }

    /// The descriptor this process locks through.
    #[inline]
    fn fd<'a>(&'a self, seg: &'a Segment) -> BorrowedFd<'a> {
        // SAFETY: `own_fd` is only replaced by `retire`, in a forked child,
        // on a handle that process never uses again.
        unsafe { self.own_fd.borrow() }.unwrap_or_else(|| seg.fd())
    }
}

impl BackendHandle {
    /// Unregisters, then closes the descriptor (in this order: a fork in
    /// another thread must never act on a number that may be reused).
    fn close_fd(&self) {
        if let Some(fd) = self.own_fd.raw() {
            sys::fork::unregister(fd);
        }
        drop(self.own_fd.replace(None));
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        self.close_fd();
    }
}

impl FlockLocal {
    /// This process's handle (a new open file description in a forked
    /// child: the inherited one is the parent's).
    #[inline]
    fn handle(&self, seg: &Segment) -> io::Result<&BackendHandle> {
        self.per_process.get(
            |_| {
                Ok(BackendHandle::new(SwapFd::new(Some(sys::fd::reopen(
                    seg.fd(),
                )?))))
            },
            |inherited| inherited.close_fd(),
        )
    }
}

/// What the marker found after `flock` succeeded: the one mapping from the
/// marker to an acquire result, shared by every acquire path. On `Err` the
/// caller releases the `flock`.
#[inline]
fn take_marker(shared: &FlockShared, pid: u32) -> Result<Acquired, RawLockError> {
    let found = shared.state.load(Ordering::Acquire);
    let acquired = match found {
        FREE => Acquired::Clean,
        NOT_RECOVERABLE => return Err(RawLockError::NotRecoverable),
        // HELD, HELD_INCONSISTENT — and any other value (damage) — mean an
        // update may have been interrupted: the caller must judge the value.
        _ => Acquired::OwnerDied,
    };
    shared.holder_pid.store(pid, Ordering::Relaxed);
    shared.holder_thread.store(thread_key(), Ordering::Relaxed);
    shared.state.store(
        match acquired {
            Acquired::Clean => HELD,
            Acquired::OwnerDied => HELD_INCONSISTENT,
        },
        Ordering::Release,
    );
    Ok(acquired)
}

/// The `flock` is taken. If this very thread holds it through another
/// handle of this process, waiting would never end: `Deadlock` (as the
/// other backends answer). Else waits as `how` allows.
#[cold]
fn contended(
    shared: &FlockShared,
    h: &BackendHandle,
    seg: &Segment,
    fd: BorrowedFd<'_>,
    how: Acquire,
) -> Result<(), RawLockError> {
    let held = matches!(
        shared.state.load(Ordering::Acquire),
        HELD | HELD_INCONSISTENT
    );
    if held
        && shared.holder_pid.load(Ordering::Relaxed) == h.pid
        && shared.holder_thread.load(Ordering::Relaxed) == thread_key()
        && holds_flock_itself(h.pid, seg)
    {
        return Err(RawLockError::Deadlock);
    }
    flock_acquire(fd, FlockOp::Exclusive, how)
}

/// Whether this process holds the segment's `flock` through one of its
/// descriptors (the kernel's word, from `/proc/self/fdinfo`): rules out a
/// marker left by a handle of ours that was dropped while held.
fn holds_flock_itself(pid: u32, seg: &Segment) -> bool {
    sys::fd::fstat(seg.fd())
        .ok()
        .and_then(|st| sys::procfs::holds_flock(pid, st.dev_major_minor(), st.ino()).ok())
        .flatten()
        .unwrap_or(false)
}

fn unlock_fd(fd: BorrowedFd<'_>) {
    // LOCK_UN on an open descriptor cannot fail; this runs from a guard's
    // `Drop`, which must not panic, so a failure is ignored.
    let _ = sys::fd_lock::flock(fd, FlockOp::Unlock, false);
}

#[allow(private_interfaces)] // sealed trait, see lock/mod.rs
impl Backend for FileLock {
    const KIND: LockKind = LockKind::FileLock;
    // Nothing the kernel refers to lives in the mapping, so a handle
    // dropped while a forgotten guard holds the lock may unmap and close.
    // Closing its descriptor releases the `flock`; the marker, left `HELD`,
    // makes the next locker see `OwnerDied` — the forgotten update is
    // reported at once instead of blocking everyone until this process
    // exits.
    const KEEP_MAPPING_WHILE_HELD: bool = false;
    type Shared = FlockShared;
    type Local = FlockLocal;

    unsafe fn init_shared(_p: NonNull<FlockShared>, _seg: &Segment) -> io::Result<()> {
        // Zeroed memory is FREE with no holder.
        Ok(())
    }

    fn attach(seg: &Segment) -> Result<FlockLocal, Error> {
        let own = sys::fd::reopen(seg.fd()).map_err(|e| Error::io("open /proc/self/fd", e))?;
        Ok(FlockLocal {
            per_process: PerProcess::new(BackendHandle::new(SwapFd::new(Some(own)))),
        })
    }

    #[inline]
    fn acquire(
        shared: &FlockShared,
        local: &FlockLocal,
        seg: &Segment,
        how: Acquire,
    ) -> Result<Acquired, RawLockError> {
        let h = local.handle(seg).map_err(RawLockError::Os)?;
        h.local.lock(how)?;
        let fd = h.fd(seg);
        // Non-blocking first: the uncontended path costs what a blocking
        // `flock` would, and a taken lock is checked for being our own.
        let taken = match flock_acquire(fd, FlockOp::Exclusive, Acquire::Try) {
            Err(RawLockError::WouldBlock) => contended(shared, h, seg, fd, how),
            other => other,
        }
        .and_then(|()| {
            let marker = take_marker(shared, h.pid);
            if marker.is_err() {
                unlock_fd(fd);
            }
            marker
        });
        if taken.is_err() {
            h.local.unlock();
        }
        taken
    }

    #[inline]
    unsafe fn release(shared: &FlockShared, local: &FlockLocal, seg: &Segment, consistent: bool) {
        let state = if consistent { FREE } else { NOT_RECOVERABLE };
        shared.state.store(state, Ordering::Release);
        // The caller holds the lock through this process's handle, so the
        // handle exists (no rebinding can happen here).
        if let Ok(h) = local.handle(seg) {
            unlock_fd(h.fd(seg));
            h.local.unlock();
        }
    }

    unsafe fn make_consistent(shared: &FlockShared, _: &FlockLocal, _: &Segment) {
        shared.state.store(HELD, Ordering::Release);
    }

    fn describe(area: &LockArea<'_>) -> LockInfo {
        super::inspect::describe(area)
    }
}

impl LockBackend for FileLock {}
