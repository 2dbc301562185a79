//! Non-private `futex(2)` wait and wake on a 32-bit word in shared memory,
//! over rustix's safe `futex` (which takes the word as `&AtomicU32`).
//!
//! No `FUTEX_PRIVATE_FLAG` ([`Flags::empty`]): the word is shared between
//! processes, and the kernel must key waiters by the physical page, not by
//! this address space.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex::{self, Flags};

use super::time::relative_timespec;

/// `futex(FUTEX_WAIT)`: sleeps while `*word == expected`, at most `timeout`.
/// Returns normally on a wake-up, a value change (`EAGAIN`), a signal
/// (`EINTR`) or the timeout (`ETIMEDOUT`): the caller re-checks its
/// condition in every case.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(relative_timespec);
    match futex::wait(word, Flags::empty(), expected, ts.as_ref()) {
        Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `futex(FUTEX_WAKE)`: wakes up to `n` waiters; returns how many woke.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> io::Result<u32> {
    let n = n.min(i32::MAX as u32);
    let woke = futex::wake(word, Flags::empty(), n)?;
    Ok(woke as u32)
}
