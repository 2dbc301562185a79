//! `NamedSemaphore`: a named POSIX counting semaphore (`sem_open` family),
//! usable on its own (this file), and the lock backend
//! `ShmCell<T, NamedSemaphore>` that — unlike a raw semaphore — recovers
//! from a holder that dies ([`backend`]).

pub(crate) mod backend;
mod identity;
mod inspect;

use std::ffi::CString;
use std::io;
use std::time::Duration;

use crate::error::Error;
use crate::segment::{name, DEFAULT_MODE};
use crate::sys;
use crate::sys::errno;
use crate::sys::fd::{oflag, FileKind, FileStat};
use crate::sys::sem::SemHandle;
use crate::sys::time::Monotonic;

/// The longest semaphore name after the leading `/`: glibc stores `/NAME`
/// as the file `sem.NAME`, and a file name holds at most 255 bytes.
pub const MAX_SEM_NAME: usize = 251;

/// Longest sleep of a waiter between two checks of the holder's liveness:
/// the bound on how long a holder's death goes unnoticed by a sleeper.
pub(crate) const SLICE: Duration = Duration::from_millis(20);

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
///   0 to the handle's *liveness token*: a random number whose byte
///   (2^62 + token) of the segment's file the handle keeps read-locked
///   (an open-file-description lock, through a description of its own).
///   The kernel drops that lock when the holder dies or `exec`s, so
///   "is the holder alive?" is asked of the kernel (`F_OFD_GETLK`), not
///   of pids and `/proc` start times — which differ between pid
///   namespaces, are shifted by time namespaces, and are reused. A dead
///   holder is taken over with a compare-and-swap from its token, so of
///   several waiters exactly one wins; it gets
///   [`LockError::OwnerDied`](crate::LockError::OwnerDied).
/// * **Every acquire path that finds the lock taken** — `try_lock`
///   included — asks the kernel about the holder before answering
///   `WouldBlock` or `TimedOut` (one system call). An uncontended acquire
///   is one compare-and-swap, with no system call.
/// * **A waiter spins before it asks or sleeps.** `lock` and
///   `lock_timeout` first spin on the holder word — reading only, trying
///   the compare-and-swap whenever it reads free, within a per-thread
///   budget of at most 20 µs that adapts as the robust mutex's does and
///   backs off when the CPUs are oversubscribed — and a try that loses the
///   race goes back to the spin. Only a spent spin asks the kernel whether
///   the holder lives, and then sleeps: a holder that dies while others
///   spin is noticed when their spin is spent.
/// * **The semaphore `sem.NAME` is only where waiters sleep.** A waiter
///   counts itself in the segment, sleeps with
///   `sem_clockwait(CLOCK_MONOTONIC)` for at most 20 ms, and spins and
///   checks the holder again; a holder killed while others sleep is
///   noticed within one such slice. A releaser posts only when someone
///   waits. The semaphore is created (mode: the segment's) before the
///   segment is published Ready, never by `open`, and is removed by
///   [`ShmCell::unlink`](crate::ShmCell::unlink) — whatever `L` that call
///   names, since it reads the lock kind from the header.
/// * **Recovery** is the robust mutex's: an owner-died guard dropped
///   without `make_consistent` leaves the lock
///   [`NotRecoverable`](crate::LockError::NotRecoverable) for every
///   process; a taker that dies before `make_consistent` hands `OwnerDied`
///   on to the next.
/// * Locking again from the thread that holds the lock (through any handle)
///   is [`Deadlock`](crate::LockError::Deadlock); another thread of the
///   same process waits — also a new thread that the kernel gave the id of
///   an exited holder thread (the holder records an identity of its thread
///   that is never reused, not the thread id).
/// * Processes in different pid and time namespaces (containers sharing
///   `/dev/shm`) may share a cell: nothing is judged from pids or clocks.
///
/// Limits, by design:
///
/// * A foreign program doing a bare `sem_wait` on `sem.NAME` is **not**
///   excluded by the cell's lock — it only takes a wake-up token. Use the
///   standalone `NamedSemaphore` to interoperate with such programs.
/// * The holder is a *handle in a process*: a thread that exits holding
///   the lock while its process (and handle) lives on is not seen as dead
///   (the robust mutex detects it). A process that `exec`s while holding
///   it is (the token's descriptor is close-on-exec).
/// * Each handle holds one more descriptor (its token's) and one
///   byte-range lock.
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
        Some(errno::EOVERFLOW) => SemaphoreError::Overflow,
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
    /// glibc maps `/dev/shm/sem.NAME` without looking at its size, so a
    /// short file (empty, truncated, or planted by another user) would
    /// raise `SIGBUS` at the first `post`. The file is checked first: opened
    /// with `O_NONBLOCK|O_NOFOLLOW`, it must be a regular file of at least
    /// `sizeof(sem_t)` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::NotFound`],
    /// [`Error::PermissionDenied`], [`Error::Incompatible`] (`file type`:
    /// not a regular file), [`Error::TooSmall`], [`Error::Io`].
    pub fn open(name: &str) -> Result<Self, Error> {
        let sem = open_checked(name, None)?;
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

/// The file `/dev/shm/sem.NAME` of the semaphore `name`, opened with
/// `O_NONBLOCK|O_NOFOLLOW` (a FIFO does not make us wait, a link is not
/// followed) and checked by `fstat`: a regular file of at least
/// `sizeof(sem_t)` bytes (and owned by `owner` when given).
pub(crate) fn check_file(
    name: &str,
    owner: Option<u32>,
) -> Result<(std::os::fd::OwnedFd, FileStat), Error> {
    let path = sem_path(name);
    let flags = oflag::O_RDONLY | oflag::O_NONBLOCK | oflag::O_NOFOLLOW | oflag::O_NOCTTY;
    let fd = sys::fd::open(&path, flags, 0).map_err(|e| match e.raw_os_error() {
        Some(errno::ELOOP) => Error::Incompatible {
            field: "file type",
            expected: "regular file".into(),
            found: "symbolic link".into(),
        },
        _ => Error::from_io("open(sem.NAME)", name, e),
    })?;
    let st = sys::fd::fstat(std::os::fd::AsFd::as_fd(&fd)).map_err(|e| Error::io("fstat", e))?;
    if st.kind() != FileKind::Regular {
        return Err(Error::Incompatible {
            field: "file type",
            expected: "regular file".into(),
            found: st.kind().name().into(),
        });
    }
    if st.size() < sys::sem::SEM_SIZE as u64 {
        return Err(Error::TooSmall {
            size: st.size(),
            needed: sys::sem::SEM_SIZE as u64,
        });
    }
    if let Some(uid) = owner {
        if st.uid() != uid {
            return Err(Error::ForeignOwner {
                name: format!("/sem.{}", &name[1..]),
                uid: st.uid(),
            });
        }
    }
    Ok((fd, st))
}

/// `sem_open` of the existing semaphore `name` once its file passed
/// [`check_file`]. (The name could be replaced between the check and
/// `sem_open` only by the file's owner or root: `/dev/shm` is sticky.)
pub(crate) fn open_checked(name: &str, owner: Option<u32>) -> Result<SemHandle, Error> {
    let cname = NamedSemaphore::validate(name)?;
    check_file(name, owner)?;
    sys::sem::sem_open_existing(&cname).map_err(|e| Error::from_io("sem_open", name, e))
}

/// The mark a cell writes into the padding of its semaphore's `sem_t`
/// (bytes [`SEM_STATE_SIZE`](sys::sem::SEM_STATE_SIZE)`..+8`), followed by
/// the inode number of the cell's segment: glibc never reads or writes
/// there, and a semaphore made by anyone else has zeros.
const COMPANION_MARK: [u8; 8] = *b"shmsyncS";

/// Makes `sem.NAME` for the cell whose segment has inode `ino`: a
/// process-shared semaphore of value 0 and permission bits `mode`, carrying
/// the cell's mark, written into an unnamed file (`O_TMPFILE`) that is then
/// linked under its name (`EEXIST` if taken; never replaces anything).
/// Other processes see no `sem.NAME` or a complete, marked one: a creator
/// killed half-way leaves nothing. (With `sem_open` and a mark written
/// afterwards, a creator killed in between left an unmarked semaphore that
/// no takeover may remove: `open_or_create` failed with `AlreadyExists` for
/// good.)
pub(crate) fn create_companion(name: &str, ino: u64, mode: u32) -> io::Result<()> {
    let mut image = sys::sem::shared_image(0)?;
    if let Some(at) = mark_offset() {
        let at = at as usize;
        image[at..at + 8].copy_from_slice(&COMPANION_MARK);
        image[at + 8..at + 16].copy_from_slice(&ino.to_le_bytes());
    }
    let fd = sys::fd::open_tmpfile(c"/dev/shm", 0o600)?;
    let fd = std::os::fd::AsFd::as_fd(&fd);
    sys::fd::fchmod(fd, mode)?;
    sys::fd::pwrite_all(fd, &image, 0)?;
    crate::steps::step("sem:companion-written");
    sys::fd::link_fd(fd, &sem_path(name))
}

/// If `sem.NAME` is provably a cell's semaphore — a regular file of this
/// user, of a semaphore's size, carrying the cell's mark — the inode
/// number of the segment it was made for. Anything else (`None`) is
/// somebody's semaphore, never removed.
pub(crate) fn companion_of(name: &str) -> Option<u64> {
    let at = mark_offset()?;
    let (fd, _) = check_file(name, Some(sys::proc::geteuid())).ok()?;
    let mut mark = [0u8; 16];
    match sys::fd::pread_full(std::os::fd::AsFd::as_fd(&fd), &mut mark, at) {
        Ok(16) if mark[..8] == COMPANION_MARK => {
            Some(u64::from_le_bytes(mark[8..].try_into().expect("8 bytes")))
        }
        _ => None,
    }
}

fn mark_offset() -> Option<u64> {
    (sys::sem::SEM_SIZE >= sys::sem::SEM_STATE_SIZE + 16).then_some(sys::sem::SEM_STATE_SIZE as u64)
}

/// `sem_open(O_CREAT|O_EXCL)` with `value`, then the exact `mode`. On a
/// failure after the create, the new name is removed again.
fn create_exclusive(cname: &CString, name: &str, value: u32, mode: u32) -> io::Result<SemHandle> {
    let sem = sys::sem::sem_create_excl(cname, mode, value)?;
    if let Err(e) = sys::fd::chmod(&sem_path(name), mode) {
        let _ = sys::sem::sem_unlink(cname);
        return Err(e);
    }
    Ok(sem)
}
