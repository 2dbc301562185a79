//! `Segment`: a mapping of a named POSIX shared-memory object with a
//! validated header.
//!
//! # Handshake
//!
//! Initialisation and attachment are tracked with an open-file-description
//! byte-range lock on byte 0 of the object (`fcntl(F_OFD_SETLK)`), not with
//! `flock`, for two reasons (README, "How it works"): `flock`
//! stays free for the `FileLock` lock backend on the same object, and an OFD
//! write → read conversion is atomic where a `flock` one is not.
//!
//! * **Create**: `open("/dev/shm", O_TMPFILE|O_RDWR|O_CLOEXEC)` (a file
//!   with no name yet), take the *write* lock, `fchmod` (the umask must not
//!   decide; checked with a new `fstat`), and only then give it its name
//!   with `linkat("/proc/self/fd/N", …, "/dev/shm/NAME",
//!   AT_SYMLINK_FOLLOW)` (`EEXIST`: [`Error::AlreadyExists`]). So no
//!   process ever sees a live creator's object unlocked: an object that is
//!   unlocked and not Ready is abandoned, proven by the kernel's lock and
//!   not by a timeout, and a creator killed before the link leaves
//!   nothing. Then `ftruncate` +
//!   `posix_fallocate` (running out of tmpfs is an error now, not `SIGBUS`
//!   later), write the header (state Initialising), initialise the lock and
//!   the value, store `Ready` (Release), convert the write lock to a *read*
//!   lock atomically.
//! * **Open**: take the *read* lock (waiting, bounded, while a creator holds
//!   the write lock), check that the name still names this inode, `fstat`,
//!   `pread` and validate the header, and only then map exactly
//!   `total_size` bytes. A header that is not Ready while nobody holds the
//!   write lock belongs to a creator that died: [`Error::AbandonedInit`].
//! * **Attached**: every handle keeps its read lock for the life of its
//!   mapping, so a cleaner whose non-blocking *write* lock succeeds knows no
//!   process is attached.
//!
//! A handle never unlinks the name on drop; [`Segment::unlink`] does.
//!
//! The same header, validation and handshake serve the other
//! [`Backing`]s: anonymous sealed memfds (`memfd.rs`: no name; a receiver
//! checks the seals, then attaches through a description of its own) and
//! files on a local filesystem (`file.rs`: through a path; the header's
//! `boot_id` resets the lock state on the first open after a reboot).
//! System V segments (`sysv.rs`) have no descriptor: they are validated
//! through `shmctl(IPC_STAT)` and a read-only `shmat`, and their handshake
//! uses the kernel's `shm_nattch` and a claim on the header's state word
//! instead of the byte-0 lock (the design is in that file).

mod check;
mod file;
mod handles;
mod handshake;
pub mod header;
mod layout;
#[allow(dead_code)] // the backends built on it land next (semaphore holder, reader slots)
pub(crate) mod liveness;
mod memfd;
pub(crate) mod name;
pub(crate) mod sysv;
mod sysv_key;
mod validate;

pub(crate) use handshake::{Backoff, ATTACH_BYTE, INIT_WAIT};
pub use validate::peek;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use crate::error::Error;
use crate::sys;

#[cfg(feature = "testing")]
#[doc(hidden)]
pub use file::set_boot_id_override;
pub use header::{HeaderInfo, LockKind, SegmentSpec};
pub use name::MAX_SHM_NAME;
pub use sysv::SysvKey;

/// Where a segment's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backing {
    /// A named POSIX shared-memory object (`shm_open`, `/dev/shm/NAME`).
    Named,
    /// An anonymous, sealed memory file (`memfd_create`): shared by
    /// inheritance or by passing its descriptor; no name, nothing to clean.
    Memfd,
    /// A regular file on a local filesystem: the value survives a reboot.
    File,
    /// A System V segment (`shmget`): found by its `key` (0 for an
    /// `IPC_PRIVATE` segment, or once removed), attached by its `id`.
    SysV {
        /// The key it was made with (`IPC_PRIVATE` = 0).
        key: i32,
        /// The kernel's id of the segment (`ipcs -m` shows it).
        id: i32,
    },
}

/// Default permission bits of a new object.
pub const DEFAULT_MODE: u32 = 0o600;

/// Steps of initialisation, where crash tests kill a creator half-way
/// (feature `testing`: `testing::points_at_init_steps`; without it the
/// steps compile to nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitStep {
    /// The object is made without a name (`O_TMPFILE`), not yet locked: a
    /// creator that dies here leaves nothing.
    Opened,
    /// The object is locked by its creator, has its mode and is linked
    /// under its name, still empty.
    Created,
    /// Its size is set and its pages are reserved.
    Sized,
    /// The header is written (state Initialising).
    HeaderWritten,
    /// The lock state is initialised.
    LockInitialised,
    /// The value is written.
    ValueWritten,
    /// `Ready` is published (the write lock is still held).
    Published,
}

impl InitStep {
    /// Every step, in order.
    pub const ALL: [InitStep; 7] = [
        InitStep::Opened,
        InitStep::Created,
        InitStep::Sized,
        InitStep::HeaderWritten,
        InitStep::LockInitialised,
        InitStep::ValueWritten,
        InitStep::Published,
    ];

    /// A stable name for the step.
    pub fn name(self) -> &'static str {
        match self {
            InitStep::Opened => "opened",
            InitStep::Created => "created",
            InitStep::Sized => "sized",
            InitStep::HeaderWritten => "header-written",
            InitStep::LockInitialised => "lock-initialised",
            InitStep::ValueWritten => "value-written",
            InitStep::Published => "published",
        }
    }

    /// The name of the step's kill point: `"init:"` + [`name`](Self::name)
    /// (`testing::points_at_init_steps` makes it a kill point).
    pub fn point(self) -> &'static str {
        match self {
            InitStep::Opened => "init:opened",
            InitStep::Created => "init:created",
            InitStep::Sized => "init:sized",
            InitStep::HeaderWritten => "init:header-written",
            InitStep::LockInitialised => "init:lock-initialised",
            InitStep::ValueWritten => "init:value-written",
            InitStep::Published => "init:published",
        }
    }
}

/// Installs `hook`, called at each [`InitStep`] of every creation in this
/// process (tests use it to act at a precise step; feature `testing`).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn set_init_hook(hook: Option<fn(InitStep)>) {
    crate::steps::set_init_hook(hook);
}

/// Marks `step` of a creation (a kill point for crash tests, see
/// [`crate::steps`]).
#[inline(always)]
fn init_step(step: InitStep) {
    crate::steps::init(step);
}

/// Options that only make sense when creating.
#[derive(Clone, Copy, Debug)]
pub struct CreateOptions {
    mode: u32,
    snapshots: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            mode: DEFAULT_MODE,
            snapshots: false,
        }
    }
}

impl CreateOptions {
    /// Default options: mode `0600`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Permission bits of the new object, applied with `fchmod` after
    /// creation so that the umask does not decide. Default `0o600`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Whether the cell keeps published copies of its value for
    /// [`ShmCell::snapshot`](crate::ShmCell::snapshot): a sequence word and
    /// two copies of the value after it in the segment, which every
    /// unlock after a consistent write refreshes. Default `false` (it
    /// costs each write a copy of the value; see the README).
    ///
    /// Only for value types without padding
    /// ([`ShmSafe::HAS_PADDING`](crate::ShmSafe::HAS_PADDING) `false`):
    /// creating such a cell for another type is
    /// [`Error::SnapshotPadding`]. A
    /// standalone [`Segment::create`] ignores it.
    pub fn snapshots(mut self, on: bool) -> Self {
        self.snapshots = on;
        self
    }

    /// Whether [`snapshots`](Self::snapshots) is on.
    pub fn has_snapshots(&self) -> bool {
        self.snapshots
    }
}

/// Publishes the initial value of a new segment as copy 0 of its snapshot
/// area (sequence word 0).
///
/// # Safety
///
/// `area` is a zeroed snapshot area laid out for `value_size` bytes and
/// `value` an initialised value area of that size, both in a mapping no
/// other process can reach yet.
unsafe fn snapshot_init(area: NonNull<u8>, value: NonNull<u8>, value_size: usize) {
    // SAFETY: forwarded from the caller; copy 0 starts SNAPSHOT_ALIGN bytes
    // into the area and holds at least `value_size` bytes. An untyped copy.
    unsafe {
        std::ptr::copy_nonoverlapping(
            value.as_ptr(),
            area.as_ptr().add(header::SNAPSHOT_ALIGN as usize),
            value_size,
        )
    };
}

/// Writes the lock state and then the value of a new segment. Called with
/// the initialisation lock held; the pointers are valid, aligned, and the
/// lock area is zeroed. The lock initialiser also gets the segment being
/// built (its name and descriptor), for backends that make companion
/// objects named after it.
pub(crate) struct Init<'a> {
    pub(crate) lock: &'a mut dyn FnMut(NonNull<u8>, &Segment) -> std::io::Result<()>,
    pub(crate) value: &'a mut dyn FnMut(NonNull<u8>),
}

/// A mapping of a named shared-memory object with a validated header.
///
/// The handle owns its file descriptor (which carries the attach lock) and
/// its mapping; dropping it unmaps and closes but never unlinks the name.
/// Like a [`ShmCell`](crate::ShmCell), it counts itself in the header's
/// [`handles` word](header#the-handles-word) while attached, so that
/// `shmsync clean` can tell a segment whose users were killed from one
/// they all left normally.
pub struct Segment {
    // Field order matters: the mapping is unmapped before the fd (and with
    // it the attach lock) is closed.
    map: Mapping,
    /// `None` for a System V segment, which has no descriptor.
    fd: Option<OwnedFd>,
    name: String,
    info: HeaderInfo,
    /// The pid of the process that counted this handle in the header's
    /// `handles` word (0: not counted); only it takes its count away.
    counted_by: u32,
    backing: Backing,
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Attached with `shmat` (detached with `shmdt`), not `mmap`ed.
    sysv: bool,
}

impl Mapping {
    /// Maps a validated, Ready segment open as `fd` into a handle,
    /// re-checking `state` through the mapping (Acquire, paired with the
    /// creator's Release of Ready).
    fn ready_segment(
        fd: OwnedFd,
        info: HeaderInfo,
        name: String,
        backing: Backing,
    ) -> Result<Segment, Error> {
        let map = Mapping::new(fd.as_fd(), info.total_size as usize)?;
        let mut seg = Segment {
            map,
            fd: Some(fd),
            name,
            info,
            counted_by: 0,
            backing,
        };
        let state = seg
            .header()
            .state
            .load(std::sync::atomic::Ordering::Acquire);
        if state != header::STATE_READY {
            return Err(Error::Corrupted {
                what: format!("state changed to {state} while attached"),
            });
        }
        seg.count_opened();
        Ok(seg)
    }

    fn new(fd: BorrowedFd<'_>, len: usize) -> Result<Mapping, Error> {
        let ptr = sys::mman::mmap_shared(fd, len).map_err(|e| Error::io("mmap", e))?;
        Ok(Mapping {
            ptr,
            len,
            sysv: false,
        })
    }

    #[inline(always)]
    fn header(&self) -> &header::RawHeader {
        // SAFETY: every mapping is at least HEADER_SIZE bytes (validated or
        // laid out so), page-aligned, and the header's fields are plain
        // integers and atomics; bytes 0..144 are never written after Ready.
        unsafe { self.ptr.cast::<header::RawHeader>().as_ref() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.sysv {
            // SAFETY: the address was returned by shmat, and no borrow of
            // it outlives its owner (guards borrow their cell).
            let _ = unsafe { sys::sysv::shmdt(self.ptr) };
            return;
        }
        // SAFETY: the mapping was made by mmap_shared with this length, and
        // no borrow of it outlives its owner (guards borrow their cell).
        let _ = unsafe { sys::mman::munmap(self.ptr, self.len) };
    }
}

// SAFETY: the mapping is process-wide and shared memory is accessed through
// atomics or under the segment's lock; the handle holds no thread-bound
// state.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only hands out raw pointers and immutable
// header information.
unsafe impl Sync for Segment {}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("len", &self.map.len)
            .finish()
    }
}

impl Segment {
    /// Creates the object `name` exclusively for `spec`, with a zeroed lock
    /// area and value (`shm_open(O_CREAT|O_EXCL)`, `ftruncate`,
    /// `posix_fallocate`, `mmap`).
    ///
    /// A standalone segment's lock area is the caller's to initialise (for
    /// example with [`RobustMutex::init`](crate::RobustMutex::init)), so
    /// `spec.lock_kind` must be [`LockKind::External`]; segments guarded by
    /// a lock shmsync manages are made by [`ShmCell`](crate::ShmCell), which
    /// refuses external ones.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::AlreadyExists`],
    /// [`Error::PermissionDenied`], [`Error::Unsupported`] for an impossible
    /// layout or a managed lock kind, [`Error::Io`] (e.g. `ENOSPC` from
    /// `posix_fallocate`, `EMFILE`); on any error nothing is left under the
    /// name.
    pub fn create(
        name: &str,
        spec: &SegmentSpec,
        options: &CreateOptions,
    ) -> Result<Segment, Error> {
        if spec.lock_kind != LockKind::External {
            return Err(Error::Unsupported {
                what: format!(
                    "Segment::create with lock kind {} (only ShmCell initialises managed locks; use LockKind::External)",
                    spec.lock_kind.name()
                ),
            });
        }
        Self::create_with(
            name,
            spec,
            // Nobody would publish into a snapshot area of a standalone
            // segment.
            &options.snapshots(false),
            Init {
                lock: &mut |_, _| Ok(()),
                value: &mut |_| {},
            },
        )
    }

    /// Opens the existing object `name`, which must have been made for
    /// `spec`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`], [`Error::TooSmall`],
    /// [`Error::Incompatible`], [`Error::Corrupted`],
    /// [`Error::AbandonedInit`], [`Error::InitTimedOut`].
    pub fn open(name: &str, spec: &SegmentSpec) -> Result<Segment, Error> {
        Self::open_inner(name, Some(spec))
    }

    /// Removes the name `name` (`shm_unlink`). Attached processes keep their
    /// mappings.
    pub fn unlink(name: &str) -> Result<(), Error> {
        let c = name::validate(name, MAX_SHM_NAME)?;
        sys::shm::shm_unlink(&c).map_err(|e| Error::from_io("shm_unlink", name, e))
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the segment's bytes live.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Always false: a segment holds at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The header as validated when the segment was opened.
    pub fn info(&self) -> &HeaderInfo {
        &self.info
    }

    /// Start of the mapping. Valid for `len()` bytes while `self` lives.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.map.ptr
    }

    /// The lock state area (`lock_size` bytes at `lock_offset`).
    #[inline(always)]
    pub fn lock_ptr(&self) -> NonNull<u8> {
        // SAFETY: the header was validated: lock_offset + lock_size ≤ len.
        unsafe { self.map.ptr.add(self.info.lock_offset as usize) }
    }

    /// The value area (`value_size` bytes at `value_offset`, aligned).
    #[inline(always)]
    pub fn value_ptr(&self) -> NonNull<u8> {
        // SAFETY: the header was validated: value_offset + value_size ≤ len.
        unsafe { self.map.ptr.add(self.info.value_offset as usize) }
    }

    /// The snapshot area (see [`header::SNAPSHOT_ALIGN`]), if the segment
    /// was created with [`CreateOptions::snapshots`].
    #[inline]
    pub(crate) fn snapshot_ptr(&self) -> Option<NonNull<u8>> {
        // SAFETY: the header was validated: a non-zero snapshot_offset is
        // the start of a snapshot area that ends at total_size = len.
        (self.info.snapshot_offset != 0)
            .then(|| unsafe { self.map.ptr.add(self.info.snapshot_offset as usize) })
    }

    /// The file descriptor (carries the attach lock; never close it).
    ///
    /// # Panics
    ///
    /// For a System V segment ([`Backing::SysV`]), which has no descriptor
    /// (such segments are made only inside [`ShmCell`](crate::ShmCell),
    /// whose lock backends that need a descriptor refuse them).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .map(AsFd::as_fd)
            .expect("a System V segment has no file descriptor")
    }

    /// The live header words in the mapping.
    #[inline(always)]
    pub(crate) fn header(&self) -> &header::RawHeader {
        self.map.header()
    }

    /// Counts this handle in the header's `handles` word (see [the format
    /// docs](header#the-handles-word)): an opener, once attached and mapped.
    pub(super) fn count_opened(&mut self) {
        let Some(fd) = &self.fd else {
            return; // System V: the kernel's shm_nattch is the count
        };
        handles::opened(self.header(), fd.as_fd());
        self.counted(sys::proc::getpid());
    }

    /// Records that process `pid` counted this handle (uncounted when it is
    /// dropped, or when the process exits normally).
    pub(super) fn counted(&mut self, pid: u32) {
        self.counted_by = pid;
        handles::register(self);
    }

    /// Leaks the mapping and the descriptor: used when this process still
    /// holds a lock that lives in the mapping (unmapping it would stop the
    /// kernel from marking it when we die). The handle stays counted in the
    /// `handles` word, as a crash would leave it.
    pub(crate) fn leak(self) {
        handles::unregister(&self);
        std::mem::forget(self);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Before the fields go (unmap, then close and with it the attach
        // lock): a cleaner must never see nobody attached with this
        // handle still counted.
        if self.counted_by != 0 {
            handles::detach(self);
        }
    }
}
