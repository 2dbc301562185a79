//! Anonymous memory files: `memfd_create(2)` with sealing allowed, file
//! seals (`fcntl(F_ADD_SEALS / F_GET_SEALS)`), what `/proc/self/fd/N`
//! names, and descriptors a program `exec`s with (a duplicate without
//! `FD_CLOEXEC`). All of it over rustix.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::FdFlags;

use super::retry_eintr;

/// `F_SEAL_SEAL`: no more seals may be added.
pub(crate) const SEAL_SEAL: u32 = SealFlags::SEAL.bits();
/// `F_SEAL_SHRINK`: the file may not shrink.
pub(crate) const SEAL_SHRINK: u32 = SealFlags::SHRINK.bits();
/// `F_SEAL_GROW`: the file may not grow.
pub(crate) const SEAL_GROW: u32 = SealFlags::GROW.bits();

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`: a new anonymous
/// file of size zero (`name` only shows in `/proc/PID/fd`).
pub(crate) fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        name,
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?)
}

/// `fcntl(F_ADD_SEALS)`.
pub(crate) fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(
        fd,
        SealFlags::from_bits_retain(seals),
    )?)
}

/// `fcntl(F_GET_SEALS)`: `EINVAL` for a file that does not support seals
/// (anything but a memfd or a tmpfs/hugetlbfs file).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::fs::fcntl_get_seals(fd)?.bits())
}

/// What the link `/proc/self/fd/N` names (`/memfd:NAME (deleted)` for a
/// memfd).
pub(crate) fn fd_target(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::readlink(path, Vec::new())?.into_bytes())
}

/// A duplicate of `fd` *without* `FD_CLOEXEC`, numbered 3 or more (never
/// standard input, output or error), for a program this process is about
/// to `exec`: it shares `fd`'s open file description.
///
/// rustix has no plain `F_DUPFD`: `F_DUPFD_CLOEXEC` then `F_SETFD 0`. The
/// duplicate is close-on-exec for a moment, the safe direction.
pub(crate) fn dup_inheritable(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new = retry_eintr(|| Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?))?;
    rustix::io::fcntl_setfd(&new, FdFlags::empty())?;
    Ok(new)
}
