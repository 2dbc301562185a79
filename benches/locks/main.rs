//! `cargo bench --bench locks`: shmsync's primitives against the raw OS
//! calls and the peer crates, in one run of interleaved rounds.
//!
//! * `cargo bench --bench locks`: the full run (15 rounds, about a minute
//!   on 2 cores). `SHMSYNC_BENCH_SMOKE=1` or `-- --smoke`: tiny counts,
//!   about a second (CI). `-- --rounds N`. `-- WORD…` keeps the rows whose
//!   `SECTION/NAME` contains a word (`uncontended`, `raw_sync`,
//!   `uncontended/ShmCell`).
//! * Prints the table and writes `target/shmsync-bench/locks.json`
//!   (`locks-smoke.json` in smoke mode, `locks-partial.json` when
//!   filtered); `scripts/bench_chart.py` turns it into the chart and the
//!   table of `BENCHMARKS.md`.
//!
//! Cross-process rows fork their children from this single-threaded
//! process (`harness = false`), pin them with `sched_setaffinity`, bound
//! every wait and always reap (see `procs.rs`).
//!
//! **Adding a row** is one call in [`register`]: `b.row(SECTION, name,
//! baseline, robust, closure)`, the closure usually one of the generic
//! measuring functions below (`cell_lock::<L>`, `contended`, `handoff`).

mod contend;
mod harness;
mod kinds;
mod procs;
mod raw;

use std::cell::Cell;
use std::ffi::CString;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use contend::Counter;
use harness::{key, Bench, Better, Check, Params, Section};
use procs::{fresh_name, Gate, SharedAnon};
use raw::{MutexKind, PCond, PMutex, PSem};
use shmsync::{LockBackend, RobustMutex, ShmCell};

// ---------------------------------------------------------------- sections

static UNCONTENDED: Section = Section {
    id: "uncontended",
    title: "Uncontended lock + increment + unlock, one process",
    unit: "ns/op",
    better: Better::Lower,
};
static CONTENDED: Section = Section {
    id: "contended",
    title: "Two processes contending, pinned to two CPUs: each N x (lock, increment, unlock), counter checked = 2N; [in] = the counter is in the cell (ShmCell: its value, on the cache line after the lock word; raw mutex: the same place), [out] = it lives in a mapping of its own",
    unit: "Mlock/s",
    better: Better::Higher,
};
static HANDOVERS: Section = Section {
    id: "handovers",
    title: "Contention probe, same runs as above: lock hand-overs between the two processes",
    unit: "per 1000 locks",
    better: Better::Lower,
};
static SLEEPS: Section = Section {
    id: "sleeps",
    title: "Contention probe, same runs as above: voluntary context switches (futex sleeps)",
    unit: "per 1000 locks",
    better: Better::Lower,
};
static HANDOFF_1CPU: Section = Section {
    id: "handoff-1cpu",
    title: "Hand-off round trip between two processes pinned to ONE CPU",
    unit: "us/round trip",
    better: Better::Lower,
};
static HANDOFF_2CPU: Section = Section {
    id: "handoff-2cpu",
    title: "Hand-off round trip between two processes pinned to TWO CPUs",
    unit: "us/round trip",
    better: Better::Lower,
};
static ATTACH: Section = Section {
    id: "attach",
    title: "Attach: open an existing object (handle kept, closed untimed)",
    unit: "us/open",
    better: Better::Lower,
};
static SCALING: Section = Section {
    id: "scaling",
    title: "Contended throughput by process count (pinned round-robin to the two CPUs: 4 and 8 are oversubscribed)",
    unit: "Mlock/s",
    better: Better::Higher,
};
static LAT_P99: Section = Section {
    id: "latency-p99",
    title: "One process's lock + increment + unlock call while P processes contend [in], 99th percentile",
    unit: "us",
    better: Better::Lower,
};
static LAT_MAX: Section = Section {
    id: "latency-max",
    title: "The same runs, longest call",
    unit: "us",
    better: Better::Lower,
};
static VALUE_SIZE: Section = Section {
    id: "value-size",
    title: "Lock + write one byte + unlock, by value size",
    unit: "ns/op",
    better: Better::Lower,
};

// --------------------------------------------------------------- row names

const CELL_LOCK: &str = "ShmCell<RobustMutex>::lock";
const CELL_TRY: &str = "ShmCell<RobustMutex>::try_lock";
const RM_LOCK: &str = "RobustMutex::lock (standalone)";
const RAW_ROBUST: &str = "raw robust pshared pthread mutex";
const RAW_TRYLOCK: &str = "raw robust pthread_mutex_trylock";
const RAW_CLOCKLOCK: &str = "raw robust clocklock(MONOTONIC, 0 s)";
const RAW_PLAIN: &str = "raw pshared pthread mutex (not robust)";
const RAW_SYNC: &str = "raw_sync 0.1 locks::Mutex";
const PROCESS_SYNC: &str = "process-sync 0.2 SharedMutex";
const RAW_FLOCK: &str = "raw flock(LOCK_EX) + flock(LOCK_UN)";
const RAW_SEM: &str = "raw named sem_wait + sem_post";
const SEM_PAIR: &str = "raw semaphore pair (sem_post/sem_wait)";
const PIPE_PAIR: &str = "raw pipe pair (1 byte each way)";
const CONDVAR: &str = "raw pshared mutex + condvar";
const FUTEX: &str = "raw futex (FUTEX_WAIT/FUTEX_WAKE)";
const CELL_OPEN: &str = "ShmCell<u64>::open";
const CELL_OPEN_BIG: &str = "ShmCell<[u8; 64 MiB]>::open";
const RAW_ATTACH: &str = "raw shm_open + fstat + mmap";
const CELL_4K: &str = "ShmCell<[u8; 4 KiB]>::lock";
const CELL_64M: &str = "ShmCell<[u8; 64 MiB]>::lock";

/// Operations per contended measurement (split among the processes).
const LOCK_OPS: u64 = 2_000_000;
/// Operations per latency measurement (child 0 keeps every call's time).
const LATENCY_OPS: u64 = 1_000_000;
/// The same for `flock` (about 1 µs each when contended).
const FLOCK_OPS: u64 = 100_000;
/// The same for a semaphore used as a lock.
const SEM_OPS: u64 = 1_000_000;
/// Round trips per hand-off measurement (halved on two CPUs, where a
/// cross-CPU wake-up costs several times more).
const HANDOFFS: u64 = 20_000;

/// Size of the big value.
const BIG: usize = 64 << 20;
type Big = [u8; BIG];

// ------------------------------------------------------------ registration

/// Every row and target, in table order.
fn register<'a>(b: &mut Bench<'a>, big: &'a str) {
    let rb = Some(RAW_ROBUST);

    // Uncontended, one process.
    b.row(&UNCONTENDED, CELL_LOCK, rb, "yes", cell_lock::<RobustMutex>);
    b.row(
        &UNCONTENDED,
        CELL_TRY,
        Some(RAW_TRYLOCK),
        "yes",
        cell_try_lock::<RobustMutex>,
    );
    b.row(&UNCONTENDED, RM_LOCK, rb, "yes", robust_mutex_lock);
    b.row(
        &UNCONTENDED,
        RAW_ROBUST,
        rb,
        "yes",
        raw_lock(MutexKind::Robust, Raw::Lock),
    );
    b.row(
        &UNCONTENDED,
        RAW_TRYLOCK,
        rb,
        "yes",
        raw_lock(MutexKind::Robust, Raw::Try),
    );
    b.row(
        &UNCONTENDED,
        RAW_CLOCKLOCK,
        rb,
        "yes",
        raw_lock(MutexKind::Robust, Raw::ClockExpired),
    );
    b.row(
        &UNCONTENDED,
        RAW_PLAIN,
        rb,
        "no",
        raw_lock(MutexKind::Plain, Raw::Lock),
    );
    b.row(&UNCONTENDED, RAW_SYNC, rb, "no", raw_sync_lock);
    b.row(&UNCONTENDED, PROCESS_SYNC, rb, "no", process_sync_lock);
    b.row(&UNCONTENDED, RAW_FLOCK, rb, "freed", raw_flock_lock);
    b.row(&UNCONTENDED, RAW_SEM, rb, "no", raw_sem_lock);
    b.row(
        &UNCONTENDED,
        "ShmCell<FileLock>::lock",
        Some(RAW_FLOCK),
        "yes",
        cell_lock::<shmsync::FileLock>,
    );
    b.row(
        &UNCONTENDED,
        "ShmCell<NamedSemaphore>::lock",
        Some(RAW_SEM),
        "yes",
        cell_lock::<shmsync::NamedSemaphore>,
    );

    // Two processes contending, the counter in the cell and outside:
    // each throughput row also stashes its run's hand-overs and sleeps,
    // which the probe rows below report (a probe row that comes earlier in
    // a rotated round reports the previous round's run of its row).
    let c2 = |p: &Params| [Some(p.cpu(0)), Some(p.cpu(1))];
    let mut probes = Vec::new();
    for counter in [Counter::InCell, Counter::Outside] {
        let tag = tag(counter);
        let base = format!("{RAW_ROBUST} {tag}");
        let lockers: [(String, &'static str, Locker); 3] = [
            (format!("{CELL_LOCK} {tag}"), "yes", Locker::Cell),
            (base.clone(), "yes", Locker::Raw(MutexKind::Robust)),
            (
                format!("{RAW_PLAIN} {tag}"),
                "no",
                Locker::Raw(MutexKind::Plain),
            ),
        ];
        for (name, robust, locker) in lockers {
            let stash = Rc::new(Cell::new(None::<contend::Run>));
            let put = stash.clone();
            b.row(&CONTENDED, name.clone(), Some(&base), robust, move |p| {
                let r = locker.run(p, &c2(p), LOCK_OPS, counter, false)?;
                put.set(Some(r));
                Ok(r.mlps)
            });
            probes.push((name, robust, base.clone(), stash));
        }
    }
    let raw_in_c = format!("{RAW_ROBUST} [in]");
    b.row(&CONTENDED, RAW_SYNC, Some(&raw_in_c), "no", move |p| {
        raw_sync_contended(p, &c2(p), LOCK_OPS)
    });
    b.row(&CONTENDED, PROCESS_SYNC, Some(&raw_in_c), "no", move |p| {
        process_sync_contended(p, &c2(p), LOCK_OPS)
    });
    b.row(&CONTENDED, RAW_FLOCK, Some(&raw_in_c), "freed", move |p| {
        flock_contended(p, &c2(p), FLOCK_OPS)
    });
    b.row(&CONTENDED, RAW_SEM, Some(&raw_in_c), "no", move |p| {
        sem_contended(p, &c2(p), SEM_OPS)
    });
    b.row(
        &CONTENDED,
        "ShmCell<FileLock>::lock",
        Some(RAW_FLOCK),
        "yes",
        move |p| cell_contended::<shmsync::FileLock>(p, &c2(p), FLOCK_OPS),
    );
    b.row(
        &CONTENDED,
        "ShmCell<NamedSemaphore>::lock",
        Some(RAW_SEM),
        "yes",
        move |p| cell_contended::<shmsync::NamedSemaphore>(p, &c2(p), SEM_OPS),
    );

    for (sec, pick) in [
        (
            &HANDOVERS,
            (|r: &contend::Run| r.handoffs_per_k) as fn(&contend::Run) -> f64,
        ),
        (&SLEEPS, |r: &contend::Run| r.sleeps_per_k),
    ] {
        for (name, robust, base, stash) in &probes {
            let get = stash.clone();
            b.row(sec, name.clone(), Some(base), robust, move |_| {
                // A probe of 0 (no sleep at all) is a valid figure; the
                // harness wants positive values, so it is floored.
                get.get()
                    .map(|r| pick(&r).max(1e-3))
                    .ok_or_else(|| "its throughput row has not run yet".to_string())
            });
        }
    }

    // Hand-off round trips, on one CPU and on two.
    for (sec, two) in [(&HANDOFF_1CPU, false), (&HANDOFF_2CPU, true)] {
        let sp = Some(SEM_PAIR);
        b.row(sec, "ShmCell wait_while + notify", sp, "yes", move |p| {
            cell_handoff(p, two)
        });
        b.row(sec, SEM_PAIR, sp, "no", move |p| sem_pair(p, two));
        b.row(sec, PIPE_PAIR, sp, "n/a", move |p| pipe_pair(p, two));
        b.row(sec, CONDVAR, sp, "no", move |p| condvar_pair(p, two));
        b.row(sec, FUTEX, sp, "n/a", move |p| futex_pair(p, two));
    }

    // Attach.
    b.row(&ATTACH, CELL_OPEN, Some(RAW_ATTACH), "yes", cell_open);
    b.row(&ATTACH, CELL_OPEN_BIG, Some(RAW_ATTACH), "yes", move |p| {
        big_open(p, big)
    });
    b.row(&ATTACH, RAW_ATTACH, Some(RAW_ATTACH), "n/a", raw_attach);

    // Scaling with the number of processes, counter beside and outside.
    for procs in [1usize, 2, 4, 8] {
        let cpus = move |p: &Params| (0..procs).map(|i| Some(p.cpu(i))).collect::<Vec<_>>();
        for counter in [Counter::InCell, Counter::Outside] {
            let tag = tag(counter);
            let base = format!("{RAW_ROBUST} {tag} x{procs}");
            b.row(
                &SCALING,
                format!("{CELL_LOCK} {tag} x{procs}"),
                Some(&base),
                "yes",
                move |p| {
                    Ok(Locker::Cell
                        .run(p, &cpus(p), LOCK_OPS, counter, false)?
                        .mlps)
                },
            );
            b.row(&SCALING, base.clone(), Some(&base), "yes", move |p| {
                Ok(Locker::Raw(MutexKind::Robust)
                    .run(p, &cpus(p), LOCK_OPS, counter, false)?
                    .mlps)
            });
        }
    }

    // Latency of one process at 2 and 8 processes (the max rows report
    // the run of their p99 row, as the probe rows above).
    let mut maxes = Vec::new();
    for procs in [2usize, 8] {
        let cpus = move |p: &Params| (0..procs).map(|i| Some(p.cpu(i))).collect::<Vec<_>>();
        let base = format!("{RAW_ROBUST} [in] x{procs}");
        for (name, locker) in [
            (format!("{CELL_LOCK} [in] x{procs}"), Locker::Cell),
            (base.clone(), Locker::Raw(MutexKind::Robust)),
        ] {
            let stash = Rc::new(Cell::new(None::<contend::Run>));
            let put = stash.clone();
            b.row(&LAT_P99, name.clone(), Some(&base), "yes", move |p| {
                let r = locker.run(p, &cpus(p), LATENCY_OPS, Counter::InCell, true)?;
                put.set(Some(r));
                Ok(r.p99_us)
            });
            maxes.push((name, base.clone(), stash));
        }
    }
    for (name, base, stash) in maxes {
        b.row(&LAT_MAX, name, Some(&base), "yes", move |_| {
            stash
                .get()
                .map(|r| r.max_us)
                .ok_or_else(|| "its p99 row has not run yet".to_string())
        });
    }

    // Value size.
    b.row(&VALUE_SIZE, CELL_4K, Some(CELL_4K), "yes", cell_4k_lock);
    b.row(&VALUE_SIZE, CELL_64M, Some(CELL_4K), "yes", move |p| {
        big_lock(p, big)
    });

    let cell_in = format!("{CELL_LOCK} [in]");
    let raw_in = format!("{RAW_ROBUST} [in]");
    let ratio = |(sn, num): (&Section, &str), (sd, den): (&Section, &str), min, max| Check::Ratio {
        num: key(sn, num),
        den: key(sd, den),
        min,
        max,
    };
    b.target(
        "ShmCell (robust mutex) lock+unlock <= 1.05x raw robust pthread mutex",
        ratio(
            (&UNCONTENDED, CELL_LOCK),
            (&UNCONTENDED, RAW_ROBUST),
            None,
            Some(1.05),
        ),
    );
    b.target(
        "ShmCell at least 2x faster than raw_sync's Mutex (raw_sync / ShmCell >= 2)",
        ratio(
            (&UNCONTENDED, RAW_SYNC),
            (&UNCONTENDED, CELL_LOCK),
            Some(2.0),
            None,
        ),
    );
    b.target(
        "contended throughput >= 0.95x raw robust pthread (2 processes)",
        ratio(
            (&CONTENDED, &cell_in),
            (&CONTENDED, &raw_in),
            Some(0.95),
            None,
        ),
    );
    b.target(
        "flock backend <= 1.05x the raw flock pair",
        ratio(
            (&UNCONTENDED, "ShmCell<FileLock>::lock"),
            (&UNCONTENDED, RAW_FLOCK),
            None,
            Some(1.05),
        ),
    );
    b.target(
        "semaphore backend <= 1.05x raw sem_wait/sem_post",
        ratio(
            (&UNCONTENDED, "ShmCell<NamedSemaphore>::lock"),
            (&UNCONTENDED, RAW_SEM),
            None,
            Some(1.05),
        ),
    );
    b.target(
        "wait/notify hand-off <= 1.1x a semaphore pair on one CPU",
        ratio(
            (&HANDOFF_1CPU, "ShmCell wait_while + notify"),
            (&HANDOFF_1CPU, SEM_PAIR),
            None,
            Some(1.1),
        ),
    );
    b.target(
        "(context) mutex+condvar / semaphore pair on one CPU (issue: ~2x)",
        ratio(
            (&HANDOFF_1CPU, CONDVAR),
            (&HANDOFF_1CPU, SEM_PAIR),
            None,
            None,
        ),
    );
    b.target(
        "open of an existing cell <= 20 us",
        Check::AtMost {
            case: key(&ATTACH, CELL_OPEN),
            max: 20.0,
        },
    );
    // Per kind of backing (benches/locks/kinds.rs).
    kinds::register(b);

    b.target(
        "lock cost flat in value size: 64 MiB / 4 KiB within 0.9..1.1",
        ratio(
            (&VALUE_SIZE, CELL_64M),
            (&VALUE_SIZE, CELL_4K),
            Some(0.9),
            Some(1.1),
        ),
    );
    for counter in [Counter::InCell, Counter::Outside] {
        let tag = tag(counter);
        b.target(
            leak(format!(
                "(15) contended, 2 processes {tag}: ShmCell >= 1.3x raw robust pthread mutex"
            )),
            ratio(
                (&CONTENDED, &format!("{CELL_LOCK} {tag}")),
                (&CONTENDED, &format!("{RAW_ROBUST} {tag}")),
                Some(1.3),
                None,
            ),
        );
        for procs in [4, 8] {
            b.target(
                leak(format!(
                    "(15) contended, {procs} processes {tag}: ShmCell >= 1.0x raw robust"
                )),
                ratio(
                    (&SCALING, &format!("{CELL_LOCK} {tag} x{procs}")),
                    (&SCALING, &format!("{RAW_ROBUST} {tag} x{procs}")),
                    Some(1.0),
                    None,
                ),
            );
        }
    }
    b.target(
        "(context) contended, 2 processes [in]: not-robust / robust raw mutex",
        ratio(
            (&CONTENDED, &format!("{RAW_PLAIN} [in]")),
            (&CONTENDED, &raw_in),
            None,
            None,
        ),
    );
    b.target(
        "(15) wait/notify hand-off <= 1.1x a semaphore pair on two CPUs",
        ratio(
            (&HANDOFF_2CPU, "ShmCell wait_while + notify"),
            (&HANDOFF_2CPU, SEM_PAIR),
            None,
            Some(1.1),
        ),
    );
}

// ------------------------------------------------------------------ helpers

/// The row-name tag of where the counter lives.
fn tag(c: Counter) -> &'static str {
    match c {
        Counter::InCell => "[in]",
        Counter::Outside => "[out]",
    }
}

/// A target's text made at registration (the harness keeps `&'static str`).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The robust-mutex lockers of the contended, scaling and latency rows.
#[derive(Clone, Copy)]
enum Locker {
    Cell,
    Raw(MutexKind),
}

impl Locker {
    fn run(
        self,
        p: &Params,
        cpus: &[Option<usize>],
        total: u64,
        counter: Counter,
        latency: bool,
    ) -> Result<contend::Run, String> {
        match self {
            Locker::Cell => contend::cell(p, cpus, total, counter, latency),
            Locker::Raw(kind) => contend::raw(p, cpus, total, kind, counter, latency),
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Timed batches per measurement of a one-process row.
const BATCHES: u64 = 5;

/// What [`time_loop`] measured.
struct Timed {
    /// ns per call in the fastest batch.
    ns: f64,
    /// Calls made, warm-up included (for the counter check).
    calls: u64,
}

/// Calls `f` `n / 10` times untimed, then `n` times in [`BATCHES`] timed
/// batches; ns per call in the fastest batch. On a shared machine noise
/// only ever adds time (preemption, a neighbour's cache traffic), so the
/// fastest batch is the row's cost in this round; the median over rounds
/// and the in-round ratios are taken from it.
///
/// One call site, so that `f` is inlined alike for every row (a closure
/// called from two loops may stay a call, which would charge some rows a
/// function call per iteration and not others).
#[inline(always)]
fn time_loop(n: u64, mut f: impl FnMut()) -> Timed {
    let per = (n / BATCHES).max(1);
    let warm = (n / 10).max(1);
    let mut best = f64::INFINITY;
    for batch in 0..=BATCHES {
        let len = if batch == 0 { warm } else { per };
        let t = Instant::now();
        for _ in 0..len {
            f();
        }
        if batch > 0 {
            best = best.min(t.elapsed().as_nanos() as f64 / len as f64);
        }
    }
    Timed {
        ns: best,
        calls: warm + per * BATCHES,
    }
}

/// A failed lock inside a timed loop: out of line, so it does not weigh
/// on the loop.
#[cold]
#[inline(never)]
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}")
}

/// A cell name that is unlinked when dropped (in the parent only).
struct CellName {
    name: String,
    pid: u32,
}

impl CellName {
    fn new() -> CellName {
        CellName {
            name: fresh_name(),
            pid: std::process::id(),
        }
    }
}

impl Drop for CellName {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            // The kind is read from the header: any `T`/`L` unlinks all.
            let _ = ShmCell::<u64>::unlink(&self.name);
        }
    }
}

/// A value and a counter next to a raw lock.
#[repr(C)]
struct Arena<L> {
    lock: L,
    counter: AtomicU64,
}

/// `counter += 1` as a plain read-modify-write (the lock orders it).
#[inline(always)]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

fn expect_count(got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "counter is {got}, expected {want}: mutual exclusion broken"
        ))
    }
}

// ------------------------------------------------------------- uncontended

fn cell_lock<L: LockBackend>(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<u64, L>::create(&name.name, 0).map_err(err)?;
    let n = p.iters(2_000_000);
    let t = time_loop(n, || match cell.lock() {
        Ok(mut g) => *g += 1,
        Err(e) => fail("lock", e),
    });
    expect_count(*cell.lock().map_err(err)?, t.calls)?;
    Ok(t.ns)
}

fn cell_try_lock<L: LockBackend>(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<u64, L>::create(&name.name, 0).map_err(err)?;
    let n = p.iters(1_000_000);
    let t = time_loop(n, || match cell.try_lock() {
        Ok(mut g) => *g += 1,
        Err(e) => fail("try_lock", e),
    });
    expect_count(*cell.lock().map_err(err)?, t.calls)?;
    Ok(t.ns)
}

fn robust_mutex_lock(p: &Params) -> Result<f64, String> {
    // SAFETY: zeroed bytes are a valid (then re-initialised) mutex and counter.
    let a = unsafe { SharedAnon::<Arena<RobustMutex>>::zeroed() };
    // SAFETY: the mapping is fresh, aligned, and never moved.
    unsafe { RobustMutex::init(std::ptr::NonNull::from(&a.get().lock)) }.map_err(err)?;
    let (m, c) = (&a.get().lock, &a.get().counter);
    let n = p.iters(2_000_000);
    let t = time_loop(n, || match m.lock() {
        Ok(_g) => bump(c),
        Err(e) => fail("lock", e),
    });
    expect_count(c.load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

#[derive(Clone, Copy)]
enum Raw {
    Lock,
    Try,
    ClockExpired,
}

fn raw_arena(kind: MutexKind) -> SharedAnon<Arena<PMutex>> {
    // SAFETY: zeroed bytes are valid storage; the mutex is initialised next.
    let a = unsafe { SharedAnon::<Arena<PMutex>>::zeroed() };
    // SAFETY: fresh mapping, never moved, nobody uses it yet.
    unsafe { a.get().lock.init(kind) };
    a
}

fn raw_lock(kind: MutexKind, how: Raw) -> impl FnMut(&Params) -> Result<f64, String> {
    move |p| {
        let a = raw_arena(kind);
        let (m, c) = (&a.get().lock, &a.get().counter);
        let n = p.iters(2_000_000);
        let t = match how {
            Raw::Lock => time_loop(n, || {
                if m.lock() != 0 {
                    fail("lock", "error")
                }
                bump(c);
                m.unlock();
            }),
            Raw::Try => time_loop(n, || {
                if m.trylock() != 0 {
                    fail("trylock", "error")
                }
                bump(c);
                m.unlock();
            }),
            Raw::ClockExpired => time_loop(n, || {
                if m.clocklock_expired() != 0 {
                    fail("clocklock", "error")
                }
                bump(c);
                m.unlock();
            }),
        };
        expect_count(c.load(Ordering::Relaxed), t.calls)?;
        Ok(t.ns)
    }
}

/// raw_sync's lock lives in memory we provide: 64 bytes aligned, then the
/// data (a u64) it hands out as `*mut u8`.
#[repr(C, align(64))]
struct PeerArena {
    lock: [u8; 64],
    counter: AtomicU64,
}

fn raw_sync_new(a: &SharedAnon<PeerArena>) -> Result<Box<dyn raw_sync::locks::LockImpl>, String> {
    use raw_sync::locks::{LockInit, Mutex};
    let base = a.as_ptr().cast::<u8>();
    // SAFETY: 64 bytes at `base` are shared, aligned storage for the
    // pthread_mutex_t (40 bytes); the data pointer is the counter after it.
    let (m, _) = unsafe { Mutex::new(base, a.get().counter.as_ptr().cast()) }.map_err(err)?;
    Ok(m)
}

fn raw_sync_lock(p: &Params) -> Result<f64, String> {
    // SAFETY: zeroed bytes are valid storage; raw_sync initialises the lock.
    let a = unsafe { SharedAnon::<PeerArena>::zeroed() };
    let m = raw_sync_new(&a)?;
    let n = p.iters(2_000_000);
    let t = time_loop(n, || {
        let g = m.lock().expect("raw_sync lock");
        let v = *g as *mut u64;
        // SAFETY: `v` is the counter, guarded by the lock we hold.
        unsafe { *v += 1 };
    });
    expect_count(a.get().counter.load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

fn process_sync_lock(p: &Params) -> Result<f64, String> {
    let mut m = process_sync::SharedMutex::new().map_err(err)?;
    // SAFETY: a zeroed atomic is valid.
    let c = unsafe { SharedAnon::<AtomicU64>::zeroed() };
    let n = p.iters(2_000_000);
    let t = time_loop(n, || {
        m.lock().expect("process-sync lock");
        bump(c.get());
        m.unlock().expect("process-sync unlock");
    });
    expect_count(c.get().load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

fn raw_flock_lock(p: &Params) -> Result<f64, String> {
    let name = fresh_name();
    let f = raw::FlockFile::open(&name);
    let c = AtomicU64::new(0);
    let n = p.iters(50_000);
    let t = time_loop(n, || {
        f.lock();
        bump(&c);
        f.unlock();
    });
    raw::FlockFile::remove(&name);
    expect_count(c.load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

fn raw_sem_lock(p: &Params) -> Result<f64, String> {
    let s = raw::NamedSem::create(&fresh_name());
    let c = AtomicU64::new(0);
    let n = p.iters(2_000_000);
    let t = time_loop(n, || {
        s.wait();
        bump(&c);
        s.post();
    });
    expect_count(c.load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

// --------------------------------------------------------------- contended

/// Runs one child per entry of `cpus`, each doing `total / cpus.len()`
/// iterations of `op` after its setup; returns million locks per second
/// over the span from the first start to the last end.
fn contended(
    cpus: &[Option<usize>],
    per: u64,
    body: &mut dyn FnMut(usize, &mut Gate<'_>, u64) -> Result<(), String>,
) -> Result<f64, String> {
    let spans = procs::team(cpus, &mut |i, gate| body(i, gate, per))?;
    let ops = per * cpus.len() as u64;
    Ok(ops as f64 * 1e3 / spans.wall_ns() as f64)
}

fn per_child(p: &Params, cpus: &[Option<usize>], total: u64) -> u64 {
    (p.iters(total) / cpus.len() as u64).max(1)
}

fn cell_contended<L: LockBackend>(
    p: &Params,
    cpus: &[Option<usize>],
    total: u64,
) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<u64, L>::create(&name.name, 0).map_err(err)?;
    let per = per_child(p, cpus, total);
    let mlps = contended(cpus, per, &mut |_, gate, n| {
        // Each process attaches by name, as users do.
        let mine = ShmCell::<u64, L>::open(&name.name).map_err(err)?;
        gate.start();
        for _ in 0..n {
            match mine.lock() {
                Ok(mut g) => *g += 1,
                Err(e) => return Err(format!("lock: {e}")),
            }
        }
        Ok(())
    })?;
    expect_count(*cell.lock().map_err(err)?, per * cpus.len() as u64)?;
    Ok(mlps)
}

fn raw_sync_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
    // SAFETY: zeroed bytes are valid storage; raw_sync initialises the lock.
    let a = unsafe { SharedAnon::<PeerArena>::zeroed() };
    let m = raw_sync_new(&a)?;
    let per = per_child(p, cpus, total);
    let mlps = contended(cpus, per, &mut |_, gate, n| {
        gate.start();
        for _ in 0..n {
            let g = m.lock().map_err(err)?;
            let v = *g as *mut u64;
            // SAFETY: `v` is the shared counter, guarded by the lock we hold.
            unsafe { *v += 1 };
        }
        Ok(())
    })?;
    expect_count(
        a.get().counter.load(Ordering::Relaxed),
        per * cpus.len() as u64,
    )?;
    Ok(mlps)
}

fn process_sync_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
    let mut m = process_sync::SharedMutex::new().map_err(err)?;
    // SAFETY: a zeroed atomic is valid.
    let c = unsafe { SharedAnon::<AtomicU64>::zeroed() };
    let per = per_child(p, cpus, total);
    let mlps = contended(cpus, per, &mut |_, gate, n| {
        gate.start();
        for _ in 0..n {
            m.lock().map_err(err)?;
            bump(c.get());
            m.unlock().map_err(err)?;
        }
        Ok(())
    })?;
    expect_count(c.get().load(Ordering::Relaxed), per * cpus.len() as u64)?;
    Ok(mlps)
}

fn flock_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
    let name = fresh_name();
    // SAFETY: a zeroed atomic is valid.
    let c = unsafe { SharedAnon::<AtomicU64>::zeroed() };
    let per = per_child(p, cpus, total);
    drop(raw::FlockFile::open(&name));
    let r = contended(cpus, per, &mut |_, gate, n| {
        // Its own open file description: a forked one would share the lock.
        let f = raw::FlockFile::open(&name);
        gate.start();
        for _ in 0..n {
            f.lock();
            bump(c.get());
            f.unlock();
        }
        Ok(())
    });
    raw::FlockFile::remove(&name);
    let mlps = r?;
    expect_count(c.get().load(Ordering::Relaxed), per * cpus.len() as u64)?;
    Ok(mlps)
}

fn sem_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
    let s = raw::NamedSem::create(&fresh_name());
    // SAFETY: a zeroed atomic is valid.
    let c = unsafe { SharedAnon::<AtomicU64>::zeroed() };
    let per = per_child(p, cpus, total);
    let mlps = contended(cpus, per, &mut |_, gate, n| {
        gate.start();
        for _ in 0..n {
            s.wait();
            bump(c.get());
            s.post();
        }
        Ok(())
    })?;
    expect_count(c.get().load(Ordering::Relaxed), per * cpus.len() as u64)?;
    Ok(mlps)
}

// ----------------------------------------------------------------- hand-off

/// Two children, pinned to one CPU or to two: child 0 calls `ping(k)` and
/// child 1 `pong(k)` for k in 0..n; µs per round trip, from child 0's span.
fn handoff(
    p: &Params,
    two_cpus: bool,
    n_full: u64,
    ping: &mut dyn FnMut(u32),
    pong: &mut dyn FnMut(u32),
) -> Result<f64, String> {
    let cpus = [
        Some(p.cpu(0)),
        Some(if two_cpus { p.cpu(1) } else { p.cpu(0) }),
    ];
    let n = p.iters(if two_cpus { n_full / 2 } else { n_full });
    let spans = procs::team(&cpus, &mut |i, gate| {
        gate.start();
        for k in 0..n as u32 {
            if i == 0 {
                ping(k)
            } else {
                pong(k)
            }
        }
        Ok(())
    })?;
    Ok(spans.child_ns(0) as f64 / 1e3 / n as f64)
}

/// The wait/notify hand-off: the value is a turn counter; ping waits for
/// an even value and makes it odd, pong the reverse, each notifying after
/// its change. One iteration of ping is one full round trip.
fn cell_handoff(p: &Params, two: bool) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<u32>::create(&name.name, 0).map_err(err)?;
    let wait_for = |until: u32| {
        let g = cell.lock().unwrap_or_else(|e| fail("lock", e));
        g.wait_while(|v| *v != until)
            .unwrap_or_else(|e| fail("wait", e))
    };
    let set = |mut g: shmsync::ShmGuard<'_, u32>, v: u32| {
        *g = v;
        drop(g);
        cell.notify_all();
    };
    handoff(
        p,
        two,
        HANDOFFS,
        &mut |k| {
            set(wait_for(2 * k), 2 * k + 1);
            drop(wait_for(2 * k + 2));
        },
        &mut |k| set(wait_for(2 * k + 1), 2 * k + 2),
    )
}

#[repr(C)]
struct SemPair {
    to_pong: PSem,
    to_ping: PSem,
}

fn sem_pair(p: &Params, two: bool) -> Result<f64, String> {
    // SAFETY: zeroed storage; both semaphores are initialised next.
    let a = unsafe { SharedAnon::<SemPair>::zeroed() };
    // SAFETY: fresh mapping, never moved, unused yet.
    unsafe {
        a.get().to_pong.init(0);
        a.get().to_ping.init(0);
    }
    let s = a.get();
    handoff(
        p,
        two,
        HANDOFFS,
        &mut |_| {
            s.to_pong.post();
            s.to_ping.wait();
        },
        &mut |_| {
            s.to_pong.wait();
            s.to_ping.post();
        },
    )
}

fn pipe_pair(p: &Params, two: bool) -> Result<f64, String> {
    let mut ab = [0; 2];
    let mut ba = [0; 2];
    // SAFETY: each array is valid for two ints.
    let ok = unsafe {
        libc::pipe2(ab.as_mut_ptr(), libc::O_CLOEXEC) == 0
            && libc::pipe2(ba.as_mut_ptr(), libc::O_CLOEXEC) == 0
    };
    if !ok {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    let r = handoff(
        p,
        two,
        HANDOFFS,
        &mut |_| {
            raw::write_byte(ab[1]);
            raw::read_byte(ba[0]);
        },
        &mut |_| {
            raw::read_byte(ab[0]);
            raw::write_byte(ba[1]);
        },
    );
    for fd in ab.into_iter().chain(ba) {
        // SAFETY: closing the four descriptors made above, once.
        unsafe { libc::close(fd) };
    }
    r
}

#[repr(C)]
struct CondPair {
    m: PMutex,
    c: PCond,
    turn: AtomicU32,
}

fn condvar_pair(p: &Params, two: bool) -> Result<f64, String> {
    // SAFETY: zeroed storage; the mutex and condvar are initialised next.
    let a = unsafe { SharedAnon::<CondPair>::zeroed() };
    // SAFETY: fresh mapping, never moved, unused yet.
    unsafe {
        a.get().m.init(MutexKind::Plain);
        a.get().c.init();
    }
    let s = a.get();
    handoff(
        p,
        two,
        HANDOFFS,
        &mut |_| {
            s.m.lock();
            s.turn.store(1, Ordering::Relaxed);
            s.c.signal();
            while s.turn.load(Ordering::Relaxed) != 0 {
                // SAFETY: we hold `s.m`.
                unsafe { s.c.wait(&s.m) };
            }
            s.m.unlock();
        },
        &mut |_| {
            s.m.lock();
            while s.turn.load(Ordering::Relaxed) != 1 {
                // SAFETY: we hold `s.m`.
                unsafe { s.c.wait(&s.m) };
            }
            s.turn.store(0, Ordering::Relaxed);
            s.c.signal();
            s.m.unlock();
        },
    )
}

fn futex_pair(p: &Params, two: bool) -> Result<f64, String> {
    // SAFETY: a zeroed atomic is valid.
    let a = unsafe { SharedAnon::<AtomicU32>::zeroed() };
    let w = a.get();
    let wait_for = |want: u32| loop {
        let v = w.load(Ordering::Acquire);
        if v == want {
            break;
        }
        raw::futex_wait(w, v);
    };
    handoff(
        p,
        two,
        HANDOFFS,
        &mut |k| {
            w.store(2 * k + 1, Ordering::Release);
            raw::futex_wake(w);
            wait_for(2 * k + 2);
        },
        &mut |k| {
            wait_for(2 * k + 1);
            w.store(2 * k + 2, Ordering::Release);
            raw::futex_wake(w);
        },
    )
}

// ------------------------------------------------------------------- attach

/// Times [`BATCHES`] batches of `per` attaches (each kept until its batch
/// is timed, then released untimed); µs per attach in the fastest batch
/// (see [`time_loop`]).
fn time_attach<H>(
    p: &Params,
    mut open: impl FnMut() -> Result<H, String>,
    mut close: impl FnMut(H),
) -> Result<f64, String> {
    let per = if p.smoke { 10 } else { 200 };
    let mut best = f64::INFINITY;
    let mut held = Vec::with_capacity(per);
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..per {
            held.push(open()?);
        }
        best = best.min(t.elapsed().as_nanos() as f64 / 1e3 / per as f64);
        for h in held.drain(..) {
            close(h);
        }
    }
    Ok(best)
}

fn cell_open(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let _cell = ShmCell::<u64>::create(&name.name, 0).map_err(err)?;
    time_attach(p, || ShmCell::<u64>::open(&name.name).map_err(err), drop)
}

fn big_open(p: &Params, big: &str) -> Result<f64, String> {
    time_attach(p, || ShmCell::<Big>::open(big).map_err(err), drop)
}

fn raw_attach(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let _cell = ShmCell::<u64>::create(&name.name, 0).map_err(err)?;
    let c = CString::new(name.name.as_str()).map_err(err)?;
    time_attach(p, || Ok(raw::attach(&c)), raw::detach)
}

// --------------------------------------------------------------- value size

fn cell_4k_lock(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<[u8; 4096]>::create(&name.name, [0; 4096]).map_err(err)?;
    let n = p.iters(2_000_000);
    Ok(time_loop(n, || match cell.lock() {
        Ok(mut g) => g[0] = g[0].wrapping_add(1),
        Err(e) => fail("lock", e),
    })
    .ns)
}

fn big_lock(p: &Params, big: &str) -> Result<f64, String> {
    let cell = ShmCell::<Big>::open(big).map_err(err)?;
    let n = p.iters(2_000_000);
    Ok(time_loop(n, || match cell.lock() {
        Ok(mut g) => g[0] = g[0].wrapping_add(1),
        Err(e) => fail("lock", e),
    })
    .ns)
}

/// Creates the 64 MiB cell once. `create` takes the value by value, so a
/// forked helper does it on a thread with a large stack (the bench process
/// itself stays single-threaded for its forks).
fn create_big(name: &str) -> Result<(), String> {
    procs::in_child(|| {
        let name = name.to_string();
        std::thread::Builder::new()
            .stack_size(4 * BIG + (16 << 20))
            .spawn(move || {
                let v: Big = [0; BIG];
                ShmCell::<Big>::create(&name, black_box(v))
                    .map(drop)
                    .map_err(err)
            })
            .map_err(err)?
            .join()
            .map_err(|_| "create thread panicked".to_string())?
    })
}

// --------------------------------------------------------------------- main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke")
        || std::env::var("SHMSYNC_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut rounds = if smoke { 5 } else { 15 };
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(rounds)
                    .max(1)
            }
            "--smoke" | "--bench" => {}
            f if !f.starts_with('-') => filters.push(f.to_string()),
            _ => {}
        }
    }
    let cpus = procs::allowed_cpus();
    let params = Params {
        smoke,
        rounds,
        cpus,
    };
    let sweep = procs::Sweep::new();
    let code = match run(&params, &filters) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench failed: {e}");
            1
        }
    };
    let left = sweep.sweep();
    if left > 0 {
        eprintln!("bench: removed {left} objects a row left in /dev/shm");
    }
    drop(sweep);
    std::process::exit(code);
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn run(params: &Params, filters: &[String]) -> Result<(), String> {
    let big = CellName::new();
    let mut b = Bench::default();
    register(&mut b, &big.name);
    b.validate()?;
    if !filters.is_empty() {
        for c in &mut b.cases {
            if !filters
                .iter()
                .any(|f| key(c.section, &c.name).contains(f.as_str()))
            {
                c.run = None;
                c.skipped = true;
            }
        }
    }
    if b.cases
        .iter()
        .any(|c| c.run.is_some() && c.name.contains("64 MiB"))
    {
        create_big(&big.name)?;
    }
    let load_before = loadavg();
    eprintln!(
        "shmsync bench: {} rounds (+1 warm-up){}, CPUs {:?}, load {load_before}",
        params.rounds,
        if params.smoke { ", SMOKE counts" } else { "" },
        params.cpus
    );
    let t0 = Instant::now();
    b.run(params)?;
    let load_after = loadavg();
    let table = b.table();
    println!("{table}");
    if params.smoke {
        println!("SMOKE counts: a check that the bench runs, not a measurement.");
    }
    let meta = [
        (
            "date_unix",
            format!(
                "{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ),
        ),
        ("smoke", params.smoke.to_string()),
        ("rounds", params.rounds.to_string()),
        ("cpus", format!("{:?}", params.cpus)),
        ("cpu_model", cpu_model()),
        (
            "kernel",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        ("glibc", glibc_version()),
        ("loadavg_before", load_before),
        ("loadavg_after", load_after),
        ("seconds", format!("{:.1}", t0.elapsed().as_secs_f64())),
    ];
    // A smoke or filtered run never overwrites the full results.
    let path = results_path(if params.smoke {
        "locks-smoke.json"
    } else if !filters.is_empty() {
        "locks-partial.json"
    } else {
        "locks.json"
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(&path, b.json(&meta)).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default()
}

fn glibc_version() -> String {
    extern "C" {
        fn gnu_get_libc_version() -> *const libc::c_char;
    }
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }
        .to_string_lossy()
        .into_owned()
}

/// `$CARGO_TARGET_DIR`, else the `target/` this binary was built in
/// (`target/release/deps/locks-HASH`), then `shmsync-bench/FILE`.
fn results_path(file: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.ancestors().nth(3).map(|p| p.to_path_buf()))
        })
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target"))
        });
    target.join("shmsync-bench").join(file)
}
