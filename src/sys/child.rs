//! Supervising child processes, for the `testing` feature: `pidfd_open(2)`,
//! `prctl(PR_SET_PDEATHSIG)`, `getppid(2)`, `kill(2)` of a process group,
//! `_exit(2)`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::cvt;

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

/// `kill(-pgid, SIGKILL)`: kills every process of the group `pgid`.
///
/// Call it only while the group's leader is not reaped yet (its pid then
/// still names the group, so the number cannot have been reused).
pub(crate) fn sigkill_group(pgid: u32) -> io::Result<()> {
    let pgid =
        libc::pid_t::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: plain system call; a negative number names one process group.
    cvt(unsafe { libc::kill(-pgid, libc::SIGKILL) })?;
    Ok(())
}

/// The number of `SIGKILL`, for reading exit statuses.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// `_exit(2)`: ends the process at once, without running `atexit`
/// handlers or destructors (used when the parent went away).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}
