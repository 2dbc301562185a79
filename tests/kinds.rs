//! Where the value lives: values bigger than the stack (created zeroed or
//! in place), memfd cells (sealed, inherited or passed over a Unix socket)
//! and file-backed cells (reboot recovery, flush).
//!
//! Default libtest harness; other processes are this binary re-run by
//! `shmsync::testing::child!`.

use shmsync::testing::{self, TestName};
use shmsync::{CreateOptions, ShmCell, ShmSafe};

/// 64 MiB: far more than the 64 KiB stacks the tests run these paths on.
const BIG: usize = 64 << 20;
const SMALL_STACK: usize = 64 << 10;

#[repr(C)]
struct Big {
    seq: u64,
    bytes: [u8; BIG],
}
// SAFETY: integers only, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Big {
    const TYPE_TAG: u64 = 0xb16;
}

/// Runs `f` on a thread with a 64 KiB stack: building a `Big` there would
/// overflow it (and abort the process).
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn pattern(i: usize, seq: u64) -> u8 {
    (i as u64 ^ (i as u64 >> 8) ^ seq) as u8
}

#[test]
fn big_value_created_zeroed_written_and_opened_on_a_small_stack() {
    let other = testing::child!(|ctx| {
        let name = ctx.arg(0).to_string();
        on_small_stack(move || {
            let cell = ShmCell::<Big>::open(&name).unwrap();
            let mut g = cell.lock().unwrap();
            assert_eq!(g.seq, 1);
            for i in (0..BIG).step_by(4093) {
                assert_eq!(g.bytes[i], pattern(i, 1), "byte {i}");
            }
            g.seq = 2;
            for i in (0..BIG).step_by(4093) {
                g.bytes[i] = pattern(i, 2);
            }
        });
    });
    let name = TestName::new("big");
    let n = name.as_str().to_string();
    let cell = on_small_stack(move || {
        let cell = ShmCell::<Big>::create_zeroed(&n).unwrap();
        {
            let mut g = cell.lock().unwrap();
            assert_eq!(g.seq, 0);
            assert!(g.bytes.iter().step_by(4093).all(|&b| b == 0));
            g.seq = 1;
            for i in (0..BIG).step_by(4093) {
                g.bytes[i] = pattern(i, 1);
            }
        }
        cell
    });
    other.arg(&name).run().unwrap();
    let g = cell.lock().unwrap();
    assert_eq!(g.seq, 2);
    for i in (0..BIG).step_by(4093) {
        assert_eq!(g.bytes[i], pattern(i, 2), "byte {i}");
    }
    drop(g);
    drop(cell);
    ShmCell::<Big, shmsync::RobustMutex>::unlink(&name).unwrap();
}

#[test]
fn big_value_initialised_in_place_and_opened_or_created_on_a_small_stack() {
    let name = TestName::new("bigip");
    let n = name.as_str().to_string();
    let calls = on_small_stack(move || {
        let mut calls = 0;
        let a = ShmCell::<Big>::open_or_create_in_place(&n, &CreateOptions::default(), |v| {
            calls += 1;
            v.seq = 7;
            v.bytes[BIG - 1] = 9;
        })
        .unwrap();
        // Opened this time: the closure is not called again.
        let b = ShmCell::<Big>::open_or_create_in_place(&n, &CreateOptions::default(), |_| {
            calls += 100;
        })
        .unwrap();
        let z = ShmCell::<Big>::open_or_create_zeroed(&n).unwrap();
        let g = z.lock().unwrap();
        assert_eq!((g.seq, g.bytes[BIG - 1]), (7, 9));
        drop(g);
        drop((a, b, z));
        calls
    });
    assert_eq!(calls, 1);
    ShmCell::<Big>::unlink(&name).unwrap();
    let n = name.as_str().to_string();
    on_small_stack(move || {
        let c = ShmCell::<Big>::create_in_place(&n, &CreateOptions::new().mode(0o640), |v| {
            v.seq = 3;
        })
        .unwrap();
        assert_eq!(c.lock().unwrap().seq, 3);
        assert!(matches!(
            ShmCell::<Big>::create_zeroed(&n),
            Err(shmsync::Error::AlreadyExists { .. })
        ));
    });
    ShmCell::<Big>::unlink(&name).unwrap();
}

// ---------------------------------------------------------------- memfd

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use shmsync::{Backing, Error, FileLock, LockBackend, LockError, NamedSemaphore, RobustMutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Pair {
    a: u64,
    b: u64,
}
// SAFETY: integers only, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Pair {
    const TYPE_TAG: u64 = 0x9a1;
}

/// Takes ownership of a descriptor number inherited across `exec`.
fn inherited(arg: &str) -> OwnedFd {
    let n: i32 = arg.parse().unwrap();
    // SAFETY: the parent passed this number for a descriptor it made
    // inheritable for this child; nothing else in this process owns it.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// Locks `cell` expecting its holder to have died; repairs and returns the
/// value found.
fn expect_owner_died<L: LockBackend>(cell: &ShmCell<Pair, L>) -> Pair {
    match cell.lock() {
        Err(LockError::OwnerDied(g)) => {
            let found = *g;
            g.make_consistent();
            found
        }
        Ok(g) => panic!("the holder's death was not reported (value {:?})", *g),
        Err(e) => panic!("{:?}", e.without_guard()),
    }
}

fn child_locks_and_dies<L: LockBackend>(cell: ShmCell<Pair, L>) {
    let mut g = cell.lock().unwrap();
    g.a += 1;
    testing::point("half-way");
    g.b += 1;
    drop(g);
}

#[test]
fn memfd_cell_passed_over_a_socket_to_an_execd_child_both_update() {
    let child = testing::child!(|ctx| {
        let sock = UnixStream::from(inherited(ctx.arg(0)));
        let cell = ShmCell::<Pair>::receive_from(&sock).unwrap();
        assert_eq!(cell.backing(), Backing::Memfd);
        let mut g = cell.lock().unwrap();
        assert_eq!(*g, Pair { a: 1, b: 1 });
        g.a += 10;
        g.b += 10;
    });
    let cell = ShmCell::<Pair>::create_anonymous(Pair { a: 1, b: 1 }).unwrap();
    assert_eq!(cell.backing(), Backing::Memfd);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs = shmsync::inheritable_fd(theirs.as_fd()).unwrap();
    let running = child.arg(theirs.as_raw_fd().to_string()).spawn().unwrap();
    drop(theirs);
    cell.send_to(&ours).unwrap();
    running.wait().unwrap();
    let mut g = cell.lock().unwrap();
    assert_eq!(*g, Pair { a: 11, b: 11 });
    g.a += 1;
}

fn holder_that_inherits_a_memfd_and_is_killed_is_seen_dead<L: LockBackend>(
    child: &testing::ChildSpec,
) {
    let cell = ShmCell::<Pair, L>::create_anonymous(Pair { a: 0, b: 0 }).unwrap();
    let fd = cell.inheritable_fd().unwrap();
    let mut running = child
        .arg(fd.as_raw_fd().to_string())
        .stop_at("half-way")
        .spawn()
        .unwrap();
    // The child has its own copy now.
    drop(fd);
    running.wait_stopped().unwrap();
    let ended = running.kill().unwrap();
    assert!(ended.killed);
    assert_eq!(expect_owner_died(&cell), Pair { a: 1, b: 0 });
    // Usable again, clean.
    assert_eq!(*cell.lock().unwrap(), Pair { a: 1, b: 0 });
}

#[test]
fn memfd_inherited_across_exec_holder_killed_is_seen_dead_robust_mutex() {
    let child = testing::child!(|ctx| {
        child_locks_and_dies(ShmCell::<Pair, RobustMutex>::from_fd(inherited(ctx.arg(0))).unwrap());
    });
    holder_that_inherits_a_memfd_and_is_killed_is_seen_dead::<RobustMutex>(&child);
}

#[test]
fn memfd_inherited_across_exec_holder_killed_is_seen_dead_flock() {
    let child = testing::child!(|ctx| {
        child_locks_and_dies(ShmCell::<Pair, FileLock>::from_fd(inherited(ctx.arg(0))).unwrap());
    });
    holder_that_inherits_a_memfd_and_is_killed_is_seen_dead::<FileLock>(&child);
}

fn receiver_killed_holding_is_seen_dead<L: LockBackend>(child: &testing::ChildSpec) {
    let cell = ShmCell::<Pair, L>::create_anonymous(Pair { a: 5, b: 5 }).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs = shmsync::inheritable_fd(theirs.as_fd()).unwrap();
    let mut running = child
        .arg(theirs.as_raw_fd().to_string())
        .stop_at("half-way")
        .spawn()
        .unwrap();
    drop(theirs);
    cell.send_to(&ours).unwrap();
    running.wait_stopped().unwrap();
    // Our own handle is not what the child locks through: it is blocked.
    assert!(matches!(cell.try_lock(), Err(LockError::WouldBlock)));
    assert!(running.kill().unwrap().killed);
    assert_eq!(expect_owner_died(&cell), Pair { a: 6, b: 5 });
}

#[test]
fn memfd_receiver_killed_holding_is_seen_dead_robust_mutex() {
    let child = testing::child!(|ctx| {
        let sock = UnixStream::from(inherited(ctx.arg(0)));
        child_locks_and_dies(ShmCell::<Pair, RobustMutex>::receive_from(&sock).unwrap());
    });
    receiver_killed_holding_is_seen_dead::<RobustMutex>(&child);
}

#[test]
fn memfd_receiver_killed_holding_is_seen_dead_flock() {
    let child = testing::child!(|ctx| {
        let sock = UnixStream::from(inherited(ctx.arg(0)));
        child_locks_and_dies(ShmCell::<Pair, FileLock>::receive_from(&sock).unwrap());
    });
    receiver_killed_holding_is_seen_dead::<FileLock>(&child);
}

/// A raw memfd with `len` bytes of `fill`, carrying `seals`.
fn raw_memfd(bytes: &[u8], seals: i32) -> OwnedFd {
    // SAFETY: NUL-terminated name; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"foreign".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let f = std::fs::File::from(fd.try_clone().unwrap());
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, 0).unwrap();
    if seals != 0 {
        // SAFETY: plain fcntl on an open descriptor.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        assert_eq!(r, 0);
    }
    fd
}

const ALL_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A byte-for-byte copy of a real memfd cell's contents.
fn cell_bytes<L: LockBackend>(cell: &ShmCell<Pair, L>) -> Vec<u8> {
    let f = std::fs::File::from(cell.inheritable_fd().unwrap());
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut v).unwrap();
    v
}

#[test]
fn memfd_bad_descriptors_are_refused_with_distinct_errors() {
    let cell = ShmCell::<Pair>::create_anonymous(Pair { a: 1, b: 2 }).unwrap();
    let good = cell_bytes(&cell);
    // An exact copy that carries the seals is accepted ...
    let copy = ShmCell::<Pair>::from_fd(raw_memfd(&good, ALL_SEALS)).unwrap();
    assert_eq!(*copy.lock().unwrap(), Pair { a: 1, b: 2 });
    // ... and the same bytes unsealed, or half-sealed, are not.
    for seals in [
        0,
        libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
    ] {
        match ShmCell::<Pair>::from_fd(raw_memfd(&good, seals)) {
            Err(Error::NotSealed { seals: s, needed }) => {
                assert_eq!(needed, ALL_SEALS as u32);
                assert_eq!(s & needed, seals as u32);
            }
            other => panic!("seals {seals:#x}: {other:?}"),
        }
    }
    // Foreign descriptors: a named shm object, a regular file, a socket.
    let name = TestName::new("mfdf");
    let named = ShmCell::<Pair>::create(&name, Pair { a: 0, b: 0 }).unwrap();
    let shm_fd: OwnedFd = std::fs::File::open(name.path()).unwrap().into();
    assert!(matches!(
        ShmCell::<Pair>::from_fd(shm_fd),
        Err(Error::NotMemfd { .. })
    ));
    let file = std::env::temp_dir().join(format!("shmsync-kinds-{}", std::process::id()));
    std::fs::write(&file, &good).unwrap();
    let file_fd: OwnedFd = std::fs::File::open(&file).unwrap().into();
    std::fs::remove_file(&file).unwrap();
    assert!(matches!(
        ShmCell::<Pair>::from_fd(file_fd),
        Err(Error::NotMemfd { .. })
    ));
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(matches!(
        ShmCell::<Pair>::from_fd(a.into()),
        Err(Error::NotMemfd { .. })
    ));
    // Sealed memfds with bad contents: short, foreign, truncated, another type.
    let short = raw_memfd(&good[..100], ALL_SEALS);
    assert!(
        matches!(ShmCell::<Pair>::from_fd(short), Err(Error::TooSmall { .. })),
        "short"
    );
    let foreign = raw_memfd(&[0x5a; 8192], ALL_SEALS);
    assert!(matches!(
        ShmCell::<Pair>::from_fd(foreign),
        Err(Error::Incompatible { field: "magic", .. })
    ));
    let truncated = raw_memfd(&good[..good.len() - 8], ALL_SEALS);
    assert!(
        matches!(
            ShmCell::<Pair>::from_fd(truncated),
            Err(Error::TooSmall { .. })
        ),
        "truncated"
    );
    assert!(matches!(
        ShmCell::<u64>::from_fd(cell.inheritable_fd().unwrap()),
        Err(Error::Incompatible { .. })
    ));
    assert!(matches!(
        ShmCell::<Pair, FileLock>::from_fd(cell.inheritable_fd().unwrap()),
        Err(Error::Incompatible {
            field: "lock_kind",
            ..
        })
    ));
    // A sealed cell cannot be truncated (or grown) by anyone holding it.
    let fd = cell.inheritable_fd().unwrap();
    // SAFETY: plain ftruncate on an open descriptor; expected to fail.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 10) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 1 << 20) }, -1);
    // Not for memfd: named cells, and the semaphore lock.
    assert!(matches!(named.send_to(&_b), Err(Error::Unsupported { .. })));
    assert!(matches!(
        named.inheritable_fd(),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        ShmCell::<Pair, NamedSemaphore>::create_anonymous(Pair { a: 0, b: 0 }),
        Err(Error::Unsupported { .. })
    ));
    drop(named);
    ShmCell::<Pair>::unlink(&name).unwrap();
}

#[test]
fn memfd_a_peer_that_closes_or_sends_no_descriptor_is_an_io_error() {
    let (a, b) = UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut &a, b"x").unwrap();
    match ShmCell::<Pair>::receive_from(&b) {
        Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::InvalidData),
        other => panic!("{other:?}"),
    }
    drop(a);
    match ShmCell::<Pair>::receive_from(&b) {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn memfd_mode_decides_which_other_user_may_attach() {
    let other = testing::child!(|ctx| {
        let sock = UnixStream::from(inherited(ctx.arg(0)));
        if ctx.arg(1) == "root" {
            // SAFETY: dropping privileges in this child process only; a
            // process that changed its uid is not dumpable, which would
            // make its own /proc/self/fd unreadable: undo that.
            unsafe {
                assert_eq!(libc::setgid(65534), 0);
                assert_eq!(libc::setuid(65534), 0);
                assert_eq!(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0), 0);
            }
        }
        let private = ShmCell::<Pair>::receive_from(&sock);
        assert!(
            matches!(private, Err(Error::PermissionDenied { .. })),
            "{private:?}"
        );
        let shared = ShmCell::<Pair>::receive_from(&sock).unwrap();
        shared.lock().unwrap().a = 99;
    });
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let private = ShmCell::<Pair>::create_anonymous_with(
        Pair { a: 0, b: 0 },
        &CreateOptions::new().mode(if root { 0o600 } else { 0o000 }),
    )
    .unwrap();
    let shared = ShmCell::<Pair>::create_anonymous_with(
        Pair { a: 0, b: 0 },
        &CreateOptions::new().mode(0o666),
    )
    .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs = shmsync::inheritable_fd(theirs.as_fd()).unwrap();
    let running = other
        .arg(theirs.as_raw_fd().to_string())
        .arg(if root { "root" } else { "user" })
        .spawn()
        .unwrap();
    drop(theirs);
    private.send_to(&ours).unwrap();
    shared.send_to(&ours).unwrap();
    running.wait().unwrap();
    assert_eq!(shared.lock().unwrap().a, 99);
}

#[test]
fn memfd_handle_inherited_by_fork_keeps_working_in_the_child() {
    // Forks inside a child process (the test process runs parallel tests).
    let forker = testing::child!(|_ctx| {
        fn run<L: LockBackend>() {
            let cell = ShmCell::<Pair, L>::create_anonymous(Pair { a: 0, b: 0 }).unwrap();
            cell.lock().unwrap().a = 1;
            // SAFETY: the forked child only locks, writes and `_exit`s.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let ok = match cell.lock() {
                    Ok(mut g) => {
                        g.b = g.a + 1;
                        true
                    }
                    Err(_) => false,
                };
                // SAFETY: leaves the forked child without running the
                // parent's destructors or test harness.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            assert_eq!(*cell.lock().unwrap(), Pair { a: 1, b: 2 });
        }
        run::<RobustMutex>();
        run::<FileLock>();
    });
    forker.run().unwrap();
}

#[test]
fn memfd_kill_loop_each_holder_killed_at_a_random_moment_is_repaired() {
    let worker = testing::child!(|ctx| {
        let sock = UnixStream::from(inherited(ctx.arg(0)));
        let cell = ShmCell::<Pair, FileLock>::receive_from(&sock).unwrap();
        testing::point("attached");
        loop {
            let mut g = match cell.lock() {
                Ok(g) => g,
                Err(LockError::OwnerDied(g)) => {
                    g.make_consistent();
                    g
                }
                Err(e) => panic!("{:?}", e.without_guard()),
            };
            g.a += 1;
            g.b += 1;
        }
    });
    let cell = ShmCell::<Pair, FileLock>::create_anonymous_zeroed().unwrap();
    let mut died = 0;
    for _ in 0..8 {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs = shmsync::inheritable_fd(theirs.as_fd()).unwrap();
        let spawn = worker.arg(theirs.as_raw_fd().to_string());
        cell.send_to(&ours).unwrap();
        let ended = spawn
            .kill_within("attached", std::time::Duration::from_millis(20))
            .unwrap();
        drop(theirs);
        assert!(ended.killed);
        let v = match cell.lock() {
            Ok(g) => *g,
            Err(LockError::OwnerDied(mut g)) => {
                died += 1;
                // The update is two stores: repair a half-done one.
                g.b = g.a;
                g.make_consistent();
                *g
            }
            Err(e) => panic!("{:?}", e.without_guard()),
        };
        assert_eq!(v.a, v.b);
    }
    let v = *cell.lock().unwrap();
    assert!(v.a > 0, "the workers made progress");
    eprintln!(
        "8 workers killed, {died} while holding the lock, {} updates",
        v.a
    );
}

// ---------------------------------------------------------------- files

use std::path::{Path, PathBuf};

/// A private directory for one test's files, removed with everything in it
/// on drop (also when the test fails).
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("shmsync-kinds-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir(&p).unwrap();
        // Reachable by the unprivileged user of the permission test.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Dir(p)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn file_cell_keeps_its_value_across_processes_and_reopens() {
    let adder = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_or_create_file(ctx.arg(0), Pair { a: 0, b: 0 }).unwrap();
        assert_eq!(cell.backing(), Backing::File);
        let mut g = cell.lock().unwrap();
        g.a += 1;
        g.b += 2;
        cell.flush().unwrap();
    });
    let dir = Dir::new("keep");
    let path = dir.file("counter");
    for _ in 0..3 {
        adder.arg(s(&path)).run().unwrap();
    }
    // Nobody has it open now: the value is in the file.
    let cell = ShmCell::<Pair>::open_file(&path).unwrap();
    assert_eq!(*cell.lock().unwrap(), Pair { a: 3, b: 6 });
    assert!(matches!(
        ShmCell::<Pair>::create_file(&path, Pair { a: 0, b: 0 }),
        Err(Error::AlreadyExists { .. })
    ));
    drop(cell);
    ShmCell::<Pair>::remove_file(&path).unwrap();
    assert!(!path.exists());
    assert!(matches!(
        ShmCell::<Pair>::open_file(&path),
        Err(Error::NotFound { .. })
    ));
}

/// Takes a copy of a file cell while a child holds its lock (what the disk
/// holds at power-off), kills the child, and returns the copy's path.
fn snapshot_while_held(dir: &Dir, child: &testing::ChildSpec, path: &Path) -> PathBuf {
    let mut running = child.arg(s(path)).stop_at("held").spawn().unwrap();
    running.wait_stopped().unwrap();
    let image = std::fs::read(path).unwrap();
    assert!(running.kill().unwrap().killed);
    let copy = dir.file("after-power-off");
    std::fs::write(&copy, image).unwrap();
    copy
}

fn reboot_recovery<L: LockBackend>(holder: &testing::ChildSpec, rebooted: &testing::ChildSpec) {
    let dir = Dir::new("boot");
    let path = dir.file("cell");
    let cell = ShmCell::<Pair, L>::create_file(&path, Pair { a: 0, b: 0 }).unwrap();
    let copy = snapshot_while_held(&dir, holder, &path);
    drop(cell);
    // The next boot: the lock held at power-off is reset, reported once.
    rebooted.arg(s(&copy)).run().unwrap();
    // Back on this boot (another boot id again): nothing was held, the
    // value is what the repair left.
    let cell = ShmCell::<Pair, L>::open_file(&copy).unwrap();
    assert_eq!(*cell.lock().unwrap(), Pair { a: 1, b: 1 });
}

fn hold_and_stop<L: LockBackend>(path: &str) {
    let cell = ShmCell::<Pair, L>::open_file(path).unwrap();
    let mut g = cell.lock().unwrap();
    g.a = 1;
    testing::point("held");
    g.b = 1;
}

fn after_reboot<L: LockBackend>(path: &str) {
    shmsync::segment::set_boot_id_override(Some([0x42; 16]));
    let cell = ShmCell::<Pair, L>::open_file(path).unwrap();
    let second = ShmCell::<Pair, L>::open_file(path).unwrap();
    match cell.lock_timeout(std::time::Duration::from_secs(5)) {
        Err(LockError::OwnerDied(mut g)) => {
            assert_eq!(*g, Pair { a: 1, b: 0 });
            g.b = g.a;
            g.make_consistent();
        }
        Ok(g) => panic!("a lock held at power-off was not reported: {:?}", *g),
        Err(e) => panic!("{:?}", e.without_guard()),
    }
    // Reported once; the second handle (same boot) did not reset it again.
    assert_eq!(*second.lock().unwrap(), Pair { a: 1, b: 1 });
}

#[test]
fn file_lock_held_across_a_simulated_reboot_is_recovered_robust_mutex() {
    let holder = testing::child!("holder", |ctx| hold_and_stop::<RobustMutex>(ctx.arg(0)));
    let rebooted = testing::child!("rebooted", |ctx| after_reboot::<RobustMutex>(ctx.arg(0)));
    reboot_recovery::<RobustMutex>(&holder, &rebooted);
}

#[test]
fn file_lock_held_across_a_simulated_reboot_is_recovered_flock() {
    let holder = testing::child!("holder", |ctx| hold_and_stop::<FileLock>(ctx.arg(0)));
    let rebooted = testing::child!("rebooted", |ctx| after_reboot::<FileLock>(ctx.arg(0)));
    reboot_recovery::<FileLock>(&holder, &rebooted);
}

#[test]
fn file_lock_held_at_power_off_would_hang_without_the_boot_id() {
    // The control: the same image opened in the same boot is not reset,
    // and the robust mutex still names the dead thread (no robust list ran
    // for this copy): a plain lock would wait for ever.
    let holder = testing::child!(|ctx| hold_and_stop::<RobustMutex>(ctx.arg(0)));
    let dir = Dir::new("hang");
    let path = dir.file("cell");
    let cell = ShmCell::<Pair>::create_file(&path, Pair { a: 0, b: 0 }).unwrap();
    let copy = snapshot_while_held(&dir, &holder, &path);
    drop(cell);
    let same_boot = ShmCell::<Pair>::open_file(&copy).unwrap();
    assert!(matches!(
        same_boot.lock_timeout(std::time::Duration::from_millis(100)),
        Err(LockError::TimedOut)
    ));
}

#[test]
fn file_bad_inputs_are_refused_before_mapping() {
    let dir = Dir::new("bad");
    let good = dir.file("good");
    let cell = ShmCell::<Pair>::create_file(&good, Pair { a: 1, b: 2 }).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = dir.file(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let short = write("short", &bytes[..100]);
    assert!(matches!(
        ShmCell::<Pair>::open_file(&short),
        Err(Error::TooSmall { .. })
    ));
    let foreign = write("foreign", &[0x5a; 8192]);
    assert!(matches!(
        ShmCell::<Pair>::open_file(&foreign),
        Err(Error::Incompatible { field: "magic", .. })
    ));
    // A foreign file is never removed as a cell.
    assert!(matches!(
        ShmCell::<Pair>::remove_file(&foreign),
        Err(Error::Incompatible { field: "magic", .. })
    ));
    assert!(foreign.exists());
    let truncated = write("truncated", &bytes[..bytes.len() - 8]);
    assert!(matches!(
        ShmCell::<Pair>::open_file(&truncated),
        Err(Error::TooSmall { .. })
    ));
    assert!(matches!(
        ShmCell::<u64>::open_file(&good),
        Err(Error::Incompatible { .. })
    ));
    assert!(matches!(
        ShmCell::<Pair, FileLock>::open_file(&good),
        Err(Error::Incompatible {
            field: "lock_kind",
            ..
        })
    ));
    // Empty (a creator that died at once): abandoned; open_or_create takes
    // it over.
    let empty = write("empty", &[]);
    assert!(matches!(
        ShmCell::<Pair>::open_file(&empty),
        Err(Error::AbandonedInit { .. })
    ));
    let taken = ShmCell::<Pair>::open_or_create_file(&empty, Pair { a: 9, b: 9 }).unwrap();
    assert_eq!(*taken.lock().unwrap(), Pair { a: 9, b: 9 });
    // Not a regular file, a symbolic link: refused.
    std::fs::create_dir(dir.file("subdir")).unwrap();
    assert!(ShmCell::<Pair>::open_file(dir.file("subdir")).is_err());
    std::os::unix::fs::symlink(&good, dir.file("link")).unwrap();
    assert!(ShmCell::<Pair>::open_file(dir.file("link")).is_err());
    assert!(ShmCell::<Pair>::create_file(dir.file("link"), Pair { a: 0, b: 0 }).is_err());
    assert!(matches!(
        ShmCell::<Pair>::create_file(dir.file("no/such/dir"), Pair { a: 0, b: 0 }),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        ShmCell::<Pair, NamedSemaphore>::create_file(dir.file("sem"), Pair { a: 0, b: 0 }),
        Err(Error::Unsupported { .. })
    ));
    assert!(!dir.file("sem").exists());
    drop(cell);
}

#[test]
fn file_truncated_under_a_mapping_makes_the_attached_process_take_sigbus() {
    // A file cannot be sealed: this is what a truncation does to a process
    // already attached (new openers are refused before mapping).
    let attached = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_file(ctx.arg(0)).unwrap();
        testing::point("attached");
        let _ = cell.lock();
    });
    let dir = Dir::new("trunc");
    let path = dir.file("cell");
    let cell = ShmCell::<Pair>::create_file(&path, Pair { a: 0, b: 0 }).unwrap();
    let mut running = attached.arg(s(&path)).stop_at("attached").spawn().unwrap();
    running.wait_stopped().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    running.resume().unwrap();
    match running.wait() {
        Err(testing::ChildError::Failed { status, .. }) => {
            assert!(status.contains(&libc::SIGBUS.to_string()), "{status}")
        }
        other => panic!("expected a SIGBUS death: {other:?}"),
    }
    // This process's own mapping is just as exposed (it is never touched
    // again: leaked, not dropped); a new opener is refused before mapping.
    std::mem::forget(cell);
    assert!(matches!(
        ShmCell::<Pair>::open_file(&path),
        Err(Error::AbandonedInit { .. })
    ));
}

#[test]
fn file_mode_is_exact_and_another_user_is_refused_by_it() {
    let other = testing::child!(|ctx| {
        if ctx.arg(2) == "root" {
            // SAFETY: dropping privileges in this child process only.
            unsafe {
                assert_eq!(libc::setgid(65534), 0);
                assert_eq!(libc::setuid(65534), 0);
            }
        }
        assert!(matches!(
            ShmCell::<Pair>::open_file(ctx.arg(0)),
            Err(Error::PermissionDenied { .. })
        ));
        ShmCell::<Pair>::open_file(ctx.arg(1))
            .unwrap()
            .lock()
            .unwrap()
            .a = 7;
    });
    let dir = Dir::new("perm");
    let private = dir.file("private");
    let shared = dir.file("shared");
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mode = if root { 0o600 } else { 0o000 };
    let p =
        ShmCell::<Pair>::create_file_in_place(&private, &CreateOptions::new().mode(mode), |_| {})
            .unwrap();
    // 0666 despite the umask (fchmod after the exclusive create).
    let q =
        ShmCell::<Pair>::create_file_in_place(&shared, &CreateOptions::new().mode(0o666), |v| {
            v.b = 3
        })
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
        0o666
    );
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o7777,
        mode
    );
    other
        .arg(s(&private))
        .arg(s(&shared))
        .arg(if root { "root" } else { "user" })
        .run()
        .unwrap();
    assert_eq!(*q.lock().unwrap(), Pair { a: 7, b: 3 });
    drop((p, q));
}

#[test]
fn file_kill_loop_each_writer_killed_at_a_random_moment_is_repaired() {
    let worker = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_file(ctx.arg(0)).unwrap();
        testing::point("attached");
        loop {
            let mut g = match cell.lock() {
                Ok(g) => g,
                Err(LockError::OwnerDied(g)) => {
                    g.make_consistent();
                    g
                }
                Err(e) => panic!("{:?}", e.without_guard()),
            };
            g.a += 1;
            g.b += 1;
        }
    });
    let dir = Dir::new("kill");
    let path = dir.file("cell");
    let cell = ShmCell::<Pair>::create_file_zeroed(&path).unwrap();
    for _ in 0..8 {
        let ended = worker
            .arg(s(&path))
            .kill_within("attached", std::time::Duration::from_millis(20))
            .unwrap();
        assert!(ended.killed);
        let v = match cell.lock() {
            Ok(g) => *g,
            Err(LockError::OwnerDied(mut g)) => {
                g.b = g.a;
                g.make_consistent();
                *g
            }
            Err(e) => panic!("{:?}", e.without_guard()),
        };
        assert_eq!(v.a, v.b);
    }
    assert!(cell.lock().unwrap().a > 0, "the workers made progress");
}

#[test]
fn file_creator_killed_at_each_init_step_is_taken_over() {
    let creator = testing::child!(|ctx| {
        testing::points_at_init_steps();
        let _ = ShmCell::<Pair>::create_file(ctx.arg(0), Pair { a: 1, b: 1 });
        panic!("creator survived its kill point");
    });
    let dir = Dir::new("init");
    for step in shmsync::segment::InitStep::ALL {
        let path = dir.file(step.name());
        let ended = creator
            .arg(s(&path))
            .kill_at(&testing::init_point(step))
            .unwrap_or_else(|e| panic!("step {step:?}: {e}"));
        assert!(ended.killed, "{step:?}");
        let published = step == shmsync::segment::InitStep::Published;
        match ShmCell::<Pair>::open_file(&path) {
            Ok(c) => {
                assert!(published, "{step:?}: a half-initialised file opened");
                assert_eq!(*c.lock().unwrap(), Pair { a: 1, b: 1 });
            }
            Err(Error::AbandonedInit { .. }) => assert!(!published, "{step:?}"),
            Err(e) => panic!("{step:?}: {e:?}"),
        }
        let c = ShmCell::<Pair>::open_or_create_file(&path, Pair { a: 2, b: 2 }).unwrap();
        let expect = if published { 1 } else { 2 };
        assert_eq!(
            *c.lock().unwrap(),
            Pair {
                a: expect,
                b: expect
            },
            "{step:?}"
        );
    }
}

#[test]
fn memfd_cells_leave_nothing_once_every_handle_is_dropped() {
    // In a child: other tests of this process open memfds concurrently.
    let child = testing::child!(|_ctx| {
        let memfds = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:shmsync"))
                })
                .count()
        };
        let shm_before = std::fs::read_dir("/dev/shm").unwrap().count();
        assert_eq!(memfds(), 0);
        {
            let a = ShmCell::<Pair, FileLock>::create_anonymous(Pair { a: 1, b: 1 }).unwrap();
            let (x, y) = UnixStream::pair().unwrap();
            a.send_to(&x).unwrap();
            let b = ShmCell::<Pair, FileLock>::receive_from(&y).unwrap();
            b.lock().unwrap().a = 2;
            assert_eq!(a.lock().unwrap().a, 2);
            // The creator's descriptor, the receiver's own description, and
            // each handle's flock description.
            assert!(memfds() >= 2);
        }
        assert_eq!(memfds(), 0, "a descriptor outlived its handles");
        assert!(std::fs::read_dir("/dev/shm").unwrap().count() <= shm_before);
    });
    child.run().unwrap();
}

#[test]
fn file_first_openers_racing_after_a_reboot_reset_once() {
    let holder = testing::child!("holder", |ctx| hold_and_stop::<RobustMutex>(ctx.arg(0)));
    let racer = testing::child!("racer", |ctx| {
        shmsync::segment::set_boot_id_override(Some([0x17; 16]));
        let cell = ShmCell::<Pair>::open_file(ctx.arg(0)).unwrap();
        match cell.lock_timeout(std::time::Duration::from_secs(5)) {
            Ok(g) => {
                assert_eq!(*g, Pair { a: 1, b: 1 });
                testing::point("clean");
            }
            Err(LockError::OwnerDied(mut g)) => {
                g.b = g.a;
                g.make_consistent();
                testing::point("owner-died");
            }
            Err(e) => panic!("{:?}", e.without_guard()),
        };
    });
    let dir = Dir::new("race");
    let path = dir.file("cell");
    let cell = ShmCell::<Pair>::create_file(&path, Pair { a: 0, b: 0 }).unwrap();
    let copy = snapshot_while_held(&dir, &holder, &path);
    drop(cell);
    let runs: Vec<_> = (0..3)
        .map(|_| racer.arg(s(&copy)).spawn().unwrap())
        .collect();
    let ended: Vec<_> = runs.into_iter().map(|r| r.wait().unwrap()).collect();
    let died = ended
        .iter()
        .filter(|e| e.points.iter().any(|p| p == "owner-died"))
        .count();
    assert_eq!(died, 1, "{ended:?}");
}
