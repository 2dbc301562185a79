//! The crate's error types.
//!
//! Two families, kept apart on purpose:
//!
//! * [`Error`] — opening, creating and removing shared objects. Every way a
//!   named object can be wrong (missing, taken, foreign, too short, made for
//!   another type, left half-built by a dead creator) is its own variant.
//! * [`LockError`] — acquiring a lock. Like std's `PoisonError`, the
//!   owner-died case carries the guard: the caller holds the lock and must
//!   either repair the value and call `make_consistent()` or let it become
//!   not recoverable.

use std::fmt;
use std::io;

use crate::sys::errno;

/// What went wrong while creating, opening, validating or removing a shared
/// object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No object of that name exists.
    #[error("no shared object named {name:?}")]
    NotFound {
        /// The name that was looked up.
        name: String,
    },

    /// An object of that name exists already (exclusive create).
    #[error("a shared object named {name:?} already exists")]
    AlreadyExists {
        /// The name that was taken.
        name: String,
    },

    /// The object belongs to another user (`uid`), and this operation only
    /// adopts what this process's effective user owns: an empty or
    /// abandoned object under the name is *not* taken over, since its owner
    /// could change its mode, resize it (the next access to a truncated page
    /// is `SIGBUS`) or rewrite it at will. Remove it (its owner or root can)
    /// or use another name.
    #[error("shared object {name:?} belongs to uid {uid}, not to this user: not taken over")]
    ForeignOwner {
        /// The name of the object.
        name: String,
        /// The owner of the object.
        uid: u32,
    },

    /// The object exists but this process may not open it.
    #[error("permission denied for shared object {name:?}")]
    PermissionDenied {
        /// The name of the object.
        name: String,
    },

    /// The name is not a valid name for this kind of object.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The object was made by this crate but for something else: another
    /// format version, architecture, libc, value type or lock kind — or it
    /// was not made by this crate at all (`field == "magic"`).
    #[error("{}", incompatible_message(field, expected, found))]
    Incompatible {
        /// The header field that did not match.
        field: &'static str,
        /// What this process expected.
        expected: String,
        /// What the object holds.
        found: String,
    },

    /// The object is shorter than its header, or than the layout its header
    /// describes. Mapping it could raise `SIGBUS`, so it is refused.
    #[error("shared object is too small: {size} bytes, at least {needed} needed")]
    TooSmall {
        /// The object's size in bytes.
        size: u64,
        /// The size its contents need.
        needed: u64,
    },

    /// The header carries this crate's magic and version but fails its
    /// integrity check: the object was damaged after it was created.
    #[error("corrupted shared object header: {what}")]
    Corrupted {
        /// What was found to be wrong.
        what: String,
    },

    /// The creator died (or gave up) before it finished initialising the
    /// object. [`ShmCell::open_or_create`](crate::ShmCell::open_or_create)
    /// takes such an object over; `open` reports it.
    #[error(
        "shared object {name:?} was abandoned during initialisation (creator pid {creator_pid})"
    )]
    AbandonedInit {
        /// The name of the object.
        name: String,
        /// The pid recorded by the creator, 0 if it never wrote one.
        creator_pid: u32,
    },

    /// A live process kept the object in its initialising state for longer
    /// than the bounded wait of `open`.
    #[error("shared object {name:?} is still being initialised by another process")]
    InitTimedOut {
        /// The name of the object.
        name: String,
    },

    /// Processes of another pid namespace are attached to the object, and
    /// its lock backend cannot work across pid namespaces: a robust
    /// mutex's futex word holds the holder's thread id *as its own pid
    /// namespace numbers it*, so two containers' threads can have the same
    /// id (each container's first process is pid 1), which gives
    /// `Deadlock` answers and two holders at once. `use_instead` names the
    /// backends that do work there. Once every process of the other
    /// namespace has detached, the object opens again (the namespace of
    /// the attached processes is recorded anew by the first to attach).
    #[error(
        "shared object {name:?} is in use by processes of another pid namespace \
         (pid:[{theirs}]; this process is in pid:[{ours}]): its {backend} lock \
         cannot work across pid namespaces (thread ids are numbered per namespace, \
         so two holders could look like one); use {use_instead}, which work there"
    )]
    ForeignPidNamespace {
        /// The name of the object.
        name: String,
        /// The lock backend that refused ([`LockKind::name`](crate::segment::LockKind::name)).
        backend: &'static str,
        /// The backends that work across pid namespaces, for the message.
        use_instead: &'static str,
        /// Inode of this process's pid namespace.
        ours: u64,
        /// Inode of the pid namespace of the processes attached now.
        theirs: u64,
    },

    /// The request cannot be served here (for example a lock on a network
    /// filesystem, or a value whose alignment exceeds a page).
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is not supported.
        what: String,
    },

    /// Snapshots ([`CreateOptions::snapshots`](crate::CreateOptions::snapshots))
    /// were asked for, or a cell that keeps them was opened, with a value
    /// type that may contain padding ([`ShmSafe::HAS_PADDING`](crate::ShmSafe::HAS_PADDING)):
    /// publishing copies every byte of the value, and padding bytes are
    /// uninitialised. Derive `ShmSafe` (which proves the absence of
    /// padding) or write the padding as explicit fields.
    #[error("snapshots need a value type without padding; {type_name} may have padding (ShmSafe::HAS_PADDING)")]
    SnapshotPadding {
        /// The value type.
        type_name: &'static str,
    },

    /// A descriptor given as a memfd cell (received over a socket,
    /// inherited) is not a memory file made by `memfd_create`: a regular
    /// file, a named shared-memory object, a socket, a pipe.
    #[error("not a memfd: the descriptor refers to {found:?}")]
    NotMemfd {
        /// What `/proc/self/fd/N` names.
        found: String,
    },

    /// A memfd given as a cell lacks the seals every memfd cell carries
    /// (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): another holder could
    /// shrink it under our mapping, so it is refused before it is mapped.
    #[error("memfd is not sealed: seals {seals:#x}, {needed:#x} needed")]
    NotSealed {
        /// The seals it carries (`F_GET_SEALS`).
        seals: u32,
        /// The seals a memfd cell must carry.
        needed: u32,
    },

    /// The lock backend cannot guard a cell of this backing: refused before
    /// anything is created or attached. A System V segment has no
    /// descriptor, so neither `flock` ([`FileLock`](crate::FileLock)) nor
    /// the liveness tokens of the semaphore and reader-writer backends
    /// (open-file-description locks on the segment) can work on it; use
    /// [`RobustMutex`](crate::RobustMutex).
    #[error("the {backend} lock cannot guard a {backing} cell: {reason}")]
    LockUnsupported {
        /// The lock backend (`flock`, `semaphore`).
        backend: &'static str,
        /// The backing (`System V`).
        backing: &'static str,
        /// Why.
        reason: &'static str,
    },

    /// Any other operating-system error, with the operation that failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation (usually the system call) that failed.
        op: &'static str,
        /// The error the operating system reported.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Maps the error of an operation on the object called `name` to the
    /// typed variants (`ENOENT`, `EEXIST`, `EACCES`/`EPERM`,
    /// `ENAMETOOLONG`), everything else to [`Error::Io`].
    pub(crate) fn from_io(op: &'static str, name: &str, err: io::Error) -> Error {
        match err.raw_os_error() {
            Some(errno::ENOENT) => Error::NotFound { name: name.into() },
            Some(errno::EEXIST) => Error::AlreadyExists { name: name.into() },
            Some(errno::EACCES) | Some(errno::EPERM) => {
                Error::PermissionDenied { name: name.into() }
            }
            Some(errno::ENAMETOOLONG) => Error::InvalidName {
                name: name.into(),
                reason: "too long for the operating system",
            },
            _ => Error::Io { op, source: err },
        }
    }

    pub(crate) fn io(op: &'static str, source: io::Error) -> Error {
        Error::Io { op, source }
    }
}

/// Why [`ShmCell::snapshot`](crate::ShmCell::snapshot) gave no value.
/// Never a torn value: these are the only other answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The cell was created without
    /// [`CreateOptions::snapshots`](crate::CreateOptions::snapshots): it
    /// keeps no published copy of its value. Take the lock instead.
    #[error("this cell was created without snapshots (CreateOptions::snapshots)")]
    NotEnabled,
    /// Writers rewrote the published copy during each of `attempts`
    /// attempts (each attempt survives one whole publication; only a
    /// writer that gets half-way through a second one spoils it). Try
    /// again later, or take the lock.
    #[error("no consistent snapshot in {attempts} attempts: writers kept republishing")]
    Contended {
        /// How many copies were tried.
        attempts: u32,
    },
}

/// Why a lock could not be acquired — or was acquired from a dead owner.
///
/// `G` is the guard type. [`LockError::OwnerDied`] carries it: the caller
/// **holds the lock**, the protected value may be half-updated, and the guard
/// must be repaired and [made consistent](crate::ShmGuard::make_consistent).
/// Dropping that guard without doing so leaves the lock permanently
/// [`NotRecoverable`](LockError::NotRecoverable) for every process (POSIX
/// robust-mutex semantics).
///
/// Because the owner-died variant borrows the cell through its guard, a
/// `LockError<Guard>` is not `'static` and cannot be boxed as it is; use
/// [`LockError::without_guard`] to get a `LockError<()>` for `?` and
/// `Box<dyn Error>`. For a [`ShmGuard`](crate::ShmGuard) that conversion
/// does **not** brick the cell: it marks the value suspect and unlocks, so
/// the next locker is told `OwnerDied` again (see `without_guard`).
#[must_use = "an OwnerDied error holds the lock; it must be repaired or dropped deliberately"]
pub enum LockError<G> {
    /// The previous holder died while holding the lock. The caller now holds
    /// it; the value may be inconsistent.
    OwnerDied(G),
    /// A previous owner died and its guard was dropped without
    /// `make_consistent`: the lock can never be acquired again.
    ///
    /// There is no way back for this object, on purpose and by necessity:
    /// glibc never revives a not-recoverable robust mutex, and
    /// re-initialising one in place is undefined while other processes may
    /// be inside `pthread_mutex_lock` on it; the other backends keep the
    /// same rule so that code does not depend on the backend. Remove the
    /// name ([`ShmCell::unlink`](crate::ShmCell::unlink)) and create a new
    /// cell. Processes still attached to the old object keep getting
    /// `NotRecoverable`; [`ShmCell::is_unlinked`](crate::ShmCell::is_unlinked)
    /// tells them the name has moved on, and they open it again.
    NotRecoverable,
    /// `try_lock`: another holder has it.
    WouldBlock,
    /// `lock_timeout`: the deadline passed while another holder had it.
    TimedOut,
    /// The calling thread already holds this lock (error-checking mutex:
    /// locking it again would deadlock).
    Deadlock,
    /// Any other error reported by the operating system.
    Os(io::Error),
}

impl<G: LockGuard> LockError<G> {
    /// Returns an error that owns nothing, is `Send + Sync + 'static` and
    /// converts into `Box<dyn Error>` (for `?`), giving up the guard an
    /// [`OwnerDied`](LockError::OwnerDied) error carries.
    ///
    /// What happens to that guard depends on its type:
    ///
    /// * [`ShmGuard`](crate::ShmGuard): the value is marked *suspect* in
    ///   the segment, the lock made consistent and released, so **the next
    ///   locker — in any process — gets `OwnerDied` again** and can repair
    ///   it. Converting an owner death for `?` never bricks the cell.
    /// * [`RobustMutexGuard`](crate::RobustMutexGuard) (a standalone mutex
    ///   has nowhere to record suspicion): dropped, which leaves the mutex
    ///   [`NotRecoverable`](LockError::NotRecoverable), as POSIX
    ///   prescribes for an unrepaired owner death.
    ///
    /// An explicit `drop` of an unrepaired owner-died guard always leaves
    /// the lock `NotRecoverable`: that is a decision, this is a conversion.
    pub fn without_guard(self) -> LockError<()> {
        self.map_guard(sealed::GiveUp::give_up)
    }
}

impl<G> LockError<G> {
    /// Applies `f` to the guard of an [`OwnerDied`](LockError::OwnerDied)
    /// error; other variants are carried over unchanged.
    pub fn map_guard<H>(self, f: impl FnOnce(G) -> H) -> LockError<H> {
        match self {
            LockError::OwnerDied(g) => LockError::OwnerDied(f(g)),
            LockError::NotRecoverable => LockError::NotRecoverable,
            LockError::WouldBlock => LockError::WouldBlock,
            LockError::TimedOut => LockError::TimedOut,
            LockError::Deadlock => LockError::Deadlock,
            LockError::Os(e) => LockError::Os(e),
        }
    }

    /// Returns the guard if the previous owner died, `None` otherwise.
    pub fn into_owner_died(self) -> Option<G> {
        match self {
            LockError::OwnerDied(g) => Some(g),
            _ => None,
        }
    }

    /// A short, stable name of the variant (`"OwnerDied"`, `"TimedOut"`, …),
    /// handy in logs and test assertions.
    pub fn kind(&self) -> &'static str {
        match self {
            LockError::OwnerDied(_) => "OwnerDied",
            LockError::NotRecoverable => "NotRecoverable",
            LockError::WouldBlock => "WouldBlock",
            LockError::TimedOut => "TimedOut",
            LockError::Deadlock => "Deadlock",
            LockError::Os(_) => "Os",
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            LockError::Os(e) => f.debug_tuple("Os").field(e).finish(),
            other => f.write_str(other.kind()),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => {
                f.write_str("the previous lock holder died; the value may be inconsistent")
            }
            LockError::NotRecoverable => {
                f.write_str("the lock is not recoverable: an owner died and nobody repaired it")
            }
            LockError::WouldBlock => f.write_str("the lock is held by another owner"),
            LockError::TimedOut => f.write_str("timed out waiting for the lock"),
            LockError::Deadlock => f.write_str("the calling thread already holds this lock"),
            LockError::Os(e) => write!(f, "lock operation failed: {e}"),
        }
    }
}

impl<G> std::error::Error for LockError<G> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Os(e) => Some(e),
            _ => None,
        }
    }
}

#[allow(private_interfaces, private_bounds)]
pub(crate) mod sealed {
    /// How a guard is given up by [`LockError::without_guard`](super::LockError::without_guard).
    pub trait GiveUp {
        /// Gives up an owner-died guard for a conversion (not a drop).
        fn give_up(self);
    }
}

/// A guard that a [`LockError::OwnerDied`] can carry: [`ShmGuard`](crate::ShmGuard),
/// [`RobustMutexGuard`](crate::RobustMutexGuard), `()` (an error converted
/// already) and [`Infallible`](std::convert::Infallible) (locks without
/// owner death). Sealed: it only says what
/// [`without_guard`](LockError::without_guard) does with the guard.
pub trait LockGuard: sealed::GiveUp {}

impl sealed::GiveUp for () {
    fn give_up(self) {}
}
impl LockGuard for () {}

impl sealed::GiveUp for std::convert::Infallible {
    fn give_up(self) {}
}
impl LockGuard for std::convert::Infallible {}

/// What a raw lock reports to the typed layer, before a guard exists.
#[derive(Debug)]
pub(crate) enum RawLockError {
    NotRecoverable,
    WouldBlock,
    TimedOut,
    Deadlock,
    Os(io::Error),
}

impl RawLockError {
    pub(crate) fn into_lock_error<G>(self) -> LockError<G> {
        match self {
            RawLockError::NotRecoverable => LockError::NotRecoverable,
            RawLockError::WouldBlock => LockError::WouldBlock,
            RawLockError::TimedOut => LockError::TimedOut,
            RawLockError::Deadlock => LockError::Deadlock,
            RawLockError::Os(e) => LockError::Os(e),
        }
    }
}

/// The message of [`Error::Incompatible`]: an object that is not this
/// crate's at all says so in words, not as a field mismatch.
fn incompatible_message(field: &str, expected: &str, found: &str) -> String {
    match field {
        "magic" => format!("not a shmsync object: it starts with \"{found}\", not shmsync's magic"),
        "file type" => format!("not a shmsync object: a {found}, not a regular file"),
        _ => format!("incompatible shared object: {field} is {found}, expected {expected}"),
    }
}

#[cfg(test)]
mod message_tests {
    use super::Error;

    #[test]
    fn a_foreign_object_is_named_as_such() {
        let e = crate::segment::header::check_prefix(b"hello, world").unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a shmsync object: it starts with \"hello, w\", not shmsync's magic"
        );
        let e = Error::Incompatible {
            field: "value_size",
            expected: "8".into(),
            found: "16".into(),
        };
        assert_eq!(
            e.to_string(),
            "incompatible shared object: value_size is 16, expected 8"
        );
    }
}

/// Why a read guard of a [`ShmCell<T, RobustRwLock>`](crate::ShmCell::read)
/// could not be had. A reader never gets a value that a dead writer may
/// have left half-written: [`WriterDied`](ReadError::WriterDied) says so
/// instead, until a writer repairs it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// A writer died holding the lock (or left the value marked suspect in
    /// the header: a panic, an owner-died error converted away) and no
    /// writer has repaired the value yet: it may be torn. The next `lock()` gets
    /// [`LockError::OwnerDied`] with the guard; once that guard is made
    /// consistent and dropped, reads succeed again.
    WriterDied,
    /// A writer's death was never repaired (its owner-died guard was
    /// dropped without `make_consistent`): the lock is unusable for good.
    NotRecoverable,
    /// `try_read`: a writer holds the lock or waits for it.
    WouldBlock,
    /// `read_timeout`: the deadline passed while a writer held or waited.
    TimedOut,
    /// The calling thread holds the write guard of this cell through this
    /// handle: waiting for it would never end.
    Deadlock,
    /// All reader slots of the cell are taken by live handles
    /// ([`READER_SLOTS`](crate::lock::READER_SLOTS)).
    NoReaderSlot,
    /// Any other error reported by the operating system.
    Os(io::Error),
}

impl ReadError {
    /// A short, stable name of the variant (`"WriterDied"`, `"WouldBlock"`,
    /// …), handy in logs and test assertions.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadError::WriterDied => "WriterDied",
            ReadError::NotRecoverable => "NotRecoverable",
            ReadError::WouldBlock => "WouldBlock",
            ReadError::TimedOut => "TimedOut",
            ReadError::Deadlock => "Deadlock",
            ReadError::NoReaderSlot => "NoReaderSlot",
            ReadError::Os(_) => "Os",
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::WriterDied => f.write_str(
                "a writer died holding the lock and the value is not repaired yet (it may be torn)",
            ),
            ReadError::NotRecoverable => {
                f.write_str("the lock is not recoverable: a writer died and nobody repaired it")
            }
            ReadError::WouldBlock => f.write_str("a writer holds or waits for the lock"),
            ReadError::TimedOut => f.write_str("timed out waiting for a writer"),
            ReadError::Deadlock => f.write_str("the calling thread holds the write lock"),
            ReadError::NoReaderSlot => f.write_str("all reader slots of the cell are taken"),
            ReadError::Os(e) => write!(f, "read lock operation failed: {e}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Os(e) => Some(e),
            _ => None,
        }
    }
}
