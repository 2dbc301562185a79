//! Anonymous memory files: `memfd_create(2)` with sealing allowed, file
//! seals (`fcntl(F_ADD_SEALS / F_GET_SEALS)`), what `/proc/self/fd/N`
//! names, and descriptors a program `exec`s with (`F_DUPFD` without
//! `FD_CLOEXEC`).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{cvt, retry_eintr};

/// `F_SEAL_SEAL`: no more seals may be added.
pub(crate) const SEAL_SEAL: u32 = libc::F_SEAL_SEAL as u32;
/// `F_SEAL_SHRINK`: the file may not shrink.
pub(crate) const SEAL_SHRINK: u32 = libc::F_SEAL_SHRINK as u32;
/// `F_SEAL_GROW`: the file may not grow.
pub(crate) const SEAL_GROW: u32 = libc::F_SEAL_GROW as u32;

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`: a new anonymous
/// file of size zero (`name` only shows in `/proc/PID/fd`).
pub(crate) fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the call returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fcntl(F_ADD_SEALS)`.
pub(crate) fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    // SAFETY: plain fcntl on a borrowed (open) descriptor.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) })?;
    Ok(())
}

/// `fcntl(F_GET_SEALS)`: `EINVAL` for a file that does not support seals
/// (anything but a memfd or a tmpfs/hugetlbfs file).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: plain fcntl on a borrowed (open) descriptor.
    let s = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })?;
    Ok(s as u32)
}

/// What the link `/proc/self/fd/N` names (`/memfd:NAME (deleted)` for a
/// memfd).
pub(crate) fn fd_target(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("no NUL in a number");
    let mut buf = vec![0u8; 4096];
    // SAFETY: `path` is NUL-terminated; `buf` is writable for its length.
    let n =
        cvt(unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) as i64 })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// A duplicate of `fd` *without* `FD_CLOEXEC` (`fcntl(F_DUPFD, 3)`), for a
/// program this process is about to `exec`: it shares `fd`'s open file
/// description.
pub(crate) fn dup_inheritable(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new = retry_eintr(|| {
        // SAFETY: plain fcntl on a borrowed (open) descriptor; returns a new
        // descriptor or -1.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3) })
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
