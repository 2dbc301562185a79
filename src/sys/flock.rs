//! Whole-file advisory locks and the calls around them: `flock(2)`,
//! `fstatfs(2)`, `open(2)` (always `O_CLOEXEC`) and `stat(2)`.
//!
//! A `flock` lock belongs to the *open file description*: every descriptor
//! that shares it (`dup`, `fork`, `SCM_RIGHTS`) holds and releases the same
//! lock, a second `flock` through the same description converts the lock
//! instead of conflicting, and the kernel drops the lock when the last
//! descriptor of the description is closed — in particular when the holder
//! dies. `flock` locks are independent of the OFD byte-range locks of
//! [`super::ofd`] on the same file.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{cvt, retry_eintr};

/// The operation of a `flock` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlockOp {
    /// `LOCK_SH`.
    Shared,
    /// `LOCK_EX`.
    Exclusive,
    /// `LOCK_UN`.
    Unlock,
}

/// `flock(2)`. With `nonblocking`, `LOCK_NB` is added and a conflicting
/// lock is reported as `EWOULDBLOCK`. `EINTR` is returned, not retried: the
/// caller decides (see [`retry_eintr`]).
#[inline]
pub(crate) fn flock(fd: BorrowedFd<'_>, op: FlockOp, nonblocking: bool) -> io::Result<()> {
    let mut raw = match op {
        FlockOp::Shared => libc::LOCK_SH,
        FlockOp::Exclusive => libc::LOCK_EX,
        FlockOp::Unlock => libc::LOCK_UN,
    };
    if nonblocking {
        raw |= libc::LOCK_NB;
    }
    // SAFETY: plain system call on a borrowed, open descriptor.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), raw) })?;
    Ok(())
}

/// `fstatfs(2)`: the magic number (`f_type`) of the filesystem `fd` lives
/// on, as the kernel's 32-bit constant.
pub(crate) fn fs_magic(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `statfs`; the fd is
    // borrowed, so open for the call.
    retry_eintr(|| cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) }))?;
    // SAFETY: fstatfs succeeded, so it filled in the whole struct.
    let st = unsafe { st.assume_init() };
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

/// `open(2)` with `O_CLOEXEC` added: the descriptor (and the lock on its
/// open file description) must not leak into programs this process
/// `exec`s.
pub(crate) fn open(path: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let fd = retry_eintr(|| {
        // SAFETY: `path` is NUL-terminated; the call returns a new fd or -1.
        cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
    })?;
    // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `stat(2)` (follows symbolic links, as `open` does).
pub(crate) fn stat(path: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` is NUL-terminated; `st` is a valid out-pointer.
    cvt(unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: stat succeeded, so it filled in the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// Whether two `stat` results describe the same file (device and inode).
pub(crate) fn same_file(a: &libc::stat, b: &libc::stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// A new open file description for the file `fd` refers to
/// (`open("/proc/self/fd/N", O_RDONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC)`), so
/// that a lock taken through it conflicts with locks taken through `fd`.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("no NUL in a number");
    open(&path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)
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
