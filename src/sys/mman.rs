//! `mmap(2)` / `munmap(2)` of shared mappings.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`.
pub(crate) fn mmap_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: we ask for a fresh mapping at an address of the kernel's
    // choosing; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// `munmap(2)`.
///
/// # Safety
///
/// `ptr..ptr+len` must be a mapping made by [`mmap_shared`] that no live
/// reference points into any more.
pub(crate) unsafe fn munmap(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: guaranteed by the caller.
    super::cvt(unsafe { libc::munmap(ptr.as_ptr().cast(), len) })?;
    Ok(())
}

/// `msync(ptr, len, MS_SYNC)`: writes the mapping's dirty pages back to
/// the file and waits for the writes.
///
/// # Safety
///
/// `ptr..ptr+len` is a live mapping made by [`mmap_shared`].
pub(crate) unsafe fn msync(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    super::retry_eintr(|| {
        // SAFETY: guaranteed by the caller; msync does not change the
        // memory.
        super::cvt(unsafe { libc::msync(ptr.as_ptr().cast(), len, libc::MS_SYNC) })
    })?;
    Ok(())
}
