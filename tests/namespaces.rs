//! Processes in other pid and time namespaces sharing one cell (containers
//! sharing `/dev/shm`: Kubernetes sidecars, `docker run --ipc=shareable`).
//!
//! Children are this test binary re-run through `unshare` (util-linux):
//! `unshare --pid --fork` makes the child pid 1 of a new pid namespace,
//! `unshare --time --fork` puts it in a new time namespace with monotonic
//! and boot-time offsets. Every backend must either work across them or
//! refuse at `open` with a distinct error:
//!
//! * `RobustMutex` refuses (its futex word holds namespace-local thread
//!   ids: two containers' first threads have the same id) while a process
//!   of another pid namespace is attached, and opens again once all have
//!   left;
//! * `NamedSemaphore` and `FileLock` work: a holder in another namespace is
//!   alive while it runs and dead once killed.
//!
//! Namespaces need root (CI runs as root): elsewhere these tests say that
//! they were skipped. Time namespaces need Linux ≥ 5.6, a per-namespace
//! `pid_max` (used to recycle a thread id quickly) Linux ≥ 6.14.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use shmsync::testing::{self, ChildSpec, Running, TestName};
use shmsync::{Error, FileLock, LockError, NamedSemaphore, ShmCell};

/// A new pid namespace: the child is its pid 1.
const PID_NS: [&str; 3] = ["--pid", "--fork", "--kill-child"];
/// A new time namespace, its clocks 1000 days ahead of ours.
const TIME_NS: [&str; 7] = [
    "--time",
    "--monotonic",
    "86400000",
    "--boottime",
    "86400000",
    "--fork",
    "--kill-child",
];
/// Both.
const PID_TIME_NS: [&str; 8] = [
    "--pid",
    "--time",
    "--monotonic",
    "86400000",
    "--boottime",
    "86400000",
    "--fork",
    "--kill-child",
];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `unshare ARGS true` works here. As root, a pid namespace must
/// (a failure fails the test); anything else may be missing, with a
/// message.
fn namespaces_available(args: &[&str], what: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: {what} need root (CI runs these tests as root)");
        return false;
    }
    let ok = Command::new("unshare")
        .args(args)
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            args != PID_NS,
            "`unshare {}` fails as root: pid namespaces are required",
            args.join(" ")
        );
        eprintln!(
            "skipped: `unshare {} true` fails: this kernel lacks {what} (time namespaces need Linux >= 5.6)",
            args.join(" ")
        );
    }
    ok
}

/// A child stopped at its point "holding", started through `unshare`.
struct Holding {
    wrapper: Running,
    /// A pidfd of the test binary `unshare` runs: killing the process group
    /// and reaping `unshare` does not wait for it to die.
    inner: OwnedFd,
}

/// Starts `holder` in the namespaces `ns` and waits until it holds the
/// lock (its point "holding").
fn holding(holder: ChildSpec, name: &str, ns: &[&str]) -> Holding {
    let mut wrapper = holder
        .arg(name)
        .wrapper("unshare", ns)
        .stop_at("holding")
        .spawn()
        .unwrap();
    wrapper.wait_stopped().unwrap();
    // `unshare --fork`'s only child (alive: it is stopped at the point).
    let pid = wrapper.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let inner: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, inner, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    let inner = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Holding { wrapper, inner }
}

impl Holding {
    /// SIGKILLs the child and waits (bounded) until the process holding
    /// the lock has exited: its descriptors, and their locks, are gone.
    fn kill(self) {
        self.wrapper.kill().unwrap();
        let mut pfd = libc::pollfd {
            fd: self.inner.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; bounded by the timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(n, 1, "the killed holder did not exit within 10 s");
    }
}

/// Two pid namespaces whose first threads have the same local id (each
/// child is pid 1 of its own namespace, its test thread the same next id):
/// the second is refused with `ForeignPidNamespace` instead of sharing the
/// mutex (which answered `Deadlock`, and let a waiter killed in its sleep
/// mark the live holder's lock owner-died); so is this process. Once all
/// have left, another namespace opens it again and finds the owner death.
#[test]
fn robust_mutex_refuses_another_pid_namespace_until_all_left() {
    let holder = testing::child!(|ctx| {
        let cell = ShmCell::<u64>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g += 1;
        testing::point("holding");
    });
    let other = testing::child!(|ctx| {
        assert_eq!(std::process::id(), 1, "pid 1 of a new pid namespace");
        match ShmCell::<u64>::open(ctx.arg(0)) {
            Err(e @ Error::ForeignPidNamespace { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("pid namespace"), "{msg}");
                assert!(msg.contains("NamedSemaphore"), "{msg}");
                assert!(msg.contains("FileLock"), "{msg}");
            }
            Ok(cell) => panic!(
                "opened a robust mutex held from another pid namespace; try_lock answered {:?}",
                cell.try_lock().err().map(|e| e.kind())
            ),
            Err(e) => panic!("expected ForeignPidNamespace, got {e:?}"),
        }
    });
    let reopen = testing::child!(|ctx| {
        let cell = ShmCell::<u64>::open(ctx.arg(0)).unwrap();
        match cell.try_lock() {
            Err(LockError::OwnerDied(mut g)) => {
                assert_eq!(*g, 1);
                *g = 10;
                g.make_consistent();
            }
            other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
        };
    });
    if !namespaces_available(&PID_NS, "pid namespaces") {
        return;
    }
    let name = TestName::new("ns-mutex");
    // Made here, then left: the first process to attach records its
    // namespace.
    drop(ShmCell::<u64>::create(&name, 0).unwrap());
    let h = holding(holder, &name, &PID_NS);
    other.arg(&name).wrapper("unshare", PID_NS).run().unwrap();
    match ShmCell::<u64>::open(&name) {
        Err(Error::ForeignPidNamespace {
            backend,
            ours,
            theirs,
            ..
        }) => {
            assert_eq!(backend, "robust-mutex");
            assert_ne!(ours, theirs);
        }
        other => panic!("expected ForeignPidNamespace, got {:?}", other.map(drop)),
    }
    h.kill();
    // Nobody attached now: a third namespace records itself and opens it.
    reopen.arg(&name).wrapper("unshare", PID_NS).run().unwrap();
    // And so does this one, after it.
    let cell = ShmCell::<u64>::open(&name).unwrap();
    assert_eq!(*cell.lock().unwrap(), 10);
}

/// A process keeps its pid namespace once read; a child it forks into a
/// new pid namespace (after `unshare(CLONE_NEWPID)`, no `exec`) must read
/// its own, not inherit the kept value: its open of a robust-mutex cell
/// recorded by our namespace is refused.
#[test]
fn forked_child_in_a_new_pid_namespace_is_refused_after_its_parent_opened() {
    let parent = testing::child!(|ctx| {
        // Reads (and keeps) this namespace: the same as the test's.
        let cell = ShmCell::<u64>::open(ctx.arg(0)).unwrap();
        // SAFETY: unshare has no memory preconditions; CLONE_NEWPID only
        // changes the namespace of children made from now on.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWPID) }, 0, "unshare");
        // SAFETY: the child opens a cell (allocation, system calls) and
        // `_exit`s; this process's other thread is libtest's main thread,
        // waiting on the test thread.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = match ShmCell::<u64>::open(ctx.arg(0)) {
                Err(Error::ForeignPidNamespace { .. }) if std::process::id() == 1 => 0,
                Err(_) => 2,
                Ok(opened) => {
                    drop(opened);
                    3
                }
            };
            // SAFETY: ends the forked child without running exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: reaps our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the forked child (pid 1 of a new pid namespace) was not refused \
             (2: another error, 3: opened)"
        );
        drop(cell);
    });
    if !namespaces_available(&PID_NS, "pid namespaces") {
        return;
    }
    let name = TestName::new("ns-forked");
    // Stays attached: the record is this namespace's throughout.
    let cell = ShmCell::<u64>::create(&name, 0).unwrap();
    parent.arg(&name).run().unwrap();
    assert_eq!(*cell.lock().unwrap(), 0);
}

/// Two processes of one other pid namespace share a robust-mutex cell
/// (only processes of *different* namespaces are refused): the first to
/// attach recorded their namespace, the second finds it.
#[test]
fn robust_mutex_is_shared_within_another_pid_namespace() {
    let second = testing::child!("second", |ctx| {
        let cell = ShmCell::<u64>::open(ctx.arg(0)).unwrap();
        assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    });
    let first = testing::child!("first", |ctx| {
        assert_eq!(std::process::id(), 1, "pid 1 of a new pid namespace");
        let cell = ShmCell::<u64>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g += 1;
        // A process of this same namespace (not through unshare).
        second.arg(ctx.arg(0)).run().unwrap();
    });
    if !namespaces_available(&PID_NS, "pid namespaces") {
        return;
    }
    let name = TestName::new("ns-within");
    drop(ShmCell::<u64>::create(&name, 0).unwrap());
    first.arg(&name).wrapper("unshare", PID_NS).run().unwrap();
    assert_eq!(*ShmCell::<u64>::open(&name).unwrap().lock().unwrap(), 1);
}

/// The namespace a cell records is the one of the processes attached now,
/// not its creator's: a cell made in another pid namespace and left there
/// opens here.
#[test]
fn robust_mutex_made_in_another_pid_namespace_opens_once_its_creator_left() {
    let creator = testing::child!(|ctx| {
        let cell = ShmCell::<u64>::create(ctx.arg(0), 5).unwrap();
        *cell.lock().unwrap() += 1;
    });
    if !namespaces_available(&PID_NS, "pid namespaces") {
        return;
    }
    let name = TestName::new("ns-made");
    creator.arg(&name).wrapper("unshare", PID_NS).run().unwrap();
    let cell = ShmCell::<u64>::open(&name).unwrap();
    assert_ne!(
        cell.info().pid_namespace,
        std::fs::metadata("/proc/self/ns/pid")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap(),
        "made in another pid namespace"
    );
    assert_eq!(*cell.lock().unwrap(), 6);
}

/// Semaphore backend, holder in other namespaces: alive while it runs
/// (`try_lock` answers `WouldBlock`, a timed lock `TimedOut`), dead once
/// killed (`OwnerDied` with its write). The holder used to be judged by
/// pid + `/proc` start time, which another time namespace shifts: a live
/// holder looked dead and was taken over.
fn semaphore_holder_lives_until_killed(holder: ChildSpec, tag: &str, ns: &[&str]) {
    let name = TestName::new(tag);
    let cell = ShmCell::<u64, NamedSemaphore>::create(&name, 0).unwrap();
    let h = holding(holder, &name, ns);
    for _ in 0..3 {
        assert_eq!(
            cell.try_lock().err().map(|e| e.kind()),
            Some("WouldBlock"),
            "a live holder in namespaces {ns:?}"
        );
    }
    assert_eq!(
        cell.lock_timeout(Duration::from_millis(60))
            .err()
            .map(|e| e.kind()),
        Some("TimedOut")
    );
    if ns.contains(&"--pid") {
        // Diagnostic only: its pid as its own namespace numbers it.
        assert_eq!(cell.holder_pid(), Some(1));
    }
    h.kill();
    match cell.try_lock() {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(*g, 7);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
    }
    assert_eq!(*cell.lock().unwrap(), 7);
}

#[test]
fn semaphore_holder_in_another_time_namespace() {
    let holder = testing::child!(|ctx| {
        let cell = ShmCell::<u64, NamedSemaphore>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g = 7;
        testing::point("holding");
    });
    if !namespaces_available(&TIME_NS, "time namespaces") {
        return;
    }
    semaphore_holder_lives_until_killed(holder, "ns-semtime", &TIME_NS);
}

#[test]
fn semaphore_holder_in_another_pid_namespace() {
    let holder = testing::child!(|ctx| {
        let cell = ShmCell::<u64, NamedSemaphore>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g = 7;
        testing::point("holding");
    });
    if !namespaces_available(&PID_NS, "pid namespaces") {
        return;
    }
    semaphore_holder_lives_until_killed(holder, "ns-sempid", &PID_NS);
}

#[test]
fn semaphore_holder_in_other_pid_and_time_namespaces() {
    let holder = testing::child!(|ctx| {
        let cell = ShmCell::<u64, NamedSemaphore>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g = 7;
        testing::point("holding");
    });
    if !namespaces_available(&PID_TIME_NS, "time namespaces") {
        return;
    }
    semaphore_holder_lives_until_killed(holder, "ns-semboth", &PID_TIME_NS);
}

/// `FileLock` (a kernel `flock`) across namespaces: the same contract.
fn flock_holder_lives_until_killed(holder: ChildSpec, tag: &str, ns: &[&str]) {
    let name = TestName::new(tag);
    let cell = ShmCell::<u64, FileLock>::create(&name, 0).unwrap();
    let h = holding(holder, &name, ns);
    for _ in 0..3 {
        assert_eq!(
            cell.try_lock().err().map(|e| e.kind()),
            Some("WouldBlock"),
            "a live holder in namespaces {ns:?}"
        );
    }
    assert_eq!(
        cell.lock_timeout(Duration::from_millis(60))
            .err()
            .map(|e| e.kind()),
        Some("TimedOut")
    );
    h.kill();
    match cell.try_lock() {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(*g, 7);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
    }
    assert_eq!(*cell.lock().unwrap(), 7);
}

#[test]
fn flock_holder_in_another_pid_namespace() {
    let holder = testing::child!(|ctx| {
        let cell = ShmCell::<u64, FileLock>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g = 7;
        testing::point("holding");
    });
    if !namespaces_available(&PID_NS, "pid namespaces") {
        return;
    }
    flock_holder_lives_until_killed(holder, "ns-flockpid", &PID_NS);
}

#[test]
fn flock_holder_in_other_pid_and_time_namespaces() {
    let holder = testing::child!(|ctx| {
        let cell = ShmCell::<u64, FileLock>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g = 7;
        testing::point("holding");
    });
    if !namespaces_available(&PID_TIME_NS, "time namespaces") {
        return;
    }
    flock_holder_lives_until_killed(holder, "ns-flockboth", &PID_TIME_NS);
}

/// `major.minor` of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// This thread's id in its pid namespace.
fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Semaphore backend: a thread exits holding the lock (a forgotten
/// guard), and a new thread of the same process gets its thread id back
/// from the kernel. That thread never held the lock: it is told
/// `WouldBlock`, not `Deadlock` (which it was, when the holder recorded
/// the kernel thread id).
#[test]
fn semaphore_deadlock_is_never_told_to_a_thread_with_a_recycled_tid() {
    let child = testing::child!(|ctx| {
        // Made here: every process of the scenario is in this namespace.
        let cell = ShmCell::<u64, NamedSemaphore>::create(ctx.arg(0), 0).unwrap();
        // pid 1 of a new pid namespace, whose own (per-namespace, Linux
        // >= 6.14) pid_max this sets: thread ids come round in ~100
        // threads instead of ~4 million.
        assert_eq!(std::process::id(), 1);
        std::fs::write("/proc/sys/kernel/pid_max", "400").unwrap();
        // Ids below 300 are never handed out again: go past them first.
        let first = |f: fn() -> i32| std::thread::scope(|s| s.spawn(f).join().unwrap());
        let mut n = 0;
        while first(gettid) < 300 {
            n += 1;
            assert!(n < 1000, "thread ids do not reach 300");
        }
        let held_by = std::thread::scope(|s| {
            s.spawn(|| {
                std::mem::forget(cell.lock().unwrap());
                gettid()
            })
            .join()
            .unwrap()
        });
        for _ in 0..10_000 {
            let answer = std::thread::scope(|s| {
                s.spawn(|| (gettid() == held_by).then(|| cell.try_lock().err().map(|e| e.kind())))
                    .join()
                    .unwrap()
            });
            if let Some(answer) = answer {
                assert_eq!(
                    answer,
                    Some("WouldBlock"),
                    "a new thread that got the exited holder's tid {held_by}"
                );
                testing::point("recycled tid asked");
                return;
            }
        }
        panic!("thread id {held_by} never came round again");
    });
    if kernel_version() < (6, 14) {
        eprintln!(
            "skipped: needs a per-pid-namespace pid_max (Linux >= 6.14) to recycle a thread id"
        );
        return;
    }
    if !namespaces_available(&PID_NS, "pid namespaces") {
        return;
    }
    let name = TestName::new("ns-tid");
    let ended = child.arg(&name).wrapper("unshare", PID_NS).run().unwrap();
    assert_eq!(ended.last_point(), Some("recycled tid asked"));
    // The forgotten guard held it until its process ended.
    let cell = ShmCell::<u64, NamedSemaphore>::open(&name).unwrap();
    match cell.try_lock() {
        Err(LockError::OwnerDied(g)) => g.make_consistent(),
        other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
    };
}

/// Semaphore backend: liveness is the kernel's lock on the holder's token,
/// whose descriptor is close-on-exec: a holder that `exec`s (same pid,
/// same start time: it used to count as alive) is dead for the lock at
/// once, while the new program still runs.
#[test]
fn semaphore_holder_that_execs_is_dead_at_once() {
    let child = testing::child!(|ctx| {
        use std::os::unix::process::CommandExt;
        let cell = ShmCell::<u64, NamedSemaphore>::open(ctx.arg(0)).unwrap();
        let mut g = cell.lock().unwrap();
        *g = 3;
        testing::point("holding");
        let e = Command::new("sleep").arg("30").exec();
        panic!("exec failed: {e}");
    });
    let name = TestName::new("ns-exec");
    let cell = ShmCell::<u64, NamedSemaphore>::create(&name, 0).unwrap();
    let mut running = child.arg(&name).stop_at("holding").spawn().unwrap();
    running.wait_stopped().unwrap();
    assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    running.resume().unwrap();
    // Bounded poll: the exec happens some time after the resume.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match cell.try_lock() {
            Err(LockError::OwnerDied(g)) => {
                assert_eq!(*g, 3);
                g.make_consistent();
                break;
            }
            Err(LockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
        }
    }
    // The program it became still runs (killed now, with its group).
    running.kill().unwrap();
}
