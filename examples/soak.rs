//! A kill soak anyone can run: holders, contenders and sleeping waiters are
//! `SIGKILL`ed at random moments, for every lock backend, and every
//! survivor checks that nothing was lost and nothing hangs.
//!
//! ```text
//! cargo run --release --example soak                         # 1,000 kills per backend and mode
//! cargo run --release --example soak -- --kills 100000       # what the closing notes quote
//! cargo run --release --example soak -- --backend flock --mode contended --kills 5000
//! ```
//!
//! The shared value is a transfer ledger `{a, b, n}`: a transfer moves one
//! unit from `a` to `b` in two writes, then counts it in `n` (the commit).
//! With the lock free and consistent, `a + b == A0` and `b == n`.
//!
//! * **lone**: one worker transfers in a loop and is killed at a random
//!   moment; the soak then locks, and must find either a consistent ledger
//!   (`Ok`) or — with `OwnerDied` — at most one interrupted transfer, which
//!   it rolls back to the last commit.
//! * **contended**: three workers transfer in loops and repair what they
//!   find after an owner death; one of them is killed at random each cycle
//!   and replaced. The soak looks at the ledger between kills.
//! * **waiters**: the soak holds the lock while three workers block in
//!   `lock()`; one of them is killed in its sleep, the lock released, and
//!   the two others must each get the lock and finish.
//!
//! A *lost update* is a committed transfer that disappears (`n` goes down)
//! or a ledger found inconsistent through a clean `Ok`. A *hang* is a lock
//! not obtained within 10 s, or a worker that does not finish in time. The
//! exit status is 0 only when both counts are zero.

use std::time::{Duration, Instant};

use shmsync::{FileLock, LockBackend, LockError, NamedSemaphore, RobustMutex, ShmCell, ShmSafe};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ShmSafe)]
#[repr(C)]
struct Ledger {
    a: u64,
    b: u64,
    n: u64,
}

const A0: u64 = 1 << 40;
const BOUND: Duration = Duration::from_secs(10);
const WORKERS: usize = 3;

fn consistent(l: &Ledger) -> bool {
    l.a.wrapping_add(l.b) == A0 && l.b == l.n
}

/// At most one transfer in flight: the debit done (`a + b == A0 - 1`), the
/// credit too but not the commit (`b == n + 1`), or nothing.
fn at_most_one_interrupted(l: &Ledger) -> bool {
    let sum = l.a.wrapping_add(l.b);
    (sum == A0 || sum == A0 - 1)
        && (l.b == l.n || l.b == l.n + 1)
        && !(sum == A0 - 1 && l.b == l.n + 1)
}

fn repair(l: &mut Ledger) {
    l.a = A0 - l.n;
    l.b = l.n;
}

#[derive(Default, Debug)]
struct Tally {
    kills: u64,
    owner_died: u64,
    lost: u64,
    hangs: u64,
}

struct Args {
    kills: u64,
    backends: Vec<&'static str>,
    modes: Vec<&'static str>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        kills: 1_000,
        backends: vec!["mutex", "flock", "sem"],
        modes: vec!["lone", "contended", "waiters"],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--kills" => a.kills = value()?.parse().map_err(|e| format!("--kills: {e}"))?,
            "--backend" => {
                a.backends = match value()?.as_str() {
                    "mutex" => vec!["mutex"],
                    "flock" => vec!["flock"],
                    "sem" => vec!["sem"],
                    "all" => a.backends,
                    other => {
                        return Err(format!(
                            "unknown backend {other:?} (mutex, flock, sem, all)"
                        ))
                    }
                }
            }
            "--mode" => {
                a.modes = match value()?.as_str() {
                    "lone" => vec!["lone"],
                    "contended" => vec!["contended"],
                    "waiters" => vec!["waiters"],
                    "all" => a.modes,
                    other => {
                        return Err(format!(
                            "unknown mode {other:?} (lone, contended, waiters, all)"
                        ))
                    }
                }
            }
            "-h" | "--help" => {
                println!("usage: soak [--kills N] [--backend mutex|flock|sem|all] [--mode lone|contended|waiters|all]");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let mut bad = false;
    println!("backend  mode       kills   owner-died  lost  hangs  seconds");
    for backend in &args.backends {
        for mode in &args.modes {
            let started = Instant::now();
            let t = match *backend {
                "mutex" => soak::<RobustMutex>(mode, args.kills),
                "flock" => soak::<FileLock>(mode, args.kills),
                _ => soak::<NamedSemaphore>(mode, args.kills),
            };
            println!(
                "{backend:<8} {mode:<10} {:<7} {:<11} {:<5} {:<6} {:.1}",
                t.kills,
                t.owner_died,
                t.lost,
                t.hangs,
                started.elapsed().as_secs_f64()
            );
            bad |= t.lost != 0 || t.hangs != 0;
        }
    }
    std::process::exit(i32::from(bad));
}

fn soak<L: LockBackend>(mode: &str, kills: u64) -> Tally {
    let name = format!("/shmsync-soak-{}-{mode}", std::process::id());
    let start = Ledger { a: A0, b: 0, n: 0 };
    let cell = match ShmCell::<Ledger, L>::create(&name, start) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("soak: create {name}: {e}");
            std::process::exit(1);
        }
    };
    let mut t = Tally::default();
    match mode {
        "lone" => lone(&cell, kills, &mut t),
        "contended" => contended(&cell, kills, &mut t),
        _ => waiters(&cell, kills, &mut t),
    }
    drop(cell);
    let _ = ShmCell::<Ledger, L>::unlink(&name);
    t
}

/// Locks, repairing after an owner death; checks what it found against the
/// last commit it saw.
fn inspect<L: LockBackend>(cell: &ShmCell<Ledger, L>, last_n: &mut u64, t: &mut Tally) {
    let found = match cell.lock_timeout(BOUND) {
        Ok(g) => {
            if !consistent(&g) {
                t.lost += 1;
            }
            *g
        }
        Err(LockError::OwnerDied(mut g)) => {
            t.owner_died += 1;
            if !at_most_one_interrupted(&g) {
                t.lost += 1;
            }
            let found = *g;
            repair(&mut g);
            g.make_consistent();
            found
        }
        Err(LockError::TimedOut) => {
            t.hangs += 1;
            return;
        }
        Err(e) => {
            eprintln!("soak: lock: {e}");
            t.lost += 1;
            return;
        }
    };
    if found.n < *last_n {
        t.lost += 1;
    }
    *last_n = found.n;
}

/// Transfers forever (in a forked worker), repairing after owner deaths.
fn transfer_loop<L: LockBackend>(cell: &ShmCell<Ledger, L>) -> ! {
    loop {
        let mut g = match cell.lock() {
            Ok(g) => g,
            Err(LockError::OwnerDied(mut g)) => {
                repair(&mut g);
                g.make_consistent();
                g
            }
            Err(_) => exit_now(3),
        };
        g.a -= 1;
        spin(50);
        g.b += 1;
        spin(50);
        g.n += 1;
        drop(g);
    }
}

fn lone<L: LockBackend>(cell: &ShmCell<Ledger, L>, kills: u64, t: &mut Tally) {
    let mut last_n = 0;
    let mut rng = Rng::new();
    for _ in 0..kills {
        let pid = fork_worker(|| transfer_loop(cell));
        std::thread::sleep(Duration::from_micros(rng.below(500)));
        kill_and_reap(pid);
        t.kills += 1;
        inspect(cell, &mut last_n, t);
    }
}

fn contended<L: LockBackend>(cell: &ShmCell<Ledger, L>, kills: u64, t: &mut Tally) {
    let mut last_n = 0;
    let mut rng = Rng::new();
    let mut workers: Vec<i32> = (0..WORKERS)
        .map(|_| fork_worker(|| transfer_loop(cell)))
        .collect();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_micros(rng.below(500)));
        let victim = rng.below(WORKERS as u64) as usize;
        kill_and_reap(workers[victim]);
        t.kills += 1;
        inspect(cell, &mut last_n, t);
        workers[victim] = fork_worker(|| transfer_loop(cell));
    }
    for pid in workers {
        kill_and_reap(pid);
    }
    inspect(cell, &mut last_n, t);
}

fn waiters<L: LockBackend>(cell: &ShmCell<Ledger, L>, kills: u64, t: &mut Tally) {
    let mut last_n = 0;
    let mut rng = Rng::new();
    for _ in 0..kills {
        let held = match cell.lock_timeout(BOUND) {
            Ok(g) => g,
            Err(_) => {
                t.hangs += 1;
                return;
            }
        };
        let pids: Vec<i32> = (0..WORKERS)
            .map(|_| {
                fork_worker(|| {
                    let mut g = match cell.lock() {
                        Ok(g) => g,
                        Err(_) => exit_now(3),
                    };
                    g.a -= 1;
                    g.b += 1;
                    g.n += 1;
                    drop(g);
                    exit_now(0)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(200 + rng.below(800)));
        let victim = rng.below(WORKERS as u64) as usize;
        kill_and_reap(pids[victim]);
        t.kills += 1;
        drop(held);
        for (i, &pid) in pids.iter().enumerate() {
            if i == victim {
                continue;
            }
            match wait_bounded(pid, BOUND) {
                Some(0) => {}
                Some(_) => t.lost += 1,
                None => {
                    t.hangs += 1;
                    kill_and_reap(pid);
                }
            }
        }
        inspect(cell, &mut last_n, t);
    }
}

// ------------------------------------------------------------ processes

/// Forks a worker running `f`, then exiting 0 (the soak is single-threaded,
/// so the child may run any code).
fn fork_worker(f: impl FnOnce()) -> i32 {
    // SAFETY: the soak has one thread; the child runs `f` and never returns.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => {
            f();
            exit_now(0)
        }
        p if p > 0 => p,
        _ => {
            eprintln!("soak: fork: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: leaves a forked worker without running the parent's exit
    // handlers or destructors (the handle is the parent's too).
    unsafe { libc::_exit(code) }
}

fn kill_and_reap(pid: i32) {
    // SAFETY: signals a child of ours, then reaps it.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// The exit status of `pid` if it ends within `bound` (then reaped).
fn wait_bounded(pid: i32, bound: Duration) -> Option<i32> {
    let deadline = Instant::now() + bound;
    loop {
        let mut status = 0;
        // SAFETY: non-blocking reap of a child of ours.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            });
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn spin(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// xorshift64*: reproducible enough, no dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng((std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}
