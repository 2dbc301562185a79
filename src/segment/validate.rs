//! Checks made before anything is mapped: the file type, that a name still
//! names the inode we hold, and a lock-free read of a header ([`peek`]).

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use super::header::{self, HeaderInfo, HEADER_SIZE};
use super::{name, MAX_SHM_NAME};
use crate::error::Error;
use crate::sys;
use crate::sys::fd::{oflag, FileKind, FileStat};

/// A segment is a regular file: a FIFO, socket or device under the name is
/// someone else's object, reported and never touched.
pub(super) fn check_regular(st: &FileStat) -> Result<(), Error> {
    let kind = match st.kind() {
        FileKind::Regular => return Ok(()),
        FileKind::Unknown => "other",
        k => k.name(),
    };
    Err(Error::Incompatible {
        field: "file type",
        expected: "regular file".into(),
        found: kind.into(),
    })
}

/// Removes the name if it still names the object open as `fd` (the caller
/// holds that object's exclusive lock, so nobody is attached to it).
pub(super) fn unlink_if_same(fd: BorrowedFd<'_>, cname: &CStr) {
    if let Ok(st) = sys::fd::fstat(fd) {
        if same_inode(&st, cname) {
            let _ = sys::shm::shm_unlink(cname);
        }
    }
}

/// Whether the name still refers to the inode `st` describes (a cleaner may
/// have unlinked it, and another process created a new one, while we
/// waited).
pub(super) fn same_inode(st: &FileStat, cname: &CStr) -> bool {
    let path = name::shm_path(cname.to_str().unwrap_or_default());
    match sys::fd::lstat(&path) {
        Ok(p) => p.same_file(st),
        Err(_) => false,
    }
}

/// Reads the header of the object `name` without mapping it and without
/// taking any lock: for tools that list and inspect objects. Returns the
/// object's size and, if it is at least a header long, the decoded header.
pub fn peek(name: &str) -> Result<(u64, Option<HeaderInfo>), Error> {
    let cname = name::validate(name, MAX_SHM_NAME)?;
    // O_NONBLOCK: opening a FIFO someone put under the name must not wait
    // for a writer (it is then refused as not a regular file).
    let fd = sys::shm::shm_open(&cname, oflag::O_RDONLY | oflag::O_NONBLOCK, 0)
        .map_err(|e| Error::from_io("shm_open", name, e))?;
    let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
    check_regular(&st)?;
    let mut bytes = [0u8; HEADER_SIZE];
    let n = sys::fd::pread_full(fd.as_fd(), &mut bytes, 0).map_err(|e| Error::io("pread", e))?;
    header::check_prefix(&bytes[..n])?;
    Ok((
        st.size(),
        (n == HEADER_SIZE).then(|| header::decode(&bytes)),
    ))
}
