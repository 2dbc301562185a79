//! `RobustMutex`: a process-shared, robust, error-checking
//! `pthread_mutex_t` living in shared memory.
//!
//! # Lock word (glibc)
//!
//! The first 32-bit word of a robust mutex is its futex: `0` when free, else
//! the owner's thread id in the low 30 bits, with `FUTEX_WAITERS`
//! (bit 31) and `FUTEX_OWNER_DIED` (bit 30). When a thread dies (or
//! `exec`s) holding it, the kernel walks that thread's robust list, sets
//! `FUTEX_OWNER_DIED` and wakes a waiter, whose lock call then returns
//! `EOWNERDEAD`. Unlocking without `pthread_mutex_consistent` makes the
//! mutex permanently `ENOTRECOVERABLE`.
//!
//! The third word, `__owner`, holds the owner's tid while it is held
//! normally, glibc's `PTHREAD_MUTEX_INCONSISTENT` (`INT_MAX`) while a locker
//! that got `EOWNERDEAD` has not called `pthread_mutex_consistent` yet, and
//! `PTHREAD_MUTEX_NOTRECOVERABLE` (`INT_MAX - 1`) for good once such a
//! locker unlocked (glibc 2.36 `nptl/pthreadP.h`,
//! `nptl/pthread_mutex_unlock.c`). The kernel clears the tid when it marks
//! `FUTEX_OWNER_DIED`, so after an owner death the dead thread's id is only
//! left in `__owner`. The constants are in [`word`]; the inspector
//! ([`inspect`](crate::inspect)) reads both words with
//! `pread`, never through a mapping and never by taking the lock.
//!
//! # Traps handled here
//!
//! * One errno mapping ([`map_acquire`]) serves `lock`, `try_lock` and the
//!   timed lock: a path that forgot `EOWNERDEAD` would leave its caller
//!   holding a lock with no guard.
//! * `try_lock` is `pthread_mutex_clocklock` with a deadline that has
//!   passed (`tv_sec = -1`, in `sys::pthread`), never
//!   `pthread_mutex_trylock`: glibc 2.36's trylock on a not-recoverable
//!   robust mutex leaves the caller's tid in the lock word, wedging it,
//!   and no check before or repair after closes that for a process killed
//!   in between (`RobustMutex::try_now`). Every try reads `__owner` first
//!   and answers not recoverable without calling glibc.
//! * Timed locks use `CLOCK_MONOTONIC`.
//! * `lock` never goes straight into `pthread_mutex_lock`, which sleeps
//!   (`FUTEX_WAITERS` + `FUTEX_WAIT`) as soon as it finds the word held, and
//!   so makes the holder's next unlock a `FUTEX_WAKE` system call. It reads
//!   the word first: free, it *tries* (the expired-deadline clocklock
//!   above: never sleeps, never sets `FUTEX_WAITERS`); held, or lost the
//!   race, it spins a bounded, adaptive while ([`spin`]: reads only, tries
//!   again whenever the word reads free or `FUTEX_OWNER_DIED`, backs off
//!   when the CPUs are oversubscribed), and only a spin that ran out of
//!   budget sleeps in glibc. glibc alone takes the lock and
//!   reports owner death, on every path. Measured (`perf stat -e
//!   syscalls:sys_enter_futex` around `cargo bench --bench locks --
//!   --rounds 1 "contended/ShmCell<RobustMutex>::lock [in]"`): 135 000
//!   futex calls for 4 million contended locks before, 842 after. A thread
//!   that re-locks a mutex it holds spins its budget (≤ 20 µs) before
//!   `EDEADLK`.
//! * Lockers asleep in the kernel when the mutex becomes not recoverable
//!   are all woken to be told so: glibc 2.36 wakes one, which gives the
//!   word back without waking the next (`wake_stranded`, and the test
//!   `not_recoverable_wakes_every_sleeper` in `tests/spin_adversaries.rs`).
//!   A wake-up lost anyway (a process killed between its not-recoverable
//!   answer or unrepaired unlock and that wake) costs at most a sleep
//!   slice: sleepers sleep in `pthread_mutex_clocklock` slices of 50 ms and
//!   read `__owner` between them (`sleep_in_slices`, and the test
//!   `sleepers_whose_wake_up_is_lost_still_learn_not_recoverable` in
//!   `tests/backend_robust_mutex.rs`).
//! * The kernel recovers at most 2048 robust locks per dying thread.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub(crate) mod backend;
pub(crate) mod inspect;
pub(crate) mod spin;
#[cfg(test)]
mod tests;

use super::{Acquire, Acquired};
use crate::error::{LockError, RawLockError};
use crate::sys;
use crate::sys::errno;
use crate::sys::pthread::RawMutex;
use crate::sys::time::Monotonic;

/// The longest sleep in glibc between two checks of `__owner` by a
/// sleeping locker ([`RobustMutex::sleep_in_slices`]): how late at worst a
/// sleeper whose wake-up was lost learns that the mutex is not
/// recoverable.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// What glibc keeps in a robust `pthread_mutex_t` (see the module docs).
pub(crate) mod word {
    /// Offset of `__lock`, the futex word.
    pub(crate) const LOCK_OFFSET: usize = 0;
    /// Offset of `__owner` (after `int __lock; unsigned __count;`, on every
    /// glibc target).
    pub(crate) const OWNER_OFFSET: usize = 8;
    /// `FUTEX_TID_MASK`: the owner's tid in `__lock`.
    pub(crate) const TID_MASK: u32 = 0x3fff_ffff;
    /// `FUTEX_OWNER_DIED`: set by the kernel when the owner died.
    pub(crate) const OWNER_DIED: u32 = 0x4000_0000;
    /// `PTHREAD_MUTEX_INCONSISTENT` in `__owner`: acquired with
    /// `EOWNERDEAD`, not made consistent yet.
    pub(crate) const INCONSISTENT: u32 = i32::MAX as u32;
    /// `PTHREAD_MUTEX_NOTRECOVERABLE` in `__owner`.
    pub(crate) const NOT_RECOVERABLE: u32 = i32::MAX as u32 - 1;
}

/// A process-shared robust mutex (`PTHREAD_PROCESS_SHARED`,
/// `PTHREAD_MUTEX_ROBUST`, `PTHREAD_MUTEX_ERRORCHECK`) that lives in shared
/// memory.
///
/// It is the default lock of [`ShmCell`](crate::ShmCell). On its own, it
/// is for structures of your own in a mapping you manage: initialise it in
/// place once with [`RobustMutex::init`], then every process that maps the
/// memory may lock it through a `&RobustMutex`.
///
/// # Pid namespaces
///
/// The futex word holds the holder's thread id as *its* pid namespace
/// numbers it, so processes of different pid namespaces (containers
/// sharing `/dev/shm`) must never share one: their threads can have the
/// same id (`Deadlock` answers, two holders after a waiter's death). A
/// `ShmCell<T, RobustMutex>` refuses such sharing at `open`
/// ([`Error::ForeignPidNamespace`](crate::Error::ForeignPidNamespace));
/// in a mapping of your own, keeping to one pid namespace is yours to
/// ensure (or use the semaphore or `flock` backend).
///
/// # Invariants
///
/// * It is only used after `init` succeeded on its address, and never moved
///   or copied afterwards (the kernel's robust list points at it).
/// * The memory stays mapped while any thread holds it; a guard borrows it.
#[repr(transparent)]
pub struct RobustMutex {
    raw: UnsafeCell<RawMutex>,
}

// SAFETY: a process-shared pthread mutex is designed to be used from any
// thread of any process through a shared address.
unsafe impl Sync for RobustMutex {}
// SAFETY: as above; the value has no thread affinity while unlocked.
unsafe impl Send for RobustMutex {}

/// The one errno mapping of every acquire path.
#[inline(always)]
fn map_acquire(ret: i32, how: Acquire) -> Result<Acquired, RawLockError> {
    match ret {
        0 => Ok(Acquired::Clean),
        errno::EOWNERDEAD => Ok(Acquired::OwnerDied),
        errno::ENOTRECOVERABLE => Err(RawLockError::NotRecoverable),
        errno::ETIMEDOUT | errno::EBUSY => Err(match how {
            Acquire::Try => RawLockError::WouldBlock,
            _ => RawLockError::TimedOut,
        }),
        errno::EDEADLK => Err(RawLockError::Deadlock),
        e => Err(RawLockError::Os(io::Error::from_raw_os_error(e))),
    }
}

impl RobustMutex {
    /// Initialises a mutex in place (`pthread_mutex_init` with the
    /// process-shared, robust and error-checking attributes).
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for writes, aligned for `RobustMutex`, inside
    /// memory that outlives every use of the mutex, and no thread of any
    /// process may be using a mutex at that address.
    ///
    /// # Errors
    ///
    /// The error `pthread_mutex_init` reports.
    pub unsafe fn init(ptr: NonNull<RobustMutex>) -> io::Result<()> {
        // SAFETY: forwarded from the caller; repr(transparent) makes the
        // pointer a pointer to the pthread_mutex_t.
        unsafe { sys::pthread::mutex_init_robust_shared(ptr.as_ptr().cast()) }
    }

    #[inline(always)]
    fn raw(&self) -> *mut RawMutex {
        self.raw.get()
    }

    /// Acquires with the given patience; the one path behind every public
    /// lock method.
    #[inline(always)]
    pub(crate) fn acquire(&self, how: Acquire) -> Result<Acquired, RawLockError> {
        // `self` is an initialised mutex (type invariant) borrowed for the
        // call, so its memory stays mapped: that is the SAFETY argument of
        // all three calls below.
        let ret = match how {
            Acquire::Block => {
                // Never straight into `pthread_mutex_lock`, which sleeps at
                // once on a held word: a word that reads free is tried
                // without blocking (a try that loses the race to another
                // locker must not sleep either), a held one is spun on,
                // trying whenever it reads free (`spin_then_try`); only a
                // spin that ran out of budget blocks in glibc.
                let free = self.futex().load(Ordering::Relaxed) == 0;
                match free.then(|| self.try_now()) {
                    Some(ret) if ret != errno::ETIMEDOUT => ret,
                    _ => match self.spin_then_try() {
                        Some(ret) => ret,
                        None => self.sleep_in_slices(None),
                    },
                }
            }
            Acquire::Try => self.try_now(),
            Acquire::Until(deadline) => self.sleep_in_slices(Some(deadline)),
        };
        if ret == errno::ENOTRECOVERABLE {
            crate::steps::step("mutex:answered-not-recoverable");
            self.wake_stranded();
        }
        map_acquire(ret, how)
    }

    /// The sleeping acquire (`lock` past its spin, `lock_timeout`): glibc's
    /// `pthread_mutex_clocklock`, in slices of at most [`SLEEP_SLICE`] up to
    /// the deadline (none: for ever), reading `__owner` between slices.
    ///
    /// A sleeper relies on a wake-up to learn that the mutex became not
    /// recoverable, and that wake-up can be lost for good: glibc passes it
    /// on to one sleeper only, which gives the word back without waking the
    /// next; [`wake_stranded`](Self::wake_stranded) wakes the rest, but a
    /// process killed between glibc's answer and that wake (or between an
    /// unrepaired unlock and its wake) leaves them asleep — `lock` for ever,
    /// `lock_timeout` into `TimedOut`. A slice that ends finds
    /// `NOT_RECOVERABLE` in `__owner` and answers so. A held lock costs its
    /// sleepers one timer wake-up per slice; taking it over is unchanged
    /// (the unlock's `FUTEX_WAKE` ends the slice at once).
    #[cold]
    #[inline(never)]
    fn sleep_in_slices(&self, deadline: Option<Monotonic>) -> i32 {
        loop {
            let slice_end = Monotonic::now().after(SLEEP_SLICE);
            let (until, last) = match deadline {
                Some(d) if d <= slice_end => (d, true),
                _ => (slice_end, false),
            };
            // SAFETY: `self` is an initialised mutex (type invariant),
            // borrowed for the call.
            let ret = unsafe { sys::pthread::mutex_clocklock_monotonic(self.raw(), Some(until)) };
            if ret != errno::ETIMEDOUT || last {
                return ret;
            }
            if self.owner_word().load(Ordering::Relaxed) == word::NOT_RECOVERABLE {
                return errno::ENOTRECOVERABLE;
            }
        }
    }

    /// Wakes every locker asleep on the word (`FUTEX_WAKE`, all): called
    /// whenever the mutex answered or became not recoverable. glibc wakes
    /// one sleeper when an unrepaired owner-died mutex is unlocked, and
    /// that sleeper, finding it not recoverable, gives the word back with
    /// `lll_unlock`, which wakes nobody (the old word has `FUTEX_WAITERS`,
    /// bit 31, so it is negative, and glibc 2.36 wakes only if it is
    /// `> 1`): every other sleeper would sleep on, `lock` for ever and
    /// `lock_timeout` into `TimedOut`. Woken, each takes the word, finds it
    /// not recoverable, answers so, and wakes the rest again here.
    #[cold]
    #[inline(never)]
    fn wake_stranded(&self) {
        // A failed wake leaves no worse than glibc alone would; nothing to
        // report it to (this also runs from `Drop`).
        let _ = sys::futex::wake(self.futex(), u32::MAX);
    }

    /// The contended acquire: spins, trying without blocking whenever the
    /// word reads free (see [`spin::spin_then_try`]). `None`: not taken
    /// within the spin budget, block.
    #[cold]
    #[inline(never)]
    fn spin_then_try(&self) -> Option<i32> {
        spin::spin_then_try(self.futex(), || {
            let ret = self.try_now();
            (ret != errno::ETIMEDOUT).then_some(ret)
        })
    }

    /// One attempt that never sleeps and never sets `FUTEX_WAITERS`:
    /// `pthread_mutex_clocklock` with a deadline that has passed
    /// (`ETIMEDOUT` for a held lock, without entering the kernel); it
    /// reports owner death and not-recoverable as the blocking lock does.
    ///
    /// Never `pthread_mutex_trylock`: glibc 2.36's robust trylock on a
    /// not-recoverable mutex takes the word (`0` → its tid), finds
    /// `__owner == NOT_RECOVERABLE`, and answers `ENOTRECOVERABLE`
    /// *without giving the word back* (it compares the old word, `0`, with
    /// its tid), `list_op_pending` cleared and the mutex not on the robust
    /// list. Checking `__owner` first cannot keep it out (the mutex may
    /// become not recoverable between the check and glibc's
    /// compare-and-swap), and freeing the word afterwards leaves a window
    /// where a SIGKILL makes the wedge permanent: the kernel never marks a
    /// word that is on no robust list, every later `lock` sleeps for ever
    /// (`try_killed_as_the_mutex_becomes_not_recoverable` in
    /// `tests/backend_robust_mutex.rs`). The clocklock gives the word back
    /// before it clears `list_op_pending`, so a death inside it is the
    /// kernel's to repair. `__owner` is still read first: not recoverable
    /// is answered without taking the word at all.
    #[inline(always)]
    fn try_now(&self) -> i32 {
        if self.owner_word().load(Ordering::Relaxed) == word::NOT_RECOVERABLE {
            return errno::ENOTRECOVERABLE;
        }
        // SAFETY: `self` is an initialised mutex (type invariant), borrowed
        // for the call.
        let ret = unsafe { sys::pthread::mutex_clocklock_monotonic(self.raw(), None) };
        if ret == errno::ENOTRECOVERABLE {
            crate::steps::step("mutex:try-not-recoverable");
        }
        ret
    }

    /// `__owner` (see [`word`]), read as a 32-bit atomic.
    #[inline(always)]
    fn owner_word(&self) -> &AtomicU32 {
        // SAFETY: `__owner` is the aligned 32-bit int at `OWNER_OFFSET`
        // inside the mutex, borrowed for the reference's life; glibc writes
        // it with plain stores while holding the word, so a racy read may
        // be stale, never torn, and only the value `NOT_RECOVERABLE`, which
        // is final, is acted on.
        unsafe { &*(self.raw().cast::<u8>().add(word::OWNER_OFFSET) as *const AtomicU32) }
    }

    /// # Safety
    ///
    /// The calling thread holds the lock.
    #[inline(always)]
    pub(crate) unsafe fn release(&self) {
        // SAFETY: the caller holds the lock. Unlocking an owner-died mutex
        // that was not made consistent marks it not recoverable (POSIX).
        // The only failure, EPERM (not the owner), cannot happen through a
        // guard; it is ignored because this runs in `Drop`, which must not
        // panic.
        let _ = unsafe { sys::pthread::mutex_unlock(self.raw()) };
    }

    /// Releases an owner-died lock that was not made consistent, which
    /// makes it not recoverable for good, and wakes every sleeper to be
    /// told so ([`wake_stranded`](Self::wake_stranded)).
    ///
    /// # Safety
    ///
    /// The calling thread holds the lock.
    #[cold]
    pub(crate) unsafe fn release_unrepaired(&self) {
        // SAFETY: forwarded from the caller.
        unsafe { self.release() };
        crate::steps::step("mutex:released-unrepaired");
        self.wake_stranded();
    }

    /// # Safety
    ///
    /// The calling thread holds the lock, acquired with `EOWNERDEAD`.
    pub(crate) unsafe fn consistent(&self) {
        // SAFETY: forwarded from the caller.
        // The only failure (EINVAL: not inconsistent) cannot happen for a
        // guard that came with EOWNERDEAD.
        let _ = unsafe { sys::pthread::mutex_consistent(self.raw()) };
    }

    /// The lock word (glibc: `__lock`, the futex).
    #[inline(always)]
    fn futex(&self) -> &AtomicU32 {
        // SAFETY: the first field of glibc's pthread_mutex_t
        // (`word::LOCK_OFFSET`) is the 32-bit futex word, which every
        // locker accesses atomically; the mutex is at least 4-byte aligned
        // and borrowed for the reference's life.
        unsafe { &*(self.raw() as *const AtomicU32) }
    }

    /// The owner's thread id as recorded in the lock word (glibc: low 30
    /// bits of the first word), 0 when free. A diagnostic snapshot, read
    /// without taking the lock.
    pub fn owner_tid(&self) -> u32 {
        self.futex().load(Ordering::Relaxed) & word::TID_MASK
    }

    /// Whether the kernel marked the holder dead and nobody has locked it
    /// since (`FUTEX_OWNER_DIED` with no tid in the lock word). A diagnostic
    /// snapshot, read without taking the lock.
    pub(crate) fn owner_died_unclaimed(&self) -> bool {
        // SAFETY: as in `owner_tid`.
        let futex = unsafe { &*(self.raw() as *const AtomicU32) };
        let w = futex.load(Ordering::SeqCst);
        w & word::TID_MASK == 0 && w & word::OWNER_DIED != 0
    }

    /// Locks, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`LockError::OwnerDied`] with the guard when the previous holder
    /// died; [`LockError::NotRecoverable`]; [`LockError::Deadlock`] if this
    /// thread holds it already; [`LockError::Os`].
    #[inline]
    pub fn lock(&self) -> Result<RobustMutexGuard<'_>, LockError<RobustMutexGuard<'_>>> {
        self.guarded(Acquire::Block)
    }

    /// Locks if free now, else [`LockError::WouldBlock`].
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock), plus [`LockError::WouldBlock`].
    #[inline]
    pub fn try_lock(&self) -> Result<RobustMutexGuard<'_>, LockError<RobustMutexGuard<'_>>> {
        self.guarded(Acquire::Try)
    }

    /// Locks, waiting at most `timeout` (`CLOCK_MONOTONIC`).
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock), plus [`LockError::TimedOut`].
    #[inline]
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RobustMutexGuard<'_>, LockError<RobustMutexGuard<'_>>> {
        self.guarded(Acquire::Until(Monotonic::now().after(timeout)))
    }

    #[inline]
    fn guarded(
        &self,
        how: Acquire,
    ) -> Result<RobustMutexGuard<'_>, LockError<RobustMutexGuard<'_>>> {
        sys::fork::register_fork_handler();
        let guard = |owner_died| RobustMutexGuard {
            mutex: self,
            fork_gen: sys::fork::fork_generation(),
            inconsistent: Cell::new(owner_died),
            _not_send: PhantomData,
        };
        match self.acquire(how) {
            Ok(Acquired::Clean) => Ok(guard(false)),
            Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(guard(true))),
            Err(e) => Err(e.into_lock_error()),
        }
    }
}

/// Holds a [`RobustMutex`]; unlocks on drop.
///
/// `!Send`: POSIX wants the owning thread to unlock. Dropped in a process
/// forked while it was held, it does nothing (the lock is the parent's).
#[must_use = "the mutex is unlocked as soon as the guard is dropped"]
pub struct RobustMutexGuard<'a> {
    mutex: &'a RobustMutex,
    fork_gen: u32,
    inconsistent: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

impl RobustMutexGuard<'_> {
    /// Declares the protected state repaired after an owner death
    /// (`pthread_mutex_consistent`). A no-op on a guard acquired normally.
    pub fn make_consistent(&self) {
        if self.inconsistent.replace(false) {
            // SAFETY: we hold the lock, acquired with EOWNERDEAD.
            unsafe { self.mutex.consistent() };
        }
    }

    /// Whether this guard came from an owner death and was not yet made
    /// consistent.
    pub fn is_inconsistent(&self) -> bool {
        self.inconsistent.get()
    }
}

impl Drop for RobustMutexGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.fork_gen == sys::fork::fork_generation() {
            // SAFETY: this guard's thread holds the lock.
            unsafe {
                if self.inconsistent.get() {
                    self.mutex.release_unrepaired();
                } else {
                    self.mutex.release();
                }
            }
        }
    }
}

impl std::fmt::Debug for RobustMutexGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobustMutexGuard")
            .field("inconsistent", &self.inconsistent.get())
            .finish()
    }
}

impl crate::error::sealed::GiveUp for RobustMutexGuard<'_> {
    /// A standalone mutex has nowhere to record suspicion: dropped, which
    /// makes an unrepaired owner-died mutex not recoverable.
    fn give_up(self) {}
}
impl crate::error::LockGuard for RobustMutexGuard<'_> {}
