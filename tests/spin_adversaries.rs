//! Adversaries of the contended lock's bounded spin (`src/lock/spin.rs`),
//! with real processes.
//!
//! Every test below runs real processes on one `ShmCell<Tally>`: the value
//! and its checks are in `support/spin_rig.rs`, the children's roles in
//! `support/spin_roles.rs`, the test's side in `support/spin_scene.rs`. What
//! each test asserts is in its doc comment.

#[path = "support/spin_rig.rs"]
mod rig;
#[path = "support/spin_roles.rs"]
mod roles;
#[path = "support/spin_scene.rs"]
mod scene;
mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use rig::{LockWord, Rng};
use roles::{adversary, kind, nr_roles, token_pid, TID, WAIT};
use scene::Scene;
use shmsync::testing::{self, ChildSpec, Watchdog};

/// How a victim of [`kill_holders`] dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Death {
    /// SIGKILLed by the test at a random moment (the lock word's owner).
    Random,
    /// SIGKILLs itself after a given step of an increment, holding.
    Itself,
    /// SIGKILLed by the test while stopped at a point, holding.
    Stopped,
}

/// (1) Lockers hammer increments while, one per cycle, a locker dies:
/// SIGKILLed by the test at a random moment (the one the lock word names,
/// or any), or SIGKILLing itself after a random step of an increment
/// (holding, while the others spin or sleep), or SIGKILLed while stopped
/// at a point half-way through one. After each death the test locks
/// (bounded) and asserts: exactly one `OwnerDied` for a death while
/// holding, naming the victim (or nobody, if it died before its first
/// write or after its last), at most one for a random kill; repairs left
/// `count` equal to the increments completed; each worker's own count of
/// the increments it completed is that, or one less (killed between its
/// unlock and its counting). A clean lock that finds a half-done increment
/// (a lost owner death) or a second holder fails the locker; at the end
/// every locker must stop.
fn kill_holders(child: ChildSpec, lockers: usize, cycles: u32, mixed: bool) {
    let scene = Scene::new("kill");
    let _watchdog = Watchdog::arm(Duration::from_secs(300));
    let word = LockWord::new(&scene.cell, &scene.name.path());
    let mut rng = Rng::new(u64::from(std::process::id()) << 16 ^ 0x5eed);
    let mut inside = || 50 + rng.below(300);
    for _ in 0..lockers {
        scene.hammer(&child, inside(), 0, (mixed, false));
    }
    scene.go();
    let mut rng = Rng::new(u64::from(std::process::id()) ^ 0xdead);
    let (mut reports_seen, mut random_landed) = (0, 0);
    for cycle in 0..cycles {
        // Let them hammer a while (a few hundred increments), then kill.
        std::thread::sleep(Duration::from_micros(500 + rng.below(2500)));
        let target = scene.counted() + 1 + rng.below(40);
        let t0 = Instant::now();
        while scene.counted() < target {
            if t0.elapsed() > WAIT {
                scene.fail(format!("cycle {cycle}: no increment for {WAIT:?}"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // What the report must name: the victim (Some(true)), nobody
        // (Some(false)), or either if the victim died holding (None).
        let (death, victim_pid, names_victim) = match cycle % 4 {
            3 => {
                let stop_at = 1 + rng.below(20);
                let spawn = scene.hammer_dying(&child, 100, 0, (mixed, false), [stop_at, 0, 0]);
                scene.start(spawn.0, spawn.1.stop_at("inside"), "inside");
                std::thread::sleep(Duration::from_micros(rng.below(2000)));
                let (id, victim) = scene.children.borrow_mut().pop().expect("the victim");
                let pid = u64::from(victim.pid());
                match victim.kill() {
                    Ok(ended) if ended.killed => {}
                    other => scene.fail(format!("cycle {cycle}: victim {id}: {other:?}")),
                }
                (Death::Stopped, pid, Some(true))
            }
            2 => {
                let (die_at, after) = (1 + rng.below(50), rng.below(7));
                let spawn = scene.hammer_dying(&child, 100, 0, (mixed, false), [0, die_at, after]);
                scene.start(spawn.0, spawn.1, "started");
                let (id, victim) = scene.children.borrow_mut().pop().expect("the victim");
                let pid = u64::from(victim.pid());
                match victim.wait() {
                    Err(e) if e.to_string().contains("signal 9 (SIGKILL)") => {}
                    other => scene.fail(format!("cycle {cycle}: victim {id}: {other:?}")),
                }
                (Death::Itself, pid, Some((1..=5).contains(&after)))
            }
            _ => {
                let tid = u64::from(word.read() & rig::TID_MASK);
                let mut children = scene.children.borrow_mut();
                let at = children
                    .iter()
                    .position(|(id, _)| scene.words.get(TID + id).load(SeqCst) == tid);
                let at = at.unwrap_or_else(|| rng.below(children.len() as u64) as usize);
                let (id, victim) = children.swap_remove(at);
                drop(children);
                let pid = u64::from(victim.pid());
                match victim.kill() {
                    Ok(ended) if ended.killed => {}
                    other => scene.fail(format!("cycle {cycle}: victim {id}: {other:?}")),
                }
                (Death::Random, pid, None)
            }
        };
        let g = scene.lock();
        let reports = g.reports.load(SeqCst);
        let new = reports - reports_seen;
        reports_seen = reports;
        let found = match new {
            0 => None,
            _ => Some(token_pid(g.found[reports as usize - 1].load(SeqCst))),
        };
        let told_right = match (new, found, names_victim) {
            (1, Some(pid), Some(true)) => pid == victim_pid,
            (1, Some(pid), Some(false)) => pid == 0,
            (1, Some(pid), None) => pid == victim_pid || pid == 0,
            (0, None, None) => true,
            _ => false,
        };
        if !told_right {
            scene.fail(format!(
                "cycle {cycle}: victim {victim_pid} {death:?}: {new} owner deaths reported, \
                 the last naming {found:?}"
            ));
        }
        random_landed += u32::from(death == Death::Random && new == 1);
        for id in 0..scene.next_id.get() {
            let (done, counted) = (g.done[id].load(SeqCst), scene.words.get(id).load(SeqCst));
            if done != counted && done != counted + 1 {
                scene.fail(format!(
                    "cycle {cycle}: worker {id} completed {counted} increments, the cell says {done}"
                ));
            }
        }
        drop(g);
        if death == Death::Random {
            scene.hammer(&child, inside(), 0, (mixed, false));
        }
    }
    scene.stop_all();
    let g = scene.lock();
    println!(
        "{cycles} kills of {lockers} lockers: {} increments, {reports_seen} owner deaths \
         reported ({random_landed} of the random kills landed while holding)",
        g.count.load(SeqCst)
    );
    assert_eq!(
        g.reports.load(SeqCst),
        reports_seen,
        "a report after the last kill"
    );
}

#[test]
fn kill_holders_three_lockers() {
    let child = testing::child!(adversary);
    kill_holders(child, 3, 100, false);
}

#[test]
fn kill_holders_eight_lockers_mixed_ops() {
    let child = testing::child!(adversary);
    kill_holders(child, 8, 100, true);
}

/// (2) Mutual exclusion under contention, no deaths: `lockers` processes
/// each complete `iters` increments, every one a read, a spin, then a
/// write of the count, with the holder's token checked all along the spin.
/// A second holder at any moment fails its process (the token changed) or
/// loses an increment: the count must be exactly `lockers × iters`, and
/// every worker's own count `iters`.
fn exclusion(child: ChildSpec, lockers: usize, iters: u64, (mixed, pin): (bool, bool)) {
    let scene = Scene::new("excl");
    let _watchdog = Watchdog::arm(Duration::from_secs(120));
    let mut rng = Rng::new(u64::from(std::process::id()) ^ 0xe8c1);
    for _ in 0..lockers {
        scene.hammer(&child, 10 + rng.below(80), iters, (mixed, pin));
    }
    let t0 = Instant::now();
    scene.go();
    let mut errors = Vec::new();
    for (id, r) in scene.children.borrow_mut().drain(..) {
        match r.wait() {
            Ok(ended) => assert!(ended.stdout.contains(&format!("done={iters}")), "{ended:?}"),
            Err(e) => errors.push(format!("worker {id}: {e}")),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let elapsed = t0.elapsed();
    let g = scene.lock();
    assert_eq!(g.count.load(SeqCst), lockers as u64 * iters);
    for id in 0..lockers {
        assert_eq!(g.done[id].load(SeqCst), iters, "worker {id}");
        assert_eq!(scene.words.get(id).load(SeqCst), iters, "worker {id}");
    }
    assert_eq!(g.reports.load(SeqCst), 0, "no process died");
    println!("{lockers} lockers × {iters} increments in {elapsed:?}");
}

#[test]
fn exclusion_two_lockers() {
    let child = testing::child!(adversary);
    exclusion(child, 2, 200_000, (false, false));
}

#[test]
fn exclusion_eight_lockers_mixed_ops() {
    let child = testing::child!(adversary);
    exclusion(child, 8, 25_000, (true, false));
}

/// Six lockers on one CPU: holders are preempted inside the critical
/// section while the others spin (the spin must give the CPU back).
#[test]
fn exclusion_six_lockers_on_one_cpu() {
    let child = testing::child!(adversary);
    exclusion(child, 6, 20_000, (true, true));
}

/// (3) A cell made not recoverable (an owner-died guard dropped
/// unrepaired) while another process contends: that process's `lock`
/// (arriving while the word is held, so through the spin and its tries,
/// or asleep if the hold outlasts the spin) answers `NotRecoverable`, and
/// so does every later `lock` (the word reads free: the first try),
/// `try_lock` and `lock_timeout`, in that process and in this one. The
/// lock word is left free (not wedged by a try, as glibc's
/// `pthread_mutex_trylock` would leave it).
#[test]
fn not_recoverable_reaches_spinning_and_trying_lockers() {
    let child = testing::child!(nr_roles);
    let _watchdog = Watchdog::arm(Duration::from_secs(300));
    let mut rng = Rng::new(u64::from(std::process::id()) ^ 0x7e57);
    for round in 0..12 {
        let (scene, reporter) = Scene::owner_died_held(&child, rng.below(20_000));
        let args = ["contender", scene.name.as_str()];
        let mut contender = child.command().args(args).bound(WAIT).spawn().unwrap();
        contender.wait_point("armed").unwrap();
        scene.go();
        reporter.wait().unwrap();
        let ended = contender.wait().unwrap();
        print!(
            "round {round}: {}",
            ended.stdout.trim_start_matches("\nrunning 1 test\n")
        );
        let word = LockWord::new(&scene.cell, &scene.name.path()).read();
        assert_eq!(
            word & rig::TID_MASK,
            0,
            "round {round}: lock word {word:#x}"
        );
        assert_eq!(kind(scene.cell.try_lock()), "NotRecoverable");
        let r = scene.cell.lock_timeout(Duration::from_millis(200));
        assert_eq!(kind(r), "NotRecoverable");
        assert_eq!(kind(scene.cell.lock()), "NotRecoverable");
    }
}

/// (3, continued) Lockers already asleep in the kernel (`lock` past its
/// spin, in `pthread_mutex_lock`; `lock_timeout` in
/// `pthread_mutex_clocklock`) when the cell becomes not recoverable must
/// all be told `NotRecoverable`, promptly.
///
/// glibc alone does not: the unlock that makes the mutex not recoverable
/// wakes one sleeper (`FUTEX_WAITERS` was set); that one takes the word
/// (`tid | FUTEX_WAITERS`: it assumes other waiters), finds `__owner ==
/// PTHREAD_MUTEX_NOTRECOVERABLE` and gives the word back with glibc's
/// `lll_unlock` (2.36, `nptl/pthread_mutex_lock.c` and
/// `pthread_mutex_timedlock.c`), which wakes only if `int old > 1`: with
/// bit 31 set `old` is negative, so the word goes to 0 and nobody else is
/// woken. Measured before the fix, every run: one `lock` answered
/// `NotRecoverable`, the other slept until its 10 s bound; both
/// `lock_timeout(3 s)` answered `TimedOut`; the lock word read `0x0` with
/// three processes in `futex_do_wait`. `RobustMutex` now wakes every
/// sleeper after such an unlock and after every `NotRecoverable` answer
/// (`wake_stranded` in `src/lock/robust_mutex/mod.rs`).
#[test]
fn not_recoverable_wakes_every_sleeper() {
    let child = testing::child!(nr_roles);
    let _watchdog = Watchdog::arm(Duration::from_secs(60));
    let (scene, reporter) = Scene::owner_died_held(&child, 0);
    let mut sleepers = Vec::new();
    for op in ["lock", "lock", "timeout", "timeout"] {
        let args = ["sleeper", scene.name.as_str(), op];
        let mut s = child.command().args(args).bound(WAIT).spawn().unwrap();
        s.wait_point("contending").unwrap();
        support::await_state(s.pid(), 'S', WAIT);
        sleepers.push((op, s));
    }
    scene.go();
    reporter.wait().unwrap();
    let failed: Vec<String> = sleepers
        .into_iter()
        .filter_map(|(op, s)| s.wait().err().map(|e| format!("{op}: {e}")))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// (4) A process that asks again for the lock it holds, while three
/// others hammer it (spinning, and asleep with `FUTEX_WAITERS` set): every
/// `lock` (through its spin), `lock_timeout` and `try_lock` answers
/// `Deadlock` rather than hanging or handing out a second guard, the hold
/// is intact afterwards (its increment checks it is the only holder), and
/// the others go on once it unlocks.
#[test]
fn relock_is_deadlock_while_others_contend() {
    let child = testing::child!(adversary);
    let scene = Scene::new("relock");
    let _watchdog = Watchdog::arm(Duration::from_secs(120));
    for _ in 0..3 {
        scene.hammer(&child, 100, 0, (false, false));
    }
    let id = scene.id();
    let args = ["relocker", scene.name.as_str(), &id.to_string(), "200"];
    let relocker = child.command().args(args).bound(WAIT * 3).spawn();
    let mut relocker = relocker.unwrap();
    relocker.wait_point("started").unwrap();
    scene.go();
    match relocker.wait() {
        Ok(ended) => print!("{}", ended.stdout.trim_start_matches("\nrunning 1 test\n")),
        Err(e) => scene.fail(format!("relocker: {e}")),
    }
    scene.stop_all();
    let g = scene.lock();
    assert_eq!(g.done[id].load(SeqCst), 200);
    for i in 0..scene.next_id.get() {
        assert_eq!(
            g.done[i].load(SeqCst),
            scene.words.get(i).load(SeqCst),
            "worker {i}"
        );
    }
    assert_eq!(g.reports.load(SeqCst), 0, "no process died");
}

/// (5) A holder SIGSTOPped while holding: in other processes
/// `lock_timeout` answers `TimedOut` and `try_lock` `WouldBlock` (so does
/// this one's), `lock` waits (asleep, its spin spent); once the holder is
/// continued and unlocks, every one of them gets the lock, clean.
#[test]
fn stopped_holder_times_out_others_until_continued() {
    let child = testing::child!(adversary);
    let scene = Scene::new("sigstop");
    let _watchdog = Watchdog::arm(Duration::from_secs(120));
    let spawn = |role: &str, op: &str| {
        let id = scene.id();
        let args = [role, scene.name.as_str(), &id.to_string(), op];
        (id, child.command().args(args).bound(WAIT * 2))
    };
    let (id, holder) = spawn("stop_holder", "");
    scene.start(id, holder, "holding");
    let holder_pid = scene.children.borrow()[0].1.pid();
    rig::signal(holder_pid, libc::SIGSTOP);
    support::await_state(holder_pid, 'T', WAIT);
    for op in ["timeout", "lock", "timeout", "lock"] {
        let (id, waiter) = spawn("waiter", op);
        scene.start(id, waiter, "arrived");
    }
    for (i, (_, waiter)) in scene.children.borrow_mut().iter_mut().enumerate().skip(1) {
        if i % 2 == 1 {
            waiter.wait_point("timed-out").unwrap();
        } else {
            support::await_state(waiter.pid(), 'S', WAIT);
        }
    }
    assert_eq!(kind(scene.cell.try_lock()), "WouldBlock");
    let r = scene.cell.lock_timeout(Duration::from_millis(100));
    assert_eq!(kind(r), "TimedOut");
    assert_eq!(
        support::proc_state(holder_pid),
        'T',
        "the holder stayed stopped"
    );
    scene.go();
    rig::signal(holder_pid, libc::SIGCONT);
    scene.stop_all();
    let g = scene.lock();
    assert_eq!(
        g.count.load(SeqCst),
        5,
        "the holder's and four waiters' increments"
    );
    assert_eq!(g.reports.load(SeqCst), 0, "no process died");
}

/// (6) Holders that panic half-way through an increment while others
/// spin for the lock — caught (the process goes on and locks again) or
/// not (the process dies of it): each panic is reported as `OwnerDied` to
/// exactly one locker (the count of reports equals the count of panics),
/// whose repair leaves `count` equal to the increments completed.
#[test]
fn holders_panic_while_others_spin() {
    let child = testing::child!(adversary);
    let scene = Scene::new("panic");
    let _watchdog = Watchdog::arm(Duration::from_secs(120));
    for _ in 0..3 {
        scene.hammer(&child, 100, 0, (false, false));
    }
    scene.go();
    let mut panickers = Vec::new();
    for panics in ["20", "20", "die"] {
        let id = scene.id();
        let args = ["panicker", scene.name.as_str(), &id.to_string(), panics];
        let mut p = child.command().args(args).bound(WAIT * 2).spawn().unwrap();
        p.wait_point("started").unwrap();
        panickers.push((panics, p));
    }
    for (panics, p) in panickers {
        match (panics, p.wait()) {
            ("die", Err(e)) => assert_eq!(e.kind(), "Panicked", "{e}"),
            ("die", Ok(ended)) => scene.fail(format!("a panicker lived: {ended:?}")),
            (_, Err(e)) => scene.fail(format!("panicker: {e}")),
            (_, Ok(_)) => {}
        }
    }
    scene.stop_all();
    let g = scene.lock();
    assert_eq!(g.panics.load(SeqCst), 41);
    assert_eq!(
        g.reports.load(SeqCst),
        41,
        "one owner death reported per panic"
    );
    for i in 0..scene.next_id.get() {
        assert_eq!(
            g.done[i].load(SeqCst),
            scene.words.get(i).load(SeqCst),
            "worker {i}"
        );
    }
}
