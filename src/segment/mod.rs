//! `Segment`: a mapping of a named POSIX shared-memory object with a
//! validated header.
//!
//! # Handshake
//!
//! Initialisation and attachment are tracked with an open-file-description
//! byte-range lock on byte 0 of the object (`fcntl(F_OFD_SETLK)`), not with
//! `flock`, for two reasons recorded in `DESIGN.md`'s corrections: `flock`
//! stays free for the `FileLock` lock backend on the same object, and an OFD
//! write → read conversion is atomic where a `flock` one is not.
//!
//! * **Create**: `shm_open(O_CREAT|O_EXCL|O_CLOEXEC)`, take the *write*
//!   lock, `fchmod` (the umask must not decide), `ftruncate` +
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

pub mod header;
pub mod inspect;
pub(crate) mod name;

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::Error;
use crate::sys;
use crate::sys::ofd::OfdLock;
use crate::sys::time::Monotonic;

pub use header::{HeaderInfo, LockKind, SegmentSpec};
use header::{HEADER_SIZE, STATE_INITIALISING, STATE_READY, STATE_UNINIT};
pub use name::MAX_SHM_NAME;

/// The byte the initialisation/attach lock covers.
const ATTACH_BYTE: u64 = 0;
/// How long `open` waits for a live creator to finish initialising.
pub(crate) const INIT_WAIT: Duration = Duration::from_secs(5);
/// How long an empty object is given to become a creator's (between its
/// exclusive create and its first lock) before it counts as abandoned.
const EMPTY_GRACE: Duration = Duration::from_millis(100);
/// Default permission bits of a new object.
pub const DEFAULT_MODE: u32 = 0o600;

/// Steps of initialisation, reported to the test hook that crash tests use
/// to kill a creator half-way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitStep {
    /// The object exists (exclusive create), empty and not yet locked.
    Opened,
    /// The object is locked by its creator, still empty.
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
}

static INIT_HOOK: std::sync::atomic::AtomicPtr<()> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Installs `hook`, called at each [`InitStep`] of every creation in this
/// process (tests use it to kill a creator mid-initialisation).
#[doc(hidden)]
pub fn set_init_hook(hook: Option<fn(InitStep)>) {
    let p = hook.map_or(std::ptr::null_mut(), |f| f as *mut ());
    INIT_HOOK.store(p, std::sync::atomic::Ordering::SeqCst);
}

fn init_step(step: InitStep) {
    let p = INIT_HOOK.load(std::sync::atomic::Ordering::Relaxed);
    if !p.is_null() {
        // SAFETY: the only non-null values stored are `fn(InitStep)`
        // pointers (see `set_init_hook`).
        let f: fn(InitStep) = unsafe { std::mem::transmute::<*mut (), fn(InitStep)>(p) };
        f(step);
    }
}

/// Options that only make sense when creating.
#[derive(Clone, Copy, Debug)]
pub struct CreateOptions {
    mode: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions { mode: DEFAULT_MODE }
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
pub struct Segment {
    // Field order matters: the mapping is unmapped before the fd (and with
    // it the attach lock) is closed.
    map: Mapping,
    fd: OwnedFd,
    name: String,
    info: HeaderInfo,
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize) -> Result<Mapping, Error> {
        let ptr = sys::mman::mmap_shared(fd, len).map_err(|e| Error::io("mmap", e))?;
        Ok(Mapping { ptr, len })
    }

    fn header(&self) -> &header::RawHeader {
        // SAFETY: every mapping is at least HEADER_SIZE bytes (validated or
        // laid out so), page-aligned, and the header's fields are plain
        // integers and atomics; bytes 0..144 are never written after Ready.
        unsafe { self.ptr.cast::<header::RawHeader>().as_ref() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
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
    /// `posix_fallocate`).
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
            options,
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
    pub fn lock_ptr(&self) -> NonNull<u8> {
        // SAFETY: the header was validated: lock_offset + lock_size ≤ len.
        unsafe { self.map.ptr.add(self.info.lock_offset as usize) }
    }

    /// The value area (`value_size` bytes at `value_offset`, aligned).
    pub fn value_ptr(&self) -> NonNull<u8> {
        // SAFETY: the header was validated: value_offset + value_size ≤ len.
        unsafe { self.map.ptr.add(self.info.value_offset as usize) }
    }

    /// The file descriptor (carries the attach lock; never close it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The live header words in the mapping.
    pub(crate) fn header(&self) -> &header::RawHeader {
        self.map.header()
    }

    /// Leaks the mapping and the descriptor: used when this process still
    /// holds a lock that lives in the mapping (unmapping it would stop the
    /// kernel from marking it when we die).
    pub(crate) fn leak(self) {
        std::mem::forget(self);
    }

    pub(crate) fn create_with(
        name: &str,
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
    ) -> Result<Segment, Error> {
        let cname = name::validate(name, MAX_SHM_NAME)?;
        spec.layout()?;
        let fd = sys::shm::shm_open(
            &cname,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            options.mode,
        )
        .map_err(|e| Error::from_io("shm_open", name, e))?;
        init_step(InitStep::Opened);
        // Until we hold the write lock, the object is visibly empty and
        // unlocked. An opener may hold a read lock for a moment while it
        // looks at it (wait for that); if we were descheduled for longer
        // than an opener's grace period, another process may have judged
        // the object abandoned and initialised it: then it is theirs, and we
        // neither touch nor unlink it.
        let deadline = Monotonic::now().after(INIT_WAIT);
        let mut backoff = Backoff::new();
        loop {
            let locked = sys::ofd::try_set(fd.as_fd(), OfdLock::Write, ATTACH_BYTE, 1)
                .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?;
            let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
            if st.st_size != 0 || !same_inode(&st, &cname) {
                return Err(Error::AlreadyExists { name: name.into() });
            }
            if locked {
                break;
            }
            if Monotonic::now() >= deadline {
                return Err(Error::InitTimedOut { name: name.into() });
            }
            backoff.sleep();
        }
        init_step(InitStep::Created);
        if let Err(e) = sys::fd::fchmod(fd.as_fd(), options.mode) {
            unlink_if_same(fd.as_fd(), &cname);
            return Err(Error::io("fchmod", e));
        }
        Self::initialise(fd, &cname, name, spec, init, true)
    }

    /// Sizes, maps and initialises `fd`, whose write lock this process
    /// holds; publishes Ready and converts to the attach (read) lock. On
    /// failure with `unlink_on_error`, the name is removed *while the lock
    /// is still held* (so nobody can have attached), and only if it still
    /// names this object.
    fn initialise(
        fd: OwnedFd,
        cname: &CStr,
        name: &str,
        spec: &SegmentSpec,
        init: Init<'_>,
        unlink_on_error: bool,
    ) -> Result<Segment, Error> {
        let fail = |fd: BorrowedFd<'_>, e: Error| {
            if unlink_on_error {
                unlink_if_same(fd, cname);
            }
            e
        };
        let layout = spec.layout()?;
        // Truncating to zero first makes every byte zero again when an
        // abandoned attempt is taken over.
        let sized = sys::fd::ftruncate(fd.as_fd(), 0)
            .and_then(|()| sys::fd::ftruncate(fd.as_fd(), layout.total_size))
            .map_err(|e| Error::io("ftruncate", e))
            .and_then(|()| {
                sys::fd::posix_fallocate(fd.as_fd(), layout.total_size)
                    .map_err(|e| Error::io("posix_fallocate", e))
            });
        if let Err(e) = sized {
            return Err(fail(fd.as_fd(), e));
        }
        init_step(InitStep::Sized);
        let map = match Mapping::new(fd.as_fd(), layout.total_size as usize) {
            Ok(m) => m,
            Err(e) => return Err(fail(fd.as_fd(), e)),
        };
        let bytes = header::build(spec, &layout, sys::proc::getpid());
        let info = header::decode(&bytes);
        let seg = Segment {
            map,
            fd,
            name: name.into(),
            info,
        };
        match Self::fill(&seg, &bytes, init) {
            Ok(()) => Ok(seg),
            Err(e) => Err(fail(seg.fd(), e)),
        }
    }

    /// Writes header, lock and value into a fresh mapping, publishes Ready
    /// and converts the write lock into the attach lock.
    fn fill(seg: &Segment, bytes: &[u8; HEADER_SIZE], init: Init<'_>) -> Result<(), Error> {
        // SAFETY: the mapping is `total_size ≥ HEADER_SIZE` bytes, freshly
        // zeroed by the truncation, and nobody else maps it while we hold
        // the write lock. The state word (offset 144) is stored below.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.map.ptr.as_ptr(), 144) };
        let state = &seg.header().state;
        state.store(STATE_INITIALISING, std::sync::atomic::Ordering::Release);
        init_step(InitStep::HeaderWritten);
        (init.lock)(seg.lock_ptr(), seg).map_err(|e| Error::io("lock initialisation", e))?;
        init_step(InitStep::LockInitialised);
        (init.value)(seg.value_ptr());
        init_step(InitStep::ValueWritten);
        state.store(STATE_READY, std::sync::atomic::Ordering::Release);
        init_step(InitStep::Published);
        // Atomic write → read conversion: no window in which a cleaner could
        // find the live segment unlocked.
        let ok = sys::ofd::try_set(seg.fd(), OfdLock::Read, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?;
        debug_assert!(ok, "converting our own write lock cannot conflict");
        Ok(())
    }

    fn open_inner(name: &str, expected: Option<&SegmentSpec>) -> Result<Segment, Error> {
        let cname = name::validate(name, MAX_SHM_NAME)?;
        let deadline = Monotonic::now().after(INIT_WAIT);
        let empty_deadline = Monotonic::now().after(EMPTY_GRACE);
        let mut backoff = Backoff::new();
        loop {
            let fd = sys::shm::shm_open(&cname, libc::O_RDWR, 0)
                .map_err(|e| Error::from_io("shm_open", name, e))?;
            match Self::attach(&fd, name, &cname, expected)? {
                Attach::Ready(info) => {
                    let map = Mapping::new(fd.as_fd(), info.total_size as usize)?;
                    let seg = Segment {
                        map,
                        fd,
                        name: name.into(),
                        info,
                    };
                    // Acquire pairs with the creator's Release store of Ready.
                    let state = seg
                        .header()
                        .state
                        .load(std::sync::atomic::Ordering::Acquire);
                    if state != STATE_READY {
                        return Err(Error::Corrupted {
                            what: format!("state changed to {state} while attached"),
                        });
                    }
                    return Ok(seg);
                }
                Attach::Busy if Monotonic::now() < deadline => {}
                Attach::Busy => return Err(Error::InitTimedOut { name: name.into() }),
                Attach::Empty if Monotonic::now() < empty_deadline => {}
                Attach::Empty => {
                    return Err(Error::AbandonedInit {
                        name: name.into(),
                        creator_pid: 0,
                    })
                }
                Attach::Replaced if Monotonic::now() < deadline => {}
                Attach::Replaced => return Err(Error::InitTimedOut { name: name.into() }),
                Attach::Abandoned(pid) => {
                    return Err(Error::AbandonedInit {
                        name: name.into(),
                        creator_pid: pid,
                    })
                }
            }
            drop(fd);
            backoff.sleep();
        }
    }

    /// Takes the attach (read) lock on `fd` and validates the object. On
    /// any answer but `Ready`, the lock goes with the fd when it is dropped.
    fn attach(
        fd: &OwnedFd,
        name: &str,
        cname: &CStr,
        expected: Option<&SegmentSpec>,
    ) -> Result<Attach, Error> {
        if !sys::ofd::try_set(fd.as_fd(), OfdLock::Read, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?
        {
            return Ok(Attach::Busy);
        }
        let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
        if !same_inode(&st, cname) {
            return Ok(Attach::Replaced);
        }
        check_regular(&st)?;
        let size = st.st_size as u64;
        if size == 0 {
            return Ok(Attach::Empty);
        }
        let mut bytes = [0u8; HEADER_SIZE];
        let n =
            sys::fd::pread_full(fd.as_fd(), &mut bytes, 0).map_err(|e| Error::io("pread", e))?;
        let our_size = expected
            .and_then(|spec| spec.layout().ok())
            .map(|l| l.total_size);
        if n >= HEADER_SIZE && our_size == Some(size) && bytes.iter().all(|&b| b == 0) {
            // Sized by a creator that died before writing the header (an
            // all-zero object of another size is foreign: Incompatible).
            return Ok(Attach::Abandoned(0));
        }
        header::check_prefix(&bytes[..n.min(size as usize)])?;
        if n < HEADER_SIZE {
            return Err(Error::TooSmall {
                size,
                needed: HEADER_SIZE as u64,
            });
        }
        let info = header::decode(&bytes);
        match info.state {
            STATE_READY => {}
            STATE_UNINIT | STATE_INITIALISING => return Ok(Attach::Abandoned(info.creator_pid)),
            other => {
                return Err(Error::Corrupted {
                    what: format!("unknown state word {other}"),
                })
            }
        }
        header::check_identity(&info, expected)?;
        if size < info.total_size {
            return Err(Error::TooSmall {
                size,
                needed: info.total_size,
            });
        }
        let _ = name;
        Ok(Attach::Ready(info))
    }

    /// Re-initialises an object whose creator died before Ready, if this
    /// process can take it over: it must get the exclusive lock (no
    /// creator, no attacher), the name must still name the same inode, and
    /// the state must still not be Ready. `Ok(None)` when another process
    /// got there first (the caller opens again).
    pub(crate) fn take_over_abandoned(
        name: &str,
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
    ) -> Result<Option<Segment>, Error> {
        let cname = name::validate(name, MAX_SHM_NAME)?;
        let fd = match sys::shm::shm_open(&cname, libc::O_RDWR, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::from_io("shm_open", name, e)),
        };
        if !sys::ofd::try_set(fd.as_fd(), OfdLock::Write, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?
        {
            return Ok(None);
        }
        let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
        if !same_inode(&st, &cname) {
            return Ok(None);
        }
        // Never touch (not even chmod) anything but a regular file.
        check_regular(&st)?;
        if !Self::is_abandoned_by_us(fd.as_fd(), st.st_size as u64, spec)? {
            // Completed after all (or not ours to judge): open it normally,
            // which reports whatever it is.
            return Ok(None);
        }
        // Best effort: the taker's mode (the object may belong to another
        // user who gave us write access).
        let _ = sys::fd::fchmod(fd.as_fd(), options.mode);
        Self::initialise(fd, &cname, name, spec, init, false).map(Some)
    }

    /// Whether an object (whose exclusive lock we hold) is a half-built
    /// segment of ours: empty (the creator died right after creating it),
    /// or with our magic and not Ready, or all zeros at exactly the size our
    /// creator would have given it (it died between sizing and writing the
    /// header). Anything else — a foreign object of any kind — is never
    /// taken over.
    fn is_abandoned_by_us(
        fd: BorrowedFd<'_>,
        size: u64,
        spec: &SegmentSpec,
    ) -> Result<bool, Error> {
        if size == 0 {
            return Ok(true);
        }
        let mut bytes = [0u8; HEADER_SIZE];
        let n = sys::fd::pread_full(fd, &mut bytes, 0).map_err(|e| Error::io("pread", e))?;
        if n < HEADER_SIZE {
            return Ok(false);
        }
        let state = u32::from_ne_bytes(bytes[144..148].try_into().expect("4 bytes"));
        let ours =
            bytes[..8] == header::MAGIC && (state == STATE_UNINIT || state == STATE_INITIALISING);
        let zero_sized_by_us = size == spec.layout()?.total_size && bytes.iter().all(|&b| b == 0);
        Ok(ours || zero_sized_by_us)
    }
}

/// A segment is a regular file: a FIFO, socket or device under the name is
/// someone else's object, reported and never touched.
fn check_regular(st: &libc::stat) -> Result<(), Error> {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => return Ok(()),
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFDIR => "directory",
        _ => "other",
    };
    Err(Error::Incompatible {
        field: "file type",
        expected: "regular file".into(),
        found: kind.into(),
    })
}

/// Removes the name if it still names the object open as `fd` (the caller
/// holds that object's exclusive lock, so nobody is attached to it).
fn unlink_if_same(fd: BorrowedFd<'_>, cname: &CStr) {
    if let Ok(st) = sys::fd::fstat(fd) {
        if same_inode(&st, cname) {
            let _ = sys::shm::shm_unlink(cname);
        }
    }
}

enum Attach {
    Ready(HeaderInfo),
    Busy,
    Empty,
    Replaced,
    Abandoned(u32),
}

/// Whether the name still refers to the inode `st` describes (a cleaner may
/// have unlinked it, and another process created a new one, while we
/// waited).
fn same_inode(st: &libc::stat, cname: &CStr) -> bool {
    let path = name::shm_path(cname.to_str().unwrap_or_default());
    match sys::fd::lstat(&path) {
        Ok(p) => p.st_dev == st.st_dev && p.st_ino == st.st_ino,
        Err(_) => false,
    }
}

/// Bounded exponential sleep for the rare waits of open (a creator still
/// initialising): 50 µs doubling to 5 ms.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            next: Duration::from_micros(50),
        }
    }

    pub(crate) fn sleep(&mut self) {
        std::thread::sleep(self.next);
        self.next = (self.next * 2).min(Duration::from_millis(5));
    }
}

/// Reads the header of the object `name` without mapping it and without
/// taking any lock: for tools that list and inspect objects. Returns the
/// object's size and, if it is at least a header long, the decoded header.
pub fn peek(name: &str) -> Result<(u64, Option<HeaderInfo>), Error> {
    let cname = name::validate(name, MAX_SHM_NAME)?;
    // O_NONBLOCK: opening a FIFO someone put under the name must not wait
    // for a writer (it is then refused as not a regular file).
    let fd = sys::shm::shm_open(&cname, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .map_err(|e| Error::from_io("shm_open", name, e))?;
    let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
    check_regular(&st)?;
    let mut bytes = [0u8; HEADER_SIZE];
    let n = sys::fd::pread_full(fd.as_fd(), &mut bytes, 0).map_err(|e| Error::io("pread", e))?;
    header::check_prefix(&bytes[..n])?;
    Ok((
        st.st_size as u64,
        (n == HEADER_SIZE).then(|| header::decode(&bytes)),
    ))
}
