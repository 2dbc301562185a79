//! The shared side of `ShmCell<T, RobustRwLock>`: `read`, `try_read`,
//! `read_timeout` and the read guard.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::ShmCell;
use crate::error::ReadError;
use crate::lock::{Acquire, RobustRwLock};
use crate::shm_safe::ShmSafe;
use crate::sys;
use crate::sys::time::Monotonic;

impl<T: ShmSafe + Sync> ShmCell<T, RobustRwLock> {
    /// Takes a read guard, waiting while a writer holds the lock or waits
    /// for it (writers are preferred: a writer that came first is served
    /// first). Many threads and processes may read at once. No system call
    /// when no writer is about.
    ///
    /// A writer that dies while this call waits for it is noticed within
    /// about 50 ms (its liveness lock is probed between wait slices): if it
    /// was still waiting for readers, reading goes on; if it held the write
    /// guard, the value may be torn and this returns
    /// [`ReadError::WriterDied`].
    ///
    /// A thread must not take a second read guard while it holds one if a
    /// writer may arrive in between (it would wait for the writer, which
    /// waits for the first guard), nor call `lock()` while it holds one.
    ///
    /// # Errors
    ///
    /// [`ReadError::WriterDied`] while a dead writer's damage is not
    /// repaired (a writer's `lock()` gets `OwnerDied` and repairs it);
    /// [`ReadError::NotRecoverable`]; [`ReadError::Deadlock`] if this
    /// thread holds the write guard; [`ReadError::NoReaderSlot`] when
    /// [`READER_SLOTS`](crate::lock::READER_SLOTS) other live handles read
    /// already (this handle's first read claims a slot); [`ReadError::Os`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use shmsync::{ReadError, RobustRwLock, ShmCell};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cell = ShmCell::<[u64; 4], RobustRwLock>::open_or_create("/routes", [0; 4])?;
    /// match cell.read() {
    ///     Ok(routes) => println!("{:?}", *routes),
    ///     Err(ReadError::WriterDied) => {
    ///         // a writer died mid-update: repair under the write lock
    ///         let g = cell.lock().or_else(|e| e.into_owner_died().ok_or("lock failed"))?;
    ///         g.make_consistent();
    ///     }
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn read(&self) -> Result<ShmReadGuard<'_, T>, ReadError> {
        self.read_with(Acquire::Block)
    }

    /// Takes a read guard if no writer holds the lock or waits for it now,
    /// else [`ReadError::WouldBlock`] (an announced writer found dead is
    /// handled first, as by [`read`](Self::read)).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), plus [`ReadError::WouldBlock`].
    #[inline]
    pub fn try_read(&self) -> Result<ShmReadGuard<'_, T>, ReadError> {
        self.read_with(Acquire::Try)
    }

    /// Takes a read guard, waiting at most `timeout` (`CLOCK_MONOTONIC`).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), plus [`ReadError::TimedOut`].
    #[inline]
    pub fn read_timeout(&self, timeout: Duration) -> Result<ShmReadGuard<'_, T>, ReadError> {
        self.read_with(Acquire::Until(Monotonic::now().after(timeout)))
    }

    #[inline]
    fn read_with(&self, how: Acquire) -> Result<ShmReadGuard<'_, T>, ReadError> {
        let seg = &*self.seg;
        let slot =
            self.shared_of(seg)
                .read_acquire(&self.local, seg.fd(), &seg.header().suspect, how)?;
        Ok(ShmReadGuard {
            cell: self,
            slot,
            fork_gen: sys::fork::fork_generation(),
            _not_send: PhantomData,
        })
    }
}

/// A read guard of a [`ShmCell<T, RobustRwLock>`](crate::RobustRwLock):
/// shared access to the value; gives its place back on drop.
///
/// * `!Send` (like std's read guards).
/// * It borrows its cell, so the segment cannot be unmapped under it.
/// * Dropped in a process forked while it was held, it does nothing: the
///   read belongs to the parent's handle, whose slot the parent keeps.
///   Do not read through such a copy (the parent may drop its guard and a
///   writer come in); take a new read guard in the child — it claims a
///   slot of its own.
#[must_use = "the read lock is released as soon as the guard is dropped"]
pub struct ShmReadGuard<'a, T: ShmSafe> {
    cell: &'a ShmCell<T, RobustRwLock>,
    slot: &'a AtomicU64,
    fork_gen: u32,
    _not_send: PhantomData<*const ()>,
}

impl<'a, T: ShmSafe> ShmReadGuard<'a, T> {
    /// The cell this guard reads.
    pub fn cell(&self) -> &'a ShmCell<T, RobustRwLock> {
        self.cell
    }
}

impl<T: ShmSafe> Deref for ShmReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard counts in its handle's slot, and the writer
        // word was seen clear after that count (SeqCst on both sides): no
        // writer hands out `&mut T` until the count drops, and a writer
        // clears a slot only once its handle's process is dead. The value
        // is aligned and initialised (the segment was Ready); `ShmSafe`
        // makes any bit pattern valid.
        unsafe { &*self.cell.value_ptr() }
    }
}

impl<T: ShmSafe> Drop for ShmReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.fork_gen == sys::fork::fork_generation() {
            self.cell.shared().read_release(self.slot);
        }
    }
}

impl<T: ShmSafe> std::fmt::Debug for ShmReadGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmReadGuard")
            .field("name", &self.cell.name())
            .finish()
    }
}
