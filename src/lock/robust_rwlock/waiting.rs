//! Waiting in the read-write lock: a futex word with a waiter count
//! (register before reading the state, so a release with nobody waiting
//! costs no system call), and the pace of liveness probes.

use crate::lock::Acquire;
use crate::sys;
use crate::sys::time::Monotonic;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;

/// A futex sequence word and the number of threads waiting on it. A
/// waiter registers for its whole wait *before* it reads the word and the
/// state it waits on; a waker changes the state, then bumps the word and
/// makes the `FUTEX_WAKE` system call only if someone is registered (all
/// `SeqCst`: a waker that sees nobody registered changed the state before
/// any later registrant reads it). A waiter killed in its wait leaves the
/// count one too high: later wakes cost a needless system call, never a
/// lost wake-up.
#[repr(C)]
pub(super) struct WaitWord {
    seq: AtomicU32,
    waiters: AtomicU32,
}

/// A registration on a [`WaitWord`], undone on drop.
pub(super) struct Registered<'a>(&'a WaitWord);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WaitWord {
    /// Wakes the registered waiters, if any (after the state changed).
    #[inline]
    pub(super) fn wake(&self) {
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            // Cannot fail: the word is mapped, aligned and shared.
            let _ = sys::futex::wake(&self.seq, u32::MAX);
        }
    }

    pub(super) fn register(&self) -> Registered<'_> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        Registered(self)
    }

    #[inline]
    pub(super) fn seen(&self) -> u32 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Sleeps while the word is `seen`, until the next probe of `pace` at
    /// most and not past the deadline of `how`.
    pub(super) fn sleep(
        &self,
        _: &Registered<'_>,
        seen: u32,
        pace: &Pace,
        how: Acquire,
    ) -> io::Result<()> {
        let mut d = pace.next_probe.remaining().max(Duration::from_micros(50));
        if let Acquire::Until(deadline) = how {
            d = d.min(deadline.remaining());
        }
        sys::futex::wait(&self.seq, seen, Some(d))
    }
}

/// When a waiter next probes the liveness of what it waits for: after
/// slices of 1 ms growing to [`MAX_SLICE`], measured on the clock (so that
/// wake-ups by others never postpone a probe).
pub(super) struct Pace {
    slice: Duration,
    next_probe: Monotonic,
}

impl Pace {
    pub(super) fn new() -> Pace {
        Pace {
            slice: FIRST_SLICE,
            next_probe: Monotonic::now().after(FIRST_SLICE),
        }
    }

    /// Whether a probe is due now (and if so, schedules the next one).
    pub(super) fn due(&mut self) -> bool {
        let now = Monotonic::now();
        if now < self.next_probe {
            return false;
        }
        self.slice = (self.slice * 2).min(MAX_SLICE);
        self.next_probe = now.after(self.slice);
        true
    }
}
