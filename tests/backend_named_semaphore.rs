//! The backend suite for `ShmCell<T, NamedSemaphore>`, and the semaphore
//! backend's own cases: a holder killed while others sleep, waiters racing
//! for a dead holder's lock, zombies, owner death of an owner-died holder,
//! contended kill cycles, the companion `sem.NAME` (made before Ready, never
//! made by `open`, removed by a default-typed unlink, stale one replaced),
//! names, threads, fork.

mod backend_suite;
mod support;

use support::proc_state;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backend_suite::{
    consistent, forked, ledger, name, repair, spawn_holder, Guard, Ledger, Rng, SharedCounters, A0,
    BOUND,
};
use shmsync::testing::{self, ChildCtx, ChildError, Running};
use shmsync::{Error, LockError, NamedSemaphore, ShmCell};

type Cell = ShmCell<Ledger, NamedSemaphore>;
type SemCell = Cell;

backend_suite!(NamedSemaphore);

fn sem_path(name: &str) -> String {
    format!("/dev/shm/sem.{}", &name[1..])
}

/// Waits (bounded, no sleeps) until `n` threads sleep on the cell's
/// semaphore: a shared-memory barrier on the backend's waiter count.
fn await_sleepers(cell: &Cell, n: u32) {
    let deadline = Instant::now() + BOUND;
    while cell.sleeping_waiters() < n {
        assert!(Instant::now() < deadline, "waiters never went to sleep");
        std::thread::yield_now();
    }
}

/// Waits (bounded) until `cond` holds.
fn await_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::yield_now();
    }
}

fn expect_held(cell: &SemCell, what: &str) {
    assert_eq!(
        cell.try_lock().err().map(|e| e.kind()),
        Some("WouldBlock"),
        "{what}: try_lock"
    );
    assert_eq!(
        cell.lock_timeout(Duration::from_millis(50))
            .err()
            .map(|e| e.kind()),
        Some("TimedOut"),
        "{what}: lock_timeout"
    );
}

// Counter slots of the racing tests.
const DIED: usize = 0;
const CLEAN: usize = 1;
const BLOCKED: usize = 1;
const DONE: usize = 2;
// Counter slots of the contended kill loop.
const INSIDE: usize = 0;
const VIOLATIONS: usize = 1;
const RECOVERED: usize = 2;
const COMMITTED: usize = 3;

/// The roles of this binary's own children (`ctx.arg(0)`), the cell's
/// name being `ctx.arg(1)`; the suite's roles (`"holder"`) otherwise.
fn roles(ctx: &ChildCtx) {
    let n = ctx.arg(1);
    match ctx.arg(0) {
        "sleeper" => {
            let c = Cell::open(n).unwrap();
            match c.lock() {
                Err(LockError::OwnerDied(mut g)) => {
                    assert_eq!(g.a, 1, "the dead holder's write is visible");
                    repair(&mut g);
                    g.make_consistent();
                }
                other => panic!("waiter got {:?}", other.map(|_| ())),
            };
        }
        "race_waiter" => {
            let ctr = SharedCounters::open(n);
            let c = Cell::open(n).unwrap();
            match c.lock_timeout(BOUND) {
                Err(LockError::OwnerDied(mut g)) => {
                    ctr.get(DIED).fetch_add(1, Ordering::SeqCst);
                    repair(&mut g);
                    g.make_consistent();
                }
                Ok(g) => {
                    assert!(consistent(&g));
                    ctr.get(CLEAN).fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => panic!("waiter: {e}"),
            };
        }
        "try_racer" => {
            let ctr = SharedCounters::open(n);
            let c = Cell::open(n).unwrap();
            testing::point("ready");
            // Each racer keeps what it got until both have tried, so that
            // the loser meets the winner holding the lock.
            let both_tried = || {
                ctr.get(DONE).fetch_add(1, Ordering::SeqCst);
                await_until("both racers tried", || {
                    ctr.get(DONE).load(Ordering::SeqCst) == 2
                });
            };
            match c.try_lock() {
                Err(LockError::OwnerDied(mut g)) => {
                    ctr.get(DIED).fetch_add(1, Ordering::SeqCst);
                    both_tried();
                    repair(&mut g);
                    g.make_consistent();
                }
                Err(LockError::WouldBlock) => {
                    ctr.get(BLOCKED).fetch_add(1, Ordering::SeqCst);
                    both_tried();
                }
                other => panic!("racer got {:?}", other.map(|_| ())),
            };
        }
        "second" => {
            let c = Cell::open(n).unwrap();
            let mut g = c.lock().err().and_then(LockError::into_owner_died).unwrap();
            g.b = 9;
            testing::point("owner died");
            drop(g);
        }
        "contender" => contender(n, ctx.arg(2).parse().unwrap()),
        "semaphore_when_ready" => semaphore_when_ready(n),
        "abandoning_creator" => {
            shmsync::segment::set_init_hook(Some(|step| {
                if step == shmsync::segment::InitStep::ValueWritten {
                    // SAFETY: dying on purpose, mid-initialisation.
                    unsafe { libc::_exit(7) };
                }
            }));
            let _ = Cell::create(n, ledger());
        }
        "fork_with_guard" => fork_with_guard(n),
        "forget_then_exit" => {
            let c = Cell::open(n).unwrap();
            let mut g = c.lock().unwrap();
            g.b = 3;
            std::mem::forget(g);
            drop(c);
            testing::point("forgotten");
        }
        "leader_exits" => leader_exits(n),
        "hidden_holder" => {
            // SAFETY: dropping privileges in this child only.
            unsafe {
                assert_eq!(libc::setgid(65533), 0);
                assert_eq!(libc::setuid(65533), 0);
            }
            let c = SemCell::open(n).unwrap();
            let _g = c.lock().unwrap();
            testing::point("holding");
        }
        "hidepid_checker" => hidepid_checker(n, ctx.arg(2).parse().unwrap()),
        _ => backend_suite::child::<NamedSemaphore>(ctx),
    }
}

/// A holder is killed while another process already sleeps in `lock()`
/// (no timeout): the sleeper notices within its slice and comes back with
/// OwnerDied and the dead holder's write — it does not hang (the child's
/// bound turns a hang into a failure).
#[test]
fn holder_killed_while_waiter_sleeps() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("sleeper");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let holder = spawn_holder(child, &name);
    let waiter = child.command().args(["sleeper", &name]).spawn().unwrap();
    await_sleepers(&cell, 1);
    assert_eq!(cell.holder_pid(), Some(holder.pid()));
    holder.kill().unwrap();
    waiter.wait().unwrap();
    let g = cell.try_lock().expect("clean after the waiter's repair");
    assert!(consistent(&g));
}

/// Two processes sleep in `lock_timeout` when the holder is killed (and
/// are woken together): exactly one gets OwnerDied, the other then gets the
/// repaired value cleanly. Repeated, to give the takeover race many chances.
#[test]
fn sleeping_waiters_race_for_dead_holder() {
    const ROUNDS: usize = 20;
    let child = testing::child!(roles);
    let _guard = Guard::new();
    for round in 0..ROUNDS {
        let name = name("race");
        let cell = Cell::create(name.as_str(), ledger()).unwrap();
        let counters = SharedCounters::create(&name);
        let holder = spawn_holder(child, &name);
        let waiters: Vec<Running> = (0..2)
            .map(|_| {
                child
                    .command()
                    .args(["race_waiter", &name])
                    .spawn()
                    .unwrap()
            })
            .collect();
        await_sleepers(&cell, 2);
        holder.kill().unwrap();
        // Wake both at once so that they really race (rather than finding
        // the death one slice apart).
        let sem = NamedSemaphore::open(name.as_str()).unwrap();
        sem.post().unwrap();
        sem.post().unwrap();
        for w in waiters {
            w.wait().unwrap();
        }
        assert_eq!(
            counters.get(DIED).load(Ordering::SeqCst),
            1,
            "round {round}: exactly one OwnerDied"
        );
        assert_eq!(counters.get(CLEAN).load(Ordering::SeqCst), 1);
    }
}

/// Two processes call `try_lock` at once on a dead holder's lock: exactly
/// one gets OwnerDied; the other sees the winner holding (WouldBlock).
#[test]
fn try_lock_race_for_dead_holder() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    for round in 0..20 {
        let name = name("tryrace");
        let _cell = Cell::create(name.as_str(), ledger()).unwrap();
        let counters = SharedCounters::create(&name);
        spawn_holder(child, &name).kill().unwrap();
        let mut racers: Vec<Running> = (0..2)
            .map(|_| {
                let mut r = child
                    .command()
                    .args(["try_racer", &name])
                    .stop_at("ready")
                    .spawn()
                    .unwrap();
                r.wait_stopped().unwrap();
                r
            })
            .collect();
        for r in racers.iter_mut() {
            r.resume().unwrap();
        }
        for r in racers {
            r.wait().unwrap();
        }
        let got = (
            counters.get(DIED).load(Ordering::SeqCst),
            counters.get(BLOCKED).load(Ordering::SeqCst),
        );
        assert_eq!(got, (1, 1), "round {round}: one OwnerDied, one WouldBlock");
    }
}

/// A holder killed but not yet reaped is a zombie — `kill(pid, 0)` still
/// succeeds on it — and must count as dead, on every acquire path.
#[test]
fn zombie_holder_counts_as_dead() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    for op in backend_suite::OPS {
        let name = name("zombie");
        let cell = Cell::create(name.as_str(), ledger()).unwrap();
        let holder = spawn_holder(child, &name);
        let pid = holder.pid();
        // Only this process reaps it (when `holder` is killed or dropped).
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        // Wait until it has exited, without reaping it (WNOWAIT).
        // SAFETY: an all-zero siginfo_t is valid storage for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting on our own child with a valid out-pointer.
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(r, 0);
        assert_eq!(proc_state(pid), 'Z', "the holder is a zombie");
        // SAFETY: probing our own (zombie) child.
        assert_eq!(unsafe { libc::kill(pid as i32, 0) }, 0);
        match backend_suite::attempt(&cell, op) {
            Err(LockError::OwnerDied(mut g)) => {
                assert_eq!(g.a, 1);
                repair(&mut g);
                g.make_consistent();
            }
            other => panic!("{op:?} on a zombie's lock: {:?}", other.map(|_| ())),
        }
        assert!(cell.try_lock().is_ok());
        holder.kill().unwrap();
    }
}

/// The process that took a dead holder's lock over (OwnerDied) dies too
/// before `make_consistent`: the next locker gets OwnerDied again.
#[test]
fn owner_died_holder_killed_again() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("twice");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    spawn_holder(child, &name).kill().unwrap();
    child
        .command()
        .args(["second", &name])
        .kill_at("owner died")
        .unwrap();
    match cell.try_lock() {
        Err(LockError::OwnerDied(mut g)) => {
            assert_eq!((g.a, g.b), (1, 9));
            repair(&mut g);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied again, got {:?}", other.map(|_| ())),
    }
    assert!(consistent(&cell.try_lock().unwrap()));
}

/// A contender of [`contended_kill_loop`].
fn contender(name: &str, spin: u32) {
    let ctr = SharedCounters::open(name);
    let c = Cell::open(name).unwrap();
    testing::point("started");
    loop {
        let mut g = match c.lock() {
            Ok(g) => g,
            Err(LockError::OwnerDied(mut g)) => {
                ctr.get(RECOVERED).fetch_add(1, Ordering::SeqCst);
                // The dead holder may have left the flag set.
                ctr.get(INSIDE).store(0, Ordering::SeqCst);
                repair(&mut g);
                g.make_consistent();
                g
            }
            Err(e) => panic!("child lock: {e}"),
        };
        if ctr.get(INSIDE).swap(1, Ordering::SeqCst) != 0 {
            ctr.get(VIOLATIONS).fetch_add(1, Ordering::SeqCst);
        }
        g.a -= 1;
        for _ in 0..spin {
            std::hint::spin_loop();
        }
        g.b += 1;
        g.n += 1;
        ctr.get(COMMITTED).store(g.n, Ordering::SeqCst);
        ctr.get(INSIDE).store(0, Ordering::SeqCst);
        drop(g);
    }
}

/// Two processes contend for the lock while one of them is SIGKILLed at a
/// random moment and replaced, cycle after cycle. Mutual exclusion is
/// checked inside the critical section (a flag that must be clear on
/// entry), and the ledger invariant after every kill.
#[test]
fn contended_kill_loop() {
    const CYCLES: u32 = 100;
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("contend");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let counters = SharedCounters::create(&name);
    let spawn = |spin: u64| {
        let mut c = child
            .command()
            .args(["contender".to_string(), name.to_string(), spin.to_string()])
            .spawn()
            .unwrap();
        c.wait_point("started").unwrap();
        c
    };
    let mut rng = Rng::new(0xc0de ^ std::process::id() as u64);
    let mut kids: Vec<Option<Running>> = (0..2).map(|i| Some(spawn(50 * i))).collect();
    for cycle in 0..CYCLES {
        let target = counters.get(COMMITTED).load(Ordering::SeqCst) + 1 + rng.below(30);
        let deadline = Instant::now() + BOUND;
        while counters.get(COMMITTED).load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "cycle {cycle}: no progress");
            std::thread::yield_now();
        }
        let victim = rng.below(2) as usize;
        let ended = kids[victim].take().unwrap().kill().unwrap();
        assert!(ended.killed, "cycle {cycle}: contender had ended");
        kids[victim] = Some(spawn(rng.below(300)));
    }
    for k in kids.into_iter().flatten() {
        k.kill().unwrap();
    }
    let g = match cell.lock_timeout(BOUND) {
        Ok(g) => g,
        Err(LockError::OwnerDied(mut g)) => {
            repair(&mut g);
            g.make_consistent();
            g
        }
        Err(e) => panic!("final lock: {e}"),
    };
    assert!(consistent(&g), "invariant broken: {:?}", *g);
    assert!(g.n > 0 && g.a == A0 - g.n);
    assert_eq!(
        counters.get(VIOLATIONS).load(Ordering::SeqCst),
        0,
        "two holders at once"
    );
    println!(
        "    contended kill loop: {CYCLES} kills, {} owner-died recoveries in children, {} transfers",
        counters.get(RECOVERED).load(Ordering::SeqCst),
        g.n
    );
}

static SEM_AT_PUBLISH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static SEM_SEEN_AT_PUBLISH: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The child's side of [`semaphore_exists_when_ready`]: the umask and the
/// init hook are process-wide.
fn semaphore_when_ready(name: &str) {
    SEM_AT_PUBLISH.set(sem_path(name)).unwrap();
    shmsync::segment::set_init_hook(Some(|step| {
        if step == shmsync::segment::InitStep::Published {
            let exists = Path::new(SEM_AT_PUBLISH.get().unwrap()).exists();
            SEM_SEEN_AT_PUBLISH.store(exists, Ordering::SeqCst);
        }
    }));
    let opts = shmsync::CreateOptions::new().mode(0o640);
    // SAFETY: umask is process-wide; this child is alone in its process.
    let old = unsafe { libc::umask(0o077) };
    let cell = Cell::create_with(name, ledger(), &opts);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    shmsync::segment::set_init_hook(None);
    let _cell = cell.unwrap();
    assert!(
        SEM_SEEN_AT_PUBLISH.load(Ordering::SeqCst),
        "sem.NAME before Ready"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sem_path(name))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "the semaphore gets the segment's mode");
    let sem = NamedSemaphore::open(name).unwrap();
    assert_eq!(sem.value().unwrap(), 0, "waiters' semaphore starts at 0");
}

/// The semaphore exists before the segment is published Ready (checked
/// from the creator's Published hook), with the segment's mode whatever the
/// umask, and starts at 0. The creator is a child: umask and hook are
/// process-wide.
#[test]
fn semaphore_exists_when_ready() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("ready");
    child
        .command()
        .args(["semaphore_when_ready", &name])
        .run()
        .unwrap();
    assert!(Path::new(&sem_path(&name)).exists());
}

/// A creator that dies after making the semaphore but before Ready leaves
/// an abandoned segment and a semaphore: `open` reports AbandonedInit,
/// `open_or_create` takes the segment over with a fresh semaphore, and the
/// lock works across processes.
#[test]
fn abandoned_init_is_taken_over_with_fresh_semaphore() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("abandon");
    match child.command().args(["abandoning_creator", &name]).run() {
        Err(ChildError::Failed { status, .. }) => {
            assert_eq!(status, "exit status 7")
        }
        other => panic!("the creator should exit 7: {other:?}"),
    }
    assert!(Path::new(&sem_path(&name)).exists(), "left a semaphore");
    // Leave a token in the abandoned semaphore: it must not survive.
    NamedSemaphore::open(name.as_str()).unwrap().post().unwrap();
    assert!(matches!(
        Cell::open(name.as_str()),
        Err(Error::AbandonedInit { .. })
    ));
    let cell = Cell::open_or_create(name.as_str(), ledger()).unwrap();
    assert_eq!(
        NamedSemaphore::open(name.as_str())
            .unwrap()
            .value()
            .unwrap(),
        0
    );
    let mut holder = spawn_holder(child, &name);
    assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    holder.resume().unwrap();
    assert_eq!(cell.lock().unwrap().a, 2);
    holder.wait().unwrap();
}

/// Cell names for this backend allow 251 bytes after '/' (`sem.` takes
/// four of the file name's 255); a longer one is refused before any object
/// is created. (The long names extend a `TestName` with `-…`, so that it
/// removes them.)
#[test]
fn name_limit_checked_before_create() {
    let _guard = Guard::new();
    let base = name("");
    let pad = |len: usize| format!("{}-{}", base.as_str(), "x".repeat(len - base.len()));
    let ok = pad(251);
    assert_eq!(ok.len(), 252);
    let cell = Cell::create(&ok, ledger()).unwrap();
    drop(cell.lock().unwrap());
    let long = pad(252);
    for r in [
        Cell::create(&long, ledger()).err(),
        Cell::open_or_create(&long, ledger()).err(),
        Cell::open(&long).err(),
    ] {
        assert!(matches!(r, Some(Error::InvalidName { .. })), "{r:?}");
    }
    assert!(
        !Path::new(&format!("/dev/shm{long}")).exists(),
        "no segment was created"
    );
    // The default backend still takes it (255 allowed).
    let _m = ShmCell::<Ledger>::create(&long, ledger()).unwrap();
}

/// The child's side of [`fork_with_guard_child_is_not_the_holder`].
fn fork_with_guard(n: &str) {
    let cell = Cell::open(n).unwrap();
    let guard = cell.lock().unwrap();
    let (guard_ref, cell_ref) = (&guard, &cell);
    let parent = std::process::id();
    let status = forked(move || {
        // SAFETY: the forked process owns a copy of this memory; dropping
        // its copy of the guard is what unwinding through the frame would do.
        drop(unsafe { std::ptr::read(guard_ref) });
        assert_eq!(cell_ref.holder_pid(), Some(parent));
        // The forked process is another process: WouldBlock, not Deadlock.
        assert_eq!(
            cell_ref.try_lock().err().map(|e| e.kind()),
            Some("WouldBlock")
        );
    });
    assert_eq!(status, 0, "the forked process's checks failed");
    assert_eq!(cell.holder_pid(), Some(parent));
    drop(guard);
    assert_eq!(cell.holder_pid(), None);
}

/// A process forked while its parent holds a guard drops its copy without
/// releasing; it is not the holder; the parent still is. (The forking is
/// done by a child: see `backend_suite`.)
#[test]
fn fork_with_guard_child_is_not_the_holder() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("fork");
    let _cell = Cell::create(name.as_str(), ledger()).unwrap();
    child
        .command()
        .args(["fork_with_guard", &name])
        .run()
        .unwrap();
}

/// A guard forgotten and the handle dropped: the lock stays held while the
/// process lives, and its exit makes the next locker get OwnerDied.
#[test]
fn forgotten_guard_then_exit_is_owner_died() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("forget");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let mut child = child
        .command()
        .args(["forget_then_exit", &name])
        .stop_at("forgotten")
        .spawn()
        .unwrap();
    child.wait_stopped().unwrap();
    assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    child.resume().unwrap(); // let it exit normally
    child.wait().unwrap();
    match cell.try_lock() {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.b, 3);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
}

/// The holder of [`holder_whose_main_thread_exited_is_alive`]: a process
/// forked by the child (its thread is its leader), where a second thread
/// takes the lock and the leader then exits alone. The child itself
/// stays stopped at "forked" until the test kills its process group.
fn leader_exits(n: &str) {
    // SAFETY: in a child's code (see backend_suite::forked).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let c: &'static SemCell = Box::leak(Box::new(SemCell::open(n).unwrap()));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut g = c.lock().unwrap();
            g.a = 5;
            tx.send(()).unwrap();
            std::mem::forget(g);
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap();
        testing::point("leader exiting");
        // SAFETY: the raw exit(2) of this (leader) thread only — no
        // unwinding, the other thread lives on.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
    }
    testing::point("forked");
}

/// A process whose main thread exited (its thread-group leader is a zombie
/// in `/proc/PID/stat`) while another of its threads holds the lock is
/// alive: nobody may take the lock over. Once the process is killed, the
/// next locker gets OwnerDied.
#[test]
fn holder_whose_main_thread_exited_is_alive() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    let name = name("zleader");
    let cell = SemCell::create(name.as_str(), ledger()).unwrap();
    let mut middle = child
        .command()
        .args(["leader_exits", &name])
        .stop_at("forked")
        .spawn()
        .unwrap();
    middle.wait_point("leader exiting").unwrap();
    middle.wait_stopped().unwrap();
    await_until("the holder is recorded", || cell.holder_pid().is_some());
    let holder = cell.holder_pid().unwrap();
    assert_ne!(holder, middle.pid(), "the forked process holds");
    await_until("the main thread exited", || proc_state(holder) == 'Z');
    expect_held(&cell, "leader exited, holder thread alive");
    middle.kill().unwrap(); // its process group: the holder too
    match cell.lock_timeout(BOUND) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.a, 5);
            g.make_consistent();
        }
        other => panic!("after the kill: {:?}", other.map(|_| ())),
    };
}

/// The checker of [`holder_hidden_by_hidepid_is_alive`]: a private mount
/// namespace for this thread, a `/proc` that hides other users'
/// processes, then fewer privileges.
fn hidepid_checker(n: &str, holder_pid: u32) {
    let proc_ = c"proc";
    // SAFETY: a private mount namespace for this thread (CLONE_NEWNS
    // unshares the calling thread's filesystem view), then a /proc that
    // hides other users' processes; then drop privileges.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
        let none = std::ptr::null();
        let r = libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        assert_eq!(r, 0, "make mounts private");
        let r = libc::mount(
            proc_.as_ptr(),
            c"/proc".as_ptr(),
            proc_.as_ptr(),
            0,
            c"hidepid=2".as_ptr().cast(),
        );
        assert_eq!(r, 0, "mount proc hidepid=2");
        assert_eq!(libc::setgid(65534), 0);
        assert_eq!(libc::setuid(65534), 0);
    }
    assert!(
        !Path::new(&format!("/proc/{holder_pid}")).exists(),
        "hidepid hides the holder"
    );
    let c = SemCell::open(n).unwrap();
    expect_held(&c, "holder hidden by hidepid");
}

/// Under a `/proc` mounted `hidepid=2`, another user's live holder has no
/// `/proc/PID` at all: it must still count as alive.
#[test]
fn holder_hidden_by_hidepid_is_alive() {
    let child = testing::child!(roles);
    let _guard = Guard::new();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("    (needs root: two uids and a private /proc mount; not run)");
        return;
    }
    let name = name("hidepid");
    let opts = shmsync::CreateOptions::new().mode(0o666);
    let _cell = SemCell::create_with(name.as_str(), ledger(), &opts).unwrap();
    let mut holder = child
        .command()
        .args(["hidden_holder", &name])
        .stop_at("holding")
        .spawn()
        .unwrap();
    holder.wait_stopped().unwrap();
    child
        .command()
        .args([
            "hidepid_checker".to_string(),
            name.to_string(),
            holder.pid().to_string(),
        ])
        .run()
        .unwrap();
    holder.kill().unwrap();
}

/// `ShmCell::<T>::unlink` — default-typed, i.e. for the robust mutex —
/// reads the lock kind from the header and removes `sem.NAME` too.
#[test]
fn default_typed_unlink_removes_semaphore() {
    let _guard = Guard::new();
    let name = name("unlink");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    assert!(Path::new(&sem_path(&name)).exists());
    assert!(Path::new(&name.path()).exists());
    ShmCell::<Ledger>::unlink(name.as_str()).unwrap();
    assert!(!Path::new(&sem_path(&name)).exists(), "sem.NAME removed");
    assert!(!Path::new(&name.path()).exists(), "segment removed");
    // The attached handle keeps working on its own objects.
    drop(cell.lock().unwrap());
    assert!(matches!(
        Cell::unlink(name.as_str()),
        Err(Error::NotFound { .. })
    ));
}

/// A `sem.NAME` that is not provably this cell's leftover (here: a
/// standalone semaphore, open and in use) is never removed by creating a
/// cell: the create answers AlreadyExists naming the semaphore, and the
/// semaphore stays the one its users share (issue 12, section 2: it used to
/// be unlinked silently).
#[test]
fn foreign_semaphore_at_create_is_kept() {
    let _guard = Guard::new();
    let name = name("stale");
    let standalone = NamedSemaphore::create(name.as_str(), 5).unwrap();
    match Cell::create(name.as_str(), ledger()) {
        Err(Error::AlreadyExists { name: n }) => {
            assert_eq!(n, format!("/sem.{}", &name.as_str()[1..]))
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(
        matches!(
            Cell::open_or_create(name.as_str(), ledger()),
            Err(Error::AlreadyExists { .. })
        ),
        "open_or_create does not spin on it either"
    );
    assert!(!Path::new(&name.path()).exists(), "no segment left");
    let again = NamedSemaphore::open(name.as_str()).unwrap();
    again.post().unwrap();
    assert_eq!(standalone.value().unwrap(), 6, "still the same semaphore");
}

/// `open` checks the header first; a Ready cell whose `sem.NAME` is gone
/// (a process killed in `unlink` or `clean` between the semaphore and the
/// name, see tests/steps.rs) gets it made again by its owner — it only
/// carries wake-ups — instead of a cell nobody can open: `open` and
/// `open_or_create` work, and the lock still excludes.
#[test]
fn open_remakes_a_missing_semaphore() {
    let _guard = Guard::new();
    let name = name("nosem");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    NamedSemaphore::unlink(name.as_str()).unwrap();
    let opened = Cell::open(name.as_str()).unwrap();
    assert!(Path::new(&sem_path(&name)).exists());
    let also = Cell::open_or_create(name.as_str(), ledger()).unwrap();
    let held = cell.lock().unwrap();
    // One lock (this thread holds it through `cell`: Deadlock).
    assert!(matches!(opened.try_lock(), Err(LockError::Deadlock)));
    assert!(matches!(also.try_lock(), Err(LockError::Deadlock)));
    drop(held);
    assert_eq!(*opened.lock().unwrap(), ledger());
}

/// Opening with the other lock kind is Incompatible — in both directions —
/// and never touches (or creates) a semaphore.
#[test]
fn other_kind_is_incompatible() {
    let _guard = Guard::new();
    let name = name("kind");
    let _cell = Cell::create(name.as_str(), ledger()).unwrap();
    assert!(matches!(
        ShmCell::<Ledger>::open(name.as_str()),
        Err(Error::Incompatible {
            field: "lock_kind",
            ..
        })
    ));
    let other = backend_suite::name("kind2");
    let _mutex_cell = ShmCell::<Ledger>::create(other.as_str(), ledger()).unwrap();
    assert!(matches!(
        Cell::open(other.as_str()),
        Err(Error::Incompatible {
            field: "lock_kind",
            ..
        })
    ));
    assert!(!Path::new(&sem_path(&other)).exists());
}

/// Threads of one process sharing a handle exclude each other.
#[test]
fn threads_exclude_each_other() {
    let _guard = Guard::new();
    let name = name("threads");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..2000 {
                    let mut g = cell.lock().unwrap();
                    let a = g.a;
                    std::hint::spin_loop();
                    g.a = a - 1;
                    g.b += 1;
                    g.n += 1;
                }
            });
        }
    });
    let g = cell.lock().unwrap();
    assert_eq!(g.n, 8000);
    assert!(consistent(&g));
}
