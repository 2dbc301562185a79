//! Counting handles in the header's `handles` word (see [the format
//! docs](super::header#the-handles-word)): added on attach, taken away on a
//! normal drop, reset by a handle that finds itself alone.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, Ordering};

use super::header::RawHeader;
use super::ATTACH_BYTE;
use crate::sys;
use crate::sys::fd_lock::OfdLock;

/// A creator, before it publishes Ready (it holds the exclusive lock, and
/// the word was zeroed by the truncation): it is the only handle.
pub(super) fn created(h: &RawHeader) {
    h.handles.store(1, Ordering::Relaxed);
}

/// An opener that holds its attach (read) lock and has mapped the segment.
pub(super) fn opened(h: &RawHeader, fd: BorrowedFd<'_>) {
    reset_or(&h.handles, fd, 1, |n| n.saturating_add(1));
}

/// A handle dropped normally, still holding its attach lock.
pub(super) fn dropped(h: &RawHeader, fd: BorrowedFd<'_>) {
    reset_or(&h.handles, fd, 0, |n| n.saturating_sub(1));
}

/// Stores `alone_value` if no other open file description holds the attach
/// lock and the word did not change meanwhile; otherwise applies `step`.
fn reset_or(word: &AtomicU32, fd: BorrowedFd<'_>, alone_value: u32, step: fn(u32) -> u32) {
    let seen = word.load(Ordering::Acquire);
    if alone(fd)
        && word
            .compare_exchange(seen, alone_value, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        return;
    }
    let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(step(n)));
}

/// Whether no other open file description holds a lock on the attach byte
/// (our own read lock does not conflict with our own query).
fn alone(fd: BorrowedFd<'_>) -> bool {
    matches!(
        sys::fd_lock::ofd_conflicting(fd, OfdLock::Write, ATTACH_BYTE, 1),
        Ok(None)
    )
}
