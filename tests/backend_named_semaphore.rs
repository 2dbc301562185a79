//! The backend suite for `ShmCell<T, NamedSemaphore>`, and the semaphore
//! backend's own cases: a holder killed while others sleep, waiters racing
//! for a dead holder's lock, zombies, owner death of an owner-died holder,
//! contended kill cycles, the companion `sem.NAME` (made before Ready, never
//! made by `open`, removed by a default-typed unlink, stale one replaced),
//! names, threads, fork.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::suite::{consistent, ledger, repair, spawn_holder, Ledger, SharedCounters, A0};
use common::{Child, TestName, BOUND};
use shmsync::{Error, LockError, NamedSemaphore, ShmCell};

type Cell = ShmCell<Ledger, NamedSemaphore>;

fn main() {
    let suite = backend_suite!(NamedSemaphore);
    let own: [(&str, common::TestFn); 18] = [
        (
            "holder_whose_main_thread_exited_is_alive",
            holder_whose_main_thread_exited_is_alive,
        ),
        (
            "holder_hidden_by_hidepid_is_alive",
            holder_hidden_by_hidepid_is_alive,
        ),
        (
            "holder_killed_while_waiter_sleeps",
            holder_killed_while_waiter_sleeps,
        ),
        (
            "sleeping_waiters_race_for_dead_holder",
            sleeping_waiters_race_for_dead_holder,
        ),
        (
            "try_lock_race_for_dead_holder",
            try_lock_race_for_dead_holder,
        ),
        ("zombie_holder_counts_as_dead", zombie_holder_counts_as_dead),
        (
            "owner_died_holder_killed_again",
            owner_died_holder_killed_again,
        ),
        ("contended_kill_loop", contended_kill_loop),
        ("semaphore_exists_when_ready", semaphore_exists_when_ready),
        (
            "abandoned_init_is_taken_over_with_fresh_semaphore",
            abandoned_init_is_taken_over_with_fresh_semaphore,
        ),
        (
            "default_typed_unlink_removes_semaphore",
            default_typed_unlink_removes_semaphore,
        ),
        (
            "foreign_semaphore_at_create_is_kept",
            foreign_semaphore_at_create_is_kept,
        ),
        (
            "open_never_creates_the_semaphore",
            open_never_creates_the_semaphore,
        ),
        ("other_kind_is_incompatible", other_kind_is_incompatible),
        (
            "name_limit_checked_before_create",
            name_limit_checked_before_create,
        ),
        ("threads_exclude_each_other", threads_exclude_each_other),
        (
            "fork_with_guard_child_is_not_the_holder",
            fork_with_guard_child_is_not_the_holder,
        ),
        (
            "forgotten_guard_then_exit_is_owner_died",
            forgotten_guard_then_exit_is_owner_died,
        ),
    ];
    let all: Vec<_> = suite.into_iter().chain(own).collect();
    common::run(&all);
}

fn sem_path(name: &TestName) -> String {
    format!("/dev/shm/sem.{}", &name.as_str()[1..])
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

/// A holder is killed while another process already sleeps in `lock()`
/// (no timeout): the sleeper notices within its slice and comes back with
/// OwnerDied and the dead holder's write — it does not hang (the Child
/// bound turns a hang into a failure).
fn holder_killed_while_waiter_sleeps() {
    let name = TestName::new("sleeper");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let mut holder = spawn_holder::<NamedSemaphore>(name.as_str());
    let n = name.0.clone();
    let mut waiter = Child::spawn(move |_| {
        let c = Cell::open(&n).unwrap();
        match c.lock() {
            Err(LockError::OwnerDied(mut g)) => {
                assert_eq!(g.a, 1, "the dead holder's write is visible");
                repair(&mut g);
                g.make_consistent();
            }
            other => panic!("waiter got {:?}", other.map(|_| ())),
        };
    });
    await_sleepers(&cell, 1);
    assert_eq!(cell.holder_pid(), Some(holder.pid));
    holder.kill();
    waiter.join();
    let g = cell.try_lock().expect("clean after the waiter's repair");
    assert!(consistent(&g));
}

/// Two processes sleep in `lock_timeout` when the holder is killed (and
/// are woken together): exactly one gets OwnerDied, the other then gets the
/// repaired value cleanly. Repeated, to give the takeover race many chances.
fn sleeping_waiters_race_for_dead_holder() {
    const ROUNDS: usize = 20;
    let counters = SharedCounters::new();
    for round in 0..ROUNDS {
        let name = TestName::new("race");
        let cell = Cell::create(name.as_str(), ledger()).unwrap();
        let mut holder = spawn_holder::<NamedSemaphore>(name.as_str());
        let (died, clean) = (2 * round, 2 * round + 1);
        let base = counters.get(0) as *const _ as usize;
        let waiters: Vec<Child> = (0..2)
            .map(|_| {
                let n = name.0.clone();
                Child::spawn(move |_| {
                    // SAFETY: the shared page is mapped in the child (fork).
                    let ctr = |i: usize| unsafe {
                        &*(base as *const std::sync::atomic::AtomicU64).add(i)
                    };
                    let c = Cell::open(&n).unwrap();
                    match c.lock_timeout(BOUND) {
                        Err(LockError::OwnerDied(mut g)) => {
                            ctr(died).fetch_add(1, Ordering::SeqCst);
                            repair(&mut g);
                            g.make_consistent();
                        }
                        Ok(g) => {
                            assert!(consistent(&g));
                            ctr(clean).fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("waiter: {e}"),
                    };
                })
            })
            .collect();
        await_sleepers(&cell, 2);
        holder.kill();
        // Wake both at once so that they really race (rather than finding
        // the death one slice apart).
        let sem = NamedSemaphore::open(name.as_str()).unwrap();
        sem.post().unwrap();
        sem.post().unwrap();
        for mut w in waiters {
            w.join();
        }
        assert_eq!(
            counters.get(died).load(Ordering::SeqCst),
            1,
            "round {round}: exactly one OwnerDied"
        );
        assert_eq!(counters.get(clean).load(Ordering::SeqCst), 1);
    }
}

/// Two processes call `try_lock` at once on a dead holder's lock: exactly
/// one gets OwnerDied; the other sees the winner holding (WouldBlock).
fn try_lock_race_for_dead_holder() {
    for round in 0..20 {
        let name = TestName::new("tryrace");
        let _cell = Cell::create(name.as_str(), ledger()).unwrap();
        spawn_holder::<NamedSemaphore>(name.as_str()).kill();
        let mut racers: Vec<Child> = (0..2)
            .map(|_| {
                let n = name.0.clone();
                let mut c = Child::spawn(move |ctx| {
                    let c = Cell::open(&n).unwrap();
                    ctx.reached_and_wait(b'R');
                    match c.try_lock() {
                        Err(LockError::OwnerDied(mut g)) => {
                            ctx.reached_and_wait(b'O');
                            repair(&mut g);
                            g.make_consistent();
                        }
                        Err(LockError::WouldBlock) => {
                            ctx.reached_and_wait(b'B');
                        }
                        other => panic!("racer got {:?}", other.map(|_| ())),
                    };
                });
                assert_eq!(c.expect_reached(), b'R');
                c
            })
            .collect();
        for r in racers.iter_mut() {
            r.command(b'G');
        }
        let mut got: Vec<u8> = racers.iter_mut().map(|r| r.expect_reached()).collect();
        got.sort();
        assert_eq!(got, b"BO", "round {round}: one OwnerDied, one WouldBlock");
        for r in racers.iter_mut() {
            r.command(b'G');
            r.join();
        }
    }
}

/// A holder killed but not yet reaped is a zombie — `kill(pid, 0)` still
/// succeeds on it — and must count as dead, on every acquire path.
fn zombie_holder_counts_as_dead() {
    for op in common::suite::OPS {
        let name = TestName::new("zombie");
        let cell = Cell::create(name.as_str(), ledger()).unwrap();
        let mut holder = spawn_holder::<NamedSemaphore>(name.as_str());
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(holder.pid as i32, libc::SIGKILL) }, 0);
        // Wait until it has exited, without reaping it (WNOWAIT).
        // SAFETY: an all-zero siginfo_t is valid storage for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting on our own child with a valid out-pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                holder.pid,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0);
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", holder.pid)).unwrap();
        let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
        assert_eq!(state, Some("Z"), "the holder is a zombie");
        // SAFETY: probing our own (zombie) child.
        assert_eq!(unsafe { libc::kill(holder.pid as i32, 0) }, 0);
        match common::suite::attempt(&cell, op) {
            Err(LockError::OwnerDied(mut g)) => {
                assert_eq!(g.a, 1);
                repair(&mut g);
                g.make_consistent();
            }
            other => panic!("{op:?} on a zombie's lock: {:?}", other.map(|_| ())),
        }
        assert!(cell.try_lock().is_ok());
        holder.wait();
    }
}

/// The process that took a dead holder's lock over (OwnerDied) dies too
/// before `make_consistent`: the next locker gets OwnerDied again.
fn owner_died_holder_killed_again() {
    let name = TestName::new("twice");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    spawn_holder::<NamedSemaphore>(name.as_str()).kill();
    let n = name.0.clone();
    let mut second = Child::spawn(move |ctx| {
        let c = Cell::open(&n).unwrap();
        let mut g = c.lock().err().and_then(LockError::into_owner_died).unwrap();
        g.b = 9;
        ctx.reached_and_wait(b'O');
        drop(g);
    });
    assert_eq!(second.expect_reached(), b'O');
    second.kill();
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

/// Two processes contend for the lock while one of them is SIGKILLed at a
/// random moment and replaced, cycle after cycle. Mutual exclusion is
/// checked inside the critical section (a flag that must be clear on
/// entry), and the ledger invariant after every kill.
fn contended_kill_loop() {
    const CYCLES: u32 = 100;
    let name = TestName::new("contend");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let counters = SharedCounters::new();
    // 0: inside flag, 1: exclusion violations, 2: owner-died recoveries by
    // children, 3: committed transfers.
    let base = counters.get(0) as *const _ as usize;
    let spawn = |name: String, spin: u32| {
        Child::spawn(move |ctx| {
            // SAFETY: the shared page is mapped in the child (fork).
            let ctr = |i: usize| unsafe { &*(base as *const std::sync::atomic::AtomicU64).add(i) };
            let c = Cell::open(&name).unwrap();
            ctx.reached(b'S');
            loop {
                let mut g = match c.lock() {
                    Ok(g) => g,
                    Err(LockError::OwnerDied(mut g)) => {
                        ctr(2).fetch_add(1, Ordering::SeqCst);
                        // The dead holder may have left the flag set.
                        ctr(0).store(0, Ordering::SeqCst);
                        repair(&mut g);
                        g.make_consistent();
                        g
                    }
                    Err(e) => panic!("child lock: {e}"),
                };
                if ctr(0).swap(1, Ordering::SeqCst) != 0 {
                    ctr(1).fetch_add(1, Ordering::SeqCst);
                }
                g.a -= 1;
                for _ in 0..spin {
                    std::hint::spin_loop();
                }
                g.b += 1;
                g.n += 1;
                ctr(3).store(g.n, Ordering::SeqCst);
                ctr(0).store(0, Ordering::SeqCst);
                drop(g);
            }
        })
    };
    let mut rng = common::Rng::new(0xc0de ^ std::process::id() as u64);
    let mut kids: Vec<Child> = (0..2).map(|i| spawn(name.0.clone(), 50 * i)).collect();
    for k in kids.iter_mut() {
        assert_eq!(k.expect_reached(), b'S');
    }
    for cycle in 0..CYCLES {
        let target = counters.get(3).load(Ordering::SeqCst) + 1 + rng.below(30);
        let deadline = Instant::now() + BOUND;
        while counters.get(3).load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "cycle {cycle}: no progress");
            std::thread::yield_now();
        }
        let victim = rng.below(2) as usize;
        kids[victim].kill();
        kids[victim] = spawn(name.0.clone(), rng.below(300) as u32);
        assert_eq!(kids[victim].expect_reached(), b'S');
    }
    for k in kids.iter_mut() {
        k.kill();
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
        counters.get(1).load(Ordering::SeqCst),
        0,
        "two holders at once"
    );
    println!(
        "    contended kill loop: {CYCLES} kills, {} owner-died recoveries in children, {} transfers",
        counters.get(2).load(Ordering::SeqCst),
        g.n
    );
}

static SEM_AT_PUBLISH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static SEM_SEEN_AT_PUBLISH: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The semaphore exists before the segment is published Ready (checked
/// from the creator's Published hook), with the segment's mode whatever the
/// umask, and starts at 0.
fn semaphore_exists_when_ready() {
    let name = TestName::new("ready");
    SEM_AT_PUBLISH.set(sem_path(&name)).unwrap();
    shmsync::segment::set_init_hook(Some(|step| {
        if step == shmsync::segment::InitStep::Published {
            let exists = Path::new(SEM_AT_PUBLISH.get().unwrap()).exists();
            SEM_SEEN_AT_PUBLISH.store(exists, Ordering::SeqCst);
        }
    }));
    let opts = shmsync::CreateOptions::new().mode(0o640);
    // SAFETY: umask is process-wide; this test runs in its own process.
    let old = unsafe { libc::umask(0o077) };
    let cell = Cell::create_with(name.as_str(), ledger(), &opts);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    shmsync::segment::set_init_hook(None);
    let _cell = cell.unwrap();
    assert!(
        SEM_SEEN_AT_PUBLISH.load(Ordering::SeqCst),
        "sem.NAME before Ready"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sem_path(&name))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "the semaphore gets the segment's mode");
    let sem = NamedSemaphore::open(name.as_str()).unwrap();
    assert_eq!(sem.value().unwrap(), 0, "waiters' semaphore starts at 0");
}

/// A creator that dies after making the semaphore but before Ready leaves
/// an abandoned segment and a semaphore: `open` reports AbandonedInit,
/// `open_or_create` takes the segment over with a fresh semaphore, and the
/// lock works across processes.
fn abandoned_init_is_taken_over_with_fresh_semaphore() {
    let name = TestName::new("abandon");
    let n = name.0.clone();
    let mut creator = Child::spawn(move |_| {
        shmsync::segment::set_init_hook(Some(|step| {
            if step == shmsync::segment::InitStep::ValueWritten {
                // SAFETY: dying on purpose, mid-initialisation.
                unsafe { libc::_exit(7) };
            }
        }));
        let _ = Cell::create(&n, ledger());
    });
    let status = creator.wait();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7);
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
    let mut holder = spawn_holder::<NamedSemaphore>(name.as_str());
    assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    holder.command(b'R');
    assert_eq!(cell.lock().unwrap().a, 2);
    holder.join();
}

/// `ShmCell::<T>::unlink` — default-typed, i.e. for the robust mutex —
/// reads the lock kind from the header and removes `sem.NAME` too.
fn default_typed_unlink_removes_semaphore() {
    let name = TestName::new("unlink");
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
fn foreign_semaphore_at_create_is_kept() {
    let name = TestName::new("stale");
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

/// `open` checks the header first and never creates the semaphore: with
/// `sem.NAME` gone (damage: the Ready segment says it was made) `open` and
/// `open_or_create` report Corrupted — not NotFound, which would say there
/// is no cell — and leave none behind.
fn open_never_creates_the_semaphore() {
    let name = TestName::new("nosem");
    let _cell = Cell::create(name.as_str(), ledger()).unwrap();
    NamedSemaphore::unlink(name.as_str()).unwrap();
    assert!(matches!(
        Cell::open(name.as_str()),
        Err(Error::Corrupted { .. })
    ));
    assert!(matches!(
        Cell::open_or_create(name.as_str(), ledger()),
        Err(Error::Corrupted { .. })
    ));
    assert!(!Path::new(&sem_path(&name)).exists());
}

/// Opening with the other lock kind is Incompatible — in both directions —
/// and never touches (or creates) a semaphore.
fn other_kind_is_incompatible() {
    let name = TestName::new("kind");
    let _cell = Cell::create(name.as_str(), ledger()).unwrap();
    assert!(matches!(
        ShmCell::<Ledger>::open(name.as_str()),
        Err(Error::Incompatible {
            field: "lock_kind",
            ..
        })
    ));
    let other = TestName::new("kind2");
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

/// Cell names for this backend allow 251 bytes after '/' (`sem.` takes
/// four of the file name's 255); a longer one is refused before any object
/// is created.
fn name_limit_checked_before_create() {
    let base = TestName::new("");
    let pad = |len: usize| format!("{}{}", base.as_str(), "x".repeat(len - (base.0.len() - 1)));
    let ok = TestName(pad(251));
    assert_eq!(ok.0.len(), 252);
    let cell = Cell::create(ok.as_str(), ledger()).unwrap();
    drop(cell.lock().unwrap());
    let long = TestName(pad(252));
    for r in [
        Cell::create(long.as_str(), ledger()).err(),
        Cell::open_or_create(long.as_str(), ledger()).err(),
        Cell::open(long.as_str()).err(),
    ] {
        assert!(matches!(r, Some(Error::InvalidName { .. })), "{r:?}");
    }
    assert!(!Path::new(&long.path()).exists(), "no segment was created");
    // The default backend still takes it (255 allowed).
    let _m = ShmCell::<Ledger>::create(long.as_str(), ledger()).unwrap();
}

/// Threads of one process sharing a handle exclude each other.
fn threads_exclude_each_other() {
    let name = TestName::new("threads");
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

/// A process forked while its parent holds a guard drops its copy without
/// releasing; it is not the holder; the parent still is.
fn fork_with_guard_child_is_not_the_holder() {
    let name = TestName::new("fork");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let guard = cell.lock().unwrap();
    let (guard_ref, cell_ref) = (&guard, &cell);
    let parent = std::process::id();
    Child::spawn(move |_| {
        // SAFETY: the child owns a copy of the parent's memory; dropping its
        // copy of the guard is what unwinding through the frame would do.
        drop(unsafe { std::ptr::read(guard_ref) });
        assert_eq!(cell_ref.holder_pid(), Some(parent));
        // The child is another process: WouldBlock, not Deadlock.
        assert_eq!(
            cell_ref.try_lock().err().map(|e| e.kind()),
            Some("WouldBlock")
        );
    })
    .join();
    assert_eq!(cell.holder_pid(), Some(parent));
    drop(guard);
    assert_eq!(cell.holder_pid(), None);
}

/// A guard forgotten and the handle dropped: the lock stays held while the
/// process lives, and its exit makes the next locker get OwnerDied.
fn forgotten_guard_then_exit_is_owner_died() {
    let name = TestName::new("forget");
    let cell = Cell::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |ctx| {
        let c = Cell::open(&n).unwrap();
        let mut g = c.lock().unwrap();
        g.b = 3;
        std::mem::forget(g);
        drop(c);
        ctx.reached_and_wait(b'F');
    });
    assert_eq!(child.expect_reached(), b'F');
    assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    child.command(b'X'); // let it exit normally
    child.join();
    match cell.try_lock() {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.b, 3);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    };
}

type SemCell = ShmCell<Ledger, NamedSemaphore>;

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

/// A process whose main thread exited (its thread-group leader is a zombie
/// in `/proc/PID/stat`) while another of its threads holds the lock is
/// alive: nobody may take the lock over. Once the process is killed, the
/// next locker gets OwnerDied.
fn holder_whose_main_thread_exited_is_alive() {
    let name = TestName::new("zleader");
    let cell = SemCell::create(name.as_str(), ledger()).unwrap();
    let n = name.0.clone();
    let mut holder = Child::spawn(move |ctx| {
        let c: &'static SemCell = Box::leak(Box::new(SemCell::open(&n).unwrap()));
        let fd = ctx.report_fd();
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
        // SAFETY: one byte to the report pipe, then the raw exit(2) of this
        // (main) thread only — no unwinding, the other thread lives on.
        unsafe {
            libc::write(fd, [b'T'].as_ptr().cast(), 1);
            libc::syscall(libc::SYS_exit, 0);
        }
    });
    assert_eq!(holder.expect_reached(), b'T');
    let deadline = Instant::now() + BOUND;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", holder.pid)).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
        if state == 'Z' {
            break;
        }
        assert!(Instant::now() < deadline, "the main thread never exited");
        std::thread::yield_now();
    }
    expect_held(&cell, "leader exited, holder thread alive");
    holder.kill();
    match cell.lock_timeout(BOUND) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.a, 5);
            g.make_consistent();
        }
        other => panic!("after the kill: {:?}", other.map(|_| ())),
    };
}

/// Under a `/proc` mounted `hidepid=2`, another user's live holder has no
/// `/proc/PID` at all: it must still count as alive.
fn holder_hidden_by_hidepid_is_alive() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("    (needs root: two uids and a private /proc mount; not run)");
        return;
    }
    let name = TestName::new("hidepid");
    let opts = shmsync::CreateOptions::new().mode(0o666);
    let _cell = SemCell::create_with(name.as_str(), ledger(), &opts).unwrap();
    let n = name.0.clone();
    let mut holder = Child::spawn(move |ctx| {
        // SAFETY: dropping privileges in the child only.
        unsafe {
            assert_eq!(libc::setgid(65533), 0);
            assert_eq!(libc::setuid(65533), 0);
        }
        let c = SemCell::open(&n).unwrap();
        let _g = c.lock().unwrap();
        ctx.reached_and_wait(b'H');
    });
    assert_eq!(holder.expect_reached(), b'H');
    let (n, holder_pid) = (name.0.clone(), holder.pid);
    Child::spawn(move |_| {
        let proc_ = c"proc";
        // SAFETY: a private mount namespace for this child, then a /proc
        // that hides other users' processes; then drop privileges.
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
        let c = SemCell::open(&n).unwrap();
        expect_held(&c, "holder hidden by hidepid");
    })
    .join();
    holder.kill();
}
