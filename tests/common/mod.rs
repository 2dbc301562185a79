//! Test support for the cross-process suites (`harness = false` binaries).
//!
//! * [`run`] runs each test in its own forked process (its own process
//!   group) from the single-threaded runner, with a watchdog: a hang becomes
//!   a failure naming the test, and the whole group is killed and reaped.
//!   After each test, objects left in `/dev/shm` under the test's name
//!   prefix fail it (and are removed).
//! * [`TestName`] gives unique names and unlinks them on drop.
//! * [`Child`] forks a closure into a child process that reports over a
//!   pipe ([`ChildCtx::reached`]); the parent waits for that report (no
//!   sleeps), kills and reaps it, always within a bound.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Default bound for every wait in a test.
pub const BOUND: Duration = Duration::from_secs(20);
/// Watchdog for a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

pub type TestFn = fn();

/// Runs the tests named on the command line (substring filters; none = all).
pub fn run(tests: &[(&str, TestFn)]) {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let list_only = std::env::args().any(|a| a == "--list");
    let selected: Vec<_> = tests
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    if list_only {
        for (n, _) in &selected {
            println!("{n}: test");
        }
        return;
    }
    println!("\nrunning {} tests", selected.len());
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, f) in selected {
        let started = Instant::now();
        let outcome = run_one(*f);
        let leftovers = sweep(outcome.1);
        let verdict = match (&outcome.0, leftovers.is_empty()) {
            (Ok(()), true) => Ok(()),
            (Ok(()), false) => Err(format!("left objects in /dev/shm: {leftovers:?}")),
            (Err(e), _) => Err(e.clone()),
        };
        match verdict {
            Ok(()) => {
                passed += 1;
                println!(
                    "test {name} ... ok ({:.2}s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                println!("test {name} ... FAILED\n    {e}");
                failed.push(name.to_string());
            }
        }
    }
    let status = if failed.is_empty() { "ok" } else { "FAILED" };
    println!("\ntest result: {status}. {passed} passed; {} failed; 0 ignored; 0 measured; 0 filtered out\n", failed.len());
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(1);
    }
}

/// Forks the test into its own process group and waits for it.
fn run_one(f: TestFn) -> (Result<(), String>, u32) {
    let _ = std::io::stdout().flush();
    // SAFETY: the runner is single-threaded, so the child may run any code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: setpgid on ourselves.
        unsafe { libc::setpgid(0, 0) };
        let code = match std::panic::catch_unwind(f) {
            Ok(()) => 0,
            Err(_) => 101,
        };
        let _ = std::io::stdout().flush();
        // SAFETY: leave without running the runner's atexit state twice.
        unsafe { libc::_exit(code) };
    }
    let pid = pid as u32;
    // SAFETY: make sure the group exists even if the child has not run yet.
    unsafe { libc::setpgid(pid as i32, pid as i32) };
    let result = match wait_pid(pid, TEST_TIMEOUT) {
        Some(status) if exited_ok(status) => Ok(()),
        Some(status) => Err(format!("test process ended with {}", describe(status))),
        None => {
            // SAFETY: kill the test's whole process group, then reap it.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            let _ = wait_pid(pid, BOUND);
            Err(format!(
                "watchdog: test did not finish within {TEST_TIMEOUT:?}"
            ))
        }
    };
    // Reap any grandchildren left in the group.
    // SAFETY: signalling our own test's process group.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    (result, pid)
}

/// Removes `/dev/shm` objects named after test process `pid`; returns them.
fn sweep(pid: u32) -> Vec<String> {
    let prefix = format!("shmsync-t-{pid}-");
    let mut left = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix)
                || n.strip_prefix("sem.")
                    .is_some_and(|r| r.starts_with(&prefix))
            {
                let _ = std::fs::remove_file(e.path());
                left.push(n);
            }
        }
    }
    left
}

pub fn exited_ok(status: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

pub fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

/// Waits for `pid` to end, at most `bound`; `None` on timeout (not reaped).
pub fn wait_pid(pid: u32, bound: Duration) -> Option<i32> {
    // pidfd + poll: a bounded wait without polling loops.
    // SAFETY: plain system call.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd >= 0 {
        // SAFETY: a fresh fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = bound.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r == 0 {
            return None;
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: reaping our own child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if r == pid as i32 {
            return Some(status);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Some(status);
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique object name (`/shmsync-t-PID-N-TAG`) unlinked on drop, with every
/// companion object the crate made for it.
pub struct TestName(pub String);

impl TestName {
    pub fn new(tag: &str) -> TestName {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        TestName(format!("/shmsync-t-{}-{n}-{tag}", std::process::id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path of the segment in `/dev/shm`.
    pub fn path(&self) -> String {
        format!("/dev/shm{}", self.0)
    }
}

impl Drop for TestName {
    fn drop(&mut self) {
        let _ = shmsync::ShmCell::<u8>::unlink(&self.0);
        let _ = std::fs::remove_file(self.path());
        let _ = std::fs::remove_file(format!("/dev/shm/sem.{}", &self.0[1..]));
    }
}

/// What a child process sees.
pub struct ChildCtx {
    report: std::fs::File,
    command: std::fs::File,
}

impl ChildCtx {
    /// The raw report pipe, for code that cannot hold the context (an
    /// `fn` hook): writing one byte there is a `reached`.
    pub fn report_fd(&self) -> i32 {
        self.report.as_raw_fd()
    }

    /// Tells the parent the child reached point `tag` (one byte).
    pub fn reached(&mut self, tag: u8) {
        self.report.write_all(&[tag]).expect("report to parent");
    }

    /// Tells the parent, then blocks until the parent kills it (or says go on).
    pub fn reached_and_wait(&mut self, tag: u8) -> u8 {
        self.reached(tag);
        self.wait_command()
    }

    /// Blocks until the parent sends a command byte; exits if the parent
    /// went away.
    pub fn wait_command(&mut self) -> u8 {
        let mut b = [0u8];
        match self.command.read_exact(&mut b) {
            Ok(()) => b[0],
            // SAFETY: the parent is gone; leave at once.
            Err(_) => unsafe { libc::_exit(3) },
        }
    }
}

/// A forked child process running a closure.
pub struct Child {
    pub pid: u32,
    report: std::fs::File,
    command: Option<std::fs::File>,
    reaped: Option<i32>,
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: fresh descriptors we own.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

impl Child {
    /// Forks; the child runs `f` and exits 0 (or 101 if it panicked, or the
    /// code `f` passes to `std::process::exit`). Call only from a
    /// single-threaded test process.
    pub fn spawn(f: impl FnOnce(&mut ChildCtx)) -> Child {
        let (report_r, report_w) = pipe();
        let (command_r, command_w) = pipe();
        let _ = std::io::stdout().flush();
        // SAFETY: tests call this from their single-threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            drop(report_r);
            drop(command_w);
            let mut ctx = ChildCtx {
                report: report_w,
                command: command_r,
            };
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut ctx)))
            {
                Ok(()) => 0,
                Err(_) => 101,
            };
            // SAFETY: leave without unwinding into the parent's test code.
            unsafe { libc::_exit(code) };
        }
        Child {
            pid: pid as u32,
            report: report_r,
            command: Some(command_w),
            reaped: None,
        }
    }

    /// Waits (bounded) for the child to report a point; returns its tag.
    /// Panics if the child ended or hung before reporting.
    pub fn expect_reached(&mut self) -> u8 {
        let mut pfd = libc::pollfd {
            fd: self.report.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, BOUND.as_millis() as i32) };
        assert!(r > 0, "child {} did not report within {BOUND:?}", self.pid);
        let mut b = [0u8];
        match self.report.read(&mut b) {
            Ok(1) => b[0],
            _ => {
                let status = self.wait();
                panic!(
                    "child {} ended before reporting: {}",
                    self.pid,
                    describe(status)
                );
            }
        }
    }

    /// Whether the report pipe reached end of file (the child exited or
    /// exec'd — the write end is close-on-exec), bounded.
    pub fn expect_report_closed(&mut self) {
        let mut pfd = libc::pollfd {
            fd: self.report.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, BOUND.as_millis() as i32) };
        assert!(r > 0, "child {} kept its report pipe open", self.pid);
        let mut b = [0u8];
        assert!(
            matches!(self.report.read(&mut b), Ok(0)),
            "expected end of file"
        );
    }

    /// Sends a command byte to a child blocked in `wait_command`.
    pub fn command(&mut self, b: u8) {
        if let Some(c) = self.command.as_mut() {
            let _ = c.write_all(&[b]);
        }
    }

    /// `SIGKILL`s the child and reaps it.
    pub fn kill(&mut self) -> i32 {
        if self.reaped.is_none() {
            // SAFETY: signalling our own, unreaped child.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        self.wait()
    }

    /// Reaps the child (bounded; kills it past the bound).
    pub fn wait(&mut self) -> i32 {
        if let Some(s) = self.reaped {
            return s;
        }
        self.command = None;
        let status = match wait_pid(self.pid, BOUND) {
            Some(s) => s,
            None => {
                // SAFETY: our own unreaped child.
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
                wait_pid(self.pid, BOUND).expect("reap after SIGKILL");
                panic!("child {} hung past {BOUND:?}", self.pid);
            }
        };
        self.reaped = Some(status);
        status
    }

    /// Reaps the child and asserts it exited 0.
    pub fn join(&mut self) {
        let status = self.wait();
        assert!(
            exited_ok(status),
            "child {} failed: {}",
            self.pid,
            describe(status)
        );
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.kill();
        }
    }
}

/// Runs `f` in a child and returns its exit code (0 = ok).
pub fn in_child(f: impl FnOnce()) -> i32 {
    let mut c = Child::spawn(|_| f());
    let s = c.wait();
    if libc::WIFEXITED(s) {
        libc::WEXITSTATUS(s)
    } else {
        -libc::WTERMSIG(s)
    }
}

/// A small deterministic PRNG (xorshift64*), seeded per test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
