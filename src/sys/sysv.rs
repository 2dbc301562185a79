//! System V shared memory: `shmget(2)`, `shmat(2)`, `shmdt(2)`,
//! `shmctl(2)` (`IPC_STAT`, `IPC_RMID`, `SHM_STAT`, `SHM_INFO`) and
//! `ftok(3)`. A segment has no descriptor: it is named by a key (or
//! `IPC_PRIVATE`) and, once made, by an id.

use std::ffi::CStr;
use std::io;
use std::ptr::NonNull;

use super::cvt;

/// `IPC_PRIVATE`: a key that always makes a new segment, reachable only
/// by its id.
pub(crate) const IPC_PRIVATE: i32 = libc::IPC_PRIVATE;
/// `SHM_DEST` in `shm_perm.mode`: marked for removal (`IPC_RMID`) while
/// still attached.
pub(crate) const SHM_DEST: u32 = 0o1000;
// Not in the libc crate (linux/shm.h).
const SHM_STAT: libc::c_int = 13;
const SHM_INFO: libc::c_int = 14;

/// What `shmctl(IPC_STAT)` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ShmStat {
    /// The key (`IPC_PRIVATE` once removed, or for private segments).
    pub(crate) key: i32,
    /// Owner.
    pub(crate) uid: u32,
    /// Creator.
    pub(crate) cuid: u32,
    /// Permission bits and `SHM_DEST`.
    pub(crate) mode: u32,
    /// Size in bytes as requested at creation (`shm_segsz`).
    pub(crate) size: u64,
    /// Attached mappings (`shm_nattch`): counts every process attached,
    /// forked children included; the kernel decrements it on `shmdt` and on
    /// exit.
    pub(crate) nattch: u64,
    /// Pid of the creator (in the caller's pid namespace; 0 if invisible).
    pub(crate) cpid: u32,
    /// Pid of the last `shmat`/`shmdt`.
    pub(crate) lpid: u32,
    /// Time of the last attach (0: never).
    pub(crate) atime: i64,
    /// Time of the last change (creation, `IPC_SET`).
    pub(crate) ctime: i64,
}

impl ShmStat {
    // shmatt_t and size_t are u64 here, narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    fn from_raw(ds: &libc::shmid_ds) -> ShmStat {
        ShmStat {
            key: ds.shm_perm.__key,
            uid: ds.shm_perm.uid,
            cuid: ds.shm_perm.cuid,
            mode: u32::from(ds.shm_perm.mode),
            size: ds.shm_segsz as u64,
            nattch: ds.shm_nattch as u64,
            cpid: ds.shm_cpid.max(0) as u32,
            lpid: ds.shm_lpid.max(0) as u32,
            atime: ds.shm_atime,
            ctime: ds.shm_ctime,
        }
    }

    /// Whether `IPC_RMID` was done (the segment goes with its last attach).
    pub(crate) fn removed(&self) -> bool {
        self.mode & SHM_DEST != 0
    }
}

/// `shmget(2)`: the id of the segment `key` (made with `flags` =
/// `IPC_CREAT|IPC_EXCL|mode` when asked).
pub(crate) fn shmget(key: i32, size: usize, flags: i32) -> io::Result<i32> {
    // SAFETY: plain system call.
    cvt(unsafe { libc::shmget(key, size, flags) })
}

/// `IPC_CREAT | IPC_EXCL | mode`.
pub(crate) fn create_flags(mode: u32) -> i32 {
    libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32
}

/// `shmat(2)` at an address the kernel picks, read-only or read-write.
pub(crate) fn shmat(id: i32, read_only: bool) -> io::Result<NonNull<u8>> {
    let flags = if read_only { libc::SHM_RDONLY } else { 0 };
    // SAFETY: a null address lets the kernel choose; the call returns a new
    // mapping or (void *)-1.
    let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if p as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `shmdt(2)`.
///
/// # Safety
///
/// `p` was returned by [`shmat`] and is not used afterwards.
pub(crate) unsafe fn shmdt(p: NonNull<u8>) -> io::Result<()> {
    // SAFETY: forwarded from the caller.
    cvt(unsafe { libc::shmdt(p.as_ptr().cast()) })?;
    Ok(())
}

/// `shmctl(IPC_STAT)`.
pub(crate) fn stat(id: i32) -> io::Result<ShmStat> {
    // SAFETY: zero is a valid shmid_ds (plain integers).
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    cvt(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok(ShmStat::from_raw(&ds))
}

/// `shmctl(IPC_RMID)`: the segment is destroyed once its last process
/// detaches; its key is free at once.
pub(crate) fn remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer.
    cvt(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) })?;
    Ok(())
}

/// `shmctl(SHM_INFO)`: the highest index in use in the kernel's table of
/// segments (walk 0..=it with [`stat_index`]).
pub(crate) fn max_index() -> io::Result<i32> {
    // SAFETY: zero is a valid shmid_ds; `struct shm_info` (what SHM_INFO
    // writes) is smaller than it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    const _: () = assert!(std::mem::size_of::<libc::shmid_ds>() >= 48);
    // SAFETY: the buffer is valid and large enough for a shm_info.
    cvt(unsafe { libc::shmctl(0, SHM_INFO, &mut ds) })
}

/// `shmctl(SHM_STAT)` of the table index `index`: the segment's id and
/// status (`EINVAL`: unused index; `EACCES`: not readable by us).
pub(crate) fn stat_index(index: i32) -> io::Result<(i32, ShmStat)> {
    // SAFETY: zero is a valid shmid_ds.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    let id = cvt(unsafe { libc::shmctl(index, SHM_STAT, &mut ds) })?;
    Ok((id, ShmStat::from_raw(&ds)))
}

/// `ftok(3)`: a key from an existing path and a non-zero project id.
pub(crate) fn ftok(path: &CStr, proj: u8) -> io::Result<i32> {
    // SAFETY: `path` is NUL-terminated.
    let key = unsafe { libc::ftok(path.as_ptr(), libc::c_int::from(proj)) };
    if key == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(key)
}
