//! `shmsync::testing`, tested under the default multi-threaded harness:
//! the module's own behaviour (names, cleanup after a panic, the watchdog,
//! child failures as data, the sweep), and the crate's own kill scenarios
//! written on it (creator killed at every `InitStep`, a transfer killed at
//! every point, the lock × state table, a soak).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use shmsync::testing::{self, init_point, ChildError, InitStep, Seen, TestName};
use shmsync::{Error, ShmCell, ShmSafe};

/// A transfer ledger: `a + b == A0` and `b == n` whenever the lock is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Ledger {
    a: u64,
    b: u64,
    n: u64,
}
// SAFETY: three integers, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Ledger {
    const TYPE_TAG: u64 = 0x7e57_1ed6;
}

const A0: u64 = 1_000;
const START: Ledger = Ledger { a: A0, b: 0, n: 0 };

/// Rolls a ledger back to its last committed transfer.
/// (Wrapping: the soak's child transfers millions of times.)
fn repair(l: &mut Ledger) {
    l.a = A0.wrapping_sub(l.n);
    l.b = l.n;
}

fn consistent(l: &Ledger) -> bool {
    l.a.wrapping_add(l.b) == A0 && l.b == l.n
}

/// Whether `pid` is gone (or is some other process that reused the
/// number): not a zombie or a live process of ours.
fn not_our_child(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let after = &stat[stat.rfind(')').expect("stat has a ')'") + 2..];
            let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
            ppid != std::process::id()
        }
    }
}

// ---------------------------------------------------------------- names

#[test]
fn names_are_unique_across_threads_and_processes() {
    let other = testing::child!(|_ctx| {
        for _ in 0..100 {
            let n = TestName::new("u");
            println!("{}", n.as_str());
        }
    });
    let names: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..1000)
                        .map(|_| TestName::new("u").as_str().to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: HashSet<String> = names.into_iter().flatten().collect();
    assert_eq!(all.len(), 8000, "8 threads × 1,000 names, all distinct");
    let ended = other.run().unwrap();
    let theirs: Vec<&str> = ended
        .stdout
        .lines()
        .filter(|l| l.starts_with('/'))
        .collect();
    assert_eq!(theirs.len(), 100);
    for n in theirs {
        assert!(all.insert(n.to_string()), "{n} made in two processes");
        assert!(n.len() - 1 + "sem.".len() <= 251);
    }
}

#[test]
fn the_guard_cleans_up_after_a_panicking_test() {
    let doomed = testing::child!("doomed test", |_ctx| {
        let name = TestName::new("doomed");
        let _cell = ShmCell::<Ledger>::create(&name, START).unwrap();
        let sem = format!("/dev/shm/sem.{}", &name[1..]);
        std::fs::write(&sem, b"").unwrap();
        assert!(Path::new(&name.path()).exists() && Path::new(&sem).exists());
        panic!("deliberate failure after making {name} .");
    });
    let err = doomed.run().unwrap_err();
    let ChildError::Panicked { message, .. } = &err else {
        panic!("expected a panic, got {err}");
    };
    let name = message
        .split("making ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("the name is in the message");
    assert!(name.starts_with("/shmsync-t-"), "{name}");
    for path in [
        format!("/dev/shm{name}"),
        format!("/dev/shm/sem.{}", &name[1..]),
    ] {
        assert!(!Path::new(&path).exists(), "{path} survived the panic");
    }
}

// ---------------------------------------------------- child failures as data

#[test]
fn a_child_that_never_reaches_its_point_fails_within_its_bound() {
    let stuck = testing::child!(|_ctx| {
        testing::point("waiting for a wake-up that never comes");
        loop {
            std::thread::park();
        }
    });
    let mut child = stuck
        .command()
        .stop_at("after the wake-up")
        .spawn()
        .unwrap();
    // Started (bounded by the default bound); from here on, a short bound.
    child
        .wait_point("waiting for a wake-up that never comes")
        .unwrap();
    child.set_bound(Duration::from_millis(200));
    let err = child.wait_stopped().unwrap_err();
    match &err {
        ChildError::Hung {
            waiting_for,
            last_point,
            ..
        } => {
            assert!(waiting_for.contains("after the wake-up"), "{err}");
            assert_eq!(
                last_point.as_deref(),
                Some("\"waiting for a wake-up that never comes\"")
            );
        }
        other => panic!("expected Hung, got {other}"),
    }
    assert!(err.to_string().starts_with("watchdog: "), "{err}");
    assert!(not_our_child(child.pid()), "the hung child was reaped");
}

#[test]
fn a_child_that_ends_early_names_the_points_it_reached() {
    let short = testing::child!(|_ctx| {
        testing::point("one");
        testing::point("two");
    });
    match short.kill_at("three") {
        Err(ChildError::NotReached { point, seen, .. }) => {
            assert_eq!(point, "three");
            assert_eq!(seen, ["one", "two"]);
        }
        other => panic!("expected NotReached, got {other:?}"),
    }
}

#[test]
fn a_child_panic_surfaces_its_message() {
    let panicky = testing::child!("panicky", |ctx| {
        eprintln!("about to check the ledger");
        let off: u64 = ctx.arg(0).parse().unwrap();
        assert_eq!(off, 0, "the ledger is off by {off}");
    });
    let err = panicky.arg("3").run().unwrap_err();
    match &err {
        ChildError::Panicked {
            message, stderr, ..
        } => {
            assert!(message.contains("the ledger is off by 3"), "{message}");
            assert!(message.contains("tests/testing.rs:"), "location: {message}");
            assert!(stderr.contains("about to check the ledger"), "{stderr}");
        }
        other => panic!("expected Panicked, got {other}"),
    }
    // Debug is the message, so `.unwrap()` shows it.
    let debug = format!("{err:?}");
    assert!(
        debug.contains("\"panicky\"") && debug.contains("off by 3"),
        "{debug}"
    );
}

#[test]
fn a_child_exit_status_is_a_failure() {
    let exiting = testing::child!("exiting", |_ctx| {
        std::process::exit(7);
    });
    match exiting.run() {
        Err(ChildError::Failed { status, .. }) => assert_eq!(status, "exit status 7"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// A `child!` outside the test's own body names no test: the re-run binary
/// never reaches it, and that is reported, not mistaken for success.
fn child_in_a_helper() -> testing::ChildSpec {
    testing::child!(|_ctx| {})
}

#[test]
fn a_child_declared_outside_the_test_is_reported_as_not_run() {
    match child_in_a_helper().run() {
        Err(e @ ChildError::NotRun { .. }) => {
            assert!(e.to_string().contains("--exact child_in_a_helper"), "{e}")
        }
        other => panic!("expected NotRun, got {other:?}"),
    }
}

#[test]
fn parent_code_before_child_is_caught_in_the_child() {
    let misplaced = TestName::new("misplaced");
    let late = testing::child!(|_ctx| {});
    let err = late.run().unwrap_err();
    assert_eq!(err.kind(), "NotRun", "{err}");
    assert!(err.to_string().contains("before the child's code"), "{err}");
    drop(misplaced);
}

#[test]
fn killing_a_child_kills_what_it_started() {
    let parent_of_sleep = testing::child!(|_ctx| {
        // Never waited for on purpose: it must die with the child's group.
        #[allow(clippy::zombie_processes)]
        let sleeper = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        testing::point(&format!("started {}", sleeper.id()));
        testing::point("hold");
    });
    let ended = parent_of_sleep.kill_at("hold").unwrap();
    let started = &ended.points[0];
    let pid: u32 = started.strip_prefix("started ").unwrap().parse().unwrap();
    // The grandchild was SIGKILLed with the group; it is gone once the
    // init process reaps it (or a zombie until then) — a bounded wait.
    let gone = |pid: u32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 2..].chars().next();
            state == Some('Z') || state == Some('X') || !s.contains("(sleep)")
        }
    };
    let deadline = std::time::Instant::now() + testing::default_bound();
    while !gone(pid) {
        assert!(std::time::Instant::now() < deadline, "sleep {pid} survived");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A test that panics while its own child is stopped at a point: the
/// child is killed and reaped as the test unwinds. (The panicking test is
/// itself run as a child, with a second role for its grandchild.)
#[test]
fn a_test_that_panics_with_a_stopped_child_leaves_no_process() {
    let parked = testing::child!("parked", |_ctx| {
        testing::point("parked");
    });
    let failing = testing::child!("failing test", |_ctx| {
        let mut child = parked.command().stop_at("parked").spawn().unwrap();
        child.wait_stopped().unwrap();
        panic!("failing with child {} stopped .", child.pid());
    });
    let err = failing.run().unwrap_err();
    let ChildError::Panicked { message, .. } = &err else {
        panic!("expected a panic, got {err}");
    };
    let pid: u32 = message
        .split("child ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("the pid is in the message");
    // Reaped by its parent before that exited: the pid names nothing (or,
    // improbably, a new process that is not a test binary's zombie).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || !stat.contains(") Z "), "{stat}");
}

/// A child that writes far more than a pipe holds while the test waits
/// for a lock (not on the child): its output is drained all the time, so
/// it never blocks on a full pipe while holding the lock.
#[test]
fn a_chatty_child_never_blocks_on_its_pipes() {
    let chatty = testing::child!(|ctx| {
        let cell = ShmCell::<Ledger>::open(ctx.arg(0)).unwrap();
        let mut l = cell.lock().unwrap();
        testing::point("locked");
        let line = "x".repeat(99);
        for i in 0..10_000 {
            eprintln!("{line}");
            println!("{line}");
            testing::point(&format!("chatter {}", i % 10));
        }
        l.n = 7;
    });
    let name = TestName::new("chatty");
    let cell = ShmCell::<Ledger>::create(&name, START).unwrap();
    let mut child = chatty.arg(&name).spawn().unwrap();
    child.wait_point("locked").unwrap();
    // ~1 MB on each of stdout and stderr and 10,000 reports, all written
    // while the child holds the lock this thread waits for.
    let n = cell
        .lock_timeout(testing::default_bound())
        .expect("the child released")
        .n;
    assert_eq!(n, 7);
    let ended = child.wait().unwrap();
    assert_eq!(ended.points.len(), 1 + 10_000);
    let lines = |out: &str| out.lines().filter(|l| *l == "x".repeat(99)).count();
    assert_eq!(lines(&ended.stdout), 10_000);
    assert_eq!(lines(&ended.stderr), 10_000);
}

// ------------------------------------------------------------------ sweep

#[test]
fn the_sweep_visits_every_declared_point_exactly_once() {
    let walker = testing::child!(|_ctx| {
        testing::point("a");
        for _ in 0..3 {
            testing::point("b");
        }
        testing::point("c");
    });
    let mut runs = 0;
    let report = walker.sweep().expect_points(["a", "b", "c"]).run(|run| {
        runs += 1;
        let ended = run.child().run()?;
        Ok::<_, ChildError>((run.point().map(str::to_string), ended.killed_at))
    });
    report.assert_ok();
    assert_eq!(runs, 1 + 3, "one discovery run, then one per point");
    assert_eq!(report.points(), ["a", "b", "c"]);
    for o in &report.outcomes {
        let (asked, killed_at) = o.result.as_ref().unwrap();
        assert_eq!(asked.as_deref(), Some(o.point.as_str()));
        assert_eq!(killed_at.as_deref(), Some(o.point.as_str()));
    }
    assert_eq!(report.completed.as_ref().unwrap(), &(None, None));

    let every = walker
        .sweep()
        .every_occurrence()
        .run(|run| run.child().run().map(|e| e.points.len()));
    every.assert_ok();
    let targets: Vec<(&str, u32)> = every
        .outcomes
        .iter()
        .map(|o| (o.point.as_str(), o.occurrence))
        .collect();
    assert_eq!(targets, [("a", 1), ("b", 1), ("b", 2), ("b", 3), ("c", 1)]);
    // Killed at the K-th point reached, the child reported exactly K points.
    let reached: Vec<usize> = every
        .outcomes
        .iter()
        .map(|o| *o.result.as_ref().unwrap())
        .collect();
    assert_eq!(reached, [1, 2, 3, 4, 5]);
}

#[test]
fn a_sweep_reports_the_failing_point_and_a_changed_point_list() {
    let walker = testing::child!(|_ctx| {
        testing::point("x");
        testing::point("y");
    });
    let report = walker.sweep().expect_points(["x"]).run(|run| {
        run.child().run().map_err(|e| e.to_string())?;
        if run.point() == Some("y") {
            return Err("recovery failed at y".to_string());
        }
        Ok(())
    });
    assert!(!report.is_ok());
    assert_eq!(report.points(), ["x", "y"]);
    assert!(report.outcomes[0].result.is_ok());
    assert_eq!(
        report.outcomes[1].result.as_ref().unwrap_err(),
        "\"recovery failed at y\""
    );
    let text = report.to_string();
    assert!(text.contains("expects [\"x\"]"), "{text}");
    assert!(text.contains("FAIL  \"y\""), "{text}");
}

// ------------------------------------- the crate's own kill scenarios

/// The init-race crash points: a creator killed after each `InitStep`.
/// At `Opened` the object has no name yet (nothing is left: `NotFound`);
/// later, before `Published`, `open` reports `AbandonedInit` and `open_or_create`
/// takes the segment over with its own value; at `Published` (and when the
/// creator finishes) the creator's value is there.
#[test]
fn a_creator_killed_at_every_init_step_is_recovered() {
    let creator = testing::child!("creator", |ctx| {
        testing::points_at_init_steps();
        let cell = ShmCell::<Ledger>::create(ctx.arg(0), Ledger { a: 1, b: 2, n: 3 }).unwrap();
        drop(cell);
    });
    let steps: Vec<String> = InitStep::ALL.iter().map(|s| init_point(*s)).collect();
    let report = creator.sweep().expect_points(&steps).run(|run| {
        let name = TestName::new("init");
        run.child().arg(&name).run().map_err(|e| e.to_string())?;
        let opened = match ShmCell::<Ledger>::open(&name) {
            Ok(_) => "Ok",
            Err(Error::AbandonedInit { .. }) => "AbandonedInit",
            Err(Error::NotFound { .. }) => "NotFound",
            Err(e) => return Err(format!("open: {e}")),
        };
        let taker = Ledger { a: 9, b: 9, n: 9 };
        let cell = ShmCell::<Ledger>::open_or_create(&name, taker).map_err(|e| e.to_string())?;
        let seen = testing::recover(&cell, |_| {}).map_err(|e| e.to_string())?;
        Ok((opened, seen))
    });
    report.assert_ok();
    let created = Ledger { a: 1, b: 2, n: 3 };
    let taken = Ledger { a: 9, b: 9, n: 9 };
    assert_eq!(
        report.completed.as_ref().unwrap(),
        &("Ok", Seen::Clean(created))
    );
    for (point, seen) in report.values() {
        let expected = if point == init_point(InitStep::Published) {
            ("Ok", Seen::Clean(created))
        } else if point == init_point(InitStep::Opened) {
            // Killed before its object got a name: nothing was left.
            ("NotFound", Seen::Clean(taken))
        } else {
            ("AbandonedInit", Seen::Clean(taken))
        };
        assert_eq!(*seen, expected, "killed at {point}");
    }
    assert_eq!(report.outcomes.len(), InitStep::ALL.len());
}

/// A transfer killed at each of its points: inside the critical section
/// the next locker gets `OwnerDied` with exactly the half-done value and
/// the repair restores the last committed state; after the unlock, the
/// lock is clean.
#[test]
fn a_transfer_killed_at_every_point_is_recovered() {
    let transfer = testing::child!("transfer", |ctx| {
        let cell = ShmCell::<Ledger>::open(ctx.arg(0)).unwrap();
        let mut l = cell.lock().unwrap();
        testing::point("locked");
        l.a -= 1;
        testing::point("debited");
        l.b += 1;
        testing::point("credited");
        l.n += 1;
        testing::point("committed");
        drop(l);
        testing::point("unlocked");
    });
    let report = transfer
        .sweep()
        .expect_points(["locked", "debited", "credited", "committed", "unlocked"])
        .run(|run| -> Result<_, Box<dyn std::error::Error>> {
            let name = TestName::new("transfer");
            let cell = ShmCell::<Ledger>::create(&name, START)?;
            run.child().arg(&name).run()?;
            let seen = testing::recover(&cell, repair)?;
            assert!(consistent(seen.value()), "{seen:?}");
            Ok(seen)
        });
    report.assert_ok();
    let done = Ledger {
        a: A0 - 1,
        b: 1,
        n: 1,
    };
    let died = |found| Seen::OwnerDied {
        found,
        repaired: if found == done { done } else { START },
    };
    let expected = [
        ("locked", died(START)),
        ("debited", died(Ledger { a: A0 - 1, ..START })),
        (
            "credited",
            died(Ledger {
                a: A0 - 1,
                b: 1,
                n: 0,
            }),
        ),
        ("committed", died(done)),
        ("unlocked", Seen::Clean(done)),
    ];
    assert_eq!(
        report.values(),
        expected.iter().map(|(p, s)| (*p, s)).collect::<Vec<_>>()
    );
    assert_eq!(report.completed.as_ref().unwrap(), &Seen::Clean(done));
}

/// The lock × state table, rows "held by a live process" and "holder
/// killed", for every acquire path.
#[test]
fn lock_state_table_held_then_killed() {
    let holder = testing::child!("holder", |ctx| {
        let cell = ShmCell::<Ledger>::open(ctx.arg(0)).unwrap();
        let mut l = cell.lock().unwrap();
        l.a -= 1;
        testing::point("holding");
        l.b += 1;
        l.n += 1;
    });
    let name = TestName::new("table");
    let cell = ShmCell::<Ledger>::create(&name, START).unwrap();

    // Held by a live process: try → WouldBlock, timed → TimedOut; released → Ok.
    let mut live = holder.arg(&name).stop_at("holding").spawn().unwrap();
    live.wait_stopped().unwrap();
    assert_eq!(cell.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    let timed = cell.lock_timeout(Duration::from_millis(50));
    assert_eq!(timed.err().map(|e| e.kind()), Some("TimedOut"));
    live.resume().unwrap();
    let ended = live.wait().unwrap();
    assert!(!ended.killed);
    let one = Ledger {
        a: A0 - 1,
        b: 1,
        n: 1,
    };
    assert_eq!(*cell.lock().unwrap(), one);

    // Killed while holding: every acquire path reports OwnerDied.
    type Op = fn(&ShmCell<Ledger>) -> bool;
    let ops: [(&str, Op); 3] = [
        ("lock", |c| {
            c.lock()
                .err()
                .and_then(|e| e.into_owner_died())
                .map(repair_guard)
                .is_some()
        }),
        ("try_lock", |c| {
            c.try_lock()
                .err()
                .and_then(|e| e.into_owner_died())
                .map(repair_guard)
                .is_some()
        }),
        ("lock_timeout", |c| {
            c.lock_timeout(testing::default_bound())
                .err()
                .and_then(|e| e.into_owner_died())
                .map(repair_guard)
                .is_some()
        }),
    ];
    for (op, owner_died) in ops {
        holder.arg(&name).kill_at("holding").unwrap();
        assert!(owner_died(&cell), "{op} after the holder was killed");
        assert_eq!(
            *cell.lock().unwrap(),
            one,
            "{op}: repaired to the last commit"
        );
    }
}

fn repair_guard(mut g: shmsync::ShmGuard<'_, Ledger>) {
    repair(&mut g);
    g.make_consistent();
}

// ----------------------------- loops, in parallel with the tests above

/// Twenty kills at a fixed point in a loop, while the other tests of this
/// binary run on other threads: each one recovered exactly.
#[test]
fn twenty_kills_in_a_loop_under_the_parallel_harness() {
    let transfer = testing::child!(|ctx| {
        let cell = ShmCell::<Ledger>::open(ctx.arg(0)).unwrap();
        let mut l = cell.lock().unwrap();
        l.a -= 1;
        testing::point("debited");
        l.b += 1;
        l.n += 1;
    });
    let name = TestName::new("loop20");
    let cell = ShmCell::<Ledger>::create(&name, START).unwrap();
    for cycle in 0..20 {
        let ended = transfer.arg(&name).kill_at("debited").unwrap();
        assert_eq!(ended.killed_at.as_deref(), Some("debited"), "cycle {cycle}");
        let seen = testing::recover(&cell, repair).unwrap();
        assert_eq!(
            seen,
            Seen::OwnerDied {
                found: Ledger { a: A0 - 1, ..START },
                repaired: START
            },
            "cycle {cycle}"
        );
    }
    // And once to the end: the cell still works.
    transfer.arg(&name).run().unwrap();
    assert_eq!(
        *cell.lock().unwrap(),
        Ledger {
            a: A0 - 1,
            b: 1,
            n: 1
        }
    );
}

/// Soak: a child transfers in a loop and is killed at a random moment;
/// after each kill the invariant holds after recovery and no committed
/// transfer is lost (`n` never goes back).
#[test]
fn soak_random_kills_keep_the_invariant() {
    let spinner = testing::child!(|ctx| {
        let cell = ShmCell::<Ledger>::open(ctx.arg(0)).unwrap();
        testing::point("started");
        loop {
            let mut l = cell.lock().expect("the child finds a consistent lock");
            l.a = l.a.wrapping_sub(1);
            std::hint::black_box(&mut *l);
            l.b = l.b.wrapping_add(1);
            l.n += 1;
        }
    });
    let name = TestName::new("soak");
    let cell = ShmCell::<Ledger>::create(&name, START).unwrap();
    let (mut owner_died, mut last_n) = (0, 0);
    for cycle in 0..30 {
        let ended = spinner
            .arg(&name)
            .kill_within("started", Duration::from_millis(3))
            .unwrap();
        assert!(
            ended.killed,
            "cycle {cycle}: the spinner never ends by itself"
        );
        let seen = testing::recover(&cell, repair).unwrap();
        owner_died += seen.owner_died() as u32;
        let now = *seen.value();
        assert!(consistent(&now), "cycle {cycle}: {seen:?}");
        assert!(now.n >= last_n, "cycle {cycle}: lost transfers");
        last_n = now.n;
    }
    println!("soak: 30 random kills, {owner_died} inside the critical section");
}

// ------------------------------------------------------- grandchildren

/// The protocol's variables, which only a child started by `child!` may see.
const PROTOCOL_VARS: [&str; 4] = [
    "SHMSYNC_TESTING_CHILD",
    "SHMSYNC_TESTING_FDS",
    "SHMSYNC_TESTING_STOP",
    "SHMSYNC_TESTING_ARGS",
];

/// Run on its own, an ordinary test. Run as a grandchild (by the test
/// below), it must also be an ordinary test: no protocol variable, no
/// adopted descriptor, and `TestName::new` / `point` work as in any test.
#[test]
fn grandchild_probe_sees_no_protocol() {
    for v in PROTOCOL_VARS {
        assert!(std::env::var_os(v).is_none(), "{v} reached this process");
    }
    let name = TestName::new("probe");
    testing::point("probe");
    assert!(name.leftovers().is_empty());
}

/// A child's code that starts programs — a shell, and this test binary
/// again — hands them nothing of the channel: before the fix, the
/// grandchild test binary failed with "malformed SHMSYNC_TESTING_FDS" (the
/// listed descriptors were close-on-exec, hence closed) or adopted
/// whatever had reused those numbers.
#[test]
fn programs_started_by_a_child_do_not_inherit_the_channel() {
    let starter = testing::child!(|_ctx| {
        // The child's own environment is already clean.
        for v in PROTOCOL_VARS {
            assert!(std::env::var_os(v).is_none(), "{v} left in the child");
        }
        testing::point("started");
        let env = std::process::Command::new("/usr/bin/env").output().unwrap();
        let env = String::from_utf8_lossy(&env.stdout);
        assert!(
            !env.contains("SHMSYNC_TESTING_"),
            "a program started by the child saw: {env}"
        );
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "grandchild_probe_sees_no_protocol",
                "--nocapture",
                "--test-threads=1",
            ])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "grandchild test binary: {text}");
        assert!(text.contains("1 passed"), "grandchild ran no test: {text}");
        println!("grandchild ok");
    });
    let ended = starter.run().unwrap();
    assert_eq!(ended.points, ["started"]);
    assert!(ended.stdout.contains("grandchild ok"), "{}", ended.stdout);
}
