//! `FileLock`: whole-file `flock(2)` locks, shared or exclusive, blocking,
//! try and timed — usable on their own, and as a lock backend of
//! [`ShmCell`](crate::ShmCell) (`ShmCell::<T, FileLock>`).
//!
//!

pub(crate) mod backend;
mod inspect;
pub(crate) mod local;
mod options;

pub use options::FileLockOptions;
use options::PathSpec;

use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, LockError, RawLockError};
use crate::lock::Acquire;
use crate::sys;
use crate::sys::errno;
use crate::sys::fd_lock::FlockOp;
use crate::sys::time::Monotonic;
use local::{Begin, LocalRw, Mode, PerProcess, SwapFd};

// A handle is shared by the threads of a process; guards are not.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<FileLock>();
};

/// First pause of a timed wait after a failed `LOCK_NB` attempt.
const BACKOFF_MIN: Duration = Duration::from_micros(50);
/// Longest pause between two attempts of a timed wait: the worst extra
/// latency a timed waiter adds after a release (plus timer slack).
const BACKOFF_MAX: Duration = Duration::from_millis(1);
/// A timed wait this long is a blocking wait.
const FOREVER: Duration = Duration::from_secs(u32::MAX as u64);

/// The one errno mapping of every `flock` acquire path: `EWOULDBLOCK`
/// means *taken* — [`WouldBlock`](RawLockError::WouldBlock) for `try`,
/// [`TimedOut`](RawLockError::TimedOut) for a timed wait.
#[inline]
fn map_flock(r: io::Result<()>, how: Acquire) -> Result<(), RawLockError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(errno::EWOULDBLOCK) => Err(match how {
            Acquire::Try => RawLockError::WouldBlock,
            _ => RawLockError::TimedOut,
        }),
        Err(e) => Err(RawLockError::Os(e)),
    }
}

/// `flock(fd, op)` waiting as `how` says: `Block` is a blocking `flock`
/// (`EINTR` retried), `Try` one `LOCK_NB` attempt, `Until` `LOCK_NB`
/// attempts with backoff until the deadline. Every outcome goes through
/// [`map_flock`].
pub(crate) fn flock_acquire(
    fd: BorrowedFd<'_>,
    op: FlockOp,
    how: Acquire,
) -> Result<(), RawLockError> {
    let attempt = |nonblocking| {
        map_flock(
            sys::retry_eintr(|| sys::fd_lock::flock(fd, op, nonblocking)),
            how,
        )
    };
    let deadline = match how {
        Acquire::Block => return attempt(false),
        Acquire::Try => return attempt(true),
        Acquire::Until(deadline) => deadline,
    };
    let mut pause = BACKOFF_MIN;
    loop {
        match attempt(true) {
            Err(RawLockError::TimedOut) => {}
            other => return other,
        }
        let left = deadline.remaining();
        if left.is_zero() {
            return Err(RawLockError::TimedOut);
        }
        if left >= FOREVER {
            return map_flock(
                sys::retry_eintr(|| sys::fd_lock::flock(fd, op, false)),
                Acquire::Block,
            );
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(BACKOFF_MAX);
    }
}

/// A whole-file advisory lock (`flock(2)`), shared or exclusive, that the
/// threads of this process and other processes exclude each other with.
///
/// Build it on a path ([`open`](Self::open),
/// [`open_or_create`](Self::open_or_create), [`options`](Self::options)) or
/// on a descriptor it takes over ([`from_file`](Self::from_file),
/// [`from_fd`](Self::from_fd)). The threads of a process share one handle
/// by reference (it is `Sync`); the sections below list the pitfalls of
/// `flock` it handles.
///
/// `FileLock` is also a lock backend of [`ShmCell`](crate::ShmCell):
/// `ShmCell::<T, FileLock>` locks the segment with `flock(LOCK_EX)` and keeps
/// a *held marker* in it, so that a holder that died mid-update is reported
/// as [`LockError::OwnerDied`] exactly as with the robust mutex. The marker
/// is only consulted by `ShmCell`; a standalone `FileLock` has none.
///
/// # As a `ShmCell` backend: what differs from the robust mutex
///
/// * **Cost**: every lock and unlock is a system call (`flock`): an
///   uncontended lock + unlock costs tens of times the robust mutex's (which
///   stays in user space), about what a bare `flock` pair costs (`BENCHMARKS.md`). Its use is
///   interoperation: any program that `flock`s the object (for example
///   `flock(1)` on `/dev/shm/NAME`) is excluded by it and excludes it.
/// * **A thread that exits holding the lock** (its guard forgotten) is not
///   detected: `flock` has no per-thread robust list. The lock stays held
///   until the process exits, then the next locker gets `OwnerDied`.
/// * **A forgotten guard and a dropped handle** release the lock at once
///   (the handle's descriptor closes) and the next locker gets `OwnerDied`;
///   the robust mutex instead stays held until the process exits.
/// * **Fork without exec** (the pre-fork worker pattern): each cell handle
///   locks through an open file description of its own (never the
///   segment's descriptor), registered so that a `pthread_atfork` child
///   handler puts a placeholder under that number in every forked child. A
///   parent killed while holding the lock is therefore reported to the next
///   locker at once, even while its children live; a child that uses the
///   inherited handle locks through a new description of its own. (At most
///   1024 handles per process are tracked; a standalone `FileLock` built
///   from a descriptor is not, and there a child keeps an inherited lock
///   alive until it drops the handle, exits or `exec`s.)
/// * The same thread locking twice through one handle gets
///   [`LockError::Deadlock`]; through two handles it waits for itself (the
///   kernel has no deadlock detection for `flock`).
///
///
/// # The pitfalls of `flock`, and what this type does about each
///
/// | pitfall | handling |
/// |---|---|
/// | the lock belongs to the *open file description*, so threads sharing a handle do not exclude each other | a process-local shared/exclusive lock queues this process's threads in front of `flock` |
/// | a forked child shares the description: its `LOCK_UN` would release the parent's lock, its `LOCK_EX` would "succeed" beside the parent's | guards record the fork generation and do nothing when dropped in a child; a handle used in a child first opens a new description of the same file (`/proc/self/fd/N` or the path) and closes the inherited descriptor |
/// | an `exec`'d program inherits the descriptor and with it the lock | every descriptor is opened `O_CLOEXEC` |
/// | the file at the path is replaced (`rename`) or removed while a process waits, so two processes "hold" locks on different inodes | after locking by path, `fstat(fd)` is compared with `stat(path)` (device + inode); on a mismatch the lock is dropped, the path reopened and locked again |
/// | shared → exclusive is *not* atomic (`flock(2)`: the old lock is removed first) | there is no upgrade method; asking for an exclusive lock while the same thread holds a shared one answers [`LockError::Deadlock`] |
/// | on NFS `flock` is emulated with whole-file byte-range locks on the server (and conflicts with `fcntl` locks); on SMB/CIFS it maps to the server's byte-range locks or stays local to the client, depending on the mount | network filesystems are refused with [`Error::Unsupported`] unless [`FileLockOptions::allow_network_fs`] |
/// | `flock` has no timeout | timed variants poll with `LOCK_NB` and a bounded exponential backoff (see below) |
///
/// # Timed waits
///
/// `flock` cannot wait with a timeout. The two ways out are polling with
/// `LOCK_NB`, or a blocking `flock` interrupted by a timer signal. The
/// signal way needs a process-wide signal handler installed without
/// `SA_RESTART` (a library must not own a signal disposition; whichever
/// signal it picks may be the application's), a per-thread timer
/// (`timer_create` with `SIGEV_THREAD_ID`, `timer_settime`, `timer_delete`:
/// three more system calls per wait),
/// and it still races: a signal that lands just before the thread enters
/// `flock` is lost, so the timer must repeat anyway.
///
/// The timed variants therefore poll: one `flock(LOCK_NB)` first (a free lock
/// costs exactly what `try_lock` costs), then sleeps of 50 µs doubling up to
/// 1 ms between attempts, never past the deadline: a waiter returns about
/// half a millisecond after a release instead of microseconds, and uses
/// about 1.5 % of a core while it waits (figures in `BENCHMARKS.md`, from
/// `cargo bench --bench flock`). The signal design's timer bookkeeping
/// alone costs more than a whole `flock` lock + unlock pair, before any
/// signal is delivered. Under contention, blocking waiters are woken by
/// the kernel first, so a timed waiter can lose the race to them; it never
/// waits past its deadline. A timeout of `Duration::MAX` (or anything
/// beyond ~136 years) waits like the blocking variant.
///
///
///
/// # References
///
/// `flock(2)`, `fstatfs(2)`, `open(2)` (`O_CLOEXEC`), `proc(5)`
/// (`/proc/self/fd`).
///
/// # No upgrade
///
/// `flock` turns a shared lock into an exclusive one by *releasing* it first:
/// another process may take the lock in between. So there is no upgrade:
/// drop the shared guard, take the exclusive lock, and check again what you
/// read under the shared one.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("shmsync-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use shmsync::FileLock;
///
/// let lock = FileLock::open_or_create(dir.join("state.lock"))?;
/// let shared = lock.lock_shared().map_err(|e| e.without_guard())?;
/// let needs_work = true; // decided under the shared lock
/// drop(shared);
/// if needs_work {
///     let _excl = lock.lock_exclusive().map_err(|e| e.without_guard())?;
///     // another process may have done the work in between: check again
/// }
/// # drop(lock);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
///
/// # Errors of the lock methods
///
/// They return [`LockError<Infallible>`]: a file lock has no owner-died
/// state (the kernel drops the lock of a dead holder, and the file's
/// contents are yours to judge), so `OwnerDied` cannot occur.
pub struct FileLock {
    per_process: PerProcess<Handle>,
    path: Option<PathSpec>,
}

/// This process's descriptor and local lock.
struct Handle {
    fd: SwapFd,
    local: LocalRw,
}

impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLock")
            .field("path", &self.path.as_ref().map(|p| &p.path))
            .finish()
    }
}

impl FileLock {
    /// Opens the existing file at `path` for locking
    /// (`open(O_RDONLY|O_CLOEXEC)`, see [`FileLockOptions::open`]).
    ///
    /// # Errors
    ///
    /// As [`FileLockOptions::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<FileLock, Error> {
        FileLockOptions::new().open(path)
    }

    /// Opens the file at `path` for locking, creating it (mode `0o600`) if
    /// it does not exist.
    ///
    /// # Errors
    ///
    /// As [`FileLockOptions::open`].
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<FileLock, Error> {
        FileLockOptions::new().create(true).open(path)
    }

    /// Takes over an open file (no replaced-file check: the path is not
    /// known).
    ///
    /// # Errors
    ///
    /// As [`FileLockOptions::from_fd`].
    pub fn from_file(file: File) -> Result<FileLock, Error> {
        FileLockOptions::new().from_fd(file.into())
    }

    /// Takes over an open descriptor.
    ///
    /// # Errors
    ///
    /// As [`FileLockOptions::from_fd`].
    pub fn from_fd(fd: OwnedFd) -> Result<FileLock, Error> {
        FileLockOptions::new().from_fd(fd)
    }

    /// Options: create, mode, network filesystems.
    pub fn options() -> FileLockOptions {
        FileLockOptions::new()
    }

    fn build(fd: OwnedFd, path: Option<PathSpec>) -> FileLock {
        FileLock {
            per_process: PerProcess::new(Handle {
                fd: SwapFd::new(Some(fd)),
                local: LocalRw::default(),
            }),
            path,
        }
    }

    /// The path the lock was opened on, `None` if built from a descriptor.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_ref().map(|p| p.path.as_path())
    }

    /// This process's handle; in a forked child, a new open file
    /// description of the same file, and the inherited descriptor closed.
    fn handle(&self) -> io::Result<&Handle> {
        self.per_process.get(
            |inherited| {
                let fd = match &self.path {
                    Some(spec) => spec.open_io()?,
                    None => {
                        let raw = inherited
                            .fd
                            .raw()
                            .ok_or_else(|| errno::error(errno::EBADF))?;
                        // SAFETY: the inherited descriptor is open in this
                        // process (fork copied it) and only closed by
                        // `retire`, after this returns.
                        sys::fd::reopen(unsafe { BorrowedFd::borrow_raw(raw) })?
                    }
                };
                Ok(Handle {
                    fd: SwapFd::new(Some(fd)),
                    local: LocalRw::default(),
                })
            },
            // The parent's description stays alive through the parent's
            // descriptor; ours must not keep it (and a lock on it) alive
            // after the parent dies.
            |inherited| drop(inherited.fd.replace(None)),
        )
    }

    /// The one acquire path behind the six public lock methods.
    fn acquire(&self, mode: Mode, how: Acquire) -> Result<&Handle, RawLockError> {
        let h = self.handle().map_err(RawLockError::Os)?;
        if h.local.begin(mode, how)? == Begin::Joined {
            return Ok(h);
        }
        let r = self.lock_fd(h, mode, how);
        h.local.finish(mode, r.is_ok());
        r.map(|()| h)
    }

    /// `flock` on this process's descriptor, then (by path) the check that
    /// the path still names the locked file; reopen and retry if not.
    /// Called with the local token held.
    fn lock_fd(&self, h: &Handle, mode: Mode, how: Acquire) -> Result<(), RawLockError> {
        let op = match mode {
            Mode::Shared => FlockOp::Shared,
            Mode::Exclusive => FlockOp::Exclusive,
        };
        loop {
            // SAFETY: we hold the local token: no other thread replaces the
            // descriptor until `finish`.
            let fd = unsafe { h.fd.borrow() }
                .ok_or_else(|| RawLockError::Os(errno::error(errno::EBADF)))?;
            flock_acquire(fd, op, how)?;
            let Some(spec) = &self.path else {
                return Ok(());
            };
            let same = spec.still_names(fd);
            if let Ok(true) = same {
                return Ok(());
            }
            // Replaced, removed, or unknowable: let go of this file.
            let r = sys::fd_lock::flock(fd, FlockOp::Unlock, false);
            debug_assert!(r.is_ok(), "LOCK_UN failed: {r:?}");
            same.map_err(RawLockError::Os)?;
            let fresh = spec.open_io().map_err(RawLockError::Os)?;
            drop(h.fd.replace(Some(fresh)));
        }
    }

    fn exclusive(&self, how: Acquire) -> Result<FileLockGuard<'_>, LockError<Infallible>> {
        match self.acquire(Mode::Exclusive, how) {
            Ok(handle) => Ok(FileLockGuard {
                handle,
                fork_gen: sys::fork::fork_generation(),
                _not_send: PhantomData,
            }),
            Err(e) => Err(e.into_lock_error()),
        }
    }

    fn shared(&self, how: Acquire) -> Result<FileLockSharedGuard<'_>, LockError<Infallible>> {
        match self.acquire(Mode::Shared, how) {
            Ok(handle) => Ok(FileLockSharedGuard {
                handle,
                fork_gen: sys::fork::fork_generation(),
                _not_send: PhantomData,
            }),
            Err(e) => Err(e.into_lock_error()),
        }
    }

    /// Takes the exclusive lock (`flock(LOCK_EX)`), waiting as long as it
    /// takes for other processes and for this process's other threads.
    ///
    /// # Errors
    ///
    /// [`LockError::Deadlock`] if the calling thread holds this lock
    /// (shared or exclusive) through this handle; [`LockError::Os`]
    /// (for example `ENOENT` when the file was removed and the lock does
    /// not create it, or `ENOLCK`).
    pub fn lock_exclusive(&self) -> Result<FileLockGuard<'_>, LockError<Infallible>> {
        self.exclusive(Acquire::Block)
    }

    /// Takes the exclusive lock if it is free now (`LOCK_EX|LOCK_NB`).
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] when another process or another thread of
    /// this process holds it (or is acquiring it); otherwise as
    /// [`lock_exclusive`](Self::lock_exclusive).
    pub fn try_lock_exclusive(&self) -> Result<FileLockGuard<'_>, LockError<Infallible>> {
        self.exclusive(Acquire::Try)
    }

    /// Takes the exclusive lock, waiting at most `timeout`
    /// (`CLOCK_MONOTONIC`; `LOCK_NB` with backoff, see the module docs).
    ///
    /// # Errors
    ///
    /// [`LockError::TimedOut`]; otherwise as
    /// [`lock_exclusive`](Self::lock_exclusive).
    pub fn lock_exclusive_timeout(
        &self,
        timeout: Duration,
    ) -> Result<FileLockGuard<'_>, LockError<Infallible>> {
        self.exclusive(Acquire::Until(Monotonic::now().after(timeout)))
    }

    /// Takes a shared lock (`flock(LOCK_SH)`): any number of holders, in
    /// this and other processes, exclude exclusive holders. Threads of this
    /// process join a shared lock the process holds without a system call,
    /// unless one of its threads waits for the exclusive lock.
    ///
    /// # Errors
    ///
    /// [`LockError::Deadlock`] if the calling thread holds the exclusive
    /// lock through this handle; [`LockError::Os`].
    pub fn lock_shared(&self) -> Result<FileLockSharedGuard<'_>, LockError<Infallible>> {
        self.shared(Acquire::Block)
    }

    /// Takes a shared lock if no exclusive holder has it now
    /// (`LOCK_SH|LOCK_NB`).
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`]; otherwise as
    /// [`lock_shared`](Self::lock_shared).
    pub fn try_lock_shared(&self) -> Result<FileLockSharedGuard<'_>, LockError<Infallible>> {
        self.shared(Acquire::Try)
    }

    /// Takes a shared lock, waiting at most `timeout` (`CLOCK_MONOTONIC`).
    ///
    /// # Errors
    ///
    /// [`LockError::TimedOut`]; otherwise as
    /// [`lock_shared`](Self::lock_shared).
    pub fn lock_shared_timeout(
        &self,
        timeout: Duration,
    ) -> Result<FileLockSharedGuard<'_>, LockError<Infallible>> {
        self.shared(Acquire::Until(Monotonic::now().after(timeout)))
    }
}

/// `LOCK_UN` on this process's descriptor; called by the last holder under
/// the local mutex.
fn unlock(handle: &Handle) {
    // SAFETY: the caller is the last holder, under the local mutex: nobody
    // replaces the descriptor meanwhile.
    if let Some(fd) = unsafe { handle.fd.borrow() } {
        // LOCK_UN on an open descriptor cannot fail; this runs from a
        // guard's `Drop`, which must not panic.
        let _ = sys::fd_lock::flock(fd, FlockOp::Unlock, false);
    }
}

/// Holds a [`FileLock`] exclusively; `LOCK_UN` on drop.
///
/// `!Send` (the local lock records the thread). Dropped in a process forked
/// while it was held, it does nothing: the lock is the parent's.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct FileLockGuard<'a> {
    handle: &'a Handle,
    fork_gen: u32,
    _not_send: PhantomData<*const ()>,
}

impl Drop for FileLockGuard<'_> {
    fn drop(&mut self) {
        if self.fork_gen == sys::fork::fork_generation() {
            let h = self.handle;
            h.local.release(Mode::Exclusive, || unlock(h));
        }
    }
}

impl std::fmt::Debug for FileLockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileLockGuard")
    }
}

/// Holds a shared [`FileLock`]; the process's last shared guard to go does
/// `LOCK_UN`.
///
/// `!Send`. Dropped in a process forked while it was held, it does nothing.
/// There is no upgrade to exclusive (see [`FileLock`]).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct FileLockSharedGuard<'a> {
    handle: &'a Handle,
    fork_gen: u32,
    _not_send: PhantomData<*const ()>,
}

impl Drop for FileLockSharedGuard<'_> {
    fn drop(&mut self) {
        if self.fork_gen == sys::fork::fork_generation() {
            let h = self.handle;
            h.local.release(Mode::Shared, || unlock(h));
        }
    }
}

impl std::fmt::Debug for FileLockSharedGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileLockSharedGuard")
    }
}
