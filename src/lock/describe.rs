//! What a lock backend says about its shared state when it is read from
//! outside, without mapping the segment and without taking the lock (for
//! [`inspect`](crate::inspect)); each backend's `describe` fills these in.

use std::os::fd::BorrowedFd;

use crate::segment::header::{HeaderInfo, LockKind};
use crate::sys;
use crate::sys::fd::FileStat;

/// The lock area of one open object, for a backend to read with `pread`.
pub(crate) struct LockArea<'a> {
    /// The object, open read-only.
    pub(crate) fd: BorrowedFd<'a>,
    /// Its decoded, validated header.
    pub(crate) info: &'a HeaderInfo,
    /// Its `fstat`.
    pub(crate) stat: &'a FileStat,
    /// Made in another pid namespace: pids in it mean nothing here.
    pub(crate) foreign_ns: bool,
}

impl LockArea<'_> {
    /// `pread` of the first `N` bytes of the lock area, if the header says
    /// they exist.
    pub(crate) fn bytes<const N: usize>(&self) -> Option<[u8; N]> {
        if self.info.lock_size < N as u64 {
            return None;
        }
        let mut b = [0u8; N];
        match sys::fd::pread_full(self.fd, &mut b, self.info.lock_offset) {
            Ok(n) if n == N => Some(b),
            _ => None,
        }
    }
}

/// The `u32` at `off` of `b` (native endian).
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// The state of the cell's lock, read without taking it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockState {
    /// Nobody holds it.
    Free,
    /// A thread or process holds it (see [`LockInfo::holder`]).
    Held,
    /// Its holder died; the kernel marked it, nobody has taken it since.
    OwnerDied,
    /// Taken with `OwnerDied`, not made consistent yet.
    Recovering,
    /// Permanently unusable.
    NotRecoverable,
    /// Not readable by this build: a lock kind whose state this inspector
    /// does not decode yet, or a segment that is not Ready.
    Unknown,
}

impl LockState {
    /// The stable name used in JSON (`free`, `held`, `owner-died`,
    /// `recovering`, `not-recoverable`, `unknown`).
    pub fn name(self) -> &'static str {
        match self {
            LockState::Free => "free",
            LockState::Held => "held",
            LockState::OwnerDied => "owner-died",
            LockState::Recovering => "recovering",
            LockState::NotRecoverable => "not-recoverable",
            LockState::Unknown => "unknown",
        }
    }
}

/// The process (and thread, when known) that holds a lock, or that died
/// holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    /// Its thread id, as recorded in the lock (in the holder's pid
    /// namespace), when the backend records one.
    pub tid: Option<u32>,
    /// The process it belongs to, `None` when it cannot be told (a robust
    /// mutex's dead thread is gone from `/proc`).
    pub pid: Option<u32>,
    /// Whether it still runs: `Some(false)` when it is gone, a zombie, or
    /// its pid was reused; `None` when that cannot be known (`/proc`
    /// unreadable, or the segment was made in another pid namespace). For
    /// the `flock` backend: whether that process still holds the `flock`
    /// (its `/proc/PID/fdinfo` shows it).
    pub alive: Option<bool>,
}

/// One raw word of a lock's state, as read with `pread`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockWord {
    /// Its stable name (`lock_word`, `owner_word` for the robust mutex;
    /// `sem_holder`, `sem_state`, `sem_waiters`, `sem_holder_tid` for the
    /// semaphore).
    pub name: &'static str,
    /// Its value.
    pub value: u64,
    /// What it holds.
    pub meaning: &'static str,
}

/// The lock of a cell, read without taking it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The backend recorded in the header (`None` if unknown or unreadable).
    pub kind: Option<LockKind>,
    /// Its state.
    pub state: LockState,
    /// The current holder, or the one that died holding it.
    pub holder: Option<Holder>,
    /// The backend's raw words, for `inspect`.
    pub words: Vec<LockWord>,
}

impl LockInfo {
    /// Nothing known beyond the kind.
    pub(crate) fn unknown(kind: Option<LockKind>) -> LockInfo {
        LockInfo {
            kind,
            state: LockState::Unknown,
            holder: None,
            words: Vec::new(),
        }
    }
}
