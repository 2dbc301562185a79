//! Diagnostics that only some backends can give, on the typed layer.

use super::ShmCell;
use crate::lock::NamedSemaphore;
use crate::shm_safe::ShmSafe;

/// Diagnostics of a semaphore-locked cell.
impl<T: ShmSafe> ShmCell<T, NamedSemaphore> {
    /// The pid of the process holding the lock now, if any (a snapshot,
    /// read without locking; the holder may be dead and not yet taken
    /// over).
    pub fn holder_pid(&self) -> Option<u32> {
        self.shared().holder_pid()
    }

    /// How many threads sleep on the cell's semaphore now (a snapshot).
    pub fn sleeping_waiters(&self) -> u32 {
        self.shared().sleeping_waiters()
    }
}
