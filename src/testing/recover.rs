//! What the parent sees after a kill, as data: [`recover`] and [`Seen`].

use crate::{LockBackend, LockError, ShmCell, ShmSafe};

/// What the parent found when it locked the cell after the child ended.
///
/// Compare it whole with `assert_eq!`: the value a dead holder left and
/// the value after the repair are both in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Seen<T> {
    /// The lock was free: the child died outside the critical section (or
    /// finished). The value as found; the repair did not run.
    Clean(T),
    /// The child died holding the lock: `found` is what it left,
    /// `repaired` the value after the repair closure ran (and the lock was
    /// made consistent).
    OwnerDied {
        /// The value as the dead holder left it.
        found: T,
        /// The value after the repair.
        repaired: T,
    },
}

impl<T> Seen<T> {
    /// Whether the previous holder had died holding the lock.
    pub fn owner_died(&self) -> bool {
        matches!(self, Seen::OwnerDied { .. })
    }

    /// The value now in the cell (`Clean`'s value, or `repaired`).
    pub fn value(&self) -> &T {
        match self {
            Seen::Clean(v) | Seen::OwnerDied { repaired: v, .. } => v,
        }
    }
}

/// Locks `cell` (bounded by [`default_bound`](crate::testing::default_bound)),
/// and, if the previous holder died, runs `repair` on the value and makes
/// the lock consistent; returns what it saw, then unlocks.
///
/// ```
/// use shmsync::testing::{recover, Seen, TestName};
/// use shmsync::ShmCell;
///
/// let name = TestName::new("recover-doc");
/// let cell = ShmCell::<u64>::create(&name, 5).unwrap();
/// assert_eq!(recover(&cell, |v| *v = 0).unwrap(), Seen::Clean(5));
/// ```
///
/// # Errors
///
/// Any other outcome of `lock_timeout`, without its guard:
/// [`LockError::NotRecoverable`], [`LockError::TimedOut`] (someone still
/// holds it — a child that was not killed?), [`LockError::Deadlock`],
/// [`LockError::Os`].
pub fn recover<T, L>(
    cell: &ShmCell<T, L>,
    repair: impl FnOnce(&mut T),
) -> Result<Seen<T>, LockError<()>>
where
    T: ShmSafe + Copy,
    L: LockBackend,
{
    match cell.lock_timeout(super::default_bound()) {
        Ok(g) => Ok(Seen::Clean(*g)),
        Err(LockError::OwnerDied(mut g)) => {
            let found = *g;
            repair(&mut g);
            g.make_consistent();
            Ok(Seen::OwnerDied {
                found,
                repaired: *g,
            })
        }
        Err(e) => Err(e.without_guard()),
    }
}
