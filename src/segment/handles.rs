//! Counting handles in the header's `handles` word (see [the format
//! docs](super::header#the-handles-word)): added on attach, taken away on a
//! normal drop or at a normal exit, reset by a handle that finds itself
//! alone.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use super::header::{RawHeader, HEADER_SIZE};
use super::{Segment, ATTACH_BYTE};
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

/// A handle dropped normally, still holding its attach lock. Not if the
/// object was truncated under the mapping (a file-backed segment, by
/// someone with write access): touching the header would be `SIGBUS`, and
/// such an object is lost anyway.
fn dropped(h: &RawHeader, fd: BorrowedFd<'_>) {
    if !sys::fd::fstat(fd).is_ok_and(|st| st.size() >= HEADER_SIZE as u64) {
        return;
    }
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

/// A handle of this process still counted: its header's address (mapped
/// until the handle is dropped, which first removes it from [`LIVE`]) and
/// its descriptor.
struct Counted {
    header: usize,
    fd: RawFd,
    pid: u32,
}

/// The counted handles of this process, uncounted at a normal exit (a
/// handle in a `static`, or alive when `process::exit` is called, is never
/// dropped, yet its process left normally). A forked child inherits the
/// parent's entries; the pid keeps it from touching them.
static LIVE: Mutex<Vec<Counted>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// Records `seg` (just counted by this process) for [`uncount_at_exit`].
pub(super) fn register(seg: &Segment) {
    AT_EXIT.call_once(|| {
        sys::proc::at_exit(uncount_at_exit);
    });
    let entry = Counted {
        header: seg.header() as *const RawHeader as usize,
        fd: seg.fd().as_raw_fd(),
        pid: seg.counted_by,
    };
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
}

/// Forgets `seg`; whether it was still recorded (false: the exit handler
/// uncounted it already, or it was never counted by this process).
pub(super) fn unregister(seg: &Segment) -> bool {
    let addr = seg.header() as *const RawHeader as usize;
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    match live.iter().position(|c| c.header == addr) {
        Some(k) => {
            live.swap_remove(k);
            true
        }
        None => false,
    }
}

/// A handle dropped normally: forgotten, then uncounted (while its attach
/// lock is still held).
pub(super) fn detach(seg: &Segment) {
    if seg.counted_by == sys::proc::getpid() && unregister(seg) {
        dropped(seg.header(), seg.fd());
    }
}

/// At a normal exit: uncounts every handle this process still has. Skipped
/// (the handles stay counted, as after a crash) if another thread holds the
/// registry at that moment.
extern "C" fn uncount_at_exit() {
    let Ok(mut live) = LIVE.try_lock() else {
        return;
    };
    let pid = sys::proc::getpid();
    for c in live.drain(..) {
        if c.pid != pid {
            continue;
        }
        // SAFETY: a recorded handle is still mapped and its descriptor open
        // (a handle leaves the registry, under this lock, before it is
        // unmapped and closed), and the pid shows the entry is this
        // process's own, not an inherited copy.
        let (h, fd) = unsafe {
            (
                &*(c.header as *const RawHeader),
                BorrowedFd::borrow_raw(c.fd),
            )
        };
        dropped(h, fd);
    }
}
