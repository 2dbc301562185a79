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
///   Converting the error with
///   [`without_guard`](crate::LockError::without_guard) (for `?`) does
///   not: the next locker is told `OwnerDied` again.
/// * **A guard dropped while its thread panics** (unwinding, a panic that
///   began while the guard was held) marks the value suspect: the next locker, in any process, gets
///   [`LockError::OwnerDied`](crate::LockError) with the value as the
///   panic left it — a panic is an owner death. (Like std's `Mutex`
///   poisoning, but through the same `OwnerDied` path as a crash.)
/// * [`wait_while`](Self::wait_while) and
///   [`wait_while_timeout`](Self::wait_while_timeout) sleep until the value
///   changes. Dropping a guard does **not** wake them, even after a change:
///   call [`ShmCell::notify_all`] once the value is changed.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ShmGuard<'a, T: ShmSafe, L: LockBackend = RobustMutex> {
    cell: &'a ShmCell<T, L>,
    /// The fork generation the lock was taken in (low 32 bits) and the
    /// flags [`INCONSISTENT`], [`BACKEND_DIED`], [`PANICKING_AT_LOCK`]
    /// (shifted by [`FLAGS_SHIFT`]), in one word: a clean guard of this
    /// process is the one value `fork_generation()`, so its drop checks
    /// both with one load and one compare. One word, written and read
    /// whole: a guard that goes through memory never reads back part of a
    /// store (a narrow load of a wider store stalls store forwarding;
    /// measured with `perf annotate` on the bench's loop, it was a fifth of
    /// an uncontended lock + unlock).
    state: Cell<u64>,
    _not_send: PhantomData<*const ()>,
}

/// An owner death (of the backend's or the `suspect` word's) not yet made
/// consistent.
pub(crate) const INCONSISTENT: u8 = 1;
/// The backend itself reported the owner death: its state needs
/// `make_consistent` (not so when only the `suspect` word did).
pub(crate) const BACKEND_DIED: u8 = 2;
/// The thread was unwinding already when it locked (a `Drop` that locks
/// during a panic): only a panic that *starts* while the guard is held
/// marks the value suspect (std's poisoning rule).
const PANICKING_AT_LOCK: u8 = 4;
/// Where the flags sit in [`ShmGuard`]'s state word.
const FLAGS_SHIFT: u32 = 32;

/// The state word of a guard taken now, in this process, with `flags`.
#[inline(always)]
fn state_word(flags: u8) -> u64 {
    u64::from(sys::fork::fork_generation()) | u64::from(flags) << FLAGS_SHIFT
}

impl<'a, T: ShmSafe, L: LockBackend> ShmGuard<'a, T, L> {
    /// `flags`: [`INCONSISTENT`] and [`BACKEND_DIED`] as the acquire found.
    #[inline(always)]
    pub(crate) fn new(cell: &'a ShmCell<T, L>, flags: u8) -> Self {
        cell.set_held(true);
        let panicking = u8::from(std::thread::panicking()) * PANICKING_AT_LOCK;
        ShmGuard {
            cell,
            state: Cell::new(state_word(flags | panicking)),
            _not_send: PhantomData,
        }
    }

    #[inline(always)]
    fn flag(&self, f: u8) -> bool {
        self.state.get() >> FLAGS_SHIFT & u64::from(f) != 0
    }

    /// Whether the lock was taken in this process (not in a parent that
    /// forked while holding it).
    #[inline(always)]
    fn held_here(&self) -> bool {
        self.state.get() as u32 == sys::fork::fork_generation()
    }

    /// Declares the value repaired after an owner death, so the lock stays
    /// usable (`pthread_mutex_consistent` for the robust mutex). A no-op on
    /// a guard acquired normally.
    pub fn make_consistent(&self) {
        if self.flag(INCONSISTENT) {
            self.state
                .set(self.state.get() & !(u64::from(INCONSISTENT) << FLAGS_SHIFT));
            // SAFETY: we hold the lock, acquired with owner death (reported
            // by the backend when BACKEND_DIED).
            unsafe { self.cell.make_consistent_raw(self.flag(BACKEND_DIED)) };
        }
    }

    /// Whether this guard came from an owner death and was not made
    /// consistent yet.
    pub fn is_inconsistent(&self) -> bool {
        self.flag(INCONSISTENT)
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
        let held = self.held_here();
        let (cell, consistent) = (self.cell, !self.is_inconsistent());
        std::mem::forget(self);
        held.then_some((cell, consistent))
    }
}

impl<T: ShmSafe, L: LockBackend> Deref for ShmGuard<'_, T, L> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock, so no other thread or process writes the
        // value; it is aligned and initialised (the segment was Ready), and
        // `T: ShmSafe` makes any bit pattern a dead holder left valid.
        unsafe { &*self.cell.value_ptr() }
    }
}

impl<T: ShmSafe, L: LockBackend> DerefMut for ShmGuard<'_, T, L> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference
        // handed out by this guard, and the lock excludes all others.
        unsafe { &mut *self.cell.value_ptr() }
    }
}

impl<T: ShmSafe, L: LockBackend> ShmGuard<'_, T, L> {
    /// Releases the lock leaving the value suspect: the next locker gets
    /// `OwnerDied`. For a panic and for `LockError::without_guard`.
    ///
    /// # Safety
    ///
    /// This thread holds the lock through this guard, which is not used
    /// (nor released) again.
    #[cold]
    #[inline(never)]
    unsafe fn release_suspect(&self) {
        // SAFETY: forwarded from the caller: we hold the lock, acquired
        // with owner death when `backend_died`.
        unsafe {
            self.cell
                .leave_suspect(self.flag(INCONSISTENT) && self.flag(BACKEND_DIED))
        };
    }

    /// An unrepaired owner-died guard dropped deliberately: not
    /// recoverable, for every process (POSIX).
    ///
    /// # Safety
    ///
    /// As [`release_suspect`](Self::release_suspect).
    #[cold]
    #[inline(never)]
    unsafe fn release_not_recoverable(&self) {
        // SAFETY: forwarded from the caller.
        unsafe { self.cell.leave_not_recoverable(self.flag(BACKEND_DIED)) };
    }
}

impl<T: ShmSafe, L: LockBackend> Drop for ShmGuard<'_, T, L> {
    #[inline(always)]
    fn drop(&mut self) {
        // The normal path: one compare of the state word (this process, no
        // flag) and one load of the global panic count, two predictable
        // branches; everything else is out of line, so that the drop glue
        // stays small enough to be inlined into the caller's loop.
        if self.state.get() == state_word(0) && !std::thread::panicking() {
            // SAFETY: this thread holds the lock through this guard, which
            // is dropped now.
            unsafe { self.cell.release(true) };
        } else {
            self.drop_unclean();
        }
    }
}

impl<T: ShmSafe, L: LockBackend> ShmGuard<'_, T, L> {
    /// The drop of a guard that is inconsistent, copied into a forked
    /// child, or dropped while its thread panics.
    #[cold]
    #[inline(never)]
    fn drop_unclean(&mut self) {
        if !self.held_here() {
            // A guard copied into a process forked while it was held: the
            // lock is the parent's.
            return;
        }
        if std::thread::panicking() && !self.flag(PANICKING_AT_LOCK) {
            // SAFETY: this thread holds the lock through this guard, which
            // is dropped now.
            unsafe { self.release_suspect() };
        } else if self.is_inconsistent() {
            // SAFETY: as above.
            unsafe { self.release_not_recoverable() };
        } else {
            // SAFETY: as above.
            unsafe { self.cell.release(true) };
        }
    }
}

impl<T: ShmSafe, L: LockBackend> crate::error::sealed::GiveUp for ShmGuard<'_, T, L> {
    /// Marks the value suspect and unlocks (see
    /// [`LockError::without_guard`](crate::LockError::without_guard)).
    fn give_up(self) {
        if self.held_here() {
            // SAFETY: this thread holds the lock through this guard, which
            // is forgotten right after, so it is released exactly once.
            unsafe { self.release_suspect() };
        }
        std::mem::forget(self);
    }
}

impl<T: ShmSafe, L: LockBackend> crate::error::LockGuard for ShmGuard<'_, T, L> {}

impl<T: ShmSafe, L: LockBackend> std::fmt::Debug for ShmGuard<'_, T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmGuard")
            .field("name", &self.cell.name())
            .field("inconsistent", &self.is_inconsistent())
            .finish()
    }
}
