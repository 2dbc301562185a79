//! Supervising child processes and talking to them, for the `testing`
//! feature: `pidfd_open(2)`, `prctl(PR_SET_PDEATHSIG)`, `getppid(2)`,
//! `_exit(2)`; pipes and readiness: `pipe2(2)`, `fcntl(2)` (`F_SETFL
//! O_NONBLOCK`, `F_SETFD FD_CLOEXEC`), `poll(2)`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{cvt, retry_eintr};

/// `pidfd_open(2)` (Linux ≥ 5.3): a descriptor that becomes readable when
/// the process `pid` ends. `ENOSYS` on older kernels.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: plain system call with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    let fd = cvt(fd)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills this process when
/// the *thread* that created it exits.
///
/// Async-signal-safe (one system call): usable between `fork` and `exec`.
pub(crate) fn kill_me_when_parent_dies() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    Ok(())
}

/// `getppid(2)`. Async-signal-safe.
pub(crate) fn getppid() -> u32 {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// The number of `SIGKILL`, for reading exit statuses.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// `_exit(2)`: ends the process at once, without running `atexit`
/// handlers or destructors (used when the parent went away).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// `pipe2(O_CLOEXEC)`: `(read end, write end)`. Close-on-exec, so that a
/// process spawned by another thread meanwhile never inherits them.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fcntl(F_SETFL, O_NONBLOCK)` (keeping the other status flags).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain fcntl on a borrowed, open fd.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// `fcntl(F_SETFD)`: sets or clears close-on-exec on `fd`.
///
/// Async-signal-safe (one system call, no allocation): usable between
/// `fork` and `exec`, where the descriptor is a raw number of the child.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl on a number never touches memory; a closed fd is EBADF.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flag) })?;
    Ok(())
}

/// `poll(2)` for readability (`POLLIN`, or hang-up / error, which make a
/// read return at once) on `fds`, at most `timeout` (rounded up to a
/// millisecond; `None` waits until one is ready). Returns one flag per
/// descriptor.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| {
        t.as_nanos()
            .div_ceil(1_000_000)
            .min(libc::c_int::MAX as u128) as libc::c_int
    });
    // EINTR: retried with the same relative timeout; callers that need a
    // deadline keep their own.
    retry_eintr(|| {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures.
        cvt(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) })
    })?;
    Ok(pfds
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
        .collect())
}

/// Whether `fd` is open and is a pipe end opened for writing (`write`) or
/// for reading: how a child recognises the descriptors its parent handed
/// down before adopting them.
pub(crate) fn is_pipe_end(fd: RawFd, write: bool) -> bool {
    pipe_end_inode(fd, write).is_some()
}

/// The inode number of the pipe whose write end (`write`) or read end is
/// open as `fd`; `None` when `fd` is no such pipe end. A pipe's inode
/// number is unique among the pipes alive on the system, so it tells a
/// pipe handed down on purpose from whatever else a number may hold.
pub(crate) fn pipe_end_inode(fd: RawFd, write: bool) -> Option<u64> {
    // SAFETY: an all-zero `stat` is valid storage for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a number only writes to `st`; a closed fd is EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return None;
    }
    // SAFETY: fcntl on a number never touches memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return None;
    }
    let want = if write {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    };
    (flags & libc::O_ACCMODE == want).then_some(st.st_ino)
}
