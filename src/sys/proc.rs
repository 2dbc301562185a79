//! Process identity and liveness: `getpid`, `gettid`, `kill(pid, 0)`,
//! `/proc/PID/stat`, `/proc/self/ns/pid`, and a fork generation counter
//! bumped by a `pthread_atfork` child handler.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

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

/// The state letter and start time (clock ticks since boot) of `pid`, read
/// from `/proc/PID/stat`. `Ok(None)` when the process does not exist.
pub(crate) fn stat_state_and_start(pid: u32) -> io::Result<Option<(u8, u64)>> {
    read_stat(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// State letter and start time from a `stat` file of `/proc` (a process's
/// or one of its tasks'); `Ok(None)` when it does not exist.
fn read_stat(path: &std::path::Path) -> io::Result<Option<(u8, u64)>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: parse from the last ')'.
    let close = text.iter().rposition(|&b| b == b')').ok_or_else(bad_stat)?;
    let rest = std::str::from_utf8(&text[close + 1..]).map_err(|_| bad_stat())?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next().ok_or_else(bad_stat)?.as_bytes()[0];
    // After the state (field 3), start time is field 22: 19 fields further.
    let start = fields
        .nth(18)
        .ok_or_else(bad_stat)?
        .parse()
        .map_err(|_| bad_stat())?;
    Ok(Some((state, start)))
}

fn bad_stat() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/PID/stat")
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
    match stat_state_and_start(pid) {
        Ok(None) | Err(_) => signalable(),
        Ok(Some((_, started))) if start != 0 && started != start => false,
        Ok(Some((state, _))) if state == b'Z' || state == b'X' => any_live_task(pid),
        Ok(Some(_)) => true,
    }
}

/// Whether any task (thread) of `pid` is neither a zombie nor dead, from
/// `/proc/PID/task/*/stat`.
fn any_live_task(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        matches!(read_stat(&t.path().join("stat")), Ok(Some((state, _))) if state != b'Z' && state != b'X')
    })
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid`), 0 if
/// unknown. Pids recorded in a segment are comparable only within one.
pub(crate) fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn bump_fork_generation() {
    // Async-signal-safe: a single atomic add, then `dup3` calls.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    super::forkfds::detach_in_child();
}

/// Registers (once per process) a `pthread_atfork` child handler that bumps
/// the fork generation. Inlined: it sits on the lock path, where after the
/// first call it is one load and a branch.
#[inline]
pub(crate) fn register_fork_handler() {
    ATFORK.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn()` that only does an
        // atomic add and `dup3` calls (forkfds), async-signal-safe and so
        // allowed in a freshly forked child.
        unsafe { libc::pthread_atfork(None, None, Some(bump_fork_generation)) };
    });
}

/// The number of `fork`s this process's ancestry went through since it
/// registered the handler: a guard taken in generation `g` belongs to
/// another process when the generation differs. One relaxed load.
#[inline]
pub(crate) fn fork_generation() -> u32 {
    FORK_GENERATION.load(Ordering::Relaxed)
}
