//! Descriptors and the files behind them: `open(2)` (always `O_CLOEXEC`),
//! `stat`/`lstat`/`fstat`, `chmod`/`fchmod`, `ftruncate`,
//! `posix_fallocate`, `pread`/`pwrite`, `linkat`, `fsync`, `unlink`,
//! `fstatfs`, and a new open file description for an open file
//! (`/proc/self/fd/N`).
//!
//! Everything here is rustix's safe wrapper except `posix_fallocate`, which
//! stays glibc's: rustix has the `fallocate(2)` system call, which fails
//! with `EOPNOTSUPP` on a filesystem without it, where glibc's
//! `posix_fallocate(3)` falls back to writing every block (a file-backed
//! cell may live on such a filesystem).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::retry_eintr;

/// The `open(2)` flags the crate uses, by name (the kernel's numbers; the
/// same for rustix's `OFlags` bits and glibc's `shm_open`).
pub(crate) mod oflag {
    #[allow(unused_imports)] // the set is the vocabulary, not every name is used yet
    pub(crate) use libc::{
        O_CREAT, O_DIRECTORY, O_EXCL, O_NOCTTY, O_NOFOLLOW, O_NONBLOCK, O_RDONLY, O_RDWR,
        O_TMPFILE, O_WRONLY,
    };
}

/// What kind of file a [`FileStat`] describes (`st_mode & S_IFMT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl FileKind {
    /// A phrase for messages ("a fifo", "a directory").
    pub(crate) fn name(self) -> &'static str {
        match self {
            FileKind::Regular => "regular file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symbolic link",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::CharDevice => "character device",
            FileKind::BlockDevice => "block device",
            FileKind::Unknown => "unknown file type",
        }
    }
}

/// The fields of a `struct stat` the crate reads.
#[derive(Clone, Copy)]
pub(crate) struct FileStat(rustix::fs::Stat);

impl std::fmt::Debug for FileStat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStat")
            .field("kind", &self.kind())
            .field("mode", &format_args!("{:o}", self.mode()))
            .field("uid", &self.uid())
            .field("size", &self.size())
            .finish()
    }
}

// The field types of `struct stat` differ between architectures; the casts
// are no-ops on some of them.
#[allow(clippy::unnecessary_cast)]
impl FileStat {
    /// The file type.
    pub(crate) fn kind(&self) -> FileKind {
        match FileType::from_raw_mode(self.0.st_mode as _) {
            FileType::RegularFile => FileKind::Regular,
            FileType::Directory => FileKind::Directory,
            FileType::Symlink => FileKind::Symlink,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            _ => FileKind::Unknown,
        }
    }
    /// The permission bits (`st_mode & 0o7777`).
    pub(crate) fn mode(&self) -> u32 {
        self.0.st_mode as u32 & 0o7777
    }
    /// The owner (`st_uid`).
    pub(crate) fn uid(&self) -> u32 {
        self.0.st_uid as u32
    }
    /// The size in bytes (`st_size`).
    pub(crate) fn size(&self) -> u64 {
        self.0.st_size.max(0) as u64
    }
    /// The device (`st_dev`).
    pub(crate) fn dev(&self) -> u64 {
        self.0.st_dev as u64
    }
    /// The number of names the file has (`st_nlink`): 0 once unlinked.
    #[allow(clippy::unnecessary_cast)] // nlink_t is u32 on some targets
    pub(crate) fn nlink(&self) -> u64 {
        self.0.st_nlink as u64
    }
    /// The inode number (`st_ino`).
    pub(crate) fn ino(&self) -> u64 {
        self.0.st_ino as u64
    }
    /// Whether both describe the same file (device and inode).
    pub(crate) fn same_file(&self, other: &FileStat) -> bool {
        self.dev() == other.dev() && self.ino() == other.ino()
    }
    /// `major:minor` of the device, as `/proc/PID/fdinfo` prints it.
    pub(crate) fn dev_major_minor(&self) -> (u32, u32) {
        (rustix::fs::major(self.dev()), rustix::fs::minor(self.dev()))
    }
}

/// An offset as the kernel's signed `off_t`: `error` past `i64::MAX`.
fn off_t(offset: u64, error: Errno) -> io::Result<u64> {
    if offset > i64::MAX as u64 {
        Err(error.into())
    } else {
        Ok(offset)
    }
}

/// `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    Ok(FileStat(rustix::fs::fstat(fd)?))
}

/// `lstat(2)`: like `stat`, but a symbolic link is described, not followed.
pub(crate) fn lstat(path: &CStr) -> io::Result<FileStat> {
    Ok(FileStat(rustix::fs::lstat(path)?))
}

/// `fchmod(2)`: sets the mode exactly, whatever the umask was at creation.
pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?)
}

/// `ftruncate(2)`.
pub(crate) fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = off_t(len, Errno::FBIG)?;
    retry_eintr(|| Ok(rustix::fs::ftruncate(fd, len)?))
}

/// `posix_fallocate(3)`: reserves the pages now, so that running out of
/// memory on tmpfs is an error here rather than `SIGBUS` on first touch.
/// (Returns the error number directly, like the pthread family.) glibc's,
/// not rustix's `fallocate(2)`: see the module docs.
pub(crate) fn posix_fallocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from(Errno::FBIG))?;
    retry_eintr(|| {
        // SAFETY: plain library call on a borrowed, open fd.
        let r = unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, len) };
        super::cvt_pthread(r)
    })
}

/// `pread(2)` until `buf` is full or end of file; returns the bytes read.
pub(crate) fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let off = off_t(offset.saturating_add(done as u64), Errno::OVERFLOW)?;
        let rest = &mut buf[done..];
        let n = retry_eintr(|| Ok(rustix::io::pread(fd, &mut *rest, off)?))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// `chmod(2)`: used for the file behind a named semaphore (`path` is
/// `/dev/shm/sem.NAME`).
///
/// glibc builds a new semaphore in a temporary file and `link`s it into
/// place, so no descriptor of the final file is ever handed out and
/// `fchmod` is impossible. Changing the mode by path right after an
/// exclusive create is the equivalent: the file was just made by this
/// process, and `/dev/shm` is sticky, so only this user (or root) could
/// have replaced it in between.
pub(crate) fn chmod(path: &CStr, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::chmod(path, Mode::from_raw_mode(mode))?)
}

/// `open(2)` with `O_CLOEXEC` added: the descriptor (and the lock on its
/// open file description) must not leak into programs this process
/// `exec`s.
pub(crate) fn open(path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let flags = OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC;
    retry_eintr(|| Ok(rustix::fs::open(path, flags, Mode::from_raw_mode(mode))?))
}

/// `open(dir, O_TMPFILE|O_RDWR|O_CLOEXEC, mode)`: a new regular file in the
/// filesystem of `dir` that has no name yet (see [`link_fd`]; without
/// `O_EXCL`, so that it can be linked).
pub(crate) fn open_tmpfile(dir: &CStr, mode: u32) -> io::Result<OwnedFd> {
    open(dir, oflag::O_TMPFILE | oflag::O_RDWR, mode)
}

/// `/proc/self/fd/N`: the path through which `fd`'s file can be opened
/// again (or linked).
fn proc_self_fd(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `linkat("/proc/self/fd/N", AT_FDCWD, path, AT_SYMLINK_FOLLOW)`: gives the
/// unnamed file `fd` (from [`open_tmpfile`]) the name `path`. Fails with
/// `EEXIST` if the name is taken: it never replaces anything.
pub(crate) fn link_fd(fd: BorrowedFd<'_>, path: &CStr) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD};
    let src = proc_self_fd(fd);
    retry_eintr(|| {
        Ok(rustix::fs::linkat(
            CWD,
            &*src,
            CWD,
            path,
            AtFlags::SYMLINK_FOLLOW,
        )?)
    })
}

/// `pwrite(2)` of the whole of `buf` at `offset`.
pub(crate) fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let off = off_t(offset.saturating_add(done as u64), Errno::OVERFLOW)?;
        let rest = &buf[done..];
        let n = retry_eintr(|| Ok(rustix::io::pwrite(fd, rest, off)?))?;
        if n == 0 {
            return Err(Errno::IO.into());
        }
        done += n;
    }
    Ok(())
}

/// `fsync(2)`.
pub(crate) fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    retry_eintr(|| Ok(rustix::fs::fsync(fd)?))
}

/// `unlink(2)`.
pub(crate) fn unlink(path: &CStr) -> io::Result<()> {
    Ok(rustix::fs::unlink(path)?)
}

/// `stat(2)` (follows symbolic links, as `open` does).
pub(crate) fn stat(path: &CStr) -> io::Result<FileStat> {
    Ok(FileStat(rustix::fs::stat(path)?))
}

/// A new open file description for the file `fd` refers to
/// (`open("/proc/self/fd/N", O_RDONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC)`), so
/// that a lock taken through it conflicts with locks taken through `fd`.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(proc_self_fd(fd)).expect("no NUL in a number");
    open(
        &path,
        oflag::O_RDONLY | oflag::O_NONBLOCK | oflag::O_NOCTTY,
        0,
    )
}

/// Like [`reopen`], read-write (`O_RDWR`): a description of its own that
/// can be mapped writable.
pub(crate) fn reopen_rdwr(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(proc_self_fd(fd)).expect("no NUL in a number");
    open(&path, oflag::O_RDWR | oflag::O_NOCTTY, 0)
}

/// `fstatfs(2)`: the magic number (`f_type`) of the filesystem `fd` lives
/// on, as the kernel's 32-bit constant.
pub(crate) fn fs_magic(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let st = retry_eintr(|| Ok(rustix::fs::fstatfs(fd)?))?;
    // `f_type` is a `long` (or `int`) holding a 32-bit magic; the cast keeps
    // those 32 bits whatever the sign the C type gave them.
    Ok(st.f_type as u32)
}

/// Filesystem magic numbers (`linux/magic.h`, `fs/smb/client`) of network
/// filesystems, on which `flock` does not keep its local meaning.
const NETWORK_FS: [(u32, &str); 8] = [
    (0x0000_6969, "nfs"),  // NFS_SUPER_MAGIC: flock is emulated by byte-range locks
    (0x0000_517b, "smb"),  // SMB_SUPER_MAGIC (smbfs)
    (0xff53_4d42, "cifs"), // CIFS_SUPER_MAGIC
    (0xfe53_4d42, "smb2"), // SMB2_SUPER_MAGIC
    (0x5346_414f, "afs"),  // AFS_SUPER_MAGIC
    (0x6b41_4653, "afs"),  // AFS_FS_MAGIC (kAFS)
    (0x00c3_6400, "ceph"), // CEPH_SUPER_MAGIC
    (0x0102_1997, "9p"),   // V9FS_MAGIC
];

/// The name of the network filesystem with magic `magic`, `None` for a
/// local one (or one we do not know to be remote, such as FUSE).
pub(crate) fn network_fs_name(magic: u32) -> Option<&'static str> {
    NETWORK_FS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_network_filesystems() {
        assert_eq!(network_fs_name(libc::NFS_SUPER_MAGIC as u32), Some("nfs"));
        assert_eq!(network_fs_name(libc::SMB_SUPER_MAGIC as u32), Some("smb"));
        assert_eq!(network_fs_name(0xff53_4d42), Some("cifs"));
        assert_eq!(network_fs_name(0xfe53_4d42), Some("smb2"));
        assert_eq!(network_fs_name(libc::AFS_SUPER_MAGIC as u32), Some("afs"));
        assert_eq!(network_fs_name(0x00c3_6400), Some("ceph"));
        assert_eq!(network_fs_name(0x0102_1997), Some("9p"));
    }

    #[test]
    fn local_filesystems_are_not_network() {
        for magic in [
            libc::TMPFS_MAGIC as u32,
            libc::EXT4_SUPER_MAGIC as u32,
            0x5846_5342, // XFS_SUPER_MAGIC
            libc::BTRFS_SUPER_MAGIC as u32,
            libc::OVERLAYFS_SUPER_MAGIC as u32,
            libc::FUSE_SUPER_MAGIC as u32,
            0,
        ] {
            assert_eq!(network_fs_name(magic), None, "{magic:#x}");
        }
    }

    #[test]
    fn magic_of_a_real_descriptor_is_classified_local() {
        // /dev/shm is tmpfs on every Linux this crate supports.
        let dir = std::ffi::CString::new("/dev/shm").unwrap();
        let fd = open(&dir, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        let magic = fs_magic(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        assert_eq!(magic, libc::TMPFS_MAGIC as u32);
        assert_eq!(network_fs_name(magic), None);
    }
}
