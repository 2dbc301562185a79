//! `ShmGuard`: the proof of holding a cell's lock.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::ShmCell;
use crate::lock::{LockBackend, RobustMutex};
use crate::shm_safe::ShmSafe;
use crate::sys;

/// Holds the lock of a [`ShmCell`] and gives access to its value; unlocks
/// on drop.
///
/// * `!Send`: the thread that locked unlocks (POSIX requires it of the
///   robust mutex).
/// * It borrows its cell, so the segment cannot be unmapped under it.
/// * Dropped in a process forked while it was held, it does nothing: the
///   lock belongs to the parent.
/// * A guard that came with [`LockError::OwnerDied`](crate::LockError) is
///   *inconsistent* until [`make_consistent`](Self::make_consistent) is
///   called; dropping it before that leaves the lock not recoverable.
/// * [`wait_while`](Self::wait_while) and
///   [`wait_while_timeout`](Self::wait_while_timeout) sleep until the value
///   changes. Dropping a guard does **not** wake them, even after a change:
///   call [`ShmCell::notify_all`] once the value is changed.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ShmGuard<'a, T: ShmSafe, L: LockBackend = RobustMutex> {
    cell: &'a ShmCell<T, L>,
    fork_gen: u32,
    inconsistent: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

impl<'a, T: ShmSafe, L: LockBackend> ShmGuard<'a, T, L> {
    #[inline]
    pub(crate) fn new(cell: &'a ShmCell<T, L>, owner_died: bool) -> Self {
        cell.set_held(true);
        ShmGuard {
            cell,
            fork_gen: sys::fork::fork_generation(),
            inconsistent: Cell::new(owner_died),
            _not_send: PhantomData,
        }
    }

    /// Declares the value repaired after an owner death, so the lock stays
    /// usable (`pthread_mutex_consistent` for the robust mutex). A no-op on
    /// a guard acquired normally.
    pub fn make_consistent(&self) {
        if self.inconsistent.replace(false) {
            // SAFETY: we hold the lock, acquired with owner death.
            unsafe { self.cell.make_consistent_raw() };
        }
    }

    /// Whether this guard came from an owner death and was not made
    /// consistent yet.
    pub fn is_inconsistent(&self) -> bool {
        self.inconsistent.get()
    }

    /// The cell this guard locks.
    pub fn cell(&self) -> &'a ShmCell<T, L> {
        self.cell
    }

    /// Consumes the guard *without* releasing the lock (for `wait.rs`,
    /// which releases and re-acquires it itself). Returns the cell and
    /// whether the value is consistent, or `None` for a guard copied into a
    /// process forked while it was held (that process holds nothing).
    #[inline]
    pub(super) fn disarm(self) -> Option<(&'a ShmCell<T, L>, bool)> {
        let held = self.fork_gen == sys::fork::fork_generation();
        let (cell, consistent) = (self.cell, !self.inconsistent.get());
        std::mem::forget(self);
        held.then_some((cell, consistent))
    }
}

impl<T: ShmSafe, L: LockBackend> Deref for ShmGuard<'_, T, L> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock, so no other thread or process writes the
        // value; it is aligned and initialised (the segment was Ready), and
        // `T: ShmSafe` makes any bit pattern a dead holder left valid.
        unsafe { &*self.cell.value_ptr() }
    }
}

impl<T: ShmSafe, L: LockBackend> DerefMut for ShmGuard<'_, T, L> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference
        // handed out by this guard, and the lock excludes all others.
        unsafe { &mut *self.cell.value_ptr() }
    }
}

impl<T: ShmSafe, L: LockBackend> Drop for ShmGuard<'_, T, L> {
    #[inline]
    fn drop(&mut self) {
        if self.fork_gen == sys::fork::fork_generation() {
            // SAFETY: this thread holds the lock through this guard.
            unsafe { self.cell.release(!self.inconsistent.get()) };
        }
    }
}

impl<T: ShmSafe, L: LockBackend> std::fmt::Debug for ShmGuard<'_, T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmGuard")
            .field("name", &self.cell.name())
            .field("inconsistent", &self.inconsistent.get())
            .finish()
    }
}
