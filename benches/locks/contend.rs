//! Contended rows of the robust mutex: P processes, each N × (lock,
//! increment a counter, unlock), with the counter **in the cell** (`[in]`:
//! for `ShmCell` its value, which starts on the cache line after the lock
//! word; for the raw mutex the same place, the line after the
//! `pthread_mutex_t`) or **outside** (in a mapping of its own), so that
//! every comparison is like with like. The same machinery runs the
//! semaphore backend's scaling rows ([`cell`] is generic over the backend;
//! [`named_sem`] is the raw named semaphore) and the read rows of
//! `rwlock.rs` ([`run`]).
//!
//! One run also counts, per child and without touching shared memory more
//! than the loop already does:
//!
//! * **hand-overs**: acquisitions where the counter is not the value this
//!   process left behind, i.e. another process held the lock in between;
//! * **sleeps**: voluntary context switches (`getrusage`'s `ru_nvcsw`,
//!   i.e. `FUTEX_WAIT`s that slept) during the timed part;
//! * with `latency`, child 0's time per lock + increment + unlock call
//!   (its 99th percentile and maximum), which is dominated by the wait to
//!   acquire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::harness::Params;
use crate::measure::{err, expect_count, fail, CellName};
use crate::procs::{self, fresh_name, SharedAnon, MAX_TEAM};
use crate::raw::{self, MutexKind, PMutex};
use shmsync::{LockBackend, RobustMutex, ShmCell};

/// Where the counter lives relative to the lock word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// In the cell: `ShmCell`'s value, on the cache line after the lock
    /// word (the raw mutex: the same place).
    InCell,
    /// In a separate mapping.
    Outside,
}

/// The row-name tag of where the counter lives.
pub fn tag(c: Counter) -> &'static str {
    match c {
        Counter::InCell => "[in]",
        Counter::Outside => "[out]",
    }
}

/// The robust-mutex lockers of the contended, scaling and latency rows.
#[derive(Clone, Copy)]
pub enum Locker {
    Cell,
    Raw(MutexKind),
}

impl Locker {
    pub fn run(
        self,
        p: &Params,
        cpus: &[Option<usize>],
        total: u64,
        counter: Counter,
        latency: bool,
    ) -> Result<Run, String> {
        match self {
            Locker::Cell => cell::<RobustMutex>(p, cpus, total, counter, latency),
            Locker::Raw(kind) => raw(p, cpus, total, kind, counter, latency),
        }
    }
}

/// What one contended run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Operations done, all processes together (the counter's value).
    pub ops: u64,
    /// Million locks per second, all processes together.
    pub mlps: f64,
    /// Hand-overs between processes per 1000 locks.
    pub handoffs_per_k: f64,
    /// Voluntary context switches per 1000 locks.
    pub sleeps_per_k: f64,
    /// Child 0's 99th percentile call time, µs (with `latency`).
    pub p99_us: f64,
    /// Child 0's longest call, µs (with `latency`).
    pub max_us: f64,
}

/// Per-child tallies, in shared memory: hand-overs, sleeps, p99 ns, max ns,
/// operations done; and the start barrier and stop flag.
#[repr(C)]
struct Tally {
    t: [[AtomicU64; 5]; MAX_TEAM],
    arrived: AtomicU64,
    /// When the last child arrived at the barrier (ns, `CLOCK_MONOTONIC`).
    t0: AtomicU64,
    _pad: [u64; 6],
    stop: AtomicU64,
}
fn rusage() -> libc::rusage {
    // SAFETY: an all-zero rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes; RUSAGE_SELF always exists.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru
}

fn nvcsw() -> u64 {
    rusage().ru_nvcsw as u64
}

fn tv_us(t: libc::timeval) -> i64 {
    t.tv_sec * 1_000_000 + t.tv_usec
}

/// Runs one child per entry of `cpus`. Each calls `setup(i)` untimed (it
/// may open the cell by name), then up to `per` times the operation it
/// returned, which locks, increments the counter, unlocks, and returns the
/// counter's value before the increment (a failed lock panics out of line,
/// through [`fail`](crate::measure::fail): the child then fails the run);
/// the read rows (`rwlock.rs`) read instead and return the value read,
/// which makes their hand-over count meaningless (they do not report it).
/// Measured
/// with callgrind, the loop costs the same for both lockers but for
/// `ShmCell`'s own instructions (an earlier version returning `Result`
/// cost `ShmCell` 38 more instructions per call than the raw mutex here; now 25, against 14 in `benches/callgrind.rs`).
///
/// Only the time when *every* child runs its loop is measured: on a
/// shared machine a child may get its CPU milliseconds after the others
/// (measured: two children each busy for 10–16 ms of a 100 ms span, each
/// mostly alone). So the children meet at a barrier (yielding, bounded)
/// after the release, and the first to finish its `per` operations raises
/// a stop flag that the others read every 64 operations (a read-only line,
/// the same cost for every row). Throughput is the operations done over
/// the span from the last arrival to the last stop. (With `latency`, child 0
/// ignores the flag: it always makes its `per` calls, so that it has
/// percentiles even when the others finished before it got a CPU.)
pub fn run<S, F>(
    cpus: &[Option<usize>],
    per: u64,
    latency: bool,
    mut setup: S,
) -> Result<Run, String>
where
    S: FnMut(usize) -> Result<F, String>,
    F: FnMut() -> u64,
{
    // SAFETY: all-zero atomics are valid.
    let tally = unsafe { SharedAnon::<Tally>::zeroed() };
    let n = cpus.len() as u64;
    let spans = procs::team(cpus, &mut |i, gate| {
        let mut op = setup(i)?;
        let mut lat = Vec::new();
        let timed = latency && i == 0;
        if timed {
            lat.reserve_exact(per as usize);
        }
        let cs0 = nvcsw();
        let ru0 = rusage();
        let tl = tally.get();
        gate.start();
        // The barrier: every child is running its loop from here on.
        if tl.arrived.fetch_add(1, Ordering::AcqRel) + 1 == n {
            tl.t0.store(procs::now_ns(), Ordering::Release);
        }
        let deadline = Instant::now() + procs::TEAM_TIMEOUT / 2;
        while tl.arrived.load(Ordering::Acquire) < n {
            if Instant::now() > deadline {
                return Err("barrier: a child never arrived".into());
            }
            std::thread::yield_now();
        }
        let mut last = u64::MAX;
        let mut hand = 0u64;
        let mut done = 0u64;
        if timed {
            // No stop flag: the timed child always does all its calls.
            while done < per {
                let t = Instant::now();
                let v = op();
                lat.push(t.elapsed().as_nanos() as u64);
                hand += u64::from(v != last);
                last = v + 1;
                done += 1;
            }
        } else {
            while done < per && (done & 63 != 0 || tl.stop.load(Ordering::Relaxed) == 0) {
                let v = op();
                hand += u64::from(v != last);
                last = v + 1;
                done += 1;
            }
        }
        tl.stop.store(1, Ordering::Relaxed);
        if std::env::var_os("SHMSYNC_BENCH_PROBE").is_some() {
            let ru1 = rusage();
            eprintln!(
                "probe child {i}: done {done} hand {hand} user {} us sys {} us nvcsw {} nivcsw {}",
                tv_us(ru1.ru_utime) - tv_us(ru0.ru_utime),
                tv_us(ru1.ru_stime) - tv_us(ru0.ru_stime),
                ru1.ru_nvcsw - ru0.ru_nvcsw,
                ru1.ru_nivcsw - ru0.ru_nivcsw
            );
        }
        let t = &tally.get().t[i];
        t[4].store(done, Ordering::Relaxed);
        t[0].store(hand, Ordering::Relaxed);
        t[1].store(nvcsw() - cs0, Ordering::Relaxed);
        if timed && !lat.is_empty() {
            lat.sort_unstable();
            let k = ((lat.len() * 99).div_ceil(100)).clamp(1, lat.len()) - 1;
            t[2].store(lat[k], Ordering::Relaxed);
            t[3].store(lat[lat.len() - 1], Ordering::Relaxed);
        }
        Ok(())
    })?;
    let sum = |k: usize| -> u64 {
        (0..cpus.len())
            .map(|i| tally.get().t[i][k].load(Ordering::Relaxed))
            .sum()
    };
    let ops = sum(4);
    let from = tally.get().t0.load(Ordering::Acquire);
    let to = spans.0.iter().map(|s| s.1).max().unwrap_or(0);
    let c0 = &tally.get().t[0];
    Ok(Run {
        ops,
        mlps: ops as f64 * 1e3 / to.saturating_sub(from).max(1) as f64,
        handoffs_per_k: sum(0) as f64 * 1e3 / ops as f64,
        sleeps_per_k: sum(1) as f64 * 1e3 / ops as f64,
        p99_us: c0[2].load(Ordering::Relaxed) as f64 / 1e3,
        max_us: c0[3].load(Ordering::Relaxed) as f64 / 1e3,
    })
}

/// `ShmCell<u64, L>` (the scaling rows' default robust mutex, or another
/// backend), each process attaching by name.
pub fn cell<L: LockBackend>(
    p: &Params,
    cpus: &[Option<usize>],
    total: u64,
    counter: Counter,
    latency: bool,
) -> Result<Run, String> {
    let name = CellName::new();
    let cell = ShmCell::<u64, L>::create(&name.name, 0).map_err(err)?;
    // SAFETY: a zeroed atomic is valid.
    let out = unsafe { SharedAnon::<AtomicU64>::zeroed() };
    let per = (p.iters(total) / cpus.len() as u64).max(1);
    let r = match counter {
        Counter::InCell => run(cpus, per, latency, |_| {
            let mine = ShmCell::<u64, L>::open(&name.name).map_err(err)?;
            Ok(move || match mine.lock() {
                Ok(mut g) => {
                    let v = *g;
                    *g = v + 1;
                    v
                }
                Err(e) => fail("lock", e),
            })
        })?,
        Counter::Outside => run(cpus, per, latency, |_| {
            let mine = ShmCell::<u64, L>::open(&name.name).map_err(err)?;
            let c = out.get();
            Ok(move || match mine.lock() {
                Ok(g) => {
                    let v = c.load(Ordering::Relaxed);
                    c.store(v + 1, Ordering::Relaxed);
                    drop(g);
                    v
                }
                Err(e) => fail("lock", e),
            })
        })?,
    };
    let got = match counter {
        Counter::InCell => *cell.lock().map_err(err)?,
        Counter::Outside => out.get().load(Ordering::Relaxed),
    };
    expect_count(got, r.ops)?;
    Ok(r)
}

/// A raw mutex followed by a counter where `ShmCell` puts its value: at the
/// start of the next cache line (`PMutex` is 64-byte aligned, 40 bytes;
/// `src/segment/layout.rs`, `VALUE_LINE`).
#[repr(C)]
struct Beside {
    lock: PMutex,
    counter: NextLine,
}

/// A counter on a cache line of its own.
#[repr(C, align(64))]
struct NextLine(AtomicU64);

/// A raw `pthread_mutex_t` of the given kind, called directly.
pub fn raw(
    p: &Params,
    cpus: &[Option<usize>],
    total: u64,
    kind: MutexKind,
    counter: Counter,
    latency: bool,
) -> Result<Run, String> {
    // SAFETY: zeroed bytes are valid storage; the mutex is initialised next.
    let a = unsafe { SharedAnon::<Beside>::zeroed() };
    // SAFETY: fresh mapping, never moved, nobody uses it yet.
    unsafe { a.get().lock.init(kind) };
    // SAFETY: a zeroed atomic is valid.
    let out = unsafe { SharedAnon::<AtomicU64>::zeroed() };
    let m = &a.get().lock;
    let c = match counter {
        Counter::InCell => &a.get().counter.0,
        Counter::Outside => out.get(),
    };
    let per = (p.iters(total) / cpus.len() as u64).max(1);
    let r = run(cpus, per, latency, |_| {
        Ok(move || {
            if m.lock() != 0 {
                fail("pthread_mutex_lock", "error");
            }
            let v = c.load(Ordering::Relaxed);
            c.store(v + 1, Ordering::Relaxed);
            m.unlock();
            v
        })
    })?;
    expect_count(c.load(Ordering::Relaxed), r.ops)?;
    Ok(r)
}

/// A raw named semaphore (value 1) used as a lock, as a program without
/// this crate would: `sem_wait`, increment, `sem_post`. The counter is in a
/// mapping of its own (the semaphore is an object of its own, with nothing
/// beside it), as `ShmCell<NamedSemaphore>`'s value is apart from its
/// semaphore.
pub fn named_sem(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<Run, String> {
    let s = raw::NamedSem::create(&fresh_name());
    // SAFETY: a zeroed atomic is valid.
    let out = unsafe { SharedAnon::<AtomicU64>::zeroed() };
    let c = out.get();
    let per = (p.iters(total) / cpus.len() as u64).max(1);
    let r = run(cpus, per, false, |_| {
        let s = &s;
        Ok(move || {
            s.wait();
            let v = c.load(Ordering::Relaxed);
            c.store(v + 1, Ordering::Relaxed);
            s.post();
            v
        })
    })?;
    expect_count(c.load(Ordering::Relaxed), r.ops)?;
    Ok(r)
}
