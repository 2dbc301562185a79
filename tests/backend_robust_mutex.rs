//! The backend suite for `ShmCell<T, RobustMutex>`, the robust mutex's own
//! owner-death paths (thread exit, exec, a forgotten guard), and the
//! standalone `RobustMutex` in a `Segment` of the user's own, across
//! processes.

mod backend_suite;
mod support;

use std::time::{Duration, Instant};

use backend_suite::{ledger, name, Guard, Ledger, BOUND};
use shmsync::segment::{LockKind, SegmentSpec};
use shmsync::testing::{self, Running};
use shmsync::{CreateOptions, LockError, RobustMutex, Segment, ShmCell};

backend_suite!(RobustMutex);

/// A thread of another process exits holding the lock (the process lives
/// on): the next locker gets OwnerDied.
#[test]
fn thread_exit_while_holding() {
    let child = testing::child!(|ctx| {
        let c = ShmCell::<Ledger>::open(ctx.arg(0)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut g = c.lock().unwrap();
                g.a = 7;
                std::mem::forget(g);
            });
        });
        testing::point("thread gone");
    });
    let _guard = Guard::new();
    let name = name("thr");
    let cell = ShmCell::<Ledger>::create(name.as_str(), ledger()).unwrap();
    let mut child = child.arg(&name).stop_at("thread gone").spawn().unwrap();
    child.wait_stopped().unwrap();
    match cell.lock_timeout(BOUND) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.a, 7);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
    child.kill().unwrap();
}

/// Waits (bounded) until process `pid` runs the program `comm`: the exec
/// happened.
fn await_exec(pid: u32, comm: &str) {
    let deadline = Instant::now() + BOUND;
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim_end() == comm {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} never exec'd {comm}");
        std::thread::yield_now();
    }
}

/// Whether process `pid` exists (for a child of ours: not reaped yet).
fn alive(pid: u32) -> bool {
    // SAFETY: probing a process with signal 0 sends nothing.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// A process that `exec`s while holding the lock releases it as dead: the
/// next locker gets OwnerDied while the exec'd program still runs.
///
/// The exec'ing thread must be its process's main thread: the kernel walks
/// the robust list after `de_thread` has given an exec'ing secondary thread
/// the leader's id, so a lock word holding the secondary thread's old id
/// is not marked (the lock stays held by a thread that no longer exists).
/// A child's code runs on libtest's test thread, so the holder is a
/// process it forks (single-threaded, its thread is the leader).
#[test]
fn exec_while_holding() {
    let child = testing::child!(|ctx| {
        let name = ctx.arg(0);
        // SAFETY: in a child's code (see backend_suite::forked); the forked
        // process only opens, locks and execs.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let c = ShmCell::<Ledger>::open(name).unwrap();
            let mut g = c.lock().unwrap();
            g.a = 9;
            std::mem::forget(g);
            let prog = c"/bin/sleep";
            let args = [c"sleep".as_ptr(), c"60".as_ptr(), std::ptr::null()];
            // SAFETY: NUL-terminated program and argument vector.
            unsafe { libc::execv(prog.as_ptr(), args.as_ptr()) };
            // SAFETY: exec failed; leave the forked process at once.
            unsafe { libc::_exit(127) };
        }
        await_exec(pid as u32, "sleep");
        assert!(alive(pid as u32), "the exec'd process is alive");
        // Stopped here while the test locks; killed with its process
        // group, the exec'd holder included.
        testing::point("exec'd");
    });
    let _guard = Guard::new();
    let name = name("exec");
    let cell = ShmCell::<Ledger>::create(name.as_str(), ledger()).unwrap();
    let mut child = child.arg(&name).stop_at("exec'd").spawn().unwrap();
    child.wait_stopped().unwrap();
    match cell.lock_timeout(BOUND) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.a, 9);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
    assert!(child.kill().unwrap().killed);
}

/// `mem::forget(guard)` then dropping the handle must not unmap the held
/// mutex: when the process dies, the next locker gets OwnerDied, not a hang.
#[test]
fn forgotten_guard_and_dropped_handle() {
    let child = testing::child!(|ctx| {
        let c = ShmCell::<Ledger>::open(ctx.arg(0)).unwrap();
        let mut g = c.lock().unwrap();
        g.b = 3;
        std::mem::forget(g);
        drop(c);
        testing::point("forgotten");
    });
    let _guard = Guard::new();
    let name = name("forget");
    let cell = ShmCell::<Ledger>::create(name.as_str(), ledger()).unwrap();
    child.arg(&name).kill_at("forgotten").unwrap();
    match cell.lock_timeout(Duration::from_secs(5)) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.b, 3);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
}

fn fd_and_map_counts() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("shmsync-t-"))
        .count();
    (fds, maps)
}

/// A forgotten-guard leak must be precise: handles dropped while *another*
/// handle of this process holds the lock are unmapped and closed. Counts
/// this process's descriptors and mappings, and leaks one on purpose: it
/// runs in a child, alone in its process.
#[test]
fn dropping_other_handles_while_held_leaks_nothing() {
    let child = testing::child!(|ctx| {
        let name = ctx.arg(0);
        let cell = ShmCell::<Ledger>::open(name).unwrap();
        let guard = cell.lock().unwrap();
        let before = fd_and_map_counts();
        for _ in 0..100 {
            let other = ShmCell::<Ledger>::open(name).unwrap();
            assert_eq!(other.try_lock().err().map(|e| e.kind()), Some("Deadlock"));
            drop(other);
        }
        assert_eq!(
            fd_and_map_counts(),
            before,
            "dropped handles leaked fds or mappings"
        );
        drop(guard);
        // And the deliberate leak: a forgotten guard keeps its handle's mapping.
        let other = ShmCell::<Ledger>::open(name).unwrap();
        std::mem::forget(other.lock().unwrap());
        drop(other);
        let after = fd_and_map_counts();
        assert_eq!(
            (after.0, after.1),
            (before.0 + 1, before.1 + 1),
            "a forgotten guard's mapping must stay"
        );
    });
    let _guard = Guard::new();
    let name = name("noleak");
    let _cell = ShmCell::<Ledger>::create(name.as_str(), ledger()).unwrap();
    child.arg(&name).run().unwrap();
}

// ------------------------------------------ the standalone RobustMutex

/// A user's own layout: a `RobustMutex` in the lock area of a standalone
/// `Segment` (`LockKind::External`), guarding a `u64` in its value area.
fn mutex_spec() -> SegmentSpec {
    SegmentSpec {
        value_size: 8,
        value_align: 8,
        type_tag: 0x5747_da10,
        type_version: 1,
        lock_kind: LockKind::External,
        lock_size: std::mem::size_of::<RobustMutex>() as u64,
        lock_align: std::mem::align_of::<RobustMutex>() as u64,
    }
}

/// Creates the segment and initialises its mutex in place.
fn create_mutex_segment(name: &str) -> Segment {
    let seg = Segment::create(name, &mutex_spec(), &CreateOptions::new()).unwrap();
    // SAFETY: the lock area is sized and aligned for a RobustMutex, lives
    // as long as the mapping, and nobody uses it yet (just created).
    unsafe { RobustMutex::init(seg.lock_ptr().cast()) }.unwrap();
    seg
}

fn open_mutex_segment(name: &str) -> Segment {
    Segment::open(name, &mutex_spec()).unwrap()
}

fn mutex(seg: &Segment) -> &RobustMutex {
    // SAFETY: the lock area holds a RobustMutex initialised by the creator
    // (create_mutex_segment), mapped while `seg` lives.
    unsafe { seg.lock_ptr().cast::<RobustMutex>().as_ref() }
}

/// The guarded value (only touched while holding `mutex(seg)`).
fn value(seg: &Segment) -> *mut u64 {
    seg.value_ptr().cast::<u64>().as_ptr()
}

fn read(seg: &Segment) -> u64 {
    // SAFETY: aligned u64 in the mapping, read under the mutex.
    unsafe { value(seg).read_volatile() }
}

fn write(seg: &Segment, v: u64) {
    // SAFETY: as above, written under the mutex.
    unsafe { value(seg).write_volatile(v) }
}

type MutexAttempt<'a> =
    Result<shmsync::RobustMutexGuard<'a>, LockError<shmsync::RobustMutexGuard<'a>>>;

fn mutex_attempt(m: &RobustMutex, op: backend_suite::Op) -> MutexAttempt<'_> {
    match op {
        backend_suite::Op::Lock => m.lock(),
        backend_suite::Op::Try => m.try_lock(),
        backend_suite::Op::Timeout => m.lock_timeout(Duration::from_millis(100)),
    }
}

/// The roles of the standalone-mutex tests: `"holder"` locks, writes 1,
/// stops at `"holding"`, and once resumed writes 2 and unlocks;
/// `"not_recoverable"` expects NotRecoverable on every op.
fn mutex_child(ctx: &testing::ChildCtx) {
    let seg = open_mutex_segment(ctx.arg(1));
    let m = mutex(&seg);
    match ctx.arg(0) {
        "holder" => {
            let g = m.lock().unwrap();
            write(&seg, 1);
            testing::point("holding");
            std::thread::sleep(Duration::from_millis(20));
            write(&seg, 2);
            drop(g);
        }
        "try_racer" => {
            testing::points_at_crate_steps();
            testing::point("racing");
            loop {
                match backend_suite::kind(&m.try_lock()) {
                    "WouldBlock" => std::hint::spin_loop(),
                    "NotRecoverable" => break,
                    other => panic!("a try while another holds it: {other}"),
                }
            }
        }
        // Takes the owner death, holds it until the value reads 1, drops
        // it unrepaired (not recoverable).
        "nr_releaser" => {
            testing::points_at_crate_steps();
            let g = m.lock().err().and_then(LockError::into_owner_died);
            let _g = g.expect("OwnerDied");
            testing::point("holding");
            let t0 = Instant::now();
            while read(&seg) != 1 {
                assert!(t0.elapsed() < BOUND, "never told to release");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // OP: sleeps in `lock` or `lock_timeout` (10 s) until told.
        "nr_sleeper" => {
            testing::points_at_crate_steps();
            testing::point("sleeping");
            let r = match ctx.arg(2) {
                "lock" => m.lock(),
                _ => m.lock_timeout(Duration::from_secs(10)),
            };
            assert_eq!(backend_suite::kind(&r), "NotRecoverable", "{}", ctx.arg(2));
        }
        "not_recoverable" => {
            for op in backend_suite::OPS {
                let r = mutex_attempt(m, op);
                assert_eq!(backend_suite::kind(&r), "NotRecoverable", "{op:?}");
            }
        }
        other => panic!("no role {other:?}"),
    }
}

fn spawn_mutex_holder(child: testing::ChildSpec, name: &str) -> Running {
    let mut holder = child
        .command()
        .args(["holder", name])
        .stop_at("holding")
        .spawn()
        .unwrap();
    holder.wait_stopped().unwrap();
    holder
}

/// Another process holds the standalone mutex: try_lock is WouldBlock,
/// lock_timeout TimedOut, the owner's tid is recorded, and lock() waits
/// for the release and sees the holder's last write.
#[test]
fn standalone_mutex_excludes_across_processes() {
    let child = testing::child!(mutex_child);
    let _guard = Guard::new();
    let name = name("sa-held");
    let seg = create_mutex_segment(&name);
    let m = mutex(&seg);
    {
        let g = m.try_lock().expect("free at first");
        write(&seg, 0);
        assert_eq!(m.owner_tid(), shmsync_gettid());
        drop(g);
    }
    assert_eq!(m.owner_tid(), 0, "free again");
    let mut holder = spawn_mutex_holder(child, &name);
    assert_ne!(m.owner_tid(), 0, "the holder's tid is in the lock word");
    assert_eq!(backend_suite::kind(&m.try_lock()), "WouldBlock");
    assert_eq!(
        backend_suite::kind(&m.lock_timeout(Duration::from_millis(100))),
        "TimedOut"
    );
    holder.resume().unwrap();
    let g = m.lock().expect("lock after the release");
    assert_eq!(read(&seg), 2, "lock returned before the holder's release");
    assert!(!g.is_inconsistent());
    drop(g);
    holder.wait().unwrap();
}

fn shmsync_gettid() -> u32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// The holder of a standalone mutex is killed: every op returns OwnerDied
/// with a guard (inconsistent) and the half-done value; once repaired and
/// made consistent, the mutex is clean again for every process.
#[test]
fn standalone_mutex_owner_died_then_consistent() {
    let child = testing::child!(mutex_child);
    let _guard = Guard::new();
    for op in backend_suite::OPS {
        let name = name("sa-died");
        let seg = create_mutex_segment(&name);
        let m = mutex(&seg);
        spawn_mutex_holder(child, &name).kill().unwrap();
        match mutex_attempt(m, op) {
            Err(LockError::OwnerDied(g)) => {
                assert!(g.is_inconsistent(), "{op:?}");
                assert_eq!(read(&seg), 1, "{op:?}: the dead holder's write");
                write(&seg, 0);
                g.make_consistent();
                assert!(!g.is_inconsistent());
            }
            other => panic!(
                "{op:?} after the holder was killed: {}",
                backend_suite::kind(&other)
            ),
        }
        let g = mutex_attempt(m, op).unwrap_or_else(|e| panic!("{op:?} after repair: {e}"));
        assert!(!g.is_inconsistent());
        assert_eq!(read(&seg), 0);
        drop(g);
        // Another process locks it cleanly too, and can be killed again.
        spawn_mutex_holder(child, &name).resume_and_wait();
        assert_eq!(read(&seg), 2);
    }
}

/// An owner-died guard of a standalone mutex dropped without
/// make_consistent: the mutex is not recoverable, for every op, in every
/// process.
#[test]
fn standalone_mutex_not_recoverable() {
    let child = testing::child!(mutex_child);
    let _guard = Guard::new();
    let name = name("sa-nr");
    let seg = create_mutex_segment(&name);
    let m = mutex(&seg);
    spawn_mutex_holder(child, &name).kill().unwrap();
    let g = m
        .lock()
        .err()
        .and_then(LockError::into_owner_died)
        .expect("OwnerDied");
    drop(g); // not made consistent
    for op in backend_suite::OPS {
        assert_eq!(
            backend_suite::kind(&mutex_attempt(m, op)),
            "NotRecoverable",
            "{op:?}"
        );
    }
    child
        .command()
        .args(["not_recoverable", &name])
        .run()
        .unwrap();
}

/// A try that races the unlock making the mutex not recoverable (it read
/// `__owner` before the unlock, glibc's compare-and-swap takes the freed
/// word after) and whose process is SIGKILLed as glibc answers
/// `ENOTRECOVERABLE` (the step `mutex:try-not-recoverable`): every later
/// locker must still be told `NotRecoverable`, and the lock word must not
/// name the dead process. The race is caught in some of the attempts; the
/// test needs at least one.
#[test]
fn try_killed_as_the_mutex_becomes_not_recoverable() {
    const ATTEMPTS: u32 = 300;
    let child = testing::child!(mutex_child);
    let _guard = Guard::new();
    let mut caught = 0;
    for attempt in 0..ATTEMPTS {
        let name = name("sa-race");
        let seg = create_mutex_segment(&name);
        let m = mutex(&seg);
        // A thread of ours exits holding it: owner died.
        std::thread::scope(|s| {
            s.spawn(|| std::mem::forget(m.lock().unwrap()));
        });
        let g = m.lock().err().and_then(LockError::into_owner_died);
        let g = g.expect("OwnerDied after the holder thread's exit");
        let mut racer = child
            .command()
            .args(["try_racer", &name])
            .stop_at("mutex:try-not-recoverable")
            .spawn()
            .unwrap();
        racer.wait_point("racing").unwrap();
        std::thread::sleep(Duration::from_micros(100 + u64::from(attempt % 7) * 50));
        drop(g); // not made consistent: not recoverable from here on
        if racer.wait_stopped().is_err() {
            // The racer read `__owner` after the unlock: no race this time.
            racer.wait().unwrap();
            continue;
        }
        racer.kill().unwrap();
        caught += 1;
        let word = m.owner_tid();
        let timed = backend_suite::kind(&m.lock_timeout(Duration::from_millis(500)));
        let tried = backend_suite::kind(&m.try_lock());
        assert_eq!(
            (word, timed, tried),
            (0, "NotRecoverable", "NotRecoverable"),
            "attempt {attempt}: (lock word tid, lock_timeout, try_lock) after the racer's death"
        );
        if caught == 3 {
            break;
        }
    }
    println!("race caught {caught} times");
    assert!(
        caught > 0,
        "the race was never caught in {ATTEMPTS} attempts"
    );
}

/// Resumes a stopped holder and waits for it to end successfully.
trait ResumeAndWait {
    fn resume_and_wait(self);
}

impl ResumeAndWait for Running {
    fn resume_and_wait(mut self) {
        self.resume().unwrap();
        self.wait().unwrap();
    }
}

/// Lockers asleep when the mutex becomes not recoverable, whose wake-up is
/// lost: the unlock that made it so is stopped before it wakes them all
/// (`mutex:released-unrepaired`), and the one sleeper glibc woke is
/// stopped before it wakes the rest (`mutex:answered-not-recoverable`) —
/// as if both had been killed there. Every other sleeper must still learn
/// `NotRecoverable` (from `__owner`, when its sleep slice ends): `lock`
/// must not sleep for ever, nor `lock_timeout` answer `TimedOut`.
#[test]
fn sleepers_whose_wake_up_is_lost_still_learn_not_recoverable() {
    let child = testing::child!(mutex_child);
    let _guard = Guard::new();
    let name = name("sa-strand");
    let seg = create_mutex_segment(&name);
    let m = mutex(&seg);
    std::thread::scope(|s| {
        s.spawn(|| std::mem::forget(m.lock().unwrap()));
    });
    let mut releaser = child
        .command()
        .args(["nr_releaser", &name])
        .stop_at("mutex:released-unrepaired")
        .spawn()
        .unwrap();
    releaser.wait_point("holding").unwrap();
    let mut sleepers: Vec<Running> = ["lock", "lock", "timeout"]
        .into_iter()
        .map(|op| {
            let mut s = child
                .command()
                .args(["nr_sleeper", &name, op])
                .stop_at("mutex:answered-not-recoverable")
                .spawn()
                .unwrap();
            s.wait_point("sleeping").unwrap();
            // Past the spin, asleep in glibc (a few ms at most).
            support::await_state(s.pid(), 'S', BOUND);
            s
        })
        .collect();
    write(&seg, 1);
    releaser.wait_stopped().unwrap();
    // Each sleeper reaches its answer (the stop point) although nobody
    // wakes it: the one glibc woke at once, the others after a slice.
    let t0 = Instant::now();
    for s in &mut sleepers {
        s.wait_stopped().unwrap();
    }
    println!("all sleepers answered within {:?}", t0.elapsed());
    releaser.resume().unwrap();
    releaser.wait().unwrap();
    for mut s in sleepers {
        s.resume().unwrap();
        s.wait().unwrap();
    }
    assert_eq!(m.owner_tid(), 0);
    assert!(matches!(m.lock(), Err(LockError::NotRecoverable)));
}
