//! Supervising child processes and talking to them, for the `testing`
//! feature: `pidfd_open(2)`, `prctl(PR_SET_PDEATHSIG)`, `getppid(2)`,
//! `_exit(2)`; pipes and readiness: `pipe2(2)`, `fcntl(2)` (`F_SETFL
//! O_NONBLOCK`, `F_SETFD FD_CLOEXEC`), `poll(2)`.
//!
//! rustix's, except three that stay on libc: `_exit` (rustix's `exit_group`
//! is in its unstable `runtime` module), and [`set_cloexec`] and
//! [`pipe_end_inode`], which take a bare descriptor *number* that may not
//! be open — probing that is their purpose — where rustix takes a
//! `BorrowedFd`, whose contract is that the number is open.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;

use super::{cvt, retry_eintr};

/// `pidfd_open(2)` (Linux ≥ 5.3): a descriptor that becomes readable when
/// the process `pid` ends. `ENOSYS` on older kernels.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = super::proc::to_pid(pid)?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills this process when
/// the *thread* that created it exits.
///
/// Async-signal-safe (one system call): usable between `fork` and `exec`.
pub(crate) fn kill_me_when_parent_dies() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        rustix::process::Signal::KILL,
    ))?)
}

/// `getppid(2)`. Async-signal-safe.
pub(crate) fn getppid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// The number of `SIGKILL`, for reading exit statuses.
pub(crate) const SIGKILL: i32 = rustix::process::Signal::KILL.as_raw();

/// `_exit(2)`: ends the process at once, without running `atexit`
/// handlers or destructors (used when the parent went away).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// `pipe2(O_CLOEXEC)`: `(read end, write end)`. Close-on-exec, so that a
/// process spawned by another thread meanwhile never inherits them.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// `fcntl(F_SETFL, O_NONBLOCK)` (keeping the other status flags).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    Ok(rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?)
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
/// read return at once) on `fds`, at most `timeout` (`None` waits until
/// one is ready). Returns one flag per descriptor.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(super::time::relative_timespec);
    // EINTR: retried with the same relative timeout; callers that need a
    // deadline keep their own.
    retry_eintr(|| Ok(rustix::event::poll(&mut pfds, ts.as_ref())?))?;
    let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
    Ok(pfds.iter().map(|p| p.revents().intersects(ready)).collect())
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
