//! File-descriptor calls shared by every object kind: `fstat`, `fchmod`,
//! `ftruncate`, `posix_fallocate`, `pread`, `stat`.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{cvt, retry_eintr};

/// `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `stat`; the fd is borrowed
    // and therefore open for the duration of the call.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled in the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// `lstat(2)`: like `stat`, but a symbolic link is described, not followed.
pub(crate) fn lstat(path: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` is NUL-terminated; `st` is a valid out-pointer.
    cvt(unsafe { libc::lstat(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: lstat succeeded, so it filled in the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// `fchmod(2)`: sets the mode exactly, whatever the umask was at creation.
pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain system call on a borrowed, open fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(())
}

/// `ftruncate(2)`.
pub(crate) fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain system call on a borrowed, open fd.
    retry_eintr(|| cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }))?;
    Ok(())
}

/// `posix_fallocate(3)`: reserves the pages now, so that running out of
/// memory on tmpfs is an error here rather than `SIGBUS` on first touch.
/// (Returns the error number directly, like the pthread family.)
pub(crate) fn posix_fallocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    retry_eintr(|| {
        // SAFETY: plain library call on a borrowed, open fd.
        let r = unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, len) };
        super::cvt_pthread(r)
    })
}

/// `pread(2)` until `buf` is full or end of file; returns the bytes read.
pub(crate) fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let off = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let rest = &mut buf[done..];
        let n = retry_eintr(|| {
            // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
            cvt(
                unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), off) }
                    as i64,
            )
        })?;
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}
