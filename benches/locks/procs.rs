//! Child processes for the cross-process rows, and memory they share.
//!
//! * [`SharedAnon`]: an anonymous `MAP_SHARED` mapping made before `fork`,
//!   so parent and children see the same bytes.
//! * [`team`]: forks one child per entry of `cpus` from the single-threaded
//!   bench process, pins each to its CPU (`sched_setaffinity`), lets each
//!   do its untimed setup, releases them together (the parent closes the
//!   write end of a "go" pipe: every child's `read` returns at once), and
//!   collects each child's start and end time (`CLOCK_MONOTONIC`, the same
//!   clock in every process). Every wait is bounded by [`TEAM_TIMEOUT`]:
//!   on expiry the children are killed; they are always reaped.
//! * [`Names`]: unique object names, removed at the end even on failure.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bound on every wait for children.
pub const TEAM_TIMEOUT: Duration = Duration::from_secs(120);
/// The most children one team may have.
pub const MAX_TEAM: usize = 16;

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A zero-filled `T` in an anonymous shared mapping, inherited by children
/// forked while it lives. Never moved: pthread objects inside it may be
/// initialised in place through `&T` (they sit in `UnsafeCell`s).
pub struct SharedAnon<T> {
    ptr: NonNull<T>,
    len: usize,
}

impl<T> SharedAnon<T> {
    /// Maps a zero-filled `T`.
    ///
    /// # Safety
    ///
    /// All-zero bytes must be a valid `T` (plain integers, atomics, and
    /// pthread objects that are initialised before use).
    pub unsafe fn zeroed() -> SharedAnon<T> {
        let len = std::mem::size_of::<T>().max(1);
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            p != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        assert!(std::mem::align_of::<T>() <= 4096);
        SharedAnon {
            ptr: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
        }
    }

    /// The shared value.
    pub fn get(&self) -> &T {
        // SAFETY: the mapping is page-aligned, sized for `T`, zero-filled
        // (valid per `zeroed`'s contract) and lives as long as `self`.
        unsafe { self.ptr.as_ref() }
    }

    /// Raw pointer to the value.
    pub fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Drop for SharedAnon<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `zeroed` with this length and is
        // not used after the handle is dropped (`get` borrows `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Per-child start and end stamps.
#[repr(C)]
struct Stamps {
    span: [[AtomicU64; 2]; MAX_TEAM],
}

/// Start/end times (ns, `CLOCK_MONOTONIC`) of each child's timed part.
pub struct Spans(pub Vec<(u64, u64)>);

impl Spans {
    /// From the first start to the last end.
    pub fn wall_ns(&self) -> u64 {
        let start = self.0.iter().map(|s| s.0).min().unwrap_or(0);
        let end = self.0.iter().map(|s| s.1).max().unwrap_or(0);
        end.saturating_sub(start)
    }

    /// Child `i`'s own timed part.
    pub fn child_ns(&self, i: usize) -> u64 {
        self.0[i].1.saturating_sub(self.0[i].0)
    }
}

/// Handed to a child's body: call [`Gate::start`] when setup is done.
pub struct Gate<'a> {
    ready_w: Option<OwnedFd>,
    go_r: &'a OwnedFd,
    stamp: &'a [AtomicU64; 2],
    started: bool,
}

impl Gate<'_> {
    /// Reports ready, waits for the parent's release, stamps the start.
    pub fn start(&mut self) {
        if let Some(w) = self.ready_w.take() {
            let b = [1u8];
            // SAFETY: `w` is an open pipe write end; `b` is valid for 1 byte.
            let n = unsafe { libc::write(w.as_raw_fd(), b.as_ptr().cast(), 1) };
            assert_eq!(n, 1, "ready pipe write");
        }
        let mut b = [0u8];
        // It returns 0 (EOF) when the parent closes the write end, or fails
        // if the parent died: either way the release happened.
        loop {
            // SAFETY: `go_r` is an open pipe read end; `b` is valid for 1 byte.
            let n = unsafe { libc::read(self.go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        self.stamp[0].store(now_ns(), Ordering::Relaxed);
        self.started = true;
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is valid for two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Pins the calling process to `cpu`.
pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set` (cpu < CPU_SETSIZE checked by
    // the caller's CPU list, which came from sched_getaffinity).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-parameter of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return vec![0];
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: reads one bit of an initialised set; i < CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// Waits until `fd` is readable, at most until `deadline`.
fn poll_in(fd: &OwnedFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `p` is one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// Reads once from `fd` (after `poll_in`): bytes read, 0 at EOF.
fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> isize {
    // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is open.
    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
}

/// Waits for `pid` at most until `deadline`; its wait status, or `None`.
fn reap(pid: libc::pid_t, deadline: Instant) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills and reaps every child in `pids` (blocking reap after `SIGKILL`,
/// which cannot be ignored).
fn kill_all(pids: &[libc::pid_t]) {
    for &pid in pids {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in pids {
        let _ = reap(pid, Instant::now() + TEAM_TIMEOUT);
    }
}

/// Runs `body(i, gate)` in one child per entry of `cpus` (child `i` pinned
/// to `cpus[i]`, or unpinned for `None`). Each body does its setup, calls
/// `gate.start()`, does the timed work and returns; an `Err` or a panic
/// fails the team. Returns each child's timed span.
pub fn team(
    cpus: &[Option<usize>],
    body: &mut dyn FnMut(usize, &mut Gate<'_>) -> Result<(), String>,
) -> Result<Spans, String> {
    let n = cpus.len();
    assert!((1..=MAX_TEAM).contains(&n), "team size {n}");
    // SAFETY: all-zero atomics are valid.
    let stamps = unsafe { SharedAnon::<Stamps>::zeroed() };
    let (ready_r, ready_w) = pipe();
    let (go_r, go_w) = pipe();
    let (done_r, done_w) = pipe();
    let mut pids = Vec::with_capacity(n);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    for (i, cpu) in cpus.iter().enumerate() {
        // SAFETY: the bench process is single-threaded, so the child may run
        // any code; it leaves through `_exit` only.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            kill_all(&pids);
            return Err(format!("fork: {e}"));
        }
        if pid == 0 {
            drop((ready_r, go_w, done_r));
            let stamp = &stamps.get().span[i];
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Some(cpu) = cpu {
                    pin_to(*cpu).map_err(|e| format!("sched_setaffinity({cpu}): {e}"))?;
                }
                let mut gate = Gate {
                    ready_w: Some(ready_w),
                    go_r: &go_r,
                    stamp,
                    started: false,
                };
                body(i, &mut gate)?;
                if !gate.started {
                    return Err("body never called gate.start()".to_string());
                }
                stamp[1].store(now_ns(), Ordering::Relaxed);
                Ok(())
            }));
            let code = match code {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    eprintln!("bench child {i}: {e}");
                    1
                }
                Err(_) => 2,
            };
            // `done_w` closes as the child exits; the parent sees EOF once
            // every child has.
            // SAFETY: leave without running the parent's destructors or
            // atexit handlers a second time.
            unsafe { libc::_exit(code) };
        }
        pids.push(pid);
    }
    drop((ready_w, go_r, done_w));
    let deadline = Instant::now() + TEAM_TIMEOUT;
    // All children ready?
    let mut ready = 0;
    while ready < n {
        let mut buf = [0u8; MAX_TEAM];
        if !poll_in(&ready_r, deadline) {
            kill_all(&pids);
            return Err(format!("watchdog: only {ready}/{n} children got ready"));
        }
        match read_some(&ready_r, &mut buf[..n - ready]) {
            r if r > 0 => ready += r as usize,
            _ => {
                kill_all(&pids);
                return Err(format!("a child failed during setup ({ready}/{n} ready)"));
            }
        }
    }
    drop(go_w); // release every child at once
                // Wait for EOF on `done`: every child has exited.
    loop {
        if !poll_in(&done_r, deadline) {
            kill_all(&pids);
            return Err(format!(
                "watchdog: children still running after {TEAM_TIMEOUT:?}"
            ));
        }
        let mut buf = [0u8; 16];
        if read_some(&done_r, &mut buf) <= 0 {
            break;
        }
    }
    let mut failed = Vec::new();
    for (i, &pid) in pids.iter().enumerate() {
        match reap(pid, deadline) {
            Some(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0 => {}
            Some(s) => failed.push(format!("child {i}: wait status {s:#x}")),
            None => {
                kill_all(&pids[i..]);
                return Err(format!("watchdog: child {i} not reaped"));
            }
        }
    }
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    let spans = (0..n)
        .map(|i| {
            let s = &stamps.get().span[i];
            (s[0].load(Ordering::Relaxed), s[1].load(Ordering::Relaxed))
        })
        .collect();
    Ok(Spans(spans))
}

/// Runs `f` in one forked child (unpinned, untimed), bounded and reaped.
pub fn in_child(mut f: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    team(&[None], &mut |_, gate| {
        f()?;
        gate.start();
        Ok(())
    })
    .map(|_| ())
}

/// A unique name for an object of this run: `/shmsync-b-PID-N`.
pub fn fresh_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + 1;
    format!("/shmsync-b-{}-{n}", std::process::id())
}

/// Removes, when dropped, every `/dev/shm` entry the run made under
/// [`fresh_name`]s (segments, `sem.` semaphores, flock files) that a row's
/// own cleanup missed (a failure half-way).
pub struct Sweep {
    pid: u32,
}

impl Sweep {
    pub fn new() -> Sweep {
        Sweep {
            pid: std::process::id(),
        }
    }

    /// Removes what is left; returns how many entries were.
    pub fn sweep(&self) -> usize {
        let prefix = format!("shmsync-b-{}-", self.pid);
        let sem_prefix = format!("sem.{prefix}");
        let mut n = 0;
        if let Ok(dir) = std::fs::read_dir("/dev/shm") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) || name.starts_with(&sem_prefix) {
                    let _ = std::fs::remove_file(e.path());
                    n += 1;
                }
            }
        }
        n
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        // Only the process that made the names sweeps (children `_exit`).
        if std::process::id() == self.pid {
            self.sweep();
        }
    }
}
