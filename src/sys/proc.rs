//! Process identity and liveness: `getpid`, `geteuid`, `gettid`,
//! `kill(pid, 0)`, `/proc/self/ns/pid`, and whether a recorded process
//! (pid + start time) still runs, read through [`super::procfs`].

use std::io;

use super::cvt;

/// `getpid(2)`.
pub(crate) fn getpid() -> u32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// `geteuid(2)`.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// `gettid(2)`.
pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// `atexit(3)`: `f` runs when the process ends through `exit` (which a
/// return from `main` and `std::process::exit` call), never when it is
/// killed. False if it could not be registered.
pub(crate) fn at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: registers a plain function pointer; it lives for the whole
    // program.
    unsafe { libc::atexit(f) == 0 }
}

/// `kill(2)` with a signal number.
pub(crate) fn kill(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: plain system call; a positive pid names one process.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Whether the process `pid` that started at `start` (clock ticks; 0 =
/// unknown) is alive.
///
/// * Another start time means the pid was reused: dead.
/// * A zombie (`Z`/`X`) thread-group leader is dead only if every task of
///   the process is: a process whose main thread exited while another
///   thread holds a lock is alive.
/// * No `/proc/PID` at all may mean the process is gone *or* that `/proc`
///   hides other users' processes (`hidepid`): `kill(pid, 0)` decides,
///   and a process we may not signal counts as alive.
pub(crate) fn is_alive(pid: u32, start: u64) -> bool {
    let signalable = || !matches!(kill(pid, 0), Err(e) if e.raw_os_error() == Some(libc::ESRCH));
    match super::procfs::stat_state_and_start(pid) {
        Ok(None) | Err(_) => signalable(),
        Ok(Some((_, started))) if start != 0 && started != start => false,
        Ok(Some((state, _))) if state == b'Z' || state == b'X' => super::procfs::any_live_task(pid),
        Ok(Some(_)) => true,
    }
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid`), 0 if
/// unknown. Pids recorded in a segment are comparable only within one.
pub(crate) fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

pub(crate) use super::procfs::stat_state_and_start;

#[cfg(feature = "testing")]
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
