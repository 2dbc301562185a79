//! The identity a holder records: pid + process start time, so that a
//! reused pid is not mistaken for the holder; cached per process (and per
//! fork generation: a forked child recomputes its own) and per thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys;

const PID_BITS: u32 = 22;
const PID_MASK: u64 = (1 << PID_BITS) - 1;

/// A holder word: `pid` (< 2^22, Linux's `PID_MAX_LIMIT`) in the low 22
/// bits, the start time (clock ticks since boot; 2^42 ticks are over a
/// thousand years) in the others. Never 0: pids are positive.
pub(crate) fn encode_identity(pid: u32, start: u64) -> u64 {
    (start << PID_BITS) | (pid as u64 & PID_MASK)
}

/// The `(pid, start time)` of a holder word.
pub(crate) fn decode_identity(word: u64) -> (u32, u64) {
    ((word & PID_MASK) as u32, word >> PID_BITS)
}

/// Whether the process a holder word names still runs: not gone, not a
/// zombie, and its pid not reused by a process with another start time.
/// If `/proc` cannot be read it counts as alive.
pub(crate) fn holder_alive(word: u64) -> bool {
    let (pid, start) = decode_identity(word);
    sys::proc::is_alive(pid, start)
}

static OWN_ID: AtomicU64 = AtomicU64::new(0);
/// The fork generation + 1 `OWN_ID` was computed in (0: never).
static OWN_ID_GEN: AtomicU32 = AtomicU32::new(0);

/// This process's identity, computed once per process (per fork
/// generation: a forked child recomputes its own).
#[inline]
pub(crate) fn own_identity() -> u64 {
    let gen = sys::fork::fork_generation().wrapping_add(1);
    if OWN_ID_GEN.load(Ordering::Acquire) == gen {
        return OWN_ID.load(Ordering::Relaxed);
    }
    own_identity_slow(gen)
}

#[cold]
fn own_identity_slow(gen: u32) -> u64 {
    let pid = sys::proc::getpid();
    let start = sys::proc::stat_state_and_start(pid)
        .ok()
        .flatten()
        .map_or(0, |(_, start)| start);
    let id = encode_identity(pid, start);
    OWN_ID.store(id, Ordering::Relaxed);
    OWN_ID_GEN.store(gen, Ordering::Release);
    id
}

thread_local! {
    /// `(fork generation + 1, gettid())` of this thread.
    static OWN_TID: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// This thread's id, cached per thread and fork generation.
#[inline]
pub(crate) fn own_tid() -> u32 {
    let gen = sys::fork::fork_generation().wrapping_add(1);
    OWN_TID.with(|c| {
        let (g, tid) = c.get();
        if g == gen {
            tid
        } else {
            let tid = sys::proc::gettid();
            c.set((gen, tid));
            tid
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips() {
        for (pid, start) in [
            (1, 0),
            (4_194_303, 0),
            (12345, 987_654_321),
            (2, (1 << 42) - 1),
        ] {
            let w = encode_identity(pid, start);
            assert_ne!(w, 0);
            assert_eq!(decode_identity(w), (pid, start));
        }
    }

    #[test]
    fn own_identity_is_alive_and_matches_proc() {
        let me = own_identity();
        let (pid, start) = decode_identity(me);
        assert_eq!(pid, std::process::id());
        assert_ne!(start, 0, "this process's start time is readable");
        assert!(holder_alive(me));
        assert_eq!(own_identity(), me, "cached");
    }

    #[test]
    fn reused_pid_is_detected_by_start_time() {
        let (pid, start) = decode_identity(own_identity());
        // Same pid, another start time: a different process that got our pid.
        assert!(!holder_alive(encode_identity(pid, start + 1)));
        assert!(!holder_alive(encode_identity(pid, start - 1)));
        // Start time unknown (0): the pid alone decides.
        assert!(holder_alive(encode_identity(pid, 0)));
    }

    #[test]
    fn vanished_pid_is_dead() {
        // A child that exited and was reaped: its pid names nobody (or, if
        // reused already, a process with another start time).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = sys::proc::stat_state_and_start(pid)
            .ok()
            .flatten()
            .map_or(1, |(_, s)| s);
        child.wait().unwrap();
        assert!(!holder_alive(encode_identity(pid, start)));
    }
}
