//! memfd segments: an anonymous memory file (`memfd_create` with
//! `MFD_ALLOW_SEALING`) made with the same header and initialisation
//! handshake as a named segment, then sealed against shrinking and growing
//! (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): no process that holds
//! its descriptor can ever change its size under another's mapping, so
//! none can make an attached process take `SIGBUS`.
//!
//! It is shared by inheritance (`fork`, or `exec` with the descriptor) or
//! by passing the descriptor over a Unix socket. A receiver checks that
//! the descriptor is a memfd and carries the seals *before* it validates
//! the header (as `open` does) and maps it, and attaches through an open
//! file description of its own (`/proc/self/fd/N`, read-write): a
//! received or inherited descriptor shares the sender's description, and
//! with it the sender's locks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::handshake::Attach;
use super::{Backing, CreateOptions, Init, Mapping, Segment, SegmentSpec, ATTACH_BYTE};
use crate::error::Error;
use crate::sys;
use crate::sys::errno;
use crate::sys::fd_lock::OfdLock;
use crate::sys::memfd::{SEAL_GROW, SEAL_SEAL, SEAL_SHRINK};

/// The seals every memfd segment carries.
pub(crate) const SEALS: u32 = SEAL_SHRINK | SEAL_GROW | SEAL_SEAL;

/// What a memfd segment is called ([`Segment::name`]; `/proc/PID/fd` shows
/// `/memfd:shmsync`).
pub(crate) const MEMFD_NAME: &str = "memfd:shmsync";

impl Segment {
    /// Creates an anonymous sealed segment for `spec` (see the module
    /// docs), initialised like a named one.
    pub(crate) fn create_memfd(
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
    ) -> Result<Segment, Error> {
        spec.layout()?;
        let fd = sys::memfd::memfd_create(c"shmsync").map_err(|e| Error::io("memfd_create", e))?;
        // Nobody else can reach the file yet: the lock is ours at once.
        sys::fd_lock::ofd_try_set(fd.as_fd(), OfdLock::Write, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?;
        // The mode decides who may open a description of their own, which
        // every receiver does (`/proc/self/fd/N`).
        sys::fd::fchmod(fd.as_fd(), options.mode).map_err(|e| Error::io("fchmod", e))?;
        let mut seg = Self::initialise(fd, c"", MEMFD_NAME, spec, options, init, false)?;
        sys::memfd::add_seals(seg.fd(), SEALS).map_err(|e| Error::io("fcntl(F_ADD_SEALS)", e))?;
        seg.backing = Backing::Memfd;
        Ok(seg)
    }

    /// Attaches to the memfd segment `fd` (received or inherited), which
    /// must have been made for `spec`. `fd` is closed: the handle keeps a
    /// description of its own.
    pub(crate) fn from_memfd(fd: OwnedFd, spec: &SegmentSpec) -> Result<Segment, Error> {
        check_memfd(fd.as_fd())?;
        let own = sys::fd::reopen_rdwr(fd.as_fd()).map_err(|e| match e.raw_os_error() {
            Some(errno::EACCES | errno::EPERM) => Error::PermissionDenied {
                name: MEMFD_NAME.into(),
            },
            _ => Error::io("open /proc/self/fd", e),
        })?;
        drop(fd);
        if !sys::fd_lock::ofd_try_set(own.as_fd(), OfdLock::Read, ATTACH_BYTE, 1)
            .map_err(|e| Error::io("fcntl(F_OFD_SETLK)", e))?
        {
            // Only a creator still initialising holds the write lock, and a
            // creator seals (and so can pass) the file only once Ready.
            return Err(Error::InitTimedOut {
                name: MEMFD_NAME.into(),
            });
        }
        let st = sys::fd::fstat(own.as_fd()).map_err(|e| Error::io("fstat", e))?;
        match Self::check_attached(own.as_fd(), &st, Some(spec))? {
            Attach::Ready(info) => {
                Mapping::ready_segment(own, info, MEMFD_NAME.into(), Backing::Memfd)
            }
            Attach::Abandoned(creator_pid) => Err(Error::AbandonedInit {
                name: MEMFD_NAME.into(),
                creator_pid,
            }),
            Attach::Empty => Err(Error::AbandonedInit {
                name: MEMFD_NAME.into(),
                creator_pid: 0,
            }),
            Attach::Busy | Attach::Replaced => Err(Error::InitTimedOut {
                name: MEMFD_NAME.into(),
            }),
        }
    }
}

/// Refuses a descriptor that is not a memfd ([`Error::NotMemfd`]) or
/// lacks the seals ([`Error::NotSealed`]), before anything is read.
fn check_memfd(fd: BorrowedFd<'_>) -> Result<(), Error> {
    let target = sys::memfd::fd_target(fd).map_err(|e| Error::io("readlink /proc/self/fd", e))?;
    if !target.starts_with(b"/memfd:") {
        return Err(Error::NotMemfd {
            found: String::from_utf8_lossy(&target).into_owned(),
        });
    }
    let seals = sys::memfd::seals(fd).map_err(|e| match e.raw_os_error() {
        Some(errno::EINVAL) => Error::NotMemfd {
            found: String::from_utf8_lossy(&target).into_owned(),
        },
        _ => Error::io("fcntl(F_GET_SEALS)", e),
    })?;
    if seals & SEALS != SEALS {
        return Err(Error::NotSealed {
            seals,
            needed: SEALS,
        });
    }
    Ok(())
}
