//! `ShmCell<T, L>`: a typed value in a named shared-memory segment, guarded
//! by a lock every process can take.

mod anonymous;
mod diagnostics;
mod file;
mod guard;
mod named;
mod read;
mod snapshot;
mod sysv;
mod wait;

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::LockError;
use crate::lock::{Acquire, Acquired, LockBackend, RobustMutex};
use crate::segment::{header, HeaderInfo, Segment};
use crate::shm_safe::ShmSafe;
use crate::sys;
use crate::sys::time::Monotonic;

pub use anonymous::inheritable_fd;
pub use guard::ShmGuard;
pub use read::ShmReadGuard;
#[cfg(feature = "testing")]
pub use snapshot::hook::set as set_snapshot_hook;
pub use wait::WaitTimeoutResult;

/// A value of type `T` in a named POSIX shared-memory object, guarded by a
/// lock of kind `L` that every process attached to it can take.
///
/// Each process gets its own handle (with [`create`](Self::create),
/// [`open`](Self::open) or [`open_or_create`](Self::open_or_create)); the
/// threads of a process share one handle by reference (it is `Sync`).
///
/// # Owner death
///
/// When a process (or thread) dies holding the lock — or a thread panics
/// holding it — the next locker gets [`LockError::OwnerDied`] *with the
/// guard*: it holds the lock and must repair the value and call
/// [`ShmGuard::make_consistent`] ([`lock_or_repair`](Self::lock_or_repair)
/// does both). Converting the error with
/// [`without_guard`](LockError::without_guard) (for `?`) hands the owner
/// death on to the next locker. **Dropping that guard without
/// `make_consistent` makes the lock permanently
/// [`NotRecoverable`](LockError::NotRecoverable)** for every process.
///
/// ```no_run
/// use shmsync::{LockError, ShmCell, ShmSafe};
///
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Account { balance: u64, version: u64 }
/// // SAFETY: plain integers, repr(C), every bit pattern valid, no pointers.
/// unsafe impl ShmSafe for Account {}
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cell = ShmCell::<Account>::open_or_create("/bank", Account { balance: 100, version: 0 })?;
/// let mut acct = match cell.lock() {
///     Ok(acct) => acct,
///     Err(LockError::OwnerDied(mut acct)) => {
///         acct.version += 1; // repair
///         acct.make_consistent();
///         acct
///     }
///     Err(other) => return Err(other.without_guard().into()),
/// };
/// acct.balance += 1;
/// # Ok(()) }
/// ```
///
/// # Where the value lives
///
/// In a named POSIX shared-memory object ([`create`](Self::create),
/// [`open`](Self::open)), in an anonymous sealed memfd shared by
/// inheritance or over a Unix socket
/// ([`create_anonymous`](Self::create_anonymous),
/// [`receive_from`](Self::receive_from)), or in a file that survives
/// reboots ([`create_file`](Self::create_file),
/// [`open_file`](Self::open_file)), or in a System V segment
/// ([`create_sysv`](Self::create_sysv), [`open_sysv`](Self::open_sysv),
/// [`create_private_sysv`](Self::create_private_sysv));
/// [`backing`](Self::backing) says which.
/// Values bigger than a thread's stack are made without building a `T`:
/// [`create_zeroed`](Self::create_zeroed),
/// [`create_in_place`](Self::create_in_place) and their variants.
///
/// # Lifetime of the name
///
/// Dropping a handle unmaps the segment but never removes its name: call
/// [`ShmCell::unlink`] when the value is no longer wanted. A handle whose
/// name was unlinked keeps working on the orphan object;
/// [`is_unlinked`](Self::is_unlinked) tells. A handle whose
/// process still holds its lock when it is dropped (a guard passed to
/// `mem::forget`) leaks its mapping on purpose, so that the kernel can still
/// mark the lock when the process dies.
pub struct ShmCell<T: ShmSafe, L: LockBackend = RobustMutex> {
    /// The lock state and the value in `seg`'s mapping ([`Segment::lock_ptr`],
    /// [`Segment::value_ptr`]), kept so that the lock path reads one
    /// pointer instead of a base and an offset. Valid while `seg` lives:
    /// a mapping never moves.
    lock_at: NonNull<L::Shared>,
    value_at: NonNull<T>,
    seg: ManuallyDrop<Segment>,
    local: L::Local,
    /// Whether a guard of *this handle* holds the lock. Written only by the
    /// thread holding the lock (set after acquiring, cleared before
    /// releasing), so plain relaxed stores suffice — no read-modify-write
    /// on the lock path. Read on drop: a forgotten guard leaves it set.
    held: AtomicBool,
    _value: PhantomData<T>,
}

// SAFETY: the handle owns a mapping and per-handle lock state (`Send` by
// the Backend bound); sending it moves access to a `T: Send` value.
unsafe impl<T: ShmSafe + Send, L: LockBackend> Send for ShmCell<T, L> {}
// SAFETY: every access to the value goes through the lock, which gives one
// thread at a time `&mut T`: like `Mutex<T>`, `Sync` needs `T: Send`.
unsafe impl<T: ShmSafe + Send, L: LockBackend> Sync for ShmCell<T, L> {}
// The other auto traits, stated rather than derived from the backend's
// private per-handle type (which would show in the docs): the handle is
// never pinned (its value lives in the mapping, not in the handle), and,
// like `std::sync::Mutex`, a panic while the lock is held is reported to
// the next locker (as an owner death) instead of being observable
// silently.
impl<T: ShmSafe, L: LockBackend> Unpin for ShmCell<T, L> {}
impl<T: ShmSafe, L: LockBackend> std::panic::UnwindSafe for ShmCell<T, L> {}
impl<T: ShmSafe, L: LockBackend> std::panic::RefUnwindSafe for ShmCell<T, L> {}

impl<T: ShmSafe, L: LockBackend> ShmCell<T, L> {
    /// The object's name.
    pub fn name(&self) -> &str {
        self.seg.name()
    }

    /// The segment's header, as validated when this handle was made.
    pub fn info(&self) -> &HeaderInfo {
        self.seg.info()
    }

    #[inline(always)]
    pub(crate) fn shared(&self) -> &L::Shared {
        // SAFETY: as in `shared_of`: `lock_at` is `seg.lock_ptr()`, and the
        // borrow of `self` keeps `seg` mapped.
        unsafe { self.lock_at.as_ref() }
    }

    #[inline(always)]
    fn shared_of<'s>(&self, seg: &'s Segment) -> &'s L::Shared {
        // SAFETY: the validated layout places an initialised `L::Shared`
        // (aligned, sized) at the lock offset, mapped while `seg` lives.
        unsafe { seg.lock_ptr().cast::<L::Shared>().as_ref() }
    }

    #[inline(always)]
    pub(crate) fn value_ptr(&self) -> *mut T {
        self.value_at.as_ptr()
    }

    /// Locks, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`LockError::OwnerDied`] (with the guard: repair, then
    /// `make_consistent`), [`LockError::NotRecoverable`],
    /// [`LockError::Deadlock`] if this thread holds it already,
    /// [`LockError::Os`].
    #[inline(always)]
    pub fn lock(&self) -> Result<ShmGuard<'_, T, L>, LockError<ShmGuard<'_, T, L>>> {
        self.acquire(Acquire::Block)
    }

    /// Locks if the lock is free now, else [`LockError::WouldBlock`]. Owner
    /// death and not-recoverable are reported exactly as by `lock`.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock), plus [`LockError::WouldBlock`].
    #[inline]
    pub fn try_lock(&self) -> Result<ShmGuard<'_, T, L>, LockError<ShmGuard<'_, T, L>>> {
        self.acquire(Acquire::Try)
    }

    /// Locks, waiting at most `timeout` on `CLOCK_MONOTONIC`.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock), plus [`LockError::TimedOut`].
    #[inline]
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ShmGuard<'_, T, L>, LockError<ShmGuard<'_, T, L>>> {
        self.acquire(Acquire::Until(Monotonic::now().after(timeout)))
    }

    /// Locks, and if the previous holder died (or panicked) mid-update,
    /// first calls `repair` on the value as it was left and declares it
    /// consistent: the one-line way to lock a cell when you know how to
    /// repair it. Returns the guard in both cases.
    ///
    /// If `repair` itself panics, the value stays suspect and the next
    /// locker is told [`LockError::OwnerDied`] again. The other errors come
    /// back without a guard (`LockError<()>`, ready for `?`).
    ///
    /// ```no_run
    /// use shmsync::{ShmCell, ShmSafe};
    ///
    /// #[derive(Clone, Copy)]
    /// #[repr(C)]
    /// struct Transfer { checking: u64, savings: u64, in_flight: u64 }
    /// // SAFETY: plain integers, repr(C), every bit pattern valid, no pointers.
    /// unsafe impl ShmSafe for Transfer {}
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let init = Transfer { checking: 1000, savings: 0, in_flight: 0 };
    /// let cell = ShmCell::<Transfer>::open_or_create("/bank", init)?;
    /// // A transfer interrupted by a crash is rolled back before we go on.
    /// let mut t = cell.lock_or_repair(|t| {
    ///     t.checking += t.in_flight;
    ///     t.in_flight = 0;
    /// })?;
    /// t.in_flight = 300;
    /// t.checking -= 300;
    /// t.savings += 300;
    /// t.in_flight = 0;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock), except `OwnerDied` (repaired).
    pub fn lock_or_repair(
        &self,
        repair: impl FnOnce(&mut T),
    ) -> Result<ShmGuard<'_, T, L>, LockError<()>> {
        match self.lock() {
            Ok(guard) => Ok(guard),
            Err(LockError::OwnerDied(mut guard)) => {
                repair(&mut guard);
                guard.make_consistent();
                Ok(guard)
            }
            Err(e) => Err(e.without_guard()),
        }
    }

    /// Whether the object this handle is attached to has lost its name:
    /// someone called [`unlink`](Self::unlink) (and may have created a new
    /// cell of the same name since, which this handle does not see). One
    /// `fstat`: the link count of the handle's own descriptor is 0.
    ///
    /// Such a handle keeps working — on an orphan that no new process will
    /// ever open. A process that must work on the cell *of that name* (for
    /// instance after its lock answered
    /// [`NotRecoverable`](LockError::NotRecoverable) and someone replaced the
    /// cell) checks this and opens the name again:
    ///
    /// ```no_run
    /// use shmsync::{LockError, ShmCell};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut cell = ShmCell::<u64>::open_or_create("/counter", 0)?;
    /// loop {
    ///     match cell.lock_or_repair(|n| *n = 0).map(|mut n| *n += 1) {
    ///         Ok(()) => break,
    ///         // Replaced by a new cell: follow the name.
    ///         Err(LockError::NotRecoverable) if cell.is_unlinked() => {
    ///             cell = ShmCell::open_or_create("/counter", 0)?;
    ///         }
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_unlinked(&self) -> bool {
        if let Some(st) = self.seg.sysv_stat() {
            // A System V segment has no name: "unlinked" is marked for
            // removal (IPC_RMID), its key free.
            return st.removed();
        }
        // `fstat` on a descriptor we own cannot fail; if it did, we know
        // nothing and say "still linked".
        sys::fd::fstat(self.seg.fd()).is_ok_and(|st| st.nlink() == 0)
    }

    /// Records whether a guard of this handle holds the lock (see `held`).
    #[inline(always)]
    pub(crate) fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }

    #[inline(always)]
    pub(crate) fn acquire(
        &self,
        how: Acquire,
    ) -> Result<ShmGuard<'_, T, L>, LockError<ShmGuard<'_, T, L>>> {
        let acquired = match L::acquire(self.shared(), &self.local, &self.seg, how) {
            Ok(acquired) => acquired,
            Err(e) => return Err(e.into_lock_error()),
        };
        // The one load the suspect word costs a clean acquire: a holder
        // that panicked (or whose owner-died error was converted for `?`)
        // wrote it before its release, which this acquire orders before us.
        let suspect = self.seg.header().suspect.load(Ordering::Relaxed);
        if acquired == Acquired::Clean && suspect == header::SUSPECT_NONE {
            return Ok(ShmGuard::new(self, 0));
        }
        // Only the guard's flags come from the cold path: a guard built on
        // both sides stays in registers (one returned from an out-of-line
        // function would go through memory on every acquire).
        match self.unclean_flags(acquired, suspect) {
            Some(flags) => Err(LockError::OwnerDied(ShmGuard::new(self, flags))),
            None => Err(LockError::NotRecoverable),
        }
    }

    /// The lock is ours, but the backend or the `suspect` word reports an
    /// interrupted update: the new guard's flags, or `None` (the lock given
    /// back) when the value is not recoverable.
    #[cold]
    #[inline(never)]
    fn unclean_flags(&self, acquired: Acquired, suspect: u32) -> Option<u8> {
        let backend_died = acquired == Acquired::OwnerDied;
        if suspect == header::SUSPECT_NOT_RECOVERABLE {
            // Never hold a not-recoverable value: give the lock back.
            // SAFETY: we hold the lock through this handle (no guard made).
            unsafe { L::release(self.shared(), &self.local, &self.seg, !backend_died) };
            return None;
        }
        Some(guard::INCONSISTENT | if backend_died { guard::BACKEND_DIED } else { 0 })
    }

    /// # Safety
    ///
    /// The calling thread holds the lock through this handle.
    #[inline(always)]
    pub(crate) unsafe fn release(&self, consistent: bool) {
        if self.has_snapshots() {
            // SAFETY: forwarded from the caller.
            unsafe { self.publish_snapshot(consistent) };
        }
        // Cleared before the release: after it, another thread of this
        // process may take the lock through this handle and set it again.
        self.set_held(false);
        crate::steps::step("unlock:begin");
        // SAFETY: forwarded from the caller.
        unsafe { L::release(self.shared(), &self.local, &self.seg, consistent) };
        crate::steps::step("unlock:released");
    }

    /// Whether the header's `suspect` word is set: the value may be
    /// half-updated although the lock was released (a file cell's lock was
    /// held when the machine went down), so the next locker gets
    /// `OwnerDied`. Cleared by `make_consistent`.
    #[inline]
    pub(super) fn suspect(&self) -> bool {
        self.seg.header().suspect.load(Ordering::Acquire) != 0
    }

    /// # Safety
    ///
    /// The calling thread holds the lock, acquired with owner death.
    pub(crate) unsafe fn make_consistent_raw(&self, backend_died: bool) {
        crate::steps::step("consistent:begin");
        if backend_died {
            // SAFETY: forwarded from the caller.
            unsafe { L::make_consistent(self.shared(), &self.local, &self.seg) }
        }
        self.seg
            .header()
            .suspect
            .store(header::SUSPECT_NONE, Ordering::Relaxed);
        crate::steps::step("consistent:done");
    }

    /// Marks the value suspect, makes the lock consistent (if the backend
    /// reported an owner death: `backend_died`) and releases it: the next
    /// locker gets `OwnerDied`.
    ///
    /// # Safety
    ///
    /// The calling thread holds the lock through this handle (acquired
    /// with owner death if `backend_died`), and releases it only here.
    pub(crate) unsafe fn leave_suspect(&self, backend_died: bool) {
        // Written before the release, which orders it before the next
        // acquire (a death in between is an owner death anyway).
        self.seg
            .header()
            .suspect
            .store(header::SUSPECT, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe {
            if backend_died {
                L::make_consistent(self.shared(), &self.local, &self.seg);
            }
            self.release(true);
        }
    }

    /// Releases an owner-died lock left unrepaired on purpose: not
    /// recoverable, for every process.
    ///
    /// # Safety
    ///
    /// As [`leave_suspect`](Self::leave_suspect).
    pub(crate) unsafe fn leave_not_recoverable(&self, backend_died: bool) {
        self.seg
            .header()
            .suspect
            .store(header::SUSPECT_NOT_RECOVERABLE, Ordering::Relaxed);
        // SAFETY: forwarded from the caller. A backend that reported the
        // death marks itself not recoverable too.
        unsafe { self.release(!backend_died) };
    }
}

impl<T: ShmSafe, L: LockBackend> Drop for ShmCell<T, L> {
    fn drop(&mut self) {
        // SAFETY: `seg` is taken exactly once, here, and not used after.
        let seg = unsafe { ManuallyDrop::take(&mut self.seg) };
        if self.held.load(Ordering::Relaxed) {
            L::keep_alive_while_held(&self.local);
        }
        if L::KEEP_MAPPING_WHILE_HELD && self.held.load(Ordering::Relaxed) {
            // A guard of this handle was forgotten and still holds the lock:
            // unmapping would let the lock's memory vanish under the
            // kernel's robust list. Keep the mapping (and fd): leak them.
            seg.leak();
        } else {
            L::detach(self.shared_of(&seg), &self.local, &seg);
        }
    }
}

impl<T: ShmSafe, L: LockBackend> std::fmt::Debug for ShmCell<T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmCell")
            .field("name", &self.name())
            .field("lock", &L::KIND)
            .finish()
    }
}
