//! The standalone `FileLock`: each `flock` pitfall it handles, across
//! threads and real processes. Files live in a temporary directory removed
//! by a guard; nothing is written to the working directory.
//!
//! Default libtest harness: tests run in parallel threads of one process.
//! Other processes are this binary re-run by `shmsync::testing::child!`.
//! The two tests about a *forked* copy of a live handle run their body in
//! such a child and fork there ([`Forked`]); the umask test too runs in a
//! child.

mod support;

use std::cell::UnsafeCell;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmsync::testing::{self, ChildCtx, ChildSpec};
use shmsync::{Error, FileLock, FileLockOptions, LockError};

use support::Name;
static DIRS: AtomicU32 = AtomicU32::new(0);

/// A directory under the system temporary directory, removed (with its
/// contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("shmsync-t-{}-{n}-flock", std::process::id()));
        std::fs::create_dir(&p).expect("create temp dir");
        TempDir(p)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kind<G>(r: Result<G, LockError<std::convert::Infallible>>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(e) => e.kind(),
    }
}

/// A path as a child's argument.
fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// The code of a probe child (`child!("probe", probe)`): opens `arg(0)`,
/// tries the exclusive lock and prints the answer.
fn probe(ctx: &ChildCtx) {
    let l = FileLock::open(ctx.arg(0)).unwrap();
    match kind(l.try_lock_exclusive()) {
        a @ ("Ok" | "WouldBlock") => println!("answer {a}"),
        other => panic!("try_lock_exclusive answered {other}"),
    }
}

/// In another process (a `probe` child): open `path` and try the exclusive
/// lock.
fn other_process_try_exclusive(probe: ChildSpec, path: &Path) -> &'static str {
    let ended = probe.arg(arg(path)).run().unwrap();
    match ended.stdout.lines().find_map(|l| l.strip_prefix("answer ")) {
        Some("Ok") => "Ok",
        Some("WouldBlock") => "WouldBlock",
        _ => panic!("the probe answered nothing: {ended:?}"),
    }
}

/// A forked copy of this process running a closure, for what `testing`
/// cannot do: its children are fresh processes, and these tests need a
/// copy of a live handle (a guard, a lock without a path).
///
/// Only ever made inside a `child!` process, never in the harness. That
/// process has two threads: this one and libtest's main thread, parked
/// waiting for this test's result and holding no lock, so the forked copy
/// may run ordinary Rust. Waits here are not bounded one by one: the
/// `child!` process runs under the watchdog of `testing`, which kills its
/// whole process group (the fork with it) past its bound.
struct Forked {
    pid: libc::pid_t,
    report: File,
    go: Option<File>,
}

/// The forked side's channel to its parent.
struct ForkCtx {
    report: File,
    go: File,
}

impl ForkCtx {
    /// Tells the parent it reached point `tag`, then blocks until the
    /// parent says go on (or is gone).
    fn reached_and_wait(&mut self, tag: u8) {
        self.report.write_all(&[tag]).expect("report to parent");
        let mut b = [0u8];
        if self.go.read_exact(&mut b).is_err() {
            // SAFETY: the parent is gone; leave at once.
            unsafe { libc::_exit(3) };
        }
    }
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: fresh descriptors we own.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

impl Forked {
    /// Forks; the copy runs `f` and exits 0 (101 if it panicked).
    fn spawn(f: impl FnOnce(&mut ForkCtx)) -> Forked {
        let (report_r, report_w) = pipe();
        let (go_r, go_w) = pipe();
        let _ = std::io::stdout().flush();
        // SAFETY: called in a child! process whose only other thread holds
        // no lock (see the type's docs).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            drop((report_r, go_w));
            let mut ctx = ForkCtx {
                report: report_w,
                go: go_r,
            };
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut ctx)))
            {
                Ok(()) => 0,
                Err(_) => 101,
            };
            let _ = std::io::stdout().flush();
            // SAFETY: leave without unwinding into the parent's test code.
            unsafe { libc::_exit(code) };
        }
        Forked {
            pid,
            report: report_r,
            go: Some(go_w),
        }
    }

    /// Waits for the copy to report a point; returns its tag.
    fn expect_reached(&mut self) -> u8 {
        let mut b = [0u8];
        match self.report.read(&mut b) {
            Ok(1) => b[0],
            _ => panic!("forked child {} ended before reporting", self.pid),
        }
    }

    /// Lets a copy blocked in `reached_and_wait` go on.
    fn go_on(&mut self) {
        if let Some(g) = self.go.as_mut() {
            let _ = g.write_all(b"G");
        }
    }

    /// Reaps the copy and asserts it exited 0.
    fn join(mut self) {
        self.go = None;
        let mut status = 0;
        // SAFETY: reaping our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        assert_eq!(r, self.pid, "waitpid");
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "forked child {} failed: wait status {status:#x}",
            self.pid
        );
    }
}

/// In a forked copy: open `path` and try the exclusive lock (the probe of
/// a test that runs in a `child!` process).
fn forked_try_exclusive(path: &Path) -> &'static str {
    let p = path.to_path_buf();
    let answer = |ok: bool| if ok { b'O' } else { b'W' };
    let mut c = Forked::spawn(move |ctx| {
        let l = FileLock::open(&p).unwrap();
        let tag = match kind(l.try_lock_exclusive()) {
            "Ok" => answer(true),
            "WouldBlock" => answer(false),
            other => panic!("try_lock_exclusive answered {other}"),
        };
        ctx.reached_and_wait(tag);
    });
    let tag = c.expect_reached();
    c.go_on();
    c.join();
    if tag == answer(true) {
        "Ok"
    } else {
        "WouldBlock"
    }
}

struct Racy(UnsafeCell<u64>);
// SAFETY: only touched under the lock (that is what is tested).
unsafe impl Sync for Racy {}

impl Racy {
    fn ptr(&self) -> *mut u64 {
        self.0.get()
    }
}

/// flock belongs to the open file description: four threads sharing one
/// handle must still exclude each other. A counter incremented
/// non-atomically under the lock ends exact.
#[test]
fn threads_sharing_one_handle_exclude() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 3_000;
    let dir = TempDir::new();
    let lock = FileLock::open_or_create(dir.path("a.lock")).unwrap();
    let racy = Racy(UnsafeCell::new(0));
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for i in 0..ROUNDS {
                    let _g = lock.lock_exclusive().unwrap();
                    let p = racy.ptr();
                    // SAFETY: under the lock (the property tested).
                    let v = unsafe { p.read_volatile() };
                    if i % 16 == 0 {
                        std::thread::yield_now();
                    }
                    // SAFETY: as above.
                    unsafe { p.write_volatile(v + 1) };
                }
            });
        }
    });
    // SAFETY: the threads are joined.
    assert_eq!(unsafe { *racy.ptr() }, THREADS * ROUNDS);
}

/// Writers keep two words equal under the exclusive lock (with a yield in
/// between); readers under the shared lock never see them differ.
#[test]
fn readers_and_writers_of_one_handle() {
    let dir = TempDir::new();
    let lock = FileLock::open_or_create(dir.path("rw.lock")).unwrap();
    let x = Racy(UnsafeCell::new(0));
    let y = Racy(UnsafeCell::new(0));
    let checks = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..1_000 {
                    let _g = lock.lock_exclusive().unwrap();
                    // SAFETY: exclusive lock held.
                    unsafe { x.ptr().write_volatile(x.ptr().read_volatile() + 1) };
                    std::thread::yield_now();
                    // SAFETY: exclusive lock held.
                    unsafe { y.ptr().write_volatile(y.ptr().read_volatile() + 1) };
                }
            });
        }
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..1_000 {
                    let _g = lock.lock_shared().unwrap();
                    // SAFETY: shared lock held: no writer runs.
                    let (a, b) = unsafe { (x.ptr().read_volatile(), y.ptr().read_volatile()) };
                    assert_eq!(a, b, "a reader saw a writer mid-update");
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(checks.load(Ordering::Relaxed), 2_000);
    // SAFETY: joined.
    assert_eq!(unsafe { *x.ptr() }, 2_000);
}

/// A thread asking again for the exclusive lock it holds, or for the
/// exclusive lock while it holds a shared one (an "upgrade", which flock
/// cannot do atomically), gets Deadlock instead of waiting for itself.
#[test]
fn same_thread_relock_and_upgrade_are_deadlock() {
    let dir = TempDir::new();
    let lock = FileLock::open_or_create(dir.path("d.lock")).unwrap();
    let g = lock.lock_exclusive().unwrap();
    assert_eq!(kind(lock.lock_exclusive()), "Deadlock");
    assert_eq!(kind(lock.try_lock_exclusive()), "Deadlock");
    assert_eq!(kind(lock.lock_shared()), "Deadlock");
    drop(g);
    let s = lock.lock_shared().unwrap();
    assert_eq!(kind(lock.lock_exclusive()), "Deadlock");
    assert_eq!(
        kind(lock.lock_exclusive_timeout(Duration::from_millis(10))),
        "Deadlock"
    );
    drop(s);
    assert_eq!(kind(lock.try_lock_exclusive()), "Ok");
}

/// Shared guards of one process: the lock is released (LOCK_UN) only when
/// the last of them goes.
#[test]
fn shared_recursion_last_guard_unlocks() {
    let probe = testing::child!("probe", probe);
    let dir = TempDir::new();
    let path = dir.path("s.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let a = lock.lock_shared().unwrap();
    let b = lock.try_lock_shared().unwrap();
    drop(a);
    assert_eq!(other_process_try_exclusive(probe, &path), "WouldBlock");
    drop(b);
    assert_eq!(other_process_try_exclusive(probe, &path), "Ok");
}

/// Against another thread of this process holding the lock: try answers
/// WouldBlock, timed answers TimedOut, a shared request waits too.
#[test]
fn in_process_try_and_timed() {
    let dir = TempDir::new();
    let lock = FileLock::open_or_create(dir.path("t.lock")).unwrap();
    let g = lock.lock_exclusive().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(kind(lock.try_lock_exclusive()), "WouldBlock");
            assert_eq!(kind(lock.try_lock_shared()), "WouldBlock");
            assert_eq!(
                kind(lock.lock_exclusive_timeout(Duration::from_millis(30))),
                "TimedOut"
            );
            assert_eq!(
                kind(lock.lock_shared_timeout(Duration::from_millis(30))),
                "TimedOut"
            );
            assert_eq!(kind(lock.lock_shared_timeout(Duration::ZERO)), "TimedOut");
        });
    });
    drop(g);
    let s = lock.lock_shared().unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            assert_eq!(kind(lock.try_lock_shared()), "Ok");
            assert_eq!(kind(lock.try_lock_exclusive()), "WouldBlock");
        });
    });
    drop(s);
}

/// A guard dropped in a forked child does not release the parent's lock
/// (the child shares the open file description): a third process still
/// cannot take it, and the child's own attempt through the inherited
/// handle (a new description in the child) finds it taken too.
#[test]
fn guard_dropped_in_forked_child_keeps_parent_lock() {
    // The whole test runs in a child process: it forks.
    let body = testing::child!("forking test", |ctx| {
        let path = PathBuf::from(ctx.arg(0));
        let lock = FileLock::open_or_create(&path).unwrap();
        let guard = lock.lock_exclusive().unwrap();
        let (guard_ref, lock_ref) = (&guard, &lock);
        Forked::spawn(move |_| {
            // SAFETY: the child owns a copy of the parent's memory; dropping
            // its copy of the guard is what unwinding through the frame
            // would do.
            drop(unsafe { std::ptr::read(guard_ref) });
            assert_eq!(kind(lock_ref.try_lock_exclusive()), "WouldBlock");
            assert_eq!(kind(lock_ref.try_lock_shared()), "WouldBlock");
        })
        .join();
        assert_eq!(forked_try_exclusive(&path), "WouldBlock");
        drop(guard);
        assert_eq!(forked_try_exclusive(&path), "Ok");
        // The inherited handle works in a child once the parent released.
        Forked::spawn(move |_| {
            let _g = lock_ref.try_lock_exclusive().expect("free");
        })
        .join();
    });
    let dir = TempDir::new();
    body.arg(arg(&dir.path("fork.lock"))).run().unwrap();
}

/// A lock built from a descriptor (no path) used in a forked child: the
/// child locks through a new description of the same file
/// (`/proc/self/fd/N`), so it conflicts with the parent's.
#[test]
fn fd_based_lock_in_forked_child() {
    // The whole test runs in a child process: it forks.
    let body = testing::child!("forking test", |ctx| {
        let file = File::create(ctx.arg(0)).unwrap();
        let lock = FileLock::from_file(file).unwrap();
        assert!(lock.path().is_none());
        let lock_ref = &lock;
        let mut child = Forked::spawn(move |ctx| {
            let _g = lock_ref.lock_exclusive().unwrap();
            ctx.reached_and_wait(b'L');
        });
        assert_eq!(child.expect_reached(), b'L');
        assert_eq!(kind(lock.try_lock_exclusive()), "WouldBlock");
        assert_eq!(kind(lock.try_lock_shared()), "WouldBlock");
        child.go_on();
        child.join();
        assert_eq!(kind(lock.try_lock_exclusive()), "Ok");
    });
    let dir = TempDir::new();
    body.arg(arg(&dir.path("fd.lock"))).run().unwrap();
}

/// The file at the path is replaced (rename over it) after the handle
/// opened it: the lock is taken on the file now at the path, not on the
/// old inode.
#[test]
fn replaced_between_open_and_lock() {
    let probe = testing::child!("probe", probe);
    let dir = TempDir::new();
    let path = dir.path("r.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    // Keep a name for the old inode, then replace the path.
    std::fs::hard_link(&path, dir.path("old")).unwrap();
    std::fs::write(dir.path("new"), b"").unwrap();
    std::fs::rename(dir.path("new"), &path).unwrap();
    let _g = lock.lock_exclusive().unwrap();
    assert_eq!(
        other_process_try_exclusive(probe, &path),
        "WouldBlock",
        "new file locked"
    );
    assert_eq!(
        other_process_try_exclusive(probe, &dir.path("old")),
        "Ok",
        "old inode free"
    );
}

/// The file is removed after the handle opened it: with `create`, the lock
/// recreates it and locks the new file; without, the lock answers the OS
/// error (ENOENT) and holds nothing.
#[test]
fn unlinked_between_open_and_lock() {
    let probe = testing::child!("probe", probe);
    let dir = TempDir::new();
    let path = dir.path("u.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let g = lock.lock_exclusive().unwrap();
    assert!(path.exists(), "recreated");
    assert_eq!(other_process_try_exclusive(probe, &path), "WouldBlock");
    drop(g);

    let path2 = dir.path("u2.lock");
    std::fs::write(&path2, b"").unwrap();
    let lock2 = FileLock::open(&path2).unwrap();
    std::fs::remove_file(&path2).unwrap();
    match lock2.try_lock_exclusive() {
        Err(LockError::Os(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        other => panic!("expected Os(NotFound), got {}", kind(other)),
    }
    // Nothing is held: the handle can lock once the file is back.
    std::fs::write(&path2, b"").unwrap();
    assert_eq!(kind(lock2.try_lock_exclusive()), "Ok");
}

/// The classic race: a holder removes the lock file and releases; a process
/// that opened the old file and waits gets the old inode's flock — and must
/// notice, and lock the file now at the path instead. Then a newcomer
/// (opening the path) is excluded by it.
#[test]
fn replaced_while_waiting_in_another_process() {
    let waiter = testing::child!("waiter", |ctx| {
        let l = FileLock::open_or_create(ctx.arg(0)).unwrap();
        testing::point("opened");
        let _g = l.lock_exclusive().unwrap();
        testing::point("locked");
    });
    let probe = testing::child!("probe", probe);
    for replace in [false, true] {
        let dir = TempDir::new();
        let path = dir.path("w.lock");
        let lock = FileLock::open_or_create(&path).unwrap();
        let g = lock.lock_exclusive().unwrap();
        let mut waiter = waiter.arg(arg(&path)).stop_at("locked").spawn().unwrap();
        waiter.wait_point("opened").unwrap();
        if replace {
            std::fs::write(dir.path("next"), b"").unwrap();
            std::fs::rename(dir.path("next"), &path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        drop(g);
        waiter.wait_stopped().unwrap();
        assert!(path.exists());
        assert_eq!(
            other_process_try_exclusive(probe, &path),
            "WouldBlock",
            "replace={replace}"
        );
        waiter.resume().unwrap();
        waiter.wait().unwrap();
    }
}

/// Shared locks of several processes coexist and exclude an exclusive one
/// (try → WouldBlock, timed → TimedOut); once all are gone it is free.
#[test]
fn shared_locks_coexist_across_processes() {
    let reader = testing::child!("reader", |ctx| {
        let l = FileLock::open(ctx.arg(0)).unwrap();
        let _s = l
            .try_lock_shared()
            .expect("shared beside the parent's shared");
        testing::point("shared");
    });
    let checker = testing::child!("checker", |ctx| {
        let l = FileLock::open(ctx.arg(0)).unwrap();
        assert_eq!(kind(l.try_lock_exclusive()), "WouldBlock");
        assert_eq!(
            kind(l.lock_exclusive_timeout(Duration::from_millis(50))),
            "TimedOut"
        );
        drop(l.try_lock_shared().expect("shared beside another shared"));
    });
    let probe = testing::child!("probe", probe);
    let dir = TempDir::new();
    let path = dir.path("sh.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let mine = lock.lock_shared().unwrap();
    let mut reader = reader.arg(arg(&path)).stop_at("shared").spawn().unwrap();
    reader.wait_stopped().unwrap();
    drop(mine);
    // Only the child holds a shared lock now.
    checker.arg(arg(&path)).run().unwrap();
    assert_eq!(other_process_try_exclusive(probe, &path), "WouldBlock");
    assert_eq!(kind(lock.try_lock_shared()), "Ok");
    reader.resume().unwrap();
    reader.wait().unwrap();
    assert_eq!(other_process_try_exclusive(probe, &path), "Ok");
}

/// Against an exclusive holder in another process: every try answers
/// WouldBlock and every timed wait TimedOut (zero included); after the
/// holder releases, a timed wait succeeds.
#[test]
fn try_and_timed_against_another_process() {
    let holder = testing::child!("holder", |ctx| {
        let l = FileLock::open(ctx.arg(0)).unwrap();
        let g = l.lock_exclusive().unwrap();
        testing::point("held");
        drop(g);
    });
    let dir = TempDir::new();
    let path = dir.path("x.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let mut holder = holder.arg(arg(&path)).stop_at("held").spawn().unwrap();
    holder.wait_stopped().unwrap();
    assert_eq!(kind(lock.try_lock_exclusive()), "WouldBlock");
    assert_eq!(kind(lock.try_lock_shared()), "WouldBlock");
    assert_eq!(
        kind(lock.lock_exclusive_timeout(Duration::from_millis(100))),
        "TimedOut"
    );
    assert_eq!(
        kind(lock.lock_shared_timeout(Duration::from_millis(100))),
        "TimedOut"
    );
    assert_eq!(
        kind(lock.lock_exclusive_timeout(Duration::ZERO)),
        "TimedOut"
    );
    holder.resume().unwrap();
    assert_eq!(
        kind(lock.lock_exclusive_timeout(testing::default_bound())),
        "Ok"
    );
    holder.wait().unwrap();
    // Duration::MAX is a blocking wait that succeeds on a free lock.
    assert_eq!(kind(lock.lock_exclusive_timeout(Duration::MAX)), "Ok");
}

/// A holder killed with SIGKILL: the kernel frees its lock.
#[test]
fn holder_sigkilled_frees_the_lock() {
    let holder = testing::child!("holder", |ctx| {
        let l = FileLock::open(ctx.arg(0)).unwrap();
        let _g = l.lock_exclusive().unwrap();
        testing::point("held");
    });
    let dir = TempDir::new();
    let path = dir.path("k.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let mut holder = holder.arg(arg(&path)).stop_at("held").spawn().unwrap();
    holder.wait_stopped().unwrap();
    assert_eq!(kind(lock.try_lock_exclusive()), "WouldBlock");
    let ended = holder.kill().unwrap();
    assert!(ended.killed);
    assert_eq!(kind(lock.try_lock_exclusive()), "Ok");
}

/// Process `pid`'s command name and state letter, from `/proc`.
fn comm_and_state(pid: u32) -> Option<(String, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_string();
    let state = stat[stat.rfind(')')? + 1..].split_whitespace().next()?;
    Some((comm, state.to_string()))
}

/// Whether `pid` runs `/bin/sleep` (exec'd, alive, not a zombie).
fn runs_sleep(pid: u32) -> bool {
    comm_and_state(pid).is_some_and(|(comm, state)| comm == "sleep" && state != "Z")
}

/// Descriptors are O_CLOEXEC: a holder that execs another program does not
/// pass the lock on to it.
#[test]
fn exec_does_not_inherit_the_lock() {
    let execer = testing::child!("execer", |ctx| {
        let l = FileLock::open(ctx.arg(0)).unwrap();
        std::mem::forget(l.lock_exclusive().unwrap());
        std::mem::forget(l);
        let prog = std::ffi::CString::new("/bin/sleep").unwrap();
        let arg0 = std::ffi::CString::new("sleep").unwrap();
        let arg1 = std::ffi::CString::new("60").unwrap();
        let args = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
        // SAFETY: NUL-terminated program and argument vector.
        unsafe { libc::execv(prog.as_ptr(), args.as_ptr()) };
        panic!("execv failed");
    });
    let dir = TempDir::new();
    let path = dir.path("e.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let child = execer.arg(arg(&path)).spawn().unwrap();
    let pid = child.pid();
    // Wait (bounded) until the child is the exec'd program.
    let deadline = Instant::now() + testing::default_bound();
    while !runs_sleep(pid) {
        assert!(
            Instant::now() < deadline,
            "the child never exec'd: {:?}",
            comm_and_state(pid)
        );
        std::thread::yield_now();
    }
    assert!(runs_sleep(pid), "exec'd program alive");
    // exec closes close-on-exec descriptors one at a time: the program may
    // run just before the lock's descriptor is closed.
    while kind(lock.try_lock_exclusive()) != "Ok" {
        assert!(
            Instant::now() < deadline,
            "the exec'd program kept the lock"
        );
        std::thread::yield_now();
    }
    assert!(runs_sleep(pid), "still alive while the lock is free");
    let ended = child.kill().unwrap();
    assert!(ended.killed);
}

/// Bad paths get typed errors.
#[test]
fn open_errors_are_typed() {
    let dir = TempDir::new();
    assert!(matches!(
        FileLock::open(dir.path("missing")),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        FileLock::open("/tmp/a\0b"),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        FileLock::open_or_create(dir.path("no-such-dir/x.lock")),
        Err(Error::NotFound { .. })
    ));
}

/// A created lock file gets exactly the requested mode, whatever the umask.
#[test]
fn create_sets_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    // In a child: the umask is process-wide.
    let creator = testing::child!("umask", |ctx| {
        // SAFETY: umask is process-wide; this is a child process.
        unsafe { libc::umask(0o077) };
        let _l = FileLockOptions::new()
            .create(true)
            .mode(0o644)
            .open(ctx.arg(0))
            .unwrap();
    });
    let dir = TempDir::new();
    let path = dir.path("m.lock");
    creator.arg(arg(&path)).run().unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
}

/// A file on a local filesystem (the temp dir, and tmpfs) is accepted
/// without opting in. (The refusal of NFS/CIFS is unit-tested on the
/// magic-number classification: no network mount exists here.)
#[test]
fn local_filesystem_is_accepted() {
    let dir = TempDir::new();
    assert!(FileLock::open_or_create(dir.path("l.lock")).is_ok());
    let shm = Name::new("flock-local");
    let l = FileLock::open_or_create(shm.path());
    let _ = std::fs::remove_file(shm.path());
    assert!(l.is_ok());
    let f = std::fs::File::open(dir.path("l.lock")).unwrap();
    assert!(FileLockOptions::new()
        .allow_network_fs(true)
        .from_fd(f.into())
        .is_ok());
}
