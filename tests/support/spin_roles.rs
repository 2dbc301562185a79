//! The child processes of `tests/robust_spin.rs` (included there with
//! `#[path]`): lockers that hammer the shared [`Tally`], die half-way
//! through an increment, panic, or contend for a cell that becomes not
//! recoverable. Each role's arguments are in its comment; the first two
//! are always the role and the cell's name.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use shmsync::testing::{self, ChildCtx};
use shmsync::{LockError, ShmCell, ShmGuard};

use crate::rig::{self, checked, LockWord, SharedWords, Tally};

/// Shared words: `[id]` increments worker `id` completed (counted after
/// its unlock), `[TID + id]` its thread id, `[GO]` a start signal.
pub const TID: usize = 256;
pub const GO: usize = 1000;
const _: () = assert!(rig::IDS <= TID && TID + rig::IDS <= GO && GO < rig::WORDS);

/// The bound of every wait, in the test and in its children.
pub const WAIT: Duration = Duration::from_secs(10);

/// A holder's marker: its pid and the number of its critical section, so
/// that a process that dies twice (a caught panic) leaves distinct ones.
pub fn token(n: u64) -> u64 {
    u64::from(std::process::id()) << 24 | n & 0xff_ffff
}

/// The pid in a [`token`].
pub fn token_pid(t: u64) -> u64 {
    t >> 24
}

/// The payload of a panic a test begins on purpose.
struct Deliberate;

/// `checked`, for a child: a clean acquire that finds a dirty value, or an
/// error, panics.
fn lock_in_child<'a>(
    r: Result<ShmGuard<'a, Tally>, LockError<ShmGuard<'a, Tally>>>,
) -> ShmGuard<'a, Tally> {
    checked(&format!("pid {}", std::process::id()), r).unwrap_or_else(|e| panic!("{e}"))
}

/// The operation of a locker's `i`-th acquire: `lock`, or in `mixed` mode
/// also `try_lock` (retried while `WouldBlock`) and `lock_timeout`.
fn acquire(cell: &ShmCell<Tally>, mixed: bool, i: u64) -> ShmGuard<'_, Tally> {
    let t0 = Instant::now();
    lock_in_child(match (mixed, i % 4) {
        (true, 2) => loop {
            match cell.try_lock() {
                Err(LockError::WouldBlock) => {
                    assert!(t0.elapsed() < WAIT, "try_lock never succeeded");
                    std::thread::yield_now();
                }
                r => break r,
            }
        },
        (true, 3) => cell.lock_timeout(WAIT),
        _ => cell.lock(),
    })
}

/// What a lock answered: `Ok` or the error's kind.
pub fn kind(r: Result<ShmGuard<'_, Tally>, LockError<ShmGuard<'_, Tally>>>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(e) => e.kind(),
    }
}

/// Waits (bounded) for the test's start signal.
pub fn await_go(words: &SharedWords) {
    let t0 = Instant::now();
    for i in 0u64.. {
        if words.get(GO).load(SeqCst) != 0 {
            break;
        }
        std::hint::spin_loop();
        if i % 1024 == 0 {
            assert!(t0.elapsed() < WAIT, "never told to go");
            std::thread::yield_now();
        }
    }
}

/// The roles that work on a [`Tally`] (`hammer`, `panicker`, `relocker`,
/// `stop_holder`, `waiter`).
pub fn adversary(ctx: &ChildCtx) {
    let cell = ShmCell::<Tally>::open(ctx.arg(1)).unwrap();
    let words = SharedWords::open(ctx.arg(1));
    let num = |i: usize| -> u64 { ctx.arg(i).parse().unwrap() };
    let t0 = Instant::now();
    match ctx.arg(0) {
        // NAME ID INSIDE ITERS(0: until `stop`) MIXED PIN STOP_AT DIE_AT
        // DIE_AFTER: stops at a point inside its STOP_AT-th increment, or
        // SIGKILLs itself after step DIE_AFTER of its DIE_AT-th (0: never).
        // Between two increments it spins a random 0..2×INSIDE: sometimes
        // it locks again at once (the others' tries lose the race), mostly
        // it leaves the word free long enough for a spinner's try to win.
        "hammer" => {
            let (id, inside, iters) = (num(2) as usize, num(3) as u32, num(4));
            let (mixed, stop_at) = (num(5) == 1, num(7));
            let (die_at, die_after) = (num(8), num(9) as u32);
            if num(6) == 1 {
                rig::pin_to_cpu0();
            }
            words.get(TID + id).store(u64::from(rig::gettid()), SeqCst);
            testing::point("started");
            await_go(&words);
            let mut rng = rig::Rng::new(u64::from(std::process::id()));
            let mut n = 0;
            loop {
                let g = acquire(&cell, mixed, n);
                if g.stop.load(SeqCst) != 0 || (iters != 0 && n == iters) {
                    break;
                }
                n += 1;
                g.increment_steps(id, token(n), inside, |k| {
                    if n == stop_at && k == 3 {
                        // Stopped (then killed) holding, half-way through.
                        testing::point("inside");
                    }
                    if n == die_at && k == die_after {
                        // Dies holding, at once, while the others spin.
                        rig::signal(std::process::id(), libc::SIGKILL);
                    }
                });
                drop(g);
                words.get(id).fetch_add(1, SeqCst);
                for _ in 0..rng.below(2 * u64::from(inside) + 1) {
                    std::hint::spin_loop();
                }
                assert!(t0.elapsed() < WAIT * 3, "never told to stop");
            }
            println!("done={n}");
        }
        // NAME ID PANICS: increments, and PANICS times panics half-way
        // through one (caught: the process goes on); `die`: panics
        // half-way through its first one (the process dies of it).
        "panicker" => {
            let id = num(2) as usize;
            testing::point("started");
            let half_done = |n: u64| {
                let g = lock_in_child(cell.lock());
                g.holder.store(token(n), SeqCst);
                g.busy.store(id as u64 + 1, SeqCst);
                g.count.fetch_add(1, SeqCst);
                g.panics.fetch_add(1, SeqCst);
                g
            };
            if ctx.arg(3) == "die" {
                let _g = half_done(0);
                panic!("dies half-way through an increment");
            }
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !info.payload().is::<Deliberate>() {
                    previous(info);
                }
            }));
            for n in 1..=num(3) * 4 {
                if n % 4 == 0 {
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        let _g = half_done(n);
                        std::panic::panic_any(Deliberate);
                    }));
                    let payload = r.expect_err("panics");
                    if !payload.is::<Deliberate>() {
                        std::panic::resume_unwind(payload);
                    }
                } else {
                    lock_in_child(cell.lock()).increment(id, token(n), 200);
                    words.get(id).fetch_add(1, SeqCst);
                }
            }
        }
        // NAME ID ROUNDS: ROUNDS times locks, asks again for the lock it
        // holds (through the same handle and another one, with every
        // operation: `Deadlock`), then increments (still the only holder).
        "relocker" => {
            let (id, rounds) = (num(2) as usize, num(3));
            let other = ShmCell::<Tally>::open(ctx.arg(1)).unwrap();
            testing::point("started");
            await_go(&words);
            let mut slowest = Duration::ZERO;
            for n in 1..=rounds {
                let g = lock_in_child(cell.lock());
                for _ in 0..4 {
                    let t = Instant::now();
                    assert_eq!(kind(cell.lock()), "Deadlock", "lock, same handle");
                    assert_eq!(kind(other.lock()), "Deadlock", "lock");
                    assert_eq!(kind(other.lock_timeout(WAIT)), "Deadlock", "lock_timeout");
                    assert_eq!(kind(other.try_lock()), "Deadlock", "try_lock");
                    slowest = slowest.max(t.elapsed());
                }
                g.increment(id, token(n), 50);
                drop(g);
                words.get(id).fetch_add(1, SeqCst);
            }
            println!("done={rounds}, slowest four Deadlock answers {slowest:?}");
        }
        // NAME ID: locks, starts an increment, and holds until `go` (the
        // test SIGSTOPs it meanwhile).
        "stop_holder" => {
            let id = num(2) as usize;
            let g = lock_in_child(cell.lock());
            g.holder.store(token(0), SeqCst);
            testing::point("holding");
            await_go(&words);
            g.holder.store(0, SeqCst);
            g.increment(id, token(1), 10);
            drop(g);
            words.get(id).fetch_add(1, SeqCst);
        }
        // NAME ID OP: while another process holds the lock, `lock_timeout`
        // (100 ms) three times: `TimedOut`, and `try_lock`: `WouldBlock`
        // (OP `timeout`), or `lock` (OP `lock`); then increments.
        "waiter" => {
            let id = num(2) as usize;
            testing::point("arrived");
            let g = if ctx.arg(3) == "timeout" {
                for _ in 0..3 {
                    let r = cell.lock_timeout(Duration::from_millis(100));
                    assert_eq!(kind(r), "TimedOut", "lock_timeout on a held lock");
                }
                assert_eq!(
                    kind(cell.try_lock()),
                    "WouldBlock",
                    "try_lock on a held lock"
                );
                testing::point("timed-out");
                lock_in_child(cell.lock_timeout(WAIT))
            } else {
                lock_in_child(cell.lock())
            };
            g.increment(id, token(1), 10);
            drop(g);
            words.get(id).fetch_add(1, SeqCst);
        }
        r => panic!("unknown role {r}"),
    }
}

/// The roles of the not-recoverable tests (`NAME` first).
pub fn nr_roles(ctx: &ChildCtx) {
    let cell = ShmCell::<Tally>::open(ctx.arg(1)).unwrap();
    let words = SharedWords::open(ctx.arg(1));
    match ctx.arg(0) {
        // Dies holding, half-way through an increment.
        "dier" => {
            let g = lock_in_child(cell.lock());
            g.holder.store(token(1), SeqCst);
            g.busy.store(1, SeqCst);
            testing::point("holding");
            unreachable!("killed at the point");
        }
        // NAME DELAY_NS: gets the owner death, and on `go` holds DELAY_NS
        // more, then drops the guard unrepaired: not recoverable.
        "reporter" => {
            let g = cell.lock().err().and_then(LockError::into_owner_died);
            let g = g.expect("OwnerDied");
            testing::point("armed");
            await_go(&words);
            let until = Instant::now() + Duration::from_nanos(ctx.arg(2).parse().unwrap());
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            drop(g);
        }
        // Locks on `go` (the reporter holds: it spins, and tries when the
        // word reads free), then locks alone (the word reads free: it
        // tries at once), with every operation.
        "contender" => {
            let word = LockWord::new(&cell, &format!("/dev/shm{}", ctx.arg(1)));
            testing::point("armed");
            await_go(&words);
            let held = word.read() & rig::TID_MASK != 0;
            let t = Instant::now();
            assert_eq!(kind(cell.lock()), "NotRecoverable", "the first lock");
            println!("arrived held: {held}, answered in {:?}", t.elapsed());
            for _ in 0..20 {
                assert_eq!(kind(cell.lock()), "NotRecoverable", "lock");
                assert_eq!(kind(cell.try_lock()), "NotRecoverable", "try_lock");
                let r = cell.lock_timeout(Duration::from_millis(50));
                assert_eq!(kind(r), "NotRecoverable", "lock_timeout");
            }
        }
        // NAME OP: waits in `lock` or `lock_timeout` (3 s) while the cell
        // becomes not recoverable.
        "sleeper" => {
            testing::point("contending");
            let r = match ctx.arg(2) {
                "lock" => cell.lock(),
                _ => cell.lock_timeout(Duration::from_secs(3)),
            };
            assert_eq!(kind(r), "NotRecoverable", "{}", ctx.arg(2));
        }
        r => panic!("unknown role {r}"),
    }
}
