//! Building a [`FileLock`]: [`FileLockOptions`], and opening (and
//! re-opening) the lock file by path.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::FileLock;
use crate::error::Error;
use crate::sys;
use crate::sys::errno;
use crate::sys::fd::oflag;

/// Refuses a descriptor on a network filesystem unless `allow`.
fn check_filesystem(fd: BorrowedFd<'_>, allow: bool) -> Result<(), Error> {
    if allow {
        return Ok(());
    }
    let magic = sys::fd::fs_magic(fd).map_err(|e| Error::io("fstatfs", e))?;
    match sys::fd::network_fs_name(magic) {
        None => Ok(()),
        Some(fs) => Err(Error::Unsupported {
            what: format!(
                "flock on a network filesystem ({fs}): its locks do not keep flock's local \
                 semantics; opt in with FileLockOptions::allow_network_fs(true)"
            ),
        }),
    }
}

/// How to reopen the path of a path-based lock.
pub(super) struct PathSpec {
    pub(super) path: PathBuf,
    cpath: CString,
    create_mode: Option<u32>,
    allow_network_fs: bool,
}

/// Options for building a [`FileLock`]: whether to create the file, its
/// permission bits, and whether a network filesystem is acceptable.
#[derive(Clone, Copy, Debug)]
pub struct FileLockOptions {
    create: bool,
    mode: u32,
    allow_network_fs: bool,
}

impl Default for FileLockOptions {
    fn default() -> Self {
        FileLockOptions {
            create: false,
            mode: 0o600,
            allow_network_fs: false,
        }
    }
}

impl FileLockOptions {
    /// Defaults: the file must exist; mode `0o600` if created; network
    /// filesystems refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Create the file if it does not exist (also when it is found removed
    /// or replaced while locking).
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Permission bits of a file this lock creates, set with `fchmod` so the
    /// umask does not decide. Default `0o600`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Accept a file on a network filesystem (NFS, SMB/CIFS, AFS, Ceph, 9p),
    /// where `flock` does not keep its local semantics (on NFS it becomes a
    /// byte-range lock on the server and conflicts with `fcntl` locks).
    pub fn allow_network_fs(mut self, allow: bool) -> Self {
        self.allow_network_fs = allow;
        self
    }

    /// Opens (or creates) the file at `path`
    /// (`open(O_RDONLY|O_CLOEXEC|O_NONBLOCK|O_NOCTTY)`: the descriptor is
    /// only ever locked, so a FIFO or a terminal cannot block or adopt the
    /// caller) for locking. Locks by path check, after each acquisition, that the
    /// path still names the locked file.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] (without `create`), [`Error::PermissionDenied`],
    /// [`Error::InvalidName`] (a NUL byte in the path),
    /// [`Error::Unsupported`] on a network filesystem, [`Error::Io`].
    pub fn open(&self, path: impl AsRef<Path>) -> Result<FileLock, Error> {
        let path = path.as_ref();
        let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::InvalidName {
            name: path.display().to_string(),
            reason: "must not contain a NUL byte",
        })?;
        let spec = PathSpec {
            path: path.to_path_buf(),
            cpath,
            create_mode: self.create.then_some(self.mode),
            allow_network_fs: self.allow_network_fs,
        };
        let fd = spec.open().map_err(|e| match e {
            OpenError::Io(op, e) => Error::from_io(op, &path.display().to_string(), e),
            OpenError::Refused(e) => e,
        })?;
        Ok(FileLock::build(fd, Some(spec)))
    }

    /// Takes over `fd` (any descriptor `flock` accepts: a file or a
    /// directory, opened for reading or writing). No path is known, so
    /// there is no replaced-file check. Open it with `O_CLOEXEC` (std's
    /// `File` does).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] on a network filesystem, [`Error::Io`] if
    /// `fstatfs` fails (for example `EBADF` on an `O_PATH` descriptor).
    pub fn from_fd(&self, fd: OwnedFd) -> Result<FileLock, Error> {
        check_filesystem(fd.as_fd(), self.allow_network_fs)?;
        Ok(FileLock::build(fd, None))
    }
}

enum OpenError {
    Io(&'static str, io::Error),
    Refused(Error),
}

/// Flags of every open of a lock file (`O_CLOEXEC` is added by `sys`).
const OPEN_FLAGS: i32 = oflag::O_RDONLY | oflag::O_NONBLOCK | oflag::O_NOCTTY;

impl PathSpec {
    /// Opens the path (creating it if asked) and checks its filesystem.
    fn open(&self) -> Result<OwnedFd, OpenError> {
        let fd = match self.create_mode {
            None => {
                sys::fd::open(&self.cpath, OPEN_FLAGS, 0).map_err(|e| OpenError::Io("open", e))?
            }
            Some(mode) => {
                match sys::fd::open(
                    &self.cpath,
                    OPEN_FLAGS | oflag::O_CREAT | oflag::O_EXCL,
                    mode,
                ) {
                    Ok(fd) => {
                        // Ours: the mode is exactly what was asked.
                        sys::fd::fchmod(fd.as_fd(), mode)
                            .map_err(|e| OpenError::Io("fchmod", e))?;
                        fd
                    }
                    Err(e) if e.raw_os_error() == Some(errno::EEXIST) => {
                        sys::fd::open(&self.cpath, OPEN_FLAGS, 0)
                            .map_err(|e| OpenError::Io("open", e))?
                    }
                    Err(e) => return Err(OpenError::Io("open", e)),
                }
            }
        };
        check_filesystem(fd.as_fd(), self.allow_network_fs).map_err(OpenError::Refused)?;
        Ok(fd)
    }

    /// The same, for the lock path: errors as `io::Error`.
    pub(super) fn open_io(&self) -> io::Result<OwnedFd> {
        self.open().map_err(|e| match e {
            OpenError::Io(_, e) => e,
            OpenError::Refused(e) => io::Error::new(io::ErrorKind::Unsupported, e.to_string()),
        })
    }

    /// Whether the path still names the file `fd` is open on.
    pub(super) fn still_names(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        let held = sys::fd::fstat(fd)?;
        match sys::fd::stat(&self.cpath) {
            Ok(now) => Ok(held.same_file(&now)),
            Err(e) if e.raw_os_error() == Some(errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
