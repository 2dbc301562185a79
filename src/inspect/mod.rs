//! Looking at the crate's shared objects from outside: list, inspect, clean
//! and unlink them without mapping them and without taking their locks.
//!
//! This is the library side of the `shmsync` command (feature `cli`), and
//! usable on its own by a service that wants to report or clean up its own
//! objects at start-up.
//!
//! # How an object is read
//!
//! Only with `open` (`shm_open` with `O_NONBLOCK|O_NOFOLLOW`), `fstat`
//! and `pread`: an object is never mapped here, so a short, truncated or
//! garbage object can never raise `SIGBUS`. The header is decoded and judged
//! by [`segment::header`](crate::segment::header) (one definition of the
//! format); each lock backend reads its own state (`describe` of the
//! backend trait) and removes its own companion objects. Nothing takes a lock except [`clean`], and it only tries one,
//! without waiting.
//!
//! * **Attached processes** — every handle holds an open-file-description
//!   read lock on byte 0 for as long as it maps the segment, and a creator
//!   holds a write lock there while it initialises. `fcntl(F_OFD_GETLK)` for
//!   a write lock tells, without taking anything, whether anybody is
//!   attached ([`Attached::Live`]), a creator is at work
//!   ([`Attached::Creator`]) or nobody ([`Attached::None`]). (Not how
//!   many: `/proc/locks` would tell, but it is not read atomically once it
//!   is longer than a page, and under other processes' lock traffic it
//!   repeats or skips entries.)
//! * **The lock** — for the robust mutex, glibc's `__lock` and `__owner`
//!   words are read with `pread` at the header's `lock_offset` (see
//!   [`RobustMutex`](crate::RobustMutex)): free, held by a thread, owner
//!   died (the kernel set `FUTEX_OWNER_DIED`), being recovered
//!   (`PTHREAD_MUTEX_INCONSISTENT`) or not recoverable
//!   (`PTHREAD_MUTEX_NOTRECOVERABLE`). The holder's thread id is mapped to
//!   its process through `/proc/TID/status` (`Tgid`), and a thread that is
//!   gone or a zombie counts as dead.
//! * **The semaphore backend** — its holder record *is* the lock (pid and
//!   process start time, see [`NamedSemaphore`](crate::NamedSemaphore)):
//!   read with `pread`, a holder whose `/proc/PID/stat` is gone, a zombie,
//!   or shows another start time is dead. Its semaphore file
//!   `/dev/shm/sem.NAME` is shown as the cell's companion.
//! * **The `flock` backend** — its held marker and last holder's pid are
//!   read with `pread` (see [`FileLock`](crate::FileLock)); whether that
//!   process still holds the `flock` comes from the `lock:` lines of its
//!   `/proc/PID/fdinfo` (a held marker whose holder no longer holds the
//!   `flock` means the holder died: the next locker gets `OwnerDied`).
//! * A bare [`Segment`](crate::Segment) (lock kind `external`): its lock is
//!   its user's business, [`LockState::Unknown`].
//!
//! # States
//!
//! | [`State`] | meaning | removed by [`clean`] when nobody is attached |
//! |---|---|---|
//! | `ready` | initialised; the lock is free or held by a live holder | if it [crashed](#crashed-or-detached) (if it was detached normally: only with [`CleanOptions::include_detached`]) |
//! | `initialising` | not Ready, and its creator (alive) holds the write lock | never (it is attached) |
//! | `abandoned-init` | not Ready, and nobody holds the write lock: the creator died | yes |
//! | `owner-died` | the lock's holder died; the next locker gets `OwnerDied` | yes |
//! | `recovering` | a live process took the lock with `OwnerDied` and has not made it consistent yet | never (it is attached) |
//! | `not-recoverable` | an owner died and nobody repaired it: the lock can never be taken again | yes |
//! | `holder-dead` | the lock word names a thread that no longer exists and the kernel did not mark it | yes |
//! | `incompatible` | made by shmsync, but another format version or ABI | never |
//! | `damaged` | shmsync's magic, but a bad checksum, size or state word | never |
//! | `companion` | the semaphore `sem.NAME` of a semaphore-locked cell `/NAME` | with its cell only |
//! | `foreign` | not made by shmsync (no magic, empty, a symbolic link, …) | never |
//! | `unreadable` | could not be opened or read (the reason says why) | never |
//!
//! An object is a **leftover** ([`Inspection::leftover`]) when it carries
//! this crate's magic, its header is readable by this build (or it is an
//! abandoned initialisation), no process is attached and no live thread
//! holds its lock; it is **stale** ([`Inspection::stale`]) when it is a
//! leftover that crashed. A creator killed before it wrote its header leaves an
//! empty or zero-filled object, which cannot be told apart from somebody
//! else's: it is listed as `foreign` and only [`unlink`] removes it
//! (`ShmCell::open_or_create` also takes such an object over).
//!
//! # Crashed or detached
//!
//! Nobody attached does not mean nobody wants the value: a service that is
//! simply not running leaves its cells so. What tells the two apart is how
//! the users left ([`Leftover`]):
//!
//! * **crashed** — an initialisation its creator abandoned
//!   (`abandoned-init`), a lock whose holder died (`owner-died`,
//!   `not-recoverable`, `holder-dead`), or a `ready` cell whose header's
//!   `handles` word is not zero: handles that were never let go of,
//!   because their process was killed (or `exec`ed). A handle that was
//!   never dropped but whose process exited normally (a `static`,
//!   `process::exit`) was let go of at exit. See [the `handles`
//!   word](crate::segment::header#the-handles-word).
//! * **detached** — a `ready` cell whose lock is free and whose `handles`
//!   word is zero: every handle was dropped normally. A cell that crashed
//!   and was then reopened and closed normally is detached again.
//!
//! [`clean`] removes what crashed; what was detached only with
//! [`CleanOptions::include_detached`].
//!
//! # Cleaning safely
//!
//! [`clean_one`] removes an object only if it is stale and, while it holds
//! the exclusive attach lock (non-blocking; failing means somebody attached
//! in the meantime), the name still refers to the inode it locked
//! (`fstat` of its descriptor against `lstat` of `/dev/shm/NAME`). Another
//! cleaner cannot race it (it would need the same exclusive lock), nor can
//! a process open the segment meanwhile (it would need the shared one). The
//! one window left is a *forced* removal ([`unlink`], `ShmCell::unlink`)
//! and re-creation of the name between that check and `shm_unlink`, which
//! takes a name, not a descriptor. Companion objects of the cell (e.g. its
//! semaphore) go with it.
//!
//! # System V segments
//!
//! [`list_sysv`] walks the kernel's table (`shmctl(SHM_INFO)`, then
//! `SHM_STAT` of each index), [`inspect_sysv`] reads one by key or id, both
//! with `shmctl(IPC_STAT)` and a *read-only* `shmat` (a System V segment
//! cannot shrink: reading it cannot fault; it is never attached
//! read-write here). Attachment is the kernel's `shm_nattch`.
//! [`clean_sysv`] needs an explicit [`SysvScope`] and removes only what
//! nobody is attached to *and* whose header says it crashed.
//!
//! # Example
//!
//! ```no_run
//! use shmsync::inspect;
//!
//! # fn main() -> Result<(), shmsync::Error> {
//! for obj in inspect::list()? {
//!     println!("{} {} stale={}", obj.name, obj.state.name(), obj.stale);
//! }
//! // Remove what crashed among our own objects (never another
//! // application's, nor our cells whose users all detached normally).
//! let options = inspect::CleanOptions::new();
//! for outcome in inspect::clean(|name| name.starts_with("/myapp-"), &options)? {
//!     println!("{}: {} ({})", outcome.name, outcome.action.name(), outcome.reason);
//! }
//! # Ok(()) }
//! ```

mod clean;
mod fields;
mod read;
mod sysv;

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::error::Error;
use crate::segment::header::{HeaderInfo, LockKind};
use crate::segment::{name, ATTACH_BYTE, MAX_SHM_NAME};
use crate::sys;
use crate::sys::errno;
use crate::sys::fd::{oflag, FileKind, FileStat};

pub use crate::lock::describe::{Holder, LockInfo, LockState, LockWord};

pub use clean::{
    clean, clean_one, error_line, set_clean_hook, unlink, CleanAction, CleanOptions, CleanOutcome,
    Unlinked,
};
pub use fields::{describe_type, Field};
use read::examine;
pub use sysv::{
    clean_sysv, inspect_sysv, list_sysv, SysvCleanOutcome, SysvInspection, SysvRef, SysvScope,
};

/// Where glibc keeps POSIX shared-memory objects.
pub const SHM_DIR: &str = "/dev/shm";

/// What an object is, all things considered (see the table in the
/// [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Initialised; the lock is free or held by a live holder.
    Ready,
    /// Not Ready, and its creator holds the initialisation (write) lock.
    Initialising,
    /// Not Ready, and nobody holds the initialisation lock: its creator
    /// died.
    AbandonedInit,
    /// The lock's holder died; the next locker gets `OwnerDied`.
    OwnerDied,
    /// A live process took the lock with `OwnerDied` and has not made it
    /// consistent yet.
    Recovering,
    /// An owner died and nobody repaired it: the lock cannot be taken
    /// again. Remove the object and create a new one.
    NotRecoverable,
    /// The lock word names a thread that no longer exists, and the kernel
    /// did not mark the owner's death (for example beyond the robust list's
    /// limit): every locker would wait forever.
    HolderDead,
    /// Made by shmsync, but for another header format or ABI.
    Incompatible,
    /// Carries shmsync's magic but its header is damaged or inconsistent.
    Damaged,
    /// An object a shmsync cell made besides its segment (the semaphore
    /// `sem.NAME` of a semaphore-locked cell): removed with the cell, never
    /// on its own.
    Companion,
    /// Not made by shmsync.
    Foreign,
    /// Could not be opened or read.
    Unreadable,
}

impl State {
    /// The stable name used in tables and JSON (`ready`, `abandoned-init`,
    /// `not-recoverable`, …).
    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Initialising => "initialising",
            State::AbandonedInit => "abandoned-init",
            State::OwnerDied => "owner-died",
            State::Recovering => "recovering",
            State::NotRecoverable => "not-recoverable",
            State::HolderDead => "holder-dead",
            State::Incompatible => "incompatible",
            State::Damaged => "damaged",
            State::Companion => "companion",
            State::Foreign => "foreign",
            State::Unreadable => "unreadable",
        }
    }

    /// Whether the object was recognised as one of this crate's (it carries
    /// the magic).
    pub fn is_shmsync(self) -> bool {
        !matches!(self, State::Companion | State::Foreign | State::Unreadable)
    }
}

/// Who holds the object's attach lock (an open-file-description lock on
/// byte 0), as `fcntl(F_OFD_GETLK)` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attached {
    /// At least one handle is attached (a read lock is held).
    Live,
    /// A creator holds the write lock: it is initialising the object.
    Creator,
    /// Nobody holds the attach lock.
    None,
    /// The lock could not be queried, or the object is not shmsync's (its
    /// byte 0 means nothing to this crate).
    Unknown,
}

impl Attached {
    /// The stable name used in tables and JSON (`live`, `creator`, `none`,
    /// `unknown`).
    pub fn name(self) -> &'static str {
        match self {
            Attached::Live => "live",
            Attached::Creator => "creator",
            Attached::None => "none",
            Attached::Unknown => "unknown",
        }
    }
}

/// How the users of an object nobody is attached to left it (see the
/// [module docs](self#crashed-or-detached)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Leftover {
    /// Its last users crashed: killed (or `exec`ed) without letting go of
    /// their handles, a creator that died initialising it, or a lock holder
    /// that died. [`clean`] removes it.
    Crashed,
    /// Every user detached normally (each handle was dropped, or its
    /// process exited normally) and its lock is free: a service that is simply not running. [`clean`] keeps it
    /// unless [`CleanOptions::include_detached`] asks for it.
    Detached,
}

impl Leftover {
    /// The stable name used in tables and JSON (`crashed`, `detached`).
    pub fn name(self) -> &'static str {
        match self {
            Leftover::Crashed => "crashed",
            Leftover::Detached => "detached",
        }
    }
}

/// Everything known about one object in `/dev/shm`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inspection {
    /// The object's name, with its leading `/` (`/dev/shm/x` is `/x`). A
    /// name that is not UTF-8 is shown lossily, and such an object is
    /// `unreadable`.
    pub name: String,
    /// What the object is, all things considered.
    pub state: State,
    /// Why it is `foreign`, `unreadable`, `damaged` or `incompatible`, or a
    /// short remark on another state.
    pub reason: Option<String>,
    /// Whether [`clean`] removes it by default: nobody is attached and it
    /// [crashed](Leftover::Crashed) (see the [module docs](self)).
    pub stale: bool,
    /// For a shmsync object nobody is attached to and no live process holds
    /// the lock of: whether its users [crashed](Leftover::Crashed) or all
    /// [detached](Leftover::Detached) normally. `None` when it is in use or
    /// not removable.
    pub leftover: Option<Leftover>,
    /// Its size in bytes (`fstat`).
    pub size: Option<u64>,
    /// Owner uid (`fstat`).
    pub uid: Option<u32>,
    /// Permission bits (`fstat`, `st_mode & 0o7777`).
    pub mode: Option<u32>,
    /// Who holds the attach lock.
    pub attached: Attached,
    /// The decoded header, when the object carries shmsync's magic and is
    /// at least a header long.
    pub header: Option<HeaderInfo>,
    /// The cell's lock.
    pub lock: LockInfo,
    /// Time since creation (from the header's `created_unix`).
    pub age: Option<Duration>,
    /// `(st_dev, st_ino)` of the inode that was inspected.
    dev_ino: Option<(u64, u64)>,
}

impl Inspection {
    fn bare(name: String, state: State, reason: impl Into<String>) -> Inspection {
        Inspection {
            name,
            state,
            reason: Some(reason.into()),
            stale: false,
            leftover: None,
            size: None,
            uid: None,
            mode: None,
            attached: Attached::Unknown,
            header: None,
            lock: LockInfo::unknown(None),
            age: None,
            dev_ino: None,
        }
    }

    /// The path of the object (`/dev/shm` + name).
    pub fn path(&self) -> String {
        format!("{SHM_DIR}{}", self.name)
    }

    /// The creator's pid from the header.
    pub fn creator_pid(&self) -> Option<u32> {
        self.header.as_ref().map(|h| h.creator_pid)
    }

    /// The lock kind from the header.
    pub fn lock_kind(&self) -> Option<LockKind> {
        self.lock.kind
    }
}

/// The names of every entry in `/dev/shm` (with a leading `/`), sorted.
/// Entries whose name is not UTF-8 are returned lossily converted.
///
/// # Errors
///
/// [`Error::Io`] when `/dev/shm` cannot be read.
pub fn names() -> Result<Vec<String>, Error> {
    let dir = std::fs::read_dir(SHM_DIR).map_err(|e| Error::io("opendir(/dev/shm)", e))?;
    let mut out = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| Error::io("readdir(/dev/shm)", e))?;
        out.push(format!("/{}", entry.file_name().to_string_lossy()));
    }
    out.sort();
    Ok(out)
}

/// Inspects every object in `/dev/shm`, sorted by name. Objects that cannot
/// be read are listed as `unreadable` with the reason; objects removed
/// while listing are left out.
///
/// # Errors
///
/// [`Error::Io`] when `/dev/shm` cannot be read.
pub fn list() -> Result<Vec<Inspection>, Error> {
    list_matching(|_| true)
}

/// Like [`list`], for the objects whose name (with its leading `/`)
/// `filter` accepts; the others are not even opened.
///
/// # Errors
///
/// [`Error::Io`] when `/dev/shm` cannot be read.
pub fn list_matching(filter: impl Fn(&str) -> bool) -> Result<Vec<Inspection>, Error> {
    let dir = std::fs::read_dir(SHM_DIR).map_err(|e| Error::io("opendir(/dev/shm)", e))?;
    let mut out = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| Error::io("readdir(/dev/shm)", e))?;
        let raw = entry.file_name();
        let name = format!("/{}", raw.to_string_lossy());
        if !filter(&name) {
            continue;
        }
        if raw.to_str().is_none() {
            out.push(Inspection::bare(
                name,
                State::Unreadable,
                "name is not UTF-8",
            ));
            continue;
        }
        match inspect(&name) {
            Ok(i) => out.push(i),
            Err(Error::NotFound { .. }) => {} // removed meanwhile
            Err(e) => out.push(Inspection::bare(name, State::Unreadable, e.to_string())),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Inspects the object `name` (`/x` for `/dev/shm/x`): `lstat`, `shm_open`
/// read-only (never following a symbolic link), `fstat`, `pread` of the
/// header and of the lock words, `fcntl(F_OFD_GETLK)`. Never maps it,
/// never takes a lock.
///
/// # Errors
///
/// [`Error::InvalidName`] and [`Error::NotFound`]; every other failure is
/// an [`Inspection`] in state `unreadable` with the reason.
pub fn inspect(name: &str) -> Result<Inspection, Error> {
    let cname = name::validate(name, MAX_SHM_NAME)?;
    if let Some(i) = not_a_file(name, &cname)? {
        return Ok(i);
    }
    let fd = match open_listed(&cname, oflag::O_RDONLY) {
        Ok(fd) => fd,
        Err(e) => return open_failure(name, e),
    };
    // Judged by what the descriptor is (`fstat`), not by the `lstat` above:
    // the name may have been replaced in between.
    Ok(judge(name, fd.as_fd()))
}

/// Inspects a file-backed cell at `path` (see `ShmCell::create_file`) the
/// way [`inspect`] inspects a named one: `open(O_RDONLY | O_NONBLOCK |
/// O_NOFOLLOW)`, `fstat` (a FIFO, device or directory is `foreign`),
/// `pread` of the header and lock words, `fcntl(F_OFD_GETLK)` for
/// attached processes. Never maps the file, never takes a lock.
///
/// # Errors
///
/// [`Error::NotFound`] when nothing is at `path`, [`Error::InvalidName`]
/// for a path with a NUL byte; every other failure is an [`Inspection`] in
/// state `unreadable` with the reason.
pub fn inspect_file(path: &std::path::Path) -> Result<Inspection, Error> {
    use std::os::unix::ffi::OsStrExt;
    let shown = path.display().to_string();
    let cpath =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::InvalidName {
            name: shown.clone(),
            reason: "must not contain a NUL byte",
        })?;
    let fd = match sys::fd::open(
        &cpath,
        oflag::O_RDONLY | oflag::O_NONBLOCK | oflag::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) => return open_failure(&shown, e),
    };
    Ok(examine(&shown, fd.as_fd()))
}

/// Opens an object found by listing: `O_NONBLOCK` (a FIFO or device put
/// under the name must not make the open wait) and `O_NOFOLLOW` (glibc adds
/// it too). The caller judges the object by `fstat` of the descriptor
/// (a regular file or foreign) before reading anything.
pub(super) fn open_listed(cname: &CStr, flags: i32) -> std::io::Result<OwnedFd> {
    sys::shm::shm_open(cname, flags | oflag::O_NONBLOCK | oflag::O_NOFOLLOW, 0)
}

/// [`examine`], and a foreign `/sem.X` recognised as the semaphore of the
/// cell `/X`.
fn judge(name: &str, fd: BorrowedFd<'_>) -> Inspection {
    let mut i = examine(name, fd);
    if let Some(cell) = name.strip_prefix("/sem.").map(|rest| format!("/{rest}")) {
        if i.state == State::Foreign {
            semaphore_companion(&mut i, &cell);
        }
    }
    i
}

/// `/sem.X` is glibc's file for the named semaphore `/X`: the companion of
/// the cell `/X` when that is a semaphore-locked shmsync cell.
fn semaphore_companion(i: &mut Inspection, cell: &str) {
    let owner = name::validate(cell, MAX_SHM_NAME).ok().and_then(|c| {
        let fd = open_listed(&c, oflag::O_RDONLY).ok()?;
        Some(examine(cell, fd.as_fd()))
    });
    match owner {
        Some(o) if o.state.is_shmsync() && o.lock.kind == Some(LockKind::NamedSemaphore) => {
            i.state = State::Companion;
            i.reason = Some(format!("the semaphore of the cell {cell}; removed with it"));
        }
        _ => {
            i.reason = Some(format!(
                "a POSIX named semaphore (sem_open {cell}), not used by a shmsync cell"
            ));
        }
    }
}

/// `lstat` of the path: symbolic links and anything but a regular file are
/// foreign and never opened.
fn not_a_file(name: &str, cname: &CStr) -> Result<Option<Inspection>, Error> {
    let path = name::shm_path(cname.to_str().unwrap_or_default());
    let st = match sys::fd::lstat(&path) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(errno::ENOENT) => {
            return Err(Error::NotFound { name: name.into() })
        }
        Err(e) => {
            return Ok(Some(Inspection::bare(
                name.into(),
                State::Unreadable,
                format!("lstat: {e}"),
            )))
        }
    };
    let what = match st.kind() {
        FileKind::Regular => return Ok(None),
        FileKind::Symlink => "a symbolic link (never followed)",
        FileKind::Directory => "a directory",
        _ => "not a regular file",
    };
    let mut i = Inspection::bare(name.into(), State::Foreign, what);
    fill_stat(&mut i, &st);
    Ok(Some(i))
}

fn open_failure(name: &str, e: std::io::Error) -> Result<Inspection, Error> {
    let reason = match e.raw_os_error() {
        Some(errno::ENOENT) => return Err(Error::NotFound { name: name.into() }),
        Some(errno::EACCES) | Some(errno::EPERM) => "permission denied".to_string(),
        Some(errno::ELOOP) => "a symbolic link (never followed)".to_string(),
        _ => format!("shm_open: {e}"),
    };
    let state = if e.raw_os_error() == Some(errno::ELOOP) {
        State::Foreign
    } else {
        State::Unreadable
    };
    Ok(Inspection::bare(name.into(), state, reason))
}

fn fill_stat(i: &mut Inspection, st: &FileStat) {
    i.size = Some(st.size());
    i.uid = Some(st.uid());
    i.mode = Some(st.mode());
    i.dev_ino = Some((st.dev(), st.ino()));
}
