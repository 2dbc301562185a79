//! POSIX shared-memory names: `shm_open(3)`, `shm_unlink(3)`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::cvt;

/// `shm_open(3)`. glibc adds `O_NOFOLLOW` and `O_CLOEXEC` itself; we pass
/// `O_CLOEXEC` explicitly all the same.
pub(crate) fn shm_open(name: &CStr, oflag: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the call returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::shm_open(name.as_ptr(), oflag | libc::O_CLOEXEC, mode as libc::mode_t)
    })?;
    // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `shm_unlink(3)`.
pub(crate) fn shm_unlink(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::shm_unlink(name.as_ptr()) })?;
    Ok(())
}
