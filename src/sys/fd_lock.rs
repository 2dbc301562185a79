//! Advisory locks held by an open file description: whole-file `flock(2)`
//! and byte-range open-file-description locks (`fcntl(F_OFD_SETLK /
//! F_OFD_SETLKW / F_OFD_GETLK)`, Linux ≥ 3.15).
//!
//! Both belong to the *open file description*: every descriptor that
//! shares it (`dup`, `fork`, `SCM_RIGHTS`) holds and releases the same
//! lock, and the kernel drops the lock when the last descriptor of the
//! description is closed — in particular when the holder dies — never when
//! some other descriptor of the same file is closed. A second `flock`
//! through the same description converts the lock instead of conflicting;
//! that conversion is *not* atomic (the old lock is dropped first), while
//! an OFD write→read conversion is. The two families are independent of
//! each other on the same file.
//!
//! `flock` is rustix's. The byte-range locks stay on libc: rustix's
//! `fcntl_lock` takes an OFD lock on the whole file only (start 0, length
//! 0) and has no `F_OFD_GETLK`, and the crate locks single bytes (the
//! attach byte, liveness tokens at 2^62 + token) and asks who holds them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{cvt, retry_eintr};

/// The operation of a `flock` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlockOp {
    /// `LOCK_SH`.
    Shared,
    /// `LOCK_EX`.
    Exclusive,
    /// `LOCK_UN`.
    Unlock,
}

/// `flock(2)`. With `nonblocking`, `LOCK_NB` is added and a conflicting
/// lock is reported as `EWOULDBLOCK`. `EINTR` is returned, not retried: the
/// caller decides (see [`retry_eintr`]).
#[inline]
pub(crate) fn flock(fd: BorrowedFd<'_>, op: FlockOp, nonblocking: bool) -> io::Result<()> {
    use rustix::fs::FlockOperation as F;
    let op = match (op, nonblocking) {
        (FlockOp::Shared, false) => F::LockShared,
        (FlockOp::Shared, true) => F::NonBlockingLockShared,
        (FlockOp::Exclusive, false) => F::LockExclusive,
        (FlockOp::Exclusive, true) => F::NonBlockingLockExclusive,
        (FlockOp::Unlock, false) => F::Unlock,
        (FlockOp::Unlock, true) => F::NonBlockingUnlock,
    };
    Ok(rustix::fs::flock(fd, op)?)
}

/// The kind of byte-range lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OfdLock {
    Read,
    Write,
}

impl OfdLock {
    fn raw(self) -> libc::c_short {
        (match self {
            OfdLock::Read => libc::F_RDLCK,
            OfdLock::Write => libc::F_WRLCK,
        }) as libc::c_short
    }
}

fn flock_struct(kind: OfdLock, start: u64, len: u64) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct for which all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind.raw();
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl.l_pid = 0; // required by F_OFD_*
    fl
}

/// `fcntl(F_OFD_SETLK)`: takes, converts or releases a lock without waiting.
/// `Ok(false)` when another description holds a conflicting lock.
pub(crate) fn ofd_try_set(
    fd: BorrowedFd<'_>,
    kind: OfdLock,
    start: u64,
    len: u64,
) -> io::Result<bool> {
    let fl = flock_struct(kind, start, len);
    // SAFETY: `fl` is a valid, initialised `struct flock` for the call.
    match retry_eintr(|| cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) })) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `fcntl(F_OFD_GETLK)`: `Some(kind)` of a lock another description holds
/// that would conflict with `kind`, `None` if `kind` could be taken now.
pub(crate) fn ofd_conflicting(
    fd: BorrowedFd<'_>,
    kind: OfdLock,
    start: u64,
    len: u64,
) -> io::Result<Option<OfdLock>> {
    let mut fl = flock_struct(kind, start, len);
    // SAFETY: `fl` is a valid `struct flock` the kernel may overwrite.
    retry_eintr(|| cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) }))?;
    Ok(match fl.l_type as libc::c_int {
        libc::F_UNLCK => None,
        libc::F_RDLCK => Some(OfdLock::Read),
        _ => Some(OfdLock::Write),
    })
}
