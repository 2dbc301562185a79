//! Per-process state of a handle that a forked child must not share with
//! its parent: [`PerProcess`] rebuilds its value in a child on first use
//! (stamped with the fork generation), and [`SwapFd`] is a descriptor that
//! such a value may replace.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use crate::sys;

/// A descriptor that the holder of a lock's token may replace (a lock file
/// replaced on disk is reopened). `-1` = none. Closed on drop.
pub(crate) struct SwapFd(AtomicI32);

impl SwapFd {
    pub(crate) fn new(fd: Option<OwnedFd>) -> SwapFd {
        SwapFd(AtomicI32::new(
            fd.map_or(-1, std::os::fd::IntoRawFd::into_raw_fd),
        ))
    }

    /// The descriptor, if any.
    ///
    /// # Safety
    ///
    /// No other thread may [`replace`](Self::replace) it while the borrow
    /// lives: the caller holds the local token of its handle (or is the
    /// only user, as in `Drop`).
    #[inline]
    pub(crate) unsafe fn borrow(&self) -> Option<BorrowedFd<'_>> {
        let raw = self.0.load(Ordering::Acquire);
        // SAFETY: a non-negative value is an open descriptor we own, and the
        // caller guarantees it is not closed while the borrow lives.
        (raw >= 0).then(|| unsafe { BorrowedFd::borrow_raw(raw) })
    }

    /// The raw number, for building `/proc/self/fd/N`.
    pub(crate) fn raw(&self) -> Option<RawFd> {
        let raw = self.0.load(Ordering::Acquire);
        (raw >= 0).then_some(raw)
    }

    /// Puts `fd` in and returns the previous descriptor.
    pub(crate) fn replace(&self, fd: Option<OwnedFd>) -> Option<OwnedFd> {
        let new = fd.map_or(-1, std::os::fd::IntoRawFd::into_raw_fd);
        let old = self.0.swap(new, Ordering::AcqRel);
        // SAFETY: `old` was a descriptor we owned and nobody else took out.
        (old >= 0).then(|| unsafe { OwnedFd::from_raw_fd(old) })
    }
}

impl Drop for SwapFd {
    fn drop(&mut self) {
        drop(self.replace(None));
    }
}

impl std::fmt::Debug for SwapFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwapFd({})", self.0.load(Ordering::Relaxed))
    }
}

struct Slot<T> {
    generation: u32,
    value: T,
}

/// A value that belongs to one process: read in a forked child, it is
/// rebuilt from the inherited one (the first time) and the inherited one is
/// retired and never used again there.
pub(crate) struct PerProcess<T> {
    slot: AtomicPtr<Slot<T>>,
}

// SAFETY: the slot is a `Box<Slot<T>>` shared by reference only; `T: Send +
// Sync` makes that sound from any thread.
unsafe impl<T: Send + Sync> Send for PerProcess<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for PerProcess<T> {}

impl<T> PerProcess<T> {
    pub(crate) fn new(value: T) -> PerProcess<T> {
        sys::fork::register_fork_handler();
        let slot = Box::new(Slot {
            generation: sys::fork::fork_generation(),
            value,
        });
        PerProcess {
            slot: AtomicPtr::new(Box::into_raw(slot)),
        }
    }

    /// This process's value: one relaxed load and a compare on the fast
    /// path. In a forked child the first call builds a new value with
    /// `rebind(inherited)` and, if it wins the race to install it, calls
    /// `retire(inherited)`; the inherited slot is then leaked (a thread of
    /// the parent may have held its local lock at the fork).
    #[inline]
    pub(crate) fn get(
        &self,
        rebind: impl FnOnce(&T) -> io::Result<T>,
        retire: impl FnOnce(&T),
    ) -> io::Result<&T> {
        let p = self.slot.load(Ordering::Acquire);
        // SAFETY: the slot is a live Box: slots are freed only in `Drop`
        // (`&mut self`) and replaced ones are leaked.
        let slot = unsafe { &*p };
        if slot.generation == sys::fork::fork_generation() {
            return Ok(&slot.value);
        }
        self.rebind(p, rebind, retire)
    }

    #[cold]
    fn rebind(
        &self,
        p: *mut Slot<T>,
        rebind: impl FnOnce(&T) -> io::Result<T>,
        retire: impl FnOnce(&T),
    ) -> io::Result<&T> {
        // SAFETY: as in `get`.
        let inherited = unsafe { &*p };
        let generation = sys::fork::fork_generation();
        let value = match rebind(&inherited.value) {
            Ok(v) => v,
            Err(e) => {
                // Another thread of this child may have rebound (and retired
                // the inherited descriptor) under us: use its slot.
                let current = self.slot.load(Ordering::Acquire);
                // SAFETY: as in `get`.
                if current != p && unsafe { (*current).generation } == generation {
                    // SAFETY: as in `get`.
                    return Ok(unsafe { &(*current).value });
                }
                return Err(e);
            }
        };
        let fresh = Box::into_raw(Box::new(Slot { generation, value }));
        match self
            .slot
            .compare_exchange(p, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                retire(&inherited.value);
                // SAFETY: just installed; freed only in `Drop`.
                Ok(unsafe { &(*fresh).value })
            }
            Err(current) => {
                // Another thread of this (child) process rebound first: its
                // slot has this generation (ours cannot change under us).
                // SAFETY: `fresh` was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: as in `get`.
                Ok(unsafe { &(*current).value })
            }
        }
    }
}

impl<T> Drop for PerProcess<T> {
    fn drop(&mut self) {
        // SAFETY: the current slot is a Box we own; replaced slots were
        // leaked on purpose and are not freed here.
        drop(unsafe { Box::from_raw(self.slot.load(Ordering::Acquire)) });
    }
}
