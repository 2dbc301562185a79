//! File-backed segments: a regular file on a local filesystem, with the
//! same header, validation and open-file-description handshake as a named
//! segment, whose value survives a reboot.
//!
//! * **Create**: `open(O_CREAT|O_EXCL|O_RDWR|O_NOFOLLOW|O_CLOEXEC)`, refuse
//!   a network filesystem (its byte-range and `flock` locks do not keep
//!   their local meaning), then exactly as for a named segment (write lock
//!   on byte 0, `fchmod`, size, header, lock, value, Ready, convert to the
//!   attach lock); the header's `boot_id` word records the boot; the file
//!   (and its directory entry) is `fsync`ed.
//! * **Open**: as for a named segment, through the path (`O_NOFOLLOW`:
//!   a symbolic link is refused).
//! * **After a reboot** nothing ran the robust-futex list of a process
//!   that held the lock at power-off: the lock word may name a thread of
//!   the previous boot, and the first `lock()` would wait for ever. The
//!   first opener of a boot (its `boot_id` differs from the header's) takes
//!   the *exclusive* initialisation lock (no process of this boot is
//!   attached), lets the cell re-initialise the lock state (reporting
//!   owner death through the header's `suspect` word if it was held),
//!   records the new boot id and converts to the attach lock. Other
//!   openers of the same boot wait (bounded) and then see the new id.
//!
//! A file cannot be sealed: anyone allowed to write it can truncate it
//! under the mappings of attached processes, which then take `SIGBUS` on
//! their next access to the lost pages (as with a named object; `open`
//! checks the size before it maps, so only an already attached process is
//! exposed). Keep the file's mode and directory private.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;

use super::handshake::Attach;
use super::header::{self, SegmentSpec, HEADER_SIZE};
use super::validate::check_regular;
use super::{
    init_step, Backing, Backoff, CreateOptions, Init, InitStep, Mapping, Segment, ATTACH_BYTE,
    INIT_WAIT,
};
use crate::error::Error;
use crate::sys;
use crate::sys::errno;
use crate::sys::fd::{oflag, FileStat};
use crate::sys::fd_lock::OfdLock;
use crate::sys::time::Monotonic;

/// How long an empty file is given to become a creator's before it counts
/// as abandoned (as for named segments).
const EMPTY_GRACE: Duration = Duration::from_millis(100);

/// Re-initialises the lock state of a file segment on the first open
/// after a boot; called with the exclusive initialisation lock held and
/// the segment mapped.
pub(crate) type Relock<'a> = &'a mut dyn FnMut(&Segment) -> std::io::Result<()>;

static BOOT_ID_OVERRIDE: Mutex<Option<[u8; 16]>> = Mutex::new(None);

/// Testing only: makes this process read `id` as the boot id (`None`: the
/// real `/proc/sys/kernel/random/boot_id`), to simulate a reboot.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn set_boot_id_override(id: Option<[u8; 16]>) {
    *BOOT_ID_OVERRIDE.lock().unwrap_or_else(|e| e.into_inner()) = id;
}

/// This boot's id.
fn current_boot_id() -> Result<[u8; 16], Error> {
    if let Some(id) = *BOOT_ID_OVERRIDE.lock().unwrap_or_else(|e| e.into_inner()) {
        return Ok(id);
    }
    sys::procfs::boot_id().map_err(|e| Error::io("read /proc/sys/kernel/random/boot_id", e))
}

fn c_path(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::InvalidName {
        name: path.display().to_string(),
        reason: "contains a NUL byte",
    })
}

/// Whether `path` (not followed) still names the file `st` describes.
fn same_file(st: &FileStat, path: &CStr) -> bool {
    sys::fd::lstat(path).is_ok_and(|p| p.same_file(st))
}

/// Removes `path` if it still names the file open as `fd`.
fn unlink_if_same(fd: BorrowedFd<'_>, path: &CStr) {
    if sys::fd::fstat(fd).is_ok_and(|st| same_file(&st, path)) {
        let _ = sys::fd::unlink(path);
    }
}

/// Refuses a file on a network filesystem (as `FileLock` does).
fn refuse_network_fs(fd: BorrowedFd<'_>) -> Result<(), Error> {
    let magic = sys::fd::fs_magic(fd).map_err(|e| Error::io("fstatfs", e))?;
    match sys::fd::network_fs_name(magic) {
        None => Ok(()),
        Some(fs) => Err(Error::Unsupported {
            what: format!(
                "a file-backed cell on a network filesystem ({fs}): its locks do not keep \
                 their local meaning"
            ),
        }),
    }
}

/// Writes the boot id into the header of a segment whose exclusive
/// initialisation lock this process holds.
fn write_boot_id(seg: &Segment, id: &[u8; 16]) {
    // SAFETY: the header is mapped (HEADER_SIZE ≤ len); `boot_id` lies in
    // the live part after the checksum, and only a holder of the exclusive
    // initialisation lock writes it (nobody else is attached).
    unsafe {
        std::ptr::copy_nonoverlapping(
            id.as_ptr(),
            seg.as_ptr().as_ptr().add(header::at!(boot_id)),
            id.len(),
        )
    };
}

/// The boot id recorded in the file's header.
fn recorded_boot_id(fd: BorrowedFd<'_>) -> Result<[u8; 16], Error> {
    let mut id = [0u8; 16];
    let n = sys::fd::pread_full(fd, &mut id, header::at!(boot_id) as u64)
        .map_err(|e| Error::io("pread", e))?;
    debug_assert!(n == id.len() || n < HEADER_SIZE);
    Ok(id)
}

fn write_lock(fd: BorrowedFd<'_>) -> Result<bool, Error> {
    sys::fd_lock::ofd_try_set(fd, OfdLock::Write, ATTACH_BYTE, 1)
        .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))
}

fn read_lock(fd: BorrowedFd<'_>) -> Result<bool, Error> {
    sys::fd_lock::ofd_try_set(fd, OfdLock::Read, ATTACH_BYTE, 1)
        .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))
}

/// A wait that no two processes repeat in step (the boot-reset race:
/// both may hold a read lock and wait for the other to let go).
fn jittered(backoff: &mut Backoff) {
    std::thread::sleep(Duration::from_micros(
        u64::from(sys::proc::getpid() % 97) * 7,
    ));
    backoff.sleep();
}

impl Segment {
    /// Creates the file `path` exclusively for `spec` (see the module
    /// docs).
    pub(crate) fn create_file(
        path: &Path,
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
    ) -> Result<Segment, Error> {
        let cpath = c_path(path)?;
        let name = path.display().to_string();
        spec.layout()?;
        let boot = current_boot_id()?;
        let fd = sys::fd::open(
            &cpath,
            oflag::O_CREAT | oflag::O_EXCL | oflag::O_RDWR | oflag::O_NOFOLLOW,
            options.mode,
        )
        .map_err(|e| Error::from_io("open", &name, e))?;
        if let Err(e) = refuse_network_fs(fd.as_fd()) {
            unlink_if_same(fd.as_fd(), &cpath);
            return Err(e);
        }
        init_step(InitStep::Opened);
        // As for a named segment: an opener may hold a read lock on the
        // empty file for a moment; past its grace period it may have taken
        // the file over, and then it is theirs.
        let deadline = Monotonic::now().after(INIT_WAIT);
        let mut backoff = Backoff::new();
        loop {
            let locked = write_lock(fd.as_fd())?;
            let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
            if st.size() != 0 || !same_file(&st, &cpath) {
                return Err(Error::AlreadyExists { name });
            }
            if locked {
                break;
            }
            if Monotonic::now() >= deadline {
                return Err(Error::InitTimedOut { name });
            }
            backoff.sleep();
        }
        init_step(InitStep::Created);
        // A second descriptor of the same description keeps the write lock
        // if initialisation fails, so the name is removed before anybody
        // can attach.
        let keep = fd.try_clone().map_err(|e| Error::io("dup", e))?;
        if let Err(e) = sys::fd::fchmod(fd.as_fd(), options.mode) {
            unlink_if_same(keep.as_fd(), &cpath);
            return Err(Error::io("fchmod", e));
        }
        let result = Self::initialise_file(fd, &name, spec, options, init, &boot).and_then(|seg| {
            // The file and its directory entry reach the disk: a cell that
            // was created is still there after a power cut.
            sys::fd::fsync(seg.fd()).map_err(|e| Error::io("fsync", e))?;
            sync_parent(path);
            Ok(seg)
        });
        if result.is_err() {
            unlink_if_same(keep.as_fd(), &cpath);
        }
        result
    }

    /// Initialises a file whose write lock this process holds, recording
    /// the boot id before Ready.
    fn initialise_file(
        fd: OwnedFd,
        name: &str,
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
        boot: &[u8; 16],
    ) -> Result<Segment, Error> {
        let Init { lock, value } = init;
        let mut lock = |p: NonNull<u8>, seg: &Segment| {
            write_boot_id(seg, boot);
            lock(p, seg)
        };
        let mut seg = Self::initialise(
            fd,
            c"",
            name,
            spec,
            options,
            Init {
                lock: &mut lock,
                value,
            },
            false,
        )?;
        seg.backing = Backing::File;
        Ok(seg)
    }

    /// Opens the file segment `path`, made for `spec`; on the first open
    /// after a boot, `relock` re-initialises its lock state (see the
    /// module docs).
    pub(crate) fn open_file(
        path: &Path,
        spec: &SegmentSpec,
        relock: Relock<'_>,
    ) -> Result<Segment, Error> {
        let cpath = c_path(path)?;
        let name = path.display().to_string();
        let boot = current_boot_id()?;
        let deadline = Monotonic::now().after(INIT_WAIT);
        let empty_deadline = Monotonic::now().after(EMPTY_GRACE);
        let mut backoff = Backoff::new();
        loop {
            let fd = sys::fd::open(&cpath, oflag::O_RDWR | oflag::O_NOFOLLOW, 0)
                .map_err(|e| Error::from_io("open", &name, e))?;
            refuse_network_fs(fd.as_fd())?;
            let attached = if !read_lock(fd.as_fd())? {
                Attach::Busy
            } else {
                let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
                if same_file(&st, &cpath) {
                    Self::check_attached(fd.as_fd(), &st, Some(spec))?
                } else {
                    Attach::Replaced
                }
            };
            match attached {
                Attach::Ready(info) => {
                    if recorded_boot_id(fd.as_fd())? == boot {
                        return Mapping::ready_segment(fd, info, name, Backing::File);
                    }
                    // The first open of this boot: let go of the read lock
                    // and try for the exclusive one.
                    drop(fd);
                    if let Some(seg) = Self::reset_after_boot(&cpath, &name, spec, &boot, relock)? {
                        return Ok(seg);
                    }
                    if Monotonic::now() >= deadline {
                        return Err(Error::InitTimedOut { name });
                    }
                    jittered(&mut backoff);
                    continue;
                }
                Attach::Busy | Attach::Replaced if Monotonic::now() < deadline => {}
                Attach::Busy | Attach::Replaced => return Err(Error::InitTimedOut { name }),
                Attach::Empty if Monotonic::now() < empty_deadline => {}
                Attach::Empty => {
                    return Err(Error::AbandonedInit {
                        name,
                        creator_pid: 0,
                    })
                }
                Attach::Abandoned(creator_pid) => {
                    return Err(Error::AbandonedInit { name, creator_pid })
                }
            }
            drop(fd);
            backoff.sleep();
        }
    }

    /// Takes the exclusive lock of a file whose header records another
    /// boot, and if it still does (and nobody of this boot is attached),
    /// re-initialises its lock state with `relock`, records this boot and
    /// attaches. `Ok(None)`: somebody else is attached or resetting; open
    /// again.
    fn reset_after_boot(
        cpath: &CStr,
        name: &str,
        spec: &SegmentSpec,
        boot: &[u8; 16],
        relock: Relock<'_>,
    ) -> Result<Option<Segment>, Error> {
        let fd = sys::fd::open(cpath, oflag::O_RDWR | oflag::O_NOFOLLOW, 0)
            .map_err(|e| Error::from_io("open", name, e))?;
        if !write_lock(fd.as_fd())? {
            return Ok(None);
        }
        let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
        if !same_file(&st, cpath) {
            return Ok(None);
        }
        let Attach::Ready(info) = Self::check_attached(fd.as_fd(), &st, Some(spec))? else {
            // Changed under us (taken over): open again, which reports it.
            return Ok(None);
        };
        let stale = recorded_boot_id(fd.as_fd())? != *boot;
        let seg = Mapping::ready_segment(fd, info, name.into(), Backing::File)?;
        if stale {
            relock(&seg).map_err(|e| Error::io("lock state reset after a reboot", e))?;
            write_boot_id(&seg, boot);
        }
        if !read_lock(seg.fd())? {
            unreachable!("converting our own write lock cannot conflict");
        }
        Ok(Some(seg))
    }

    /// Re-initialises a file segment whose creator died before Ready (see
    /// `take_over_abandoned`). `Ok(None)` when it is not ours to take.
    pub(crate) fn take_over_abandoned_file(
        path: &Path,
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
    ) -> Result<Option<Segment>, Error> {
        let cpath = c_path(path)?;
        let name = path.display().to_string();
        let boot = current_boot_id()?;
        let fd = match sys::fd::open(&cpath, oflag::O_RDWR | oflag::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(errno::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::from_io("open", &name, e)),
        };
        refuse_network_fs(fd.as_fd())?;
        if !write_lock(fd.as_fd())? {
            return Ok(None);
        }
        let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
        if !same_file(&st, &cpath) {
            return Ok(None);
        }
        check_regular(&st)?;
        if !Self::is_abandoned_by_us(fd.as_fd(), st.size(), spec)? {
            return Ok(None);
        }
        let _ = sys::fd::fchmod(fd.as_fd(), options.mode);
        let seg = Self::initialise_file(fd, &name, spec, options, init, &boot)?;
        sys::fd::fsync(seg.fd()).map_err(|e| Error::io("fsync", e))?;
        Ok(Some(seg))
    }

    /// Removes the file `path` if it is a segment (or an empty or
    /// half-written one); a foreign file is refused, not removed.
    pub(crate) fn remove_file(path: &Path) -> Result<(), Error> {
        let cpath = c_path(path)?;
        let name = path.display().to_string();
        let fd = sys::fd::open(
            &cpath,
            oflag::O_RDONLY | oflag::O_NOFOLLOW | oflag::O_NONBLOCK,
            0,
        )
        .map_err(|e| Error::from_io("open", &name, e))?;
        let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
        check_regular(&st)?;
        let mut bytes = [0u8; HEADER_SIZE];
        let n =
            sys::fd::pread_full(fd.as_fd(), &mut bytes, 0).map_err(|e| Error::io("pread", e))?;
        if n > 0 && bytes[..n].iter().any(|&b| b != 0) {
            header::check_prefix(&bytes[..n])?;
        }
        if !same_file(&st, &cpath) {
            return Err(Error::NotFound { name });
        }
        sys::fd::unlink(&cpath).map_err(|e| Error::from_io("unlink", &name, e))
    }

    /// Writes the mapping's changed pages back to the file and waits for
    /// the device (`msync(MS_SYNC)`).
    pub(crate) fn flush(&self) -> Result<(), Error> {
        // SAFETY: the mapping is live for `len` bytes while `self` lives.
        unsafe { sys::mman::msync(self.map.ptr, self.map.len) }.map_err(|e| Error::io("msync", e))
    }
}

/// `fsync` of the directory holding `path`, so that a new file's entry
/// survives a power cut (best effort: some filesystems refuse it).
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    if let Ok(fd) = sys::fd::open(&c, oflag::O_RDONLY | oflag::O_DIRECTORY, 0) {
        let _ = sys::fd::fsync(fd.as_fd());
    }
}
