//! The standalone `FileLock`: each `flock` pitfall it handles, across
//! threads and real processes. Files live in a temporary directory removed
//! by a guard; nothing is written to the working directory.

mod common;

use std::cell::UnsafeCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Child, BOUND};
use shmsync::{Error, FileLock, FileLockOptions, LockError};

fn main() {
    let tests: [(&str, common::TestFn); 17] = [
        (
            "threads_sharing_one_handle_exclude",
            threads_sharing_one_handle_exclude,
        ),
        (
            "readers_and_writers_of_one_handle",
            readers_and_writers_of_one_handle,
        ),
        (
            "same_thread_relock_and_upgrade_are_deadlock",
            same_thread_relock_and_upgrade_are_deadlock,
        ),
        (
            "shared_recursion_last_guard_unlocks",
            shared_recursion_last_guard_unlocks,
        ),
        ("in_process_try_and_timed", in_process_try_and_timed),
        (
            "guard_dropped_in_forked_child_keeps_parent_lock",
            guard_dropped_in_forked_child_keeps_parent_lock,
        ),
        (
            "fd_based_lock_in_forked_child",
            fd_based_lock_in_forked_child,
        ),
        (
            "replaced_between_open_and_lock",
            replaced_between_open_and_lock,
        ),
        (
            "unlinked_between_open_and_lock",
            unlinked_between_open_and_lock,
        ),
        (
            "replaced_while_waiting_in_another_process",
            replaced_while_waiting_in_another_process,
        ),
        (
            "shared_locks_coexist_across_processes",
            shared_locks_coexist_across_processes,
        ),
        (
            "try_and_timed_against_another_process",
            try_and_timed_against_another_process,
        ),
        (
            "holder_sigkilled_frees_the_lock",
            holder_sigkilled_frees_the_lock,
        ),
        (
            "exec_does_not_inherit_the_lock",
            exec_does_not_inherit_the_lock,
        ),
        ("open_errors_are_typed", open_errors_are_typed),
        ("create_sets_the_mode", create_sets_the_mode),
        ("local_filesystem_is_accepted", local_filesystem_is_accepted),
    ];
    common::run(&tests);
}

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

/// In another process: open `path` and try the exclusive lock.
fn other_process_try_exclusive(path: &Path) -> &'static str {
    let p = path.to_path_buf();
    let code = common::in_child(move || {
        let l = FileLock::open(&p).unwrap();
        let code = match kind(l.try_lock_exclusive()) {
            "Ok" => 10,
            "WouldBlock" => 11,
            _ => 12,
        };
        std::process::exit(code);
    });
    match code {
        10 => "Ok",
        11 => "WouldBlock",
        c => panic!("child answered {c}"),
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
fn shared_recursion_last_guard_unlocks() {
    let dir = TempDir::new();
    let path = dir.path("s.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let a = lock.lock_shared().unwrap();
    let b = lock.try_lock_shared().unwrap();
    drop(a);
    assert_eq!(other_process_try_exclusive(&path), "WouldBlock");
    drop(b);
    assert_eq!(other_process_try_exclusive(&path), "Ok");
}

/// Against another thread of this process holding the lock: try answers
/// WouldBlock, timed answers TimedOut, a shared request waits too.
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
fn guard_dropped_in_forked_child_keeps_parent_lock() {
    let dir = TempDir::new();
    let path = dir.path("fork.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let guard = lock.lock_exclusive().unwrap();
    let (guard_ref, lock_ref) = (&guard, &lock);
    Child::spawn(move |_| {
        // SAFETY: the child owns a copy of the parent's memory; dropping its
        // copy of the guard is what unwinding through the frame would do.
        drop(unsafe { std::ptr::read(guard_ref) });
        assert_eq!(kind(lock_ref.try_lock_exclusive()), "WouldBlock");
        assert_eq!(kind(lock_ref.try_lock_shared()), "WouldBlock");
    })
    .join();
    assert_eq!(other_process_try_exclusive(&path), "WouldBlock");
    drop(guard);
    assert_eq!(other_process_try_exclusive(&path), "Ok");
    // The inherited handle works in a child once the parent released.
    Child::spawn(move |_| {
        let _g = lock_ref.try_lock_exclusive().expect("free");
    })
    .join();
}

/// A lock built from a descriptor (no path) used in a forked child: the
/// child locks through a new description of the same file
/// (`/proc/self/fd/N`), so it conflicts with the parent's.
fn fd_based_lock_in_forked_child() {
    let dir = TempDir::new();
    let path = dir.path("fd.lock");
    let file = std::fs::File::create(&path).unwrap();
    let lock = FileLock::from_file(file).unwrap();
    assert!(lock.path().is_none());
    let lock_ref = &lock;
    let mut child = Child::spawn(move |ctx| {
        let _g = lock_ref.lock_exclusive().unwrap();
        ctx.reached_and_wait(b'L');
    });
    assert_eq!(child.expect_reached(), b'L');
    assert_eq!(kind(lock.try_lock_exclusive()), "WouldBlock");
    assert_eq!(kind(lock.try_lock_shared()), "WouldBlock");
    child.command(b'R');
    child.join();
    assert_eq!(kind(lock.try_lock_exclusive()), "Ok");
}

/// The file at the path is replaced (rename over it) after the handle
/// opened it: the lock is taken on the file now at the path, not on the
/// old inode.
fn replaced_between_open_and_lock() {
    let dir = TempDir::new();
    let path = dir.path("r.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    // Keep a name for the old inode, then replace the path.
    std::fs::hard_link(&path, dir.path("old")).unwrap();
    std::fs::write(dir.path("new"), b"").unwrap();
    std::fs::rename(dir.path("new"), &path).unwrap();
    let _g = lock.lock_exclusive().unwrap();
    assert_eq!(
        other_process_try_exclusive(&path),
        "WouldBlock",
        "new file locked"
    );
    assert_eq!(
        other_process_try_exclusive(&dir.path("old")),
        "Ok",
        "old inode free"
    );
}

/// The file is removed after the handle opened it: with `create`, the lock
/// recreates it and locks the new file; without, the lock answers the OS
/// error (ENOENT) and holds nothing.
fn unlinked_between_open_and_lock() {
    let dir = TempDir::new();
    let path = dir.path("u.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let g = lock.lock_exclusive().unwrap();
    assert!(path.exists(), "recreated");
    assert_eq!(other_process_try_exclusive(&path), "WouldBlock");
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
fn replaced_while_waiting_in_another_process() {
    for replace in [false, true] {
        let dir = TempDir::new();
        let path = dir.path("w.lock");
        let lock = FileLock::open_or_create(&path).unwrap();
        let g = lock.lock_exclusive().unwrap();
        let p = path.clone();
        let mut waiter = Child::spawn(move |ctx| {
            let l = FileLock::open_or_create(&p).unwrap();
            ctx.reached(b'O');
            let _g = l.lock_exclusive().unwrap();
            ctx.reached_and_wait(b'L');
        });
        assert_eq!(waiter.expect_reached(), b'O');
        if replace {
            std::fs::write(dir.path("next"), b"").unwrap();
            std::fs::rename(dir.path("next"), &path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        drop(g);
        assert_eq!(waiter.expect_reached(), b'L');
        assert!(path.exists());
        assert_eq!(
            other_process_try_exclusive(&path),
            "WouldBlock",
            "replace={replace}"
        );
        waiter.command(b'R');
        waiter.join();
    }
}

/// Shared locks of several processes coexist and exclude an exclusive one
/// (try → WouldBlock, timed → TimedOut); once all are gone it is free.
fn shared_locks_coexist_across_processes() {
    let dir = TempDir::new();
    let path = dir.path("sh.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let mine = lock.lock_shared().unwrap();
    let p = path.clone();
    let mut reader = Child::spawn(move |ctx| {
        let l = FileLock::open(&p).unwrap();
        let _s = l
            .try_lock_shared()
            .expect("shared beside the parent's shared");
        ctx.reached_and_wait(b'S');
    });
    assert_eq!(reader.expect_reached(), b'S');
    drop(mine);
    // Only the child holds a shared lock now.
    let p = path.clone();
    Child::spawn(move |_| {
        let l = FileLock::open(&p).unwrap();
        assert_eq!(kind(l.try_lock_exclusive()), "WouldBlock");
        assert_eq!(
            kind(l.lock_exclusive_timeout(Duration::from_millis(50))),
            "TimedOut"
        );
        drop(l.try_lock_shared().expect("shared beside another shared"));
    })
    .join();
    assert_eq!(other_process_try_exclusive(&path), "WouldBlock");
    assert_eq!(kind(lock.try_lock_shared()), "Ok");
    reader.command(b'R');
    reader.join();
    assert_eq!(other_process_try_exclusive(&path), "Ok");
}

/// Against an exclusive holder in another process: every try answers
/// WouldBlock and every timed wait TimedOut (zero included); after the
/// holder releases, a timed wait succeeds.
fn try_and_timed_against_another_process() {
    let dir = TempDir::new();
    let path = dir.path("x.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let p = path.clone();
    let mut holder = Child::spawn(move |ctx| {
        let l = FileLock::open(&p).unwrap();
        let g = l.lock_exclusive().unwrap();
        ctx.reached_and_wait(b'H');
        drop(g);
    });
    assert_eq!(holder.expect_reached(), b'H');
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
    holder.command(b'R');
    assert_eq!(kind(lock.lock_exclusive_timeout(BOUND)), "Ok");
    holder.join();
    // Duration::MAX is a blocking wait that succeeds on a free lock.
    assert_eq!(kind(lock.lock_exclusive_timeout(Duration::MAX)), "Ok");
}

/// A holder killed with SIGKILL: the kernel frees its lock.
fn holder_sigkilled_frees_the_lock() {
    let dir = TempDir::new();
    let path = dir.path("k.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let p = path.clone();
    let mut holder = Child::spawn(move |ctx| {
        let l = FileLock::open(&p).unwrap();
        let _g = l.lock_exclusive().unwrap();
        ctx.reached_and_wait(b'H');
    });
    assert_eq!(holder.expect_reached(), b'H');
    assert_eq!(kind(lock.try_lock_exclusive()), "WouldBlock");
    holder.kill();
    assert_eq!(kind(lock.try_lock_exclusive()), "Ok");
}

/// Descriptors are O_CLOEXEC: a holder that execs another program does not
/// pass the lock on to it.
fn exec_does_not_inherit_the_lock() {
    let dir = TempDir::new();
    let path = dir.path("e.lock");
    let lock = FileLock::open_or_create(&path).unwrap();
    let p = path.clone();
    let mut child = Child::spawn(move |_| {
        let l = FileLock::open(&p).unwrap();
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
    child.expect_report_closed();
    // SAFETY: probing our own child.
    let alive = unsafe { libc::kill(child.pid as i32, 0) } == 0;
    assert!(alive, "exec'd program alive");
    // exec closes close-on-exec descriptors one at a time: the report pipe
    // may reach end of file just before the lock's descriptor is closed.
    let deadline = std::time::Instant::now() + common::BOUND;
    while kind(lock.try_lock_exclusive()) != "Ok" {
        assert!(
            std::time::Instant::now() < deadline,
            "the exec'd program kept the lock"
        );
        std::thread::yield_now();
    }
    // SAFETY: probing our own child.
    let still_alive = unsafe { libc::kill(child.pid as i32, 0) } == 0;
    assert!(still_alive, "still alive while the lock is free");
    child.kill();
}

/// Bad paths get typed errors.
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
fn create_sets_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let path = dir.path("m.lock");
    // SAFETY: umask is process-wide; this test runs in its own process.
    unsafe { libc::umask(0o077) };
    let _l = FileLockOptions::new()
        .create(true)
        .mode(0o644)
        .open(&path)
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
}

/// A file on a local filesystem (the temp dir, and tmpfs) is accepted
/// without opting in. (The refusal of NFS/CIFS is unit-tested on the
/// magic-number classification: no network mount exists here.)
fn local_filesystem_is_accepted() {
    let dir = TempDir::new();
    assert!(FileLock::open_or_create(dir.path("l.lock")).is_ok());
    let shm = format!("/dev/shm/shmsync-t-{}-flock-local", std::process::id());
    let l = FileLock::open_or_create(&shm);
    let _ = std::fs::remove_file(&shm);
    assert!(l.is_ok());
    let f = std::fs::File::open(dir.path("l.lock")).unwrap();
    assert!(FileLockOptions::new()
        .allow_network_fs(true)
        .from_fd(f.into())
        .is_ok());
}
