//! `mmap(2)` / `munmap(2)` of shared mappings, and one private page that
//! forked children do not inherit (`MADV_WIPEONFORK`).

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

/// A private anonymous page of this process that the kernel hands to every
/// child made from a copy of this address space (`fork`, and a raw `clone`
/// without `CLONE_VM`, which skip `pthread_atfork` handlers) as zeroes
/// (`madvise(MADV_WIPEONFORK)`, Linux >= 4.14): per-process facts cached
/// there are never seen by another process. Never unmapped. `Err` if
/// either call fails (nothing is left mapped then).
pub(crate) fn wipe_on_fork_page() -> io::Result<NonNull<u8>> {
    let len = page_size();
    // SAFETY: a fresh private mapping at an address of the kernel's
    // choosing; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `p..p+len` is the mapping just made, used by nobody yet.
    if let Err(e) = super::cvt(unsafe { libc::madvise(p, len, libc::MADV_WIPEONFORK) }) {
        // SAFETY: the same mapping, never handed out.
        unsafe { libc::munmap(p, len) };
        return Err(e);
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// `sysconf(_SC_PAGESIZE)`, 4096 if unknown.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}
