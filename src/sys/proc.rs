//! Process identity and liveness: `getpid`, `geteuid`, `gettid`,
//! `kill(pid, 0)`, `/proc/self/ns/pid`, and whether a recorded process
//! (pid + start time) still runs, read through [`super::procfs`]. All
//! system calls here are rustix's.

use std::io;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::process::Pid;

/// `getpid(2)`.
pub(crate) fn getpid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// `geteuid(2)`.
pub(crate) fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `gettid(2)`.
pub(crate) fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// `atexit(3)`: `f` runs when the process ends through `exit` (which a
/// return from `main` and `std::process::exit` call), never when it is
/// killed. False if it could not be registered.
pub(crate) fn at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: registers a plain function pointer; it lives for the whole
    // program.
    unsafe { libc::atexit(f) == 0 }
}

/// The rustix `Pid` for a recorded pid: `ESRCH` for 0 and numbers past
/// `i32::MAX` (no process has them; a negative `pid_t` would name a group).
pub(crate) fn to_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| Errno::SRCH.into())
}

/// `kill(pid, 0)`: whether the process exists and may be signalled.
pub(crate) fn test_kill(pid: u32) -> io::Result<()> {
    Ok(rustix::process::test_kill_process(to_pid(pid)?)?)
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
    let signalable =
        || !matches!(test_kill(pid), Err(e) if e.raw_os_error() == Some(super::errno::ESRCH));
    match super::procfs::stat_state_and_start(pid) {
        Ok(None) | Err(_) => signalable(),
        Ok(Some((_, started))) if start != 0 && started != start => false,
        Ok(Some((state, _))) if state == b'Z' || state == b'X' => super::procfs::any_live_task(pid),
        Ok(Some(_)) => true,
    }
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid`), 0 if
/// unknown. Pids recorded in a segment are comparable only within one.
///
/// Read once per process, then kept: `stat` of that path walks `/proc`
/// and builds the namespace's dentry and inode anew each time (6.7 µs on
/// the bench VM, a third of an `open`). A process's own pid namespace
/// never changes (`unshare`/`setns` change only its children's), but a
/// forked child's may differ from its parent's, so the value is kept in a
/// page the kernel zeroes in every child ([`super::mman::wipe_on_fork_page`]):
/// a child reads its own. Where that page cannot be made, every call
/// reads `/proc`. 0 (unknown) is never kept. Not covered: a child made
/// with `CLONE_VM` into a new pid namespace shares this page, so it would
/// see its parent's namespace (glibc's `posix_spawn` uses `CLONE_VM` but
/// `exec`s at once).
pub(crate) fn pid_namespace() -> u64 {
    let cache = pid_namespace_cache();
    if let Some(word) = cache {
        let known = word.load(Ordering::Relaxed);
        if known != 0 {
            return known;
        }
    }
    let read = read_pid_namespace();
    if let Some(word) = cache {
        // Racing threads store the same value.
        word.store(read, Ordering::Relaxed);
    }
    read
}

fn read_pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// The word of the wipe-on-fork page that keeps [`pid_namespace`]; `None`
/// if the page could not be made. The page's address survives a fork (the
/// child's copy of this static points at its own, zeroed, page).
fn pid_namespace_cache() -> Option<&'static AtomicU64> {
    /// Null: not tried yet; [`NO_PAGE`]: tried and failed.
    static PAGE: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
    const NO_PAGE: *mut AtomicU64 = std::ptr::NonNull::dangling().as_ptr();
    let mut p = PAGE.load(Ordering::Acquire);
    if p.is_null() {
        let made = super::mman::wipe_on_fork_page().map_or(NO_PAGE, |page| page.as_ptr().cast());
        p = match PAGE.compare_exchange(
            std::ptr::null_mut(),
            made,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => made,
            // Another thread's page won; ours stays mapped, unused (one
            // page, once).
            Err(theirs) => theirs,
        };
    }
    if p == NO_PAGE {
        return None;
    }
    // SAFETY: `p` is the start of a page-aligned, zero-initialised private
    // mapping that is never unmapped, used only as this one `AtomicU64`
    // (all-zero is a valid `AtomicU64`); in a forked child the kernel
    // zeroes it, which is again a valid value.
    Some(unsafe { &*p })
}

#[cfg(feature = "testing")]
pub(crate) use super::procfs::stat_state_and_start;

#[cfg(feature = "testing")]
/// `kill(-pgid, SIGKILL)`: kills every process of the group `pgid`.
///
/// Call it only while the group's leader is not reaped yet (its pid then
/// still names the group, so the number cannot have been reused).
pub(crate) fn sigkill_group(pgid: u32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(Errno::SRCH.into());
    }
    Ok(rustix::process::kill_process_group(
        to_pid(pgid)?,
        rustix::process::Signal::KILL,
    )?)
}
