//! `NamedSemaphore`: a named POSIX counting semaphore (`sem_open` family),
//! usable on its own, and the lock backend `ShmCell<T, NamedSemaphore>`
//! that — unlike a raw semaphore — recovers from a holder that dies.
//!
//! The backend's design (the holder record is the lock; the semaphore only
//! carries wake-ups) is documented on [`NamedSemaphore`], its shared state
//! on [`SemLockState`].

use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::sealed::Backend;
use super::{Acquire, Acquired, LockBackend};
use crate::cell::ShmCell;
use crate::error::{Error, RawLockError};
use crate::segment::{name, LockKind, Segment, DEFAULT_MODE};
use crate::shm_safe::ShmSafe;
use crate::sys;
use crate::sys::sem::SemHandle;
use crate::sys::time::Monotonic;

/// The longest semaphore name after the leading `/`: glibc stores `/NAME`
/// as the file `sem.NAME`, and a file name holds at most 255 bytes.
pub const MAX_SEM_NAME: usize = 251;

/// Longest sleep of a waiter between two checks of the holder's liveness:
/// the bound on how long a holder's death goes unnoticed by a sleeper.
pub(crate) const SLICE: Duration = Duration::from_millis(20);

/// How often a contended acquire re-reads the holder word before it reads
/// `/proc` and sleeps (short critical sections end within it).
const SPINS: u32 = 100;

// ---------------------------------------------------------------------
// The standalone primitive
// ---------------------------------------------------------------------

/// Why a semaphore operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SemaphoreError {
    /// [`NamedSemaphore::try_wait`]: the value is zero.
    #[error("the semaphore's value is zero")]
    WouldBlock,
    /// [`NamedSemaphore::wait_timeout`]: the deadline passed with the value
    /// still zero.
    #[error("timed out waiting for the semaphore")]
    TimedOut,
    /// [`NamedSemaphore::post`]: the value would exceed `SEM_VALUE_MAX`.
    #[error("the semaphore's value would exceed SEM_VALUE_MAX")]
    Overflow,
    /// Any other error the operating system reported.
    #[error("{op} failed")]
    Io {
        /// The call that failed.
        op: &'static str,
        /// The error the operating system reported.
        #[source]
        source: io::Error,
    },
}

/// Options of a new [`NamedSemaphore`]: they exist only on the creating
/// path.
#[derive(Clone, Copy, Debug)]
pub struct SemaphoreOptions {
    mode: u32,
    unlink_on_drop: bool,
}

impl Default for SemaphoreOptions {
    fn default() -> Self {
        SemaphoreOptions {
            mode: DEFAULT_MODE,
            unlink_on_drop: false,
        }
    }
}

impl SemaphoreOptions {
    /// Mode `0600`, not unlinked on drop.
    pub fn new() -> Self {
        Self::default()
    }

    /// Permission bits of the new semaphore, set exactly (after the create,
    /// so the umask does not decide). Default `0o600`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Whether the handle that *created* the semaphore removes its name when
    /// dropped. Default `false`. Fixed when the handle is built; a handle
    /// that only opened an existing semaphore never unlinks.
    pub fn unlink_on_drop(mut self, yes: bool) -> Self {
        self.unlink_on_drop = yes;
        self
    }
}

/// A named POSIX semaphore (`sem_open`), shared by every process that opens
/// the same name; glibc keeps it as the file `/dev/shm/sem.NAME`. Also a
/// lock backend of [`ShmCell`](crate::ShmCell) (see below).
///
/// # Standalone
///
/// The handle closes (`sem_close`) on drop; it removes the name only if it
/// created it with [`SemaphoreOptions::unlink_on_drop`]. Otherwise call
/// [`NamedSemaphore::unlink`]. Names are checked by the crate: a leading
/// `/`, then 1 to [`MAX_SEM_NAME`] (251) bytes — glibc stores `/NAME` as
/// the file `sem.NAME` — with no further `/` and no NUL.
///
/// Like any POSIX semaphore it is a counter, not a lock with an owner: a
/// process that dies after `wait` does not give its unit back. For a lock
/// that survives its holder's death use `ShmCell<T, NamedSemaphore>`.
///
/// # As the lock of a `ShmCell`: the holder record is the lock
///
/// A semaphore token cannot be made crash-safe by a record written after
/// `sem_wait`: a holder killed between the two loses the token, and no
/// record says who had it. So `ShmCell<T, NamedSemaphore>` does not lock
/// with the semaphore at all:
///
/// * **Acquire** is a compare-and-swap of a holder word in the segment from
///   0 to this process's identity (pid + process start time, against pid
///   reuse). A holder that is dead — its `/proc/PID/stat` is gone, it is a
///   zombie (killed, not yet reaped), or its pid now names a process with
///   another start time — is taken over with a compare-and-swap from the
///   dead identity, so of several waiters exactly one wins; it gets
///   [`LockError::OwnerDied`](crate::LockError::OwnerDied). If `/proc`
///   cannot be read (`hidepid`), a holder counts as alive.
/// * **Every acquire path that finds the lock taken** — `try_lock`
///   included — checks the holder's liveness before answering
///   `WouldBlock` or `TimedOut`. That check reads `/proc/PID/stat`
///   (about 10 µs).
/// * **The semaphore `sem.NAME` is only where waiters sleep.** A waiter
///   counts itself in the segment, sleeps with
///   `sem_clockwait(CLOCK_MONOTONIC)` for at most 20 ms, and checks the
///   holder again; a holder killed while others sleep is noticed within one
///   such slice. A releaser posts only when someone waits. The semaphore is
///   created (mode: the segment's) before the segment is published Ready,
///   never by `open`, and is removed by
///   [`ShmCell::unlink`](crate::ShmCell::unlink) — whatever `L` that call
///   names, since it reads the lock kind from the header.
/// * **Recovery** is the robust mutex's: an owner-died guard dropped
///   without `make_consistent` leaves the lock
///   [`NotRecoverable`](crate::LockError::NotRecoverable) for every
///   process; a taker that dies before `make_consistent` hands `OwnerDied`
///   on to the next.
/// * Locking again from the thread that holds the lock is
///   [`Deadlock`](crate::LockError::Deadlock); another thread of the same
///   process waits.
///
/// Limits, by design:
///
/// * A foreign program doing a bare `sem_wait` on `sem.NAME` is **not**
///   excluded by the cell's lock — it only takes a wake-up token. Use the
///   standalone `NamedSemaphore` to interoperate with such programs.
/// * The holder is a *process*: a thread that exits holding the lock while
///   its process lives on, or a process that `exec`s while holding it (same
///   pid, same start time), is not seen as dead (the robust mutex detects
///   both).
/// * Pids are compared, so every process using a cell must be in the same
///   pid namespace: a handle refuses a segment created in another one
///   ([`Error::Unsupported`]).
/// * Cell names are limited to 251 bytes after the `/` (checked before
///   anything is created).
/// * A waiter killed while asleep leaves the waiter count one too high for
///   good: releases then post a (harmless, bounded) spare wake-up.
///
/// ```no_run
/// use std::time::Duration;
/// use shmsync::{NamedSemaphore, SemaphoreError};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sem = NamedSemaphore::open_or_create("/jobs", 0)?;
/// sem.post()?;
/// match sem.wait_timeout(Duration::from_millis(10)) {
///     Ok(()) => println!("got one"),
///     Err(SemaphoreError::TimedOut) => println!("none yet"),
///     Err(e) => return Err(e.into()),
/// }
/// NamedSemaphore::unlink("/jobs")?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NamedSemaphore {
    sem: SemHandle,
    name: String,
    unlink_on_drop: bool,
}

fn sem_error(op: &'static str, e: io::Error) -> SemaphoreError {
    match e.raw_os_error() {
        Some(libc::EOVERFLOW) => SemaphoreError::Overflow,
        _ => SemaphoreError::Io { op, source: e },
    }
}

/// The file glibc keeps the semaphore `name` in.
fn sem_path(name: &str) -> CString {
    CString::new(format!("/dev/shm/sem.{}", &name[1..])).expect("validated names hold no NUL")
}

impl NamedSemaphore {
    /// Validates a semaphore name: a leading `/`, then 1 to
    /// [`MAX_SEM_NAME`] bytes, no further `/`, no NUL, not `.` or `..`.
    fn validate(name: &str) -> Result<CString, Error> {
        name::validate(name, MAX_SEM_NAME)
    }

    /// Creates the semaphore `name` with `value` (`sem_open(O_CREAT|O_EXCL)`),
    /// mode `0600`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::AlreadyExists`],
    /// [`Error::PermissionDenied`], [`Error::Unsupported`] when `value`
    /// exceeds `SEM_VALUE_MAX`, [`Error::Io`].
    pub fn create(name: &str, value: u32) -> Result<Self, Error> {
        Self::create_with(name, value, &SemaphoreOptions::default())
    }

    /// Like [`create`](Self::create), with options. The mode is set with
    /// `chmod` on `/dev/shm/sem.NAME` right after the exclusive create
    /// (glibc gives no descriptor to `fchmod`), so the umask does not
    /// decide.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub fn create_with(name: &str, value: u32, options: &SemaphoreOptions) -> Result<Self, Error> {
        let cname = Self::validate(name)?;
        if value > i32::MAX as u32 {
            return Err(Error::Unsupported {
                what: format!("semaphore value {value} exceeds SEM_VALUE_MAX"),
            });
        }
        let sem = create_exclusive(&cname, name, value, options.mode)
            .map_err(|e| Error::from_io("sem_open", name, e))?;
        Ok(NamedSemaphore {
            sem,
            name: name.into(),
            unlink_on_drop: options.unlink_on_drop,
        })
    }

    /// Opens the existing semaphore `name` (`sem_open` without `O_CREAT`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::NotFound`],
    /// [`Error::PermissionDenied`], [`Error::Io`].
    pub fn open(name: &str) -> Result<Self, Error> {
        let cname = Self::validate(name)?;
        let sem =
            sys::sem::sem_open_existing(&cname).map_err(|e| Error::from_io("sem_open", name, e))?;
        Ok(NamedSemaphore {
            sem,
            name: name.into(),
            unlink_on_drop: false,
        })
    }

    /// Opens `name` if it exists, else creates it with `value` and mode
    /// `0600`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open) and [`create`](Self::create), except
    /// `NotFound` and `AlreadyExists`.
    pub fn open_or_create(name: &str, value: u32) -> Result<Self, Error> {
        Self::open_or_create_with(name, value, &SemaphoreOptions::default())
    }

    /// Like [`open_or_create`](Self::open_or_create), with options used if
    /// it creates (`unlink_on_drop` applies only then).
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    pub fn open_or_create_with(
        name: &str,
        value: u32,
        options: &SemaphoreOptions,
    ) -> Result<Self, Error> {
        // Exclusive create, else open: this way we know whether we created
        // it (and so must set its mode). A name removed between the two is
        // tried again.
        let mut last = None;
        for _ in 0..64 {
            match Self::create_with(name, value, options) {
                Err(Error::AlreadyExists { .. }) => {}
                other => return other,
            }
            match Self::open(name) {
                Err(e @ Error::NotFound { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(Error::NotFound { name: name.into() }))
    }

    /// Removes the name `name` (`sem_unlink`); processes that have it open
    /// keep using it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::NotFound`],
    /// [`Error::PermissionDenied`], [`Error::Io`].
    pub fn unlink(name: &str) -> Result<(), Error> {
        let cname = Self::validate(name)?;
        sys::sem::sem_unlink(&cname).map_err(|e| Error::from_io("sem_unlink", name, e))
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds one to the value, waking one waiter (`sem_post`).
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::Overflow`] at `SEM_VALUE_MAX`; [`SemaphoreError::Io`].
    pub fn post(&self) -> Result<(), SemaphoreError> {
        sys::sem::sem_post(&self.sem).map_err(|e| sem_error("sem_post", e))
    }

    /// Takes one from the value, waiting as long as it is zero (`sem_wait`,
    /// resumed after signals).
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::Io`].
    pub fn wait(&self) -> Result<(), SemaphoreError> {
        sys::sem::sem_wait(&self.sem).map_err(|e| sem_error("sem_wait", e))
    }

    /// Takes one from the value if it is positive now (`sem_trywait`).
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::WouldBlock`] when the value is zero;
    /// [`SemaphoreError::Io`].
    pub fn try_wait(&self) -> Result<(), SemaphoreError> {
        match sys::sem::sem_trywait(&self.sem) {
            Ok(true) => Ok(()),
            Ok(false) => Err(SemaphoreError::WouldBlock),
            Err(e) => Err(sem_error("sem_trywait", e)),
        }
    }

    /// Takes one from the value, waiting at most `timeout`
    /// (`sem_clockwait(CLOCK_MONOTONIC)`). A zero timeout takes a unit if
    /// one is there and does not wait; `Duration::MAX` waits as long as it
    /// takes. Signals do not end the wait early nor extend it: it resumes
    /// with the original deadline.
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::TimedOut`]; [`SemaphoreError::Io`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), SemaphoreError> {
        let deadline = Monotonic::now().after(timeout).to_timespec();
        match sys::sem::sem_clockwait_monotonic(&self.sem, &deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(SemaphoreError::TimedOut),
            Err(e) => Err(sem_error("sem_clockwait", e)),
        }
    }

    /// The current value (`sem_getvalue`): a snapshot, stale as soon as it
    /// is returned.
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::Io`].
    pub fn value(&self) -> Result<u32, SemaphoreError> {
        sys::sem::sem_getvalue(&self.sem).map_err(|e| sem_error("sem_getvalue", e))
    }
}

impl Drop for NamedSemaphore {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            if let Ok(c) = Self::validate(&self.name) {
                let _ = sys::sem::sem_unlink(&c);
            }
        }
        // `self.sem` closes itself.
    }
}

/// `sem_open(O_CREAT|O_EXCL)` with `value`, then the exact `mode`. On a
/// failure after the create, the new name is removed again.
fn create_exclusive(cname: &CString, name: &str, value: u32, mode: u32) -> io::Result<SemHandle> {
    let sem = sys::sem::sem_create_excl(cname, mode, value)?;
    if let Err(e) = sys::sem::sem_chmod(&sem_path(name), mode) {
        let _ = sys::sem::sem_unlink(cname);
        return Err(e);
    }
    Ok(sem)
}

// ---------------------------------------------------------------------
// Holder identity
// ---------------------------------------------------------------------

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
    let gen = sys::proc::fork_generation().wrapping_add(1);
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
fn own_tid() -> u32 {
    let gen = sys::proc::fork_generation().wrapping_add(1);
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

// ---------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------

const CONSISTENT: u32 = 0;
const OWNER_DIED: u32 = 1;
const NOT_RECOVERABLE: u32 = 2;

/// The semaphore backend's state in the segment. All-zero is "free and
/// consistent".
///
/// | word | values |
/// |---|---|
/// | `holder` (u64) | `0` free; else the holder's identity: pid in the low 22 bits (Linux's `PID_MAX_LIMIT` is 2^22), process start time (clock ticks since boot, `/proc/PID/stat` field 22) above |
/// | `state` (u32) | `0` consistent; `1` owner died (the holder took the lock from a dead one and has not made it consistent); `2` not recoverable (final) |
/// | `waiters` (u32) | threads sleeping on the semaphore |
/// | `holder_tid` (u32) | thread id of the holder (for `Deadlock`), `0` while free or not yet written |
///
/// Only the holder writes `state` and `holder_tid`. `holder` moves
/// `0 → me` (acquire), `dead → me` (take-over), `me → 0` (release).
/// The releaser's SeqCst store of `holder` followed by a SeqCst load of
/// `waiters`, against the waiter's SeqCst increment of `waiters` followed
/// by a SeqCst load of `holder`, guarantees that a release is never missed
/// by a waiter about to sleep. A dead holder's writes are all visible to
/// whoever finds it dead: its exit went through the kernel.
#[repr(C, align(8))]
#[derive(Debug)]
pub struct SemLockState {
    holder: AtomicU64,
    state: AtomicU32,
    waiters: AtomicU32,
    holder_tid: AtomicU32,
    _reserved: u32,
}

/// Where [`SemLockState`]'s words lie, for the inspector
/// ([`segment::inspect`](crate::segment::inspect)), which reads them with
/// `pread` and never through a mapping.
pub(crate) mod layout {
    use super::SemLockState;

    /// Offset of the `holder` identity word (u64).
    pub(crate) const HOLDER: usize = std::mem::offset_of!(SemLockState, holder);
    /// Offset of the `state` word (u32).
    pub(crate) const STATE: usize = std::mem::offset_of!(SemLockState, state);
    /// Offset of the `waiters` word (u32).
    pub(crate) const WAITERS: usize = std::mem::offset_of!(SemLockState, waiters);
    /// Offset of the `holder_tid` word (u32).
    pub(crate) const HOLDER_TID: usize = std::mem::offset_of!(SemLockState, holder_tid);
    /// Bytes the inspector reads.
    pub(crate) const SIZE: usize = std::mem::size_of::<SemLockState>();
    /// `state`: taken from a dead holder, not made consistent yet.
    pub(crate) const OWNER_DIED: u32 = super::OWNER_DIED;
    /// `state`: not recoverable.
    pub(crate) const NOT_RECOVERABLE: u32 = super::NOT_RECOVERABLE;
}

/// The per-handle state: the open semaphore waiters sleep on.
#[derive(Debug)]
pub struct SemLocal {
    sem: SemHandle,
}

impl SemLockState {
    /// The lock is ours (holder word set): finish according to `state`.
    #[inline]
    fn won(&self, sem: &SemHandle, took_over: bool) -> Result<Acquired, RawLockError> {
        let acquired = match self.state.load(Ordering::Acquire) {
            NOT_RECOVERABLE => {
                // Never hold a not-recoverable lock: give it back.
                self.give_back(sem, false);
                return Err(RawLockError::NotRecoverable);
            }
            OWNER_DIED => Acquired::OwnerDied,
            _ if took_over => {
                self.state.store(OWNER_DIED, Ordering::Relaxed);
                Acquired::OwnerDied
            }
            _ => Acquired::Clean,
        };
        self.holder_tid.store(own_tid(), Ordering::Relaxed);
        Ok(acquired)
    }

    /// Clears the holder word and wakes a sleeper if there is one (all of
    /// them when the lock just became not recoverable).
    #[inline]
    fn give_back(&self, sem: &SemHandle, all: bool) {
        self.holder_tid.store(0, Ordering::Relaxed);
        // Only our own record is cleared: if another process took the lock
        // over (it judged us dead), its lock is not ours to free.
        // SeqCst exchange, then SeqCst load of `waiters`: paired with the
        // waiter's SeqCst increment and re-load of `holder`, at least one
        // of the two sees the other (no lost wake-up).
        let me = own_identity();
        if self
            .holder
            .compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let waiters = self.waiters.load(Ordering::SeqCst);
        if waiters > 0 {
            wake(sem, if all { waiters.min(1024) } else { 1 });
        }
    }

    #[cold]
    fn acquire_slow(
        &self,
        local: &SemLocal,
        me: u64,
        how: Acquire,
    ) -> Result<Acquired, RawLockError> {
        let mut spins = 0;
        loop {
            if self.state.load(Ordering::Acquire) == NOT_RECOVERABLE {
                return Err(RawLockError::NotRecoverable);
            }
            let cur = self.holder.load(Ordering::Relaxed);
            if cur == 0 {
                if self
                    .holder
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return self.won(&local.sem, false);
                }
                continue;
            }
            if cur == me {
                if self.holder_tid.load(Ordering::Relaxed) == own_tid() {
                    return Err(RawLockError::Deadlock);
                }
                // Another thread of this process: alive by definition.
            } else {
                if spins < SPINS && !matches!(how, Acquire::Try) {
                    spins += 1;
                    std::hint::spin_loop();
                    continue;
                }
                if !holder_alive(cur) {
                    if self
                        .holder
                        .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return self.won(&local.sem, true);
                    }
                    continue;
                }
            }
            // Taken by a live holder.
            let slice_end = match how {
                Acquire::Try => return Err(RawLockError::WouldBlock),
                Acquire::Until(deadline) => {
                    if Monotonic::now() >= deadline {
                        return Err(RawLockError::TimedOut);
                    }
                    deadline.min(Monotonic::now().after(SLICE))
                }
                Acquire::Block => Monotonic::now().after(SLICE),
            };
            self.sleep(&local.sem, slice_end)?;
        }
    }

    /// Sleeps on the semaphore until a post or `until`, unless the lock was
    /// released after we announced ourselves.
    fn sleep(&self, sem: &SemHandle, until: Monotonic) -> Result<(), RawLockError> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let result = if self.holder.load(Ordering::SeqCst) == 0
            || self.state.load(Ordering::Acquire) == NOT_RECOVERABLE
        {
            Ok(())
        } else {
            sys::sem::sem_clockwait_monotonic(sem, &until.to_timespec()).map(drop)
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result.map_err(RawLockError::Os)
    }
}

/// Posts `n` wake-ups, but only if no token is pending already (a token
/// left by a waiter that did not sleep after all would otherwise pile up).
fn wake(sem: &SemHandle, n: u32) {
    let pending = sys::sem::sem_getvalue(sem).unwrap_or(0);
    for _ in pending..n {
        let _ = sys::sem::sem_post(sem);
    }
}

/// Removes the semaphore of the cell `name` (`sem_unlink`); an absent one
/// is fine.
pub(crate) fn unlink_cell_semaphore(name: &str) -> Result<(), Error> {
    let cname = NamedSemaphore::validate(name)?;
    match sys::sem::sem_unlink(&cname) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(Error::from_io("sem_unlink", name, e)),
    }
}

#[allow(private_interfaces)] // sealed trait, see lock/mod.rs
impl Backend for NamedSemaphore {
    const KIND: LockKind = LockKind::NamedSemaphore;
    // The holder record names the process, not a mapping: unmapping a
    // forgotten guard's view changes nothing for other processes.
    const KEEP_MAPPING_WHILE_HELD: bool = false;
    const MAX_NAME: usize = MAX_SEM_NAME;
    type Shared = SemLockState;
    type Local = SemLocal;

    unsafe fn init_shared(_p: NonNull<SemLockState>, seg: &Segment) -> io::Result<()> {
        // The zeroed state is "free, consistent, no waiters". What remains
        // is the semaphore, which must exist before the segment is Ready.
        let name = seg.name();
        let cname = NamedSemaphore::validate(name)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        // The segment was created exclusively (or taken over with nobody
        // attached): a semaphore of that name is a stale leftover.
        match sys::sem::sem_unlink(&cname) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
        let mode = sys::fd::fstat(seg.fd())?.st_mode & 0o777;
        // Created and closed: each handle opens its own in `attach`.
        create_exclusive(&cname, name, 0, mode).map(drop)
    }

    fn attach(seg: &Segment) -> Result<SemLocal, Error> {
        let ours = sys::proc::pid_namespace();
        let theirs = seg.info().pid_namespace;
        if ours != 0 && theirs != 0 && ours != theirs {
            return Err(Error::Unsupported {
                what: "a semaphore-locked cell made in another pid namespace \
                       (holder pids would not be comparable)"
                    .into(),
            });
        }
        sys::proc::register_fork_handler();
        let name = seg.name();
        let cname = NamedSemaphore::validate(name)?;
        // Never O_CREAT: the header (checked already) says the creator made
        // the semaphore before publishing Ready.
        let sem = sys::sem::sem_open_existing(&cname).map_err(|e| match e.raw_os_error() {
            // The segment exists and is Ready, so its semaphore was made:
            // someone removed it. That is damage, not a missing cell.
            Some(libc::ENOENT) => Error::Corrupted {
                what: format!("the cell's semaphore sem.{} is missing", &name[1..]),
            },
            _ => Error::from_io("sem_open", name, e),
        })?;
        Ok(SemLocal { sem })
    }

    #[inline]
    fn acquire(
        shared: &SemLockState,
        local: &SemLocal,
        _: &Segment,
        how: Acquire,
    ) -> Result<Acquired, RawLockError> {
        let me = own_identity();
        if shared
            .holder
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return shared.won(&local.sem, false);
        }
        shared.acquire_slow(local, me, how)
    }

    #[inline]
    unsafe fn release(shared: &SemLockState, local: &SemLocal, _: &Segment, consistent: bool) {
        let nr = !consistent;
        if nr {
            // An owner death nobody repaired: the value cannot be trusted
            // again, by anyone.
            shared.state.store(NOT_RECOVERABLE, Ordering::Relaxed);
        }
        shared.give_back(&local.sem, nr);
    }

    unsafe fn make_consistent(shared: &SemLockState, _: &SemLocal, _: &Segment) {
        shared.state.store(CONSISTENT, Ordering::Relaxed);
    }
}

impl LockBackend for NamedSemaphore {}

/// Diagnostics of a semaphore-locked cell.
impl<T: ShmSafe> ShmCell<T, NamedSemaphore> {
    /// The pid of the process holding the lock now, if any (a snapshot,
    /// read without locking; the holder may be dead and not yet taken
    /// over).
    pub fn holder_pid(&self) -> Option<u32> {
        match self.shared().holder.load(Ordering::Relaxed) {
            0 => None,
            word => Some(decode_identity(word).0),
        }
    }

    /// How many threads sleep on the cell's semaphore now (a snapshot).
    pub fn sleeping_waiters(&self) -> u32 {
        self.shared().waiters.load(Ordering::Relaxed)
    }
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

    #[test]
    fn state_is_24_bytes_aligned_8() {
        assert_eq!(std::mem::size_of::<SemLockState>(), 24);
        assert_eq!(std::mem::align_of::<SemLockState>(), 8);
    }
}
