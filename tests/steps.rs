//! Die at every step (issue 12, §8; Samba tdb's die-at-every-hook): a
//! child walks through every named step of shmsync's own paths (lock,
//! owner-death take-over, make_consistent, a two-write update, unlock, a
//! wait/notify round, unlink; and, in a second sweep, `inspect::clean`),
//! and is killed at each step in turn, for every backend. After each
//! death the test recovers the value and checks what recovery must
//! produce: whether the lock reports the owner death (exactly, where the
//! step decides it), the ledger invariant `a == b == n` after the repair,
//! no committed update lost, and no object left half-removed (the cell
//! still opens, or its name is gone; `unlink` and `open_or_create` work
//! afterwards; nothing is left in `/dev/shm`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmsync::inspect::{self, CleanAction};
use shmsync::segment::LockKind;
use shmsync::testing::{self, ChildCtx, ChildSpec, Ended, Seen, TestName};
use shmsync::{
    Error, FileLock, LockBackend, LockError, NamedSemaphore, RobustMutex, ShmCell, ShmSafe,
};

/// A ledger updated in two writes: `a` first, then `b` and `n` together
/// (the commit). Invariant after repair: `a == b == n` = commits.
/// `waiter` is the handshake of the wait/notify round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct Ledger {
    a: u64,
    b: u64,
    n: u64,
    waiter: u64,
}
// SAFETY: four integers, repr(C), every bit pattern is a valid Ledger.
unsafe impl ShmSafe for Ledger {}

/// The repair: roll back a first write that has no commit.
fn repair(v: &mut Ledger) {
    v.a = v.b;
}

/// The dier: takes the lock, makes the first write and dies there (the
/// walker starts with an owner death to take over and repair).
fn die_half_way<L: LockBackend>(ctx: &ChildCtx) {
    let cell = ShmCell::<Ledger, L>::open(ctx.arg(0)).unwrap();
    let mut g = cell.lock().unwrap();
    g.a += 1;
    testing::point("dier:half");
    unreachable!("killed at the point");
}

/// The walker: passes every step of its backend once (first occurrences
/// in a fixed order, apart from the wait/notify round's two threads).
fn walk<L: LockBackend>(ctx: &ChildCtx) {
    testing::points_at_crate_steps();
    let name = ctx.arg(0);
    let cell = Arc::new(ShmCell::<Ledger, L>::open(name).unwrap());
    // 1. Take over the dier's lock, repair, make consistent, unlock.
    match cell.lock() {
        Err(LockError::OwnerDied(mut g)) => {
            repair(&mut g);
            g.make_consistent();
        }
        Ok(g) => panic!("the dier's death was not reported: {:?}", *g),
        Err(e) => panic!("lock: {:?}", e.without_guard()),
    }
    // 2. One update in two writes.
    {
        let mut g = cell.lock().unwrap();
        g.a += 1;
        testing::point("ledger:first-write");
        g.b += 1;
        g.n += 1;
        testing::point("ledger:committed");
    }
    // 3. A wait/notify round: a thread waits for the second commit.
    let waiter = {
        let cell = Arc::clone(&cell);
        std::thread::spawn(move || {
            let mut g = cell.lock().unwrap();
            g.waiter = 1;
            let mut g = g.wait_while(|v| v.n < 2).unwrap();
            g.waiter = 2;
        })
    };
    // Once `waiter == 1` is seen under the lock, the waiter has registered
    // and released the lock (it holds the lock from writing 1 to the
    // release inside the wait).
    let deadline = Instant::now() + testing::default_bound();
    let mut g = loop {
        let g = cell.lock().unwrap();
        if g.waiter == 1 {
            break g;
        }
        drop(g);
        assert!(Instant::now() < deadline, "the waiter never waited");
        std::thread::sleep(Duration::from_millis(1));
    };
    g.a += 1;
    g.b += 1;
    g.n += 1;
    testing::point("ledger:committed");
    drop(g);
    cell.notify_one();
    waiter.join().unwrap();
    // 4. Remove the cell (companions, then the name).
    ShmCell::<Ledger, L>::unlink(name).unwrap();
}

/// What the next locker must be told after a death at a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    OwnerDied,
    Clean,
    /// Two threads of the walker run at this step: whether one of them
    /// holds the lock at the kill depends on the schedule.
    Either,
}

/// The expected outcome at the first occurrence of each step in `walk`.
fn expect(point: &str) -> Expect {
    use Expect::*;
    match point {
        // Taking over the dier's lock (first lock of the walker): the
        // dier's death is not repaired yet.
        "mutex:locked" | "flock:locked" | "flock:holder-recorded" | "flock:marked" => OwnerDied,
        "sem:holder-set" | "sem:owner-died-recorded" | "sem:holder-recorded" => OwnerDied,
        // Repaired but still held: the walker's own death is reported.
        "consistent:begin" | "consistent:done" | "unlock:begin" => OwnerDied,
        // FileLock: the marker says free; the flock goes with the process.
        "flock:marker-cleared" | "flock:unlocked" => Clean,
        // The holder word still names the dead walker's token.
        "sem:record-cleared" => OwnerDied,
        "sem:holder-cleared" | "unlock:released" => Clean,
        "ledger:first-write" | "ledger:committed" => OwnerDied,
        // The waiter holds the lock until its release inside the wait.
        "wait:registered" => OwnerDied,
        // The main thread may have taken the lock meanwhile (its poll).
        "wait:released" => Either,
        // Woken only by the notify, which comes after the main thread's
        // last unlock: nobody holds the lock.
        "wait:woken" | "wait:relock" => Clean,
        // The waiter may be back in the lock when the notifier dies.
        "notify:bumped" | "notify:woken" => Either,
        "unlink:companions-removed" => Clean,
        other => panic!("no expectation for point {other:?}"),
    }
}

/// One run: a fresh cell, the dier killed half-way, the walker run
/// (killed at this run's point, or to the end), then recovery and checks.
/// Returns what recovery saw.
fn walk_run<L: LockBackend>(
    dier: ChildSpec,
    run: &testing::SweepRun,
) -> Result<Seen<Ledger>, String> {
    let name = TestName::new("steps");
    let cell = ShmCell::<Ledger, L>::create(&name, Ledger::default()).map_err(|e| e.to_string())?;
    dier.arg(&name)
        .kill_at("dier:half")
        .map_err(|e| format!("{e:?}"))?;
    let ended = run.child().arg(&name).run().map_err(|e| format!("{e:?}"))?;
    let seen = testing::recover(&cell, repair).map_err(|e| format!("recover: {e:?}"))?;
    check_ledger(&ended, &seen)?;
    let want = match run.point() {
        None => Expect::Clean,
        Some(p) => expect(p),
    };
    match (want, seen.owner_died()) {
        (Expect::OwnerDied, false) => return Err(format!("expected OwnerDied, saw {seen:?}")),
        (Expect::Clean, true) => return Err(format!("expected a clean lock, saw {seen:?}")),
        _ => {}
    }
    check_name::<L>(&name, ended.killed, seen.value())?;
    Ok(seen)
}

/// The ledger after recovery: no committed update lost, at most the
/// uncommitted first write rolled back.
fn check_ledger(ended: &Ended, seen: &Seen<Ledger>) -> Result<(), String> {
    let commits = ended
        .points
        .iter()
        .filter(|p| *p == "ledger:committed")
        .count() as u64;
    let (found, now) = match seen {
        Seen::Clean(v) => (*v, *v),
        Seen::OwnerDied { found, repaired } => (*found, *repaired),
    };
    let ok_found =
        found.b == commits && found.n == commits && (found.a == commits || found.a == commits + 1);
    let ok_now = now.a == commits && now.b == commits && now.n == commits;
    if !(ok_found && ok_now) {
        return Err(format!(
            "{commits} commits reached, found {found:?}, after repair {now:?} (points {:?})",
            ended.points
        ));
    }
    Ok(())
}

/// The name after the run: a killed walker never removed the name (its
/// last step is before the name goes), so the cell must still open —
/// also after its companions went — and show the recovered value; a
/// finished walker removed it. Either way `unlink` and `open_or_create`
/// then work, and nothing is left in `/dev/shm`.
fn check_name<L: LockBackend>(name: &str, killed: bool, value: &Ledger) -> Result<(), String> {
    match ShmCell::<Ledger, L>::open(name) {
        Ok(c) if killed => {
            let v = *c
                .lock()
                .map_err(|e| format!("lock of a new handle: {:?}", e.without_guard()))?;
            if v != *value {
                return Err(format!("a new handle sees {v:?}, recovery left {value:?}"));
            }
            drop(c);
            ShmCell::<Ledger, L>::unlink(name).map_err(|e| format!("unlink: {e}"))?;
        }
        Ok(_) => return Err("the finished walker's unlink left the cell".into()),
        Err(Error::NotFound { .. }) if !killed => {}
        Err(e) => return Err(format!("open after the kill: {e}")),
    }
    let again = ShmCell::<Ledger, L>::open_or_create(name, Ledger::default())
        .map_err(|e| format!("open_or_create after removal: {e}"))?;
    if *again
        .lock()
        .map_err(|e| format!("{:?}", e.without_guard()))?
        != Ledger::default()
    {
        return Err("open_or_create found an old value after removal".into());
    }
    drop(again);
    ShmCell::<Ledger, L>::unlink(name).map_err(|e| format!("final unlink: {e}"))?;
    let left = leftovers(name);
    if !left.is_empty() {
        return Err(format!("left in /dev/shm: {left:?}"));
    }
    Ok(())
}

/// What is in `/dev/shm` under `name` (the segment, `sem.NAME`).
fn leftovers(name: &str) -> Vec<String> {
    let base = &name[1..];
    [base.to_string(), format!("sem.{base}")]
        .into_iter()
        .filter(|f| std::fs::symlink_metadata(format!("/dev/shm/{f}")).is_ok())
        .collect()
}

/// The creator: killed after the lock (and its companion) is made, before
/// Ready, leaving an abandoned initialisation for `clean`.
fn abandon<L: LockBackend>(ctx: &ChildCtx) {
    testing::points_at_init_steps();
    let _ = ShmCell::<Ledger, L>::create(ctx.arg(0), Ledger::default());
    unreachable!("killed during creation");
}

/// The cleaner: removes the abandoned object.
fn clean(ctx: &ChildCtx) {
    testing::points_at_crate_steps();
    let out = inspect::clean_one(ctx.arg(0), &inspect::CleanOptions::new()).unwrap();
    assert_eq!(out.action, CleanAction::Removed, "{out:?}");
}

/// One clean run: after a death anywhere in `clean`, the object is either
/// still there (and `open_or_create` takes it over) or gone; no
/// companion is left behind without its segment.
fn clean_run<L: LockBackend>(
    abandoner: ChildSpec,
    run: &testing::SweepRun,
) -> Result<bool, String> {
    let name = TestName::new("steps-clean");
    abandoner
        .arg(&name)
        .kill_at(testing::InitStep::ValueWritten.point())
        .map_err(|e| format!("{e:?}"))?;
    if !matches!(
        ShmCell::<Ledger, L>::open(&name),
        Err(Error::AbandonedInit { .. })
    ) {
        return Err("the creator's death did not leave an abandoned initialisation".into());
    }
    let ended = run.child().arg(&name).run().map_err(|e| format!("{e:?}"))?;
    let left = leftovers(&name);
    let segment_left = left.iter().any(|f| !f.starts_with("sem."));
    let sem_left = left.iter().any(|f| f.starts_with("sem."));
    let companion = ShmCell::<Ledger, L>::spec().lock_kind == LockKind::NamedSemaphore;
    let fine = match run.point() {
        None => left.is_empty(),
        Some("clean:judged") => segment_left && sem_left == companion,
        Some("clean:companions-removed") => segment_left && !sem_left,
        Some(p) => return Err(format!("unexpected point {p}")),
    };
    if !fine {
        return Err(format!("after the kill /dev/shm holds {left:?}"));
    }
    let cell = ShmCell::<Ledger, L>::open_or_create(
        &name,
        Ledger {
            n: 7,
            ..Ledger::default()
        },
    )
    .map_err(|e| format!("open_or_create after the kill: {e}"))?;
    let seen = testing::recover(&cell, repair).map_err(|e| format!("{e:?}"))?;
    if seen
        != Seen::Clean(Ledger {
            n: 7,
            ..Ledger::default()
        })
    {
        return Err(format!("re-created cell: {seen:?}"));
    }
    drop(cell);
    ShmCell::<Ledger, L>::unlink(&name).map_err(|e| format!("unlink: {e}"))?;
    let left = leftovers(&name);
    if !left.is_empty() {
        return Err(format!("left in /dev/shm: {left:?}"));
    }
    Ok(ended.killed)
}

/// Sweeps both scenarios for backend `L`; checks that exactly `own` (the
/// backend's steps) and the common steps were swept, and that each
/// documented step belongs to some backend.
fn sweep_backend<L: LockBackend>(
    label: &str,
    dier: ChildSpec,
    walker: ChildSpec,
    abandoner: ChildSpec,
    cleaner: ChildSpec,
    own: &[&str],
) {
    let report = walker.sweep().run(|run| walk_run::<L>(dier, run));
    report.assert_ok();
    let swept: BTreeSet<&str> = report.points().into_iter().collect();
    let mut want: BTreeSet<&str> = COMMON.iter().copied().collect();
    want.extend(own);
    assert_eq!(swept, want, "{label}: the walker's steps changed");
    let clean_report = cleaner.sweep().run(|run| clean_run::<L>(abandoner, run));
    clean_report.assert_ok();
    let clean_swept: BTreeSet<&str> = clean_report.points().into_iter().collect();
    assert_eq!(
        clean_swept,
        BTreeSet::from(["clean:judged", "clean:companions-removed"]),
        "{label}: the cleaner's steps changed"
    );
    let crate_steps = swept
        .iter()
        .chain(&clean_swept)
        .filter(|p| !p.starts_with("ledger:"))
        .count();
    println!(
        "{label}: {} points swept ({crate_steps} shmsync steps + {} of the test's own), each followed by recovery and checks",
        swept.len() + clean_swept.len(),
        swept.len() + clean_swept.len() - crate_steps
    );
}

/// Steps every backend passes in the walker.
const COMMON: &[&str] = &[
    "consistent:begin",
    "consistent:done",
    "unlock:begin",
    "unlock:released",
    "ledger:first-write",
    "ledger:committed",
    "wait:registered",
    "wait:released",
    "wait:woken",
    "wait:relock",
    "notify:bumped",
    "notify:woken",
    "unlink:companions-removed",
];

const MUTEX_STEPS: &[&str] = &["mutex:locked"];
const FLOCK_STEPS: &[&str] = &[
    "flock:locked",
    "flock:holder-recorded",
    "flock:marked",
    "flock:marker-cleared",
    "flock:unlocked",
];
const SEM_STEPS: &[&str] = &[
    "sem:holder-set",
    "sem:owner-died-recorded",
    "sem:holder-recorded",
    "sem:record-cleared",
    "sem:holder-cleared",
];

#[test]
fn every_step_robust_mutex() {
    let dier = testing::child!("dier", die_half_way::<RobustMutex>);
    let walker = testing::child!("walker", walk::<RobustMutex>);
    let abandoner = testing::child!("abandoner", abandon::<RobustMutex>);
    let cleaner = testing::child!("cleaner", clean);
    sweep_backend::<RobustMutex>("RobustMutex", dier, walker, abandoner, cleaner, MUTEX_STEPS);
}

#[test]
fn every_step_file_lock() {
    let dier = testing::child!("dier", die_half_way::<FileLock>);
    let walker = testing::child!("walker", walk::<FileLock>);
    let abandoner = testing::child!("abandoner", abandon::<FileLock>);
    let cleaner = testing::child!("cleaner", clean);
    sweep_backend::<FileLock>("FileLock", dier, walker, abandoner, cleaner, FLOCK_STEPS);
}

#[test]
fn every_step_named_semaphore() {
    let dier = testing::child!("dier", die_half_way::<NamedSemaphore>);
    let walker = testing::child!("walker", walk::<NamedSemaphore>);
    let abandoner = testing::child!("abandoner", abandon::<NamedSemaphore>);
    let cleaner = testing::child!("cleaner", clean);
    sweep_backend::<NamedSemaphore>(
        "NamedSemaphore",
        dier,
        walker,
        abandoner,
        cleaner,
        SEM_STEPS,
    );
}

/// Every documented step is swept by some backend above (the table in
/// the docs and the sweeps cannot drift apart).
#[test]
fn every_documented_step_is_swept() {
    let swept: BTreeSet<&str> = COMMON
        .iter()
        .chain(MUTEX_STEPS)
        .chain(FLOCK_STEPS)
        .chain(SEM_STEPS)
        .chain(&[
            "clean:judged",
            "clean:companions-removed",
            "sem:companion-written",
            // Only on a race or not recoverable
            // (tests/backend_robust_mutex.rs).
            "mutex:try-not-recoverable",
            "mutex:answered-not-recoverable",
            "mutex:released-unrepaired",
        ])
        .copied()
        .filter(|p| !p.starts_with("ledger:"))
        .collect();
    let documented: BTreeSet<&str> = testing::CRATE_STEPS.iter().map(|(n, _)| *n).collect();
    assert_eq!(swept, documented);
}

/// A `sem.NAME` whose cell's name is gone (the segment removed alone, with
/// `Segment::unlink`; or made again by an opener while an unlinker removed
/// the name) is a cell's orphan: it must not block re-creating the cell.
#[test]
fn an_orphan_cell_semaphore_does_not_block_recreation() {
    let name = TestName::new("steps-orphan");
    let old = ShmCell::<Ledger, NamedSemaphore>::create(&name, Ledger::default()).unwrap();
    shmsync::Segment::unlink(&name).unwrap();
    assert_eq!(leftovers(&name), vec![format!("sem.{}", &name[1..])]);
    let new = ShmCell::<Ledger, NamedSemaphore>::create(
        &name,
        Ledger {
            n: 1,
            ..Ledger::default()
        },
    )
    .unwrap();
    // The old cell's attached handle keeps working on its own copy.
    *old.lock().unwrap() = Ledger {
        n: 9,
        ..Ledger::default()
    };
    assert_eq!(new.lock().unwrap().n, 1);
    drop((old, new));
    ShmCell::<Ledger, NamedSemaphore>::unlink(&name).unwrap();
    assert!(leftovers(&name).is_empty());
}

/// The creator of the init sweep: passes every initialisation step (and,
/// for a semaphore cell, the semaphore's creation) once.
fn create_walk<L: LockBackend>(ctx: &ChildCtx) {
    testing::points_at_init_steps();
    testing::points_at_crate_steps();
    ShmCell::<Ledger, L>::create(
        ctx.arg(0),
        Ledger {
            n: 5,
            ..Ledger::default()
        },
    )
    .unwrap();
}

/// One init run: after a creator's death at any step, `open_or_create`
/// works — it opens the published cell, or takes the abandoned one over
/// (its companion included) — and removing it leaves nothing.
fn create_run<L: LockBackend>(run: &testing::SweepRun) -> Result<Ledger, String> {
    let name = TestName::new("steps-init");
    let ended = run.child().arg(&name).run().map_err(|e| format!("{e:?}"))?;
    let published = !ended.killed || run.point() == Some(testing::InitStep::Published.point());
    let cell = ShmCell::<Ledger, L>::open_or_create(
        &name,
        Ledger {
            n: 6,
            ..Ledger::default()
        },
    )
    .map_err(|e| format!("open_or_create after the kill: {e}"))?;
    let seen = testing::recover(&cell, repair).map_err(|e| format!("{e:?}"))?;
    let want = Ledger {
        n: if published { 5 } else { 6 },
        ..Ledger::default()
    };
    if seen != Seen::Clean(want) {
        return Err(format!("expected Clean({want:?}), saw {seen:?}"));
    }
    drop(cell);
    ShmCell::<Ledger, L>::unlink(&name).map_err(|e| format!("unlink: {e}"))?;
    let left = leftovers(&name);
    if !left.is_empty() {
        return Err(format!("left in /dev/shm: {left:?}"));
    }
    Ok(want)
}

fn sweep_init<L: LockBackend>(label: &str, creator: ChildSpec, extra: &[&str]) {
    let report = creator.sweep().run(create_run::<L>);
    report.assert_ok();
    let mut want: Vec<&str> = testing::InitStep::ALL.iter().map(|s| s.point()).collect();
    want.extend(extra);
    let swept: BTreeSet<&str> = report.points().into_iter().collect();
    assert_eq!(swept, want.into_iter().collect::<BTreeSet<_>>(), "{label}");
    println!("{label}: {} creation points swept", swept.len());
}

#[test]
fn every_creation_step_robust_mutex() {
    let creator = testing::child!("creator", create_walk::<RobustMutex>);
    sweep_init::<RobustMutex>("RobustMutex", creator, &[]);
}

#[test]
fn every_creation_step_file_lock() {
    let creator = testing::child!("creator", create_walk::<FileLock>);
    sweep_init::<FileLock>("FileLock", creator, &[]);
}

#[test]
fn every_creation_step_named_semaphore() {
    let creator = testing::child!("creator", create_walk::<NamedSemaphore>);
    sweep_init::<NamedSemaphore>("NamedSemaphore", creator, &["sem:companion-written"]);
}
