//! The initialisation and attach handshake on byte [`ATTACH_BYTE`] of the
//! object, with open-file-description byte locks (see the [module
//! docs](super)): create, initialise and publish; open and attach; take
//! over an abandoned initialisation.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::check::Judged;
use super::header::{self, HeaderInfo, LockKind, SegmentSpec, HEADER_SIZE};
use super::header::{STATE_INITIALISING, STATE_READY, STATE_UNINIT};
use super::validate::{check_regular, same_inode, unlink_if_same};
use super::{
    init_step, name, Backing, CreateOptions, Init, InitStep, Mapping, Segment, MAX_SHM_NAME,
};
use crate::error::Error;
use crate::sys;
use crate::sys::errno;
use crate::sys::fd::{oflag, FileStat};
use crate::sys::fd_lock::OfdLock;
use crate::sys::time::Monotonic;

/// The byte the initialisation/attach lock covers.
pub(crate) const ATTACH_BYTE: u64 = 0;
/// How long `open` waits for a live creator to finish initialising.
pub(crate) const INIT_WAIT: Duration = Duration::from_secs(5);
/// How long an empty object is given to become a creator's (between its
/// exclusive create and its first lock) before it counts as abandoned.
///
/// This crate's creators never show an empty object unlocked (they link it
/// under its name with the write lock held); the grace is for objects made
/// the older way (`shm_open(O_CREAT|O_EXCL)`, then lock) by other writers.
const EMPTY_GRACE: Duration = Duration::from_millis(100);
/// How long an opener keeps trying before it answers
/// [`Error::ForeignPidNamespace`]: two processes of one namespace that
/// attach at the same moment to a segment last used from another one each
/// see the other attached, and both find the old record; one of them must
/// get the segment alone to record their namespace anew.
const FOREIGN_NS_GRACE: Duration = Duration::from_millis(200);

impl Segment {
    pub(crate) fn create_with(
        name: &str,
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
    ) -> Result<Segment, Error> {
        let cname = name::validate(name, MAX_SHM_NAME)?;
        spec.layout()?;
        // The object is made without a name (O_TMPFILE), locked, given its
        // mode and only then linked under the name: no process ever sees it
        // empty and unlocked while its creator lives. An opener finding the
        // write lock held waits for a *live* creator (the kernel drops the
        // lock when it dies); one finding an object unlocked and not Ready
        // knows its creator is gone. A creator killed before the link
        // leaves nothing at all.
        // (ENOENT here is a missing /dev/shm or /proc, not a missing name.)
        let sys_err = |op, e: std::io::Error| match e.raw_os_error() {
            Some(errno::ENOENT) => Error::io(op, e),
            _ => Error::from_io(op, name, e),
        };
        let fd = sys::fd::open_tmpfile(&name::shm_dir(), options.mode)
            .map_err(|e| sys_err("open(/dev/shm, O_TMPFILE)", e))?;
        init_step(InitStep::Opened);
        let locked = sys::fd_lock::ofd_try_set(fd.as_fd(), OfdLock::Write, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?;
        debug_assert!(locked, "nobody else can reach an unnamed file");
        if !locked {
            return Err(Error::io("fcntl(F_OFD_SETLK)", errno::error(errno::EAGAIN)));
        }
        set_mode(fd.as_fd(), options.mode)?;
        match sys::fd::link_fd(fd.as_fd(), &name::shm_path(name)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(errno::EEXIST) => {
                return Err(Error::AlreadyExists { name: name.into() })
            }
            Err(e) => return Err(sys_err("linkat(/proc/self/fd/N)", e)),
        }
        init_step(InitStep::Created);
        Self::initialise(fd, &cname, name, spec, options, init, true)
    }

    /// Sizes, maps and initialises `fd`, whose write lock this process
    /// holds; publishes Ready and converts to the attach (read) lock. On
    /// failure with `unlink_on_error`, the name is removed *while the lock
    /// is still held* (so nobody can have attached), and only if it still
    /// names this object.
    pub(super) fn initialise(
        fd: OwnedFd,
        cname: &CStr,
        name: &str,
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
        unlink_on_error: bool,
    ) -> Result<Segment, Error> {
        let fail = |fd: BorrowedFd<'_>, e: Error| {
            if unlink_on_error {
                unlink_if_same(fd, cname);
            }
            e
        };
        let layout = spec.layout_with(options.snapshots)?;
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
        let bytes = header::build(spec, &layout, creator());
        let info = header::decode(&bytes);
        let mut seg = Segment {
            map,
            fd: Some(fd),
            name: name.into(),
            info,
            counted_by: 0,
            backing: Backing::Named,
        };
        match Self::fill(&seg, &bytes, init) {
            Ok(()) => {
                seg.counted(sys::proc::getpid());
                Ok(seg)
            }
            Err(e) => Err(fail(seg.fd(), e)),
        }
    }

    /// Writes header, lock and value into a fresh mapping, publishes Ready
    /// and converts the write lock into the attach lock.
    pub(super) fn fill(
        seg: &Segment,
        bytes: &[u8; HEADER_SIZE],
        init: Init<'_>,
    ) -> Result<(), Error> {
        // SAFETY: the mapping is `total_size ≥ HEADER_SIZE` bytes, freshly
        // zeroed by the truncation, and nobody else maps it while we hold
        // the write lock. The state word (and what follows) is stored below.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.map.ptr.as_ptr(), header::at!(state))
        };
        let state = &seg.header().state;
        state.store(STATE_INITIALISING, std::sync::atomic::Ordering::Release);
        init_step(InitStep::HeaderWritten);
        (init.lock)(seg.lock_ptr(), seg).map_err(|e| {
            // A backend reports its own precise errors (a companion object
            // that exists already) wrapped in the io::Error.
            if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
                if let Ok(inner) = e.into_inner().expect("checked").downcast::<Error>() {
                    return *inner;
                }
                unreachable!("checked to be an Error");
            }
            Error::io("lock initialisation", e)
        })?;
        init_step(InitStep::LockInitialised);
        (init.value)(seg.value_ptr());
        if let Some(area) = seg.snapshot_ptr() {
            // SAFETY: the layout places the snapshot area (sequence word 0,
            // both copies zero) inside the mapping, which is still private
            // to us; the value area is initialised.
            unsafe { super::snapshot_init(area, seg.value_ptr(), seg.info.value_size as usize) };
            seg.header().snapshot_offset.store(
                seg.info.snapshot_offset,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        init_step(InitStep::ValueWritten);
        // Counted before Ready: a creator killed from here on leaves a
        // count that says so.
        super::handles::created(seg.header());
        // The creator is the first attached process: its namespace is the
        // attachers' (see `settle_pid_namespace`).
        seg.header()
            .attach_pid_ns
            .store(seg.info.pid_namespace, std::sync::atomic::Ordering::Relaxed);
        state.store(STATE_READY, std::sync::atomic::Ordering::Release);
        init_step(InitStep::Published);
        if seg.fd.is_none() {
            // A System V segment: no descriptor, no lock to convert (its
            // creator's attachment is what `shm_nattch` counts).
            return Ok(());
        }
        // Atomic write → read conversion: no window in which a cleaner could
        // find the live segment unlocked.
        let ok = sys::fd_lock::ofd_try_set(seg.fd(), OfdLock::Read, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?;
        debug_assert!(ok, "converting our own write lock cannot conflict");
        Ok(())
    }

    pub(super) fn open_inner(name: &str, expected: Option<&SegmentSpec>) -> Result<Segment, Error> {
        let cname = name::validate(name, MAX_SHM_NAME)?;
        let deadline = Monotonic::now().after(INIT_WAIT);
        let empty_deadline = Monotonic::now().after(EMPTY_GRACE);
        let ns_deadline = Monotonic::now().after(FOREIGN_NS_GRACE);
        let mut backoff = Backoff::new();
        loop {
            let fd = sys::shm::shm_open(&cname, oflag::O_RDWR, 0)
                .map_err(|e| Error::from_io("shm_open", name, e))?;
            match Self::attach(&fd, name, &cname, expected)? {
                Attach::Ready(info) => {
                    let map = Mapping::new(fd.as_fd(), info.total_size as usize)?;
                    let mut seg = Segment {
                        map,
                        fd: Some(fd),
                        name: name.into(),
                        info,
                        counted_by: 0,
                        backing: Backing::Named,
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
                    match seg.settle_pid_namespace() {
                        Ok(()) => {
                            seg.count_opened();
                            return Ok(seg);
                        }
                        Err(Error::ForeignPidNamespace { .. })
                            if Monotonic::now() < ns_deadline =>
                        {
                            // Detach (drop) and try again: see
                            // FOREIGN_NS_GRACE.
                            drop(seg);
                            backoff.sleep();
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
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

    /// Records or checks the pid namespace of the processes attached to
    /// this segment (header word `attach_pid_ns`), on a fresh attach (this
    /// process holds the attach read lock).
    ///
    /// If nobody else is attached — the atomic upgrade of our read lock to
    /// a write lock succeeds only then, and while we hold it nobody can
    /// attach — this process records its namespace and converts back to
    /// the read lock, atomically. Otherwise the record was made by a
    /// process attached now or before them all, and cannot change while we
    /// stay attached: a robust mutex (whose futex word holds
    /// namespace-local thread ids) refuses a record of another namespace.
    /// So a segment whose users all left (a restarted container) is
    /// recorded anew by the first to attach, never refused for good.
    fn settle_pid_namespace(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        let ours = sys::proc::pid_namespace();
        let word = &self.header().attach_pid_ns;
        // Already our namespace: recording it again (if alone) would store
        // the same value, and nobody can change it while we hold the read
        // lock (a record needs the write lock), so the upgrade attempt (a
        // failing fcntl whenever others are attached) is skipped. An
        // unknown namespace (0) still takes the path below.
        if ours != 0 && word.load(Ordering::Relaxed) == ours {
            return Ok(());
        }
        if sys::fd_lock::ofd_try_set(self.fd(), OfdLock::Write, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?
        {
            word.store(ours, Ordering::Relaxed);
            let ok = sys::fd_lock::ofd_try_set(self.fd(), OfdLock::Read, ATTACH_BYTE, 1)
                .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?;
            debug_assert!(ok, "converting our own write lock cannot conflict");
            return Ok(());
        }
        // Written under the write lock by the process that attached alone,
        // which released it (the kernel's lock handover orders the store
        // before our read).
        let theirs = word.load(Ordering::Relaxed);
        // 0: a namespace that could not be read (no /proc): nothing to
        // compare.
        if ours == 0 || theirs == 0 || ours == theirs {
            return Ok(());
        }
        match self.info.lock_kind() {
            // Both hold thread ids in a robust futex word (the read-write
            // lock's exclusive side is a robust mutex).
            Some(kind @ (LockKind::RobustMutex | LockKind::RobustRwLock)) => {
                Err(Error::ForeignPidNamespace {
                    name: self.name.clone(),
                    backend: kind.name(),
                    use_instead:
                        "the NamedSemaphore or FileLock backend (ShmCell<T, NamedSemaphore>, \
                              ShmCell<T, FileLock>)",
                    ours,
                    theirs,
                })
            }
            // The semaphore and flock backends prove liveness with kernel
            // locks, not pids; an external lock is the caller's business.
            _ => Ok(()),
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
        if !sys::fd_lock::ofd_try_set(fd.as_fd(), OfdLock::Read, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?
        {
            return Ok(Attach::Busy);
        }
        let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
        if !same_inode(&st, cname) {
            return Ok(Attach::Replaced);
        }
        let _ = name;
        Self::check_attached(fd.as_fd(), &st, expected)
    }

    /// Validates the object open as `fd` (described by `st`), whose attach
    /// (read) lock this process holds, without mapping it: shared by every
    /// kind of segment.
    pub(super) fn check_attached(
        fd: BorrowedFd<'_>,
        st: &FileStat,
        expected: Option<&SegmentSpec>,
    ) -> Result<Attach, Error> {
        check_regular(st)?;
        let size = st.size();
        if size == 0 {
            return Ok(Attach::Empty);
        }
        let mut bytes = [0u8; HEADER_SIZE];
        let n = sys::fd::pread_full(fd, &mut bytes, 0).map_err(|e| Error::io("pread", e))?;
        let sized_by_us = expected.is_some_and(|spec| spec.could_be_sized(size));
        if n >= HEADER_SIZE && sized_by_us && bytes.iter().all(|&b| b == 0) {
            // Sized by a creator that died before writing the header (an
            // all-zero object of another size is foreign: Incompatible).
            return Ok(Attach::Abandoned(0));
        }
        Ok(match header::judge_header(&bytes, n, size, expected)? {
            Judged::Ready(info) => Attach::Ready(info),
            Judged::NotReady(pid) => Attach::Abandoned(pid),
        })
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
        let fd = match sys::shm::shm_open(&cname, oflag::O_RDWR, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(errno::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::from_io("shm_open", name, e)),
        };
        if !sys::fd_lock::ofd_try_set(fd.as_fd(), OfdLock::Write, ATTACH_BYTE, 1)
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
        if !Self::is_abandoned_by_us(fd.as_fd(), st.size(), spec)? {
            // Completed after all (or not ours to judge): open it normally,
            // which reports whatever it is.
            return Ok(None);
        }
        // Only what this user owns is adopted: another user's object could
        // be chmod-ed back, resized (SIGBUS) or rewritten by its owner at
        // any time, whatever mode we ask for.
        let me = sys::proc::geteuid();
        if st.uid() != me {
            return Err(Error::ForeignOwner {
                name: name.into(),
                uid: st.uid(),
            });
        }
        set_mode(fd.as_fd(), options.mode)?;
        Self::initialise(fd, &cname, name, spec, options, init, false).map(Some)
    }

    /// Whether an object (whose exclusive lock we hold) is a half-built
    /// segment of ours: empty (the creator died right after creating it),
    /// or with our magic and not Ready, or all zeros at exactly the size our
    /// creator would have given it (it died between sizing and writing the
    /// header). Anything else — a foreign object of any kind — is never
    /// taken over.
    pub(super) fn is_abandoned_by_us(
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
        let state = header::u32_at(&bytes, header::at!(state));
        let ours =
            bytes[..8] == header::MAGIC && (state == STATE_UNINIT || state == STATE_INITIALISING);
        spec.layout()?;
        let zero_sized_by_us = spec.could_be_sized(size) && bytes.iter().all(|&b| b == 0);
        Ok(ours || zero_sized_by_us)
    }
}

impl Segment {
    /// Undoes a creation that failed after Ready was published (the
    /// creator's own attach failed): if no other process attached meanwhile
    /// (our attach lock converts to the exclusive one) and the name still
    /// names this object, removes the cell's companion objects and the
    /// name, so that a retry starts afresh. Otherwise the object is in use
    /// and stays. Whether it was removed.
    pub(crate) fn discard_if_alone(self) -> bool {
        if matches!(self.backing, Backing::SysV { .. }) {
            // The kernel's attach count is the proof: only this process.
            return self.sysv_stat().is_some_and(|st| st.nattch == 1)
                && self.mark_sysv_removed().is_ok();
        }
        if !matches!(self.backing, Backing::Named) {
            // A file is not ours to remove on a failed attach; a memfd has
            // no name and goes with its last descriptor.
            return false;
        }
        let Ok(cname) = name::validate(&self.name, MAX_SHM_NAME) else {
            return false;
        };
        match sys::fd_lock::ofd_try_set(self.fd(), OfdLock::Write, ATTACH_BYTE, 1) {
            Ok(true) => {}
            _ => return false,
        }
        let Ok(st) = sys::fd::fstat(self.fd()) else {
            return false;
        };
        if !same_inode(&st, &cname) {
            return false;
        }
        if let Some(kind) = self.info.lock_kind() {
            let _ = crate::lock::unlink_companions(kind, &self.name);
        }
        sys::shm::shm_unlink(&cname).is_ok()
    }
}

pub(super) enum Attach {
    Ready(HeaderInfo),
    Busy,
    Empty,
    Replaced,
    Abandoned(u32),
}

/// `fchmod` to exactly `mode`, then checks with a new `fstat` that the
/// object has it (a filesystem may ignore or refuse part of it).
fn set_mode(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Error> {
    sys::fd::fchmod(fd, mode).map_err(|e| Error::io("fchmod", e))?;
    let st = sys::fd::fstat(fd).map_err(|e| Error::io("fstat", e))?;
    if st.mode() != mode & 0o7777 {
        return Err(Error::Io {
            op: "fchmod (the mode did not take)",
            source: errno::error(errno::EPERM),
        });
    }
    Ok(())
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

/// The creator's identity, read here so that the header module only
/// formats.
pub(super) fn creator() -> header::Creator {
    header::Creator {
        pid: sys::proc::getpid(),
        pid_namespace: sys::proc::pid_namespace(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}
