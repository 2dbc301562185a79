//! Non-private `futex(2)` wait and wake on a 32-bit word in shared memory.
//!
//! No `FUTEX_PRIVATE_FLAG`: the word is shared between processes, and the
//! kernel must key waiters by the physical page, not by this address space.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use super::time::relative_timespec;

/// `futex(FUTEX_WAIT)`: sleeps while `*word == expected`, at most `timeout`.
/// Returns normally on a wake-up, a value change (`EAGAIN`), a signal
/// (`EINTR`) or the timeout (`ETIMEDOUT`): the caller re-checks its
/// condition in every case.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(relative_timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned 32-bit atomic for the whole call;
    // `ts_ptr` is null or points to a timespec that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            0usize,
            0u32,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ETIMEDOUT) => Ok(()),
            _ => Err(e),
        }
    } else {
        Ok(())
    }
}

/// `futex(FUTEX_WAKE)`: wakes up to `n` waiters; returns how many woke.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> io::Result<u32> {
    let n = n.min(i32::MAX as u32);
    // SAFETY: `word` is a valid, aligned 32-bit atomic; FUTEX_WAKE only
    // uses its address as a key.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            0usize,
            0usize,
            0u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u32)
    }
}
