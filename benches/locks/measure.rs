//! What every row's measurement is built from: the timed loop of the
//! one-process rows, the attach timer, the failure path kept out of the
//! loops, the counter check, and cell names removed on drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::harness::Params;
use crate::procs::fresh_name;
use shmsync::ShmCell;

pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Timed batches per measurement of a one-process row.
pub const BATCHES: u64 = 5;

/// What [`time_loop`] measured.
pub struct Timed {
    /// ns per call in the fastest batch.
    pub ns: f64,
    /// Calls made, warm-up included (for the counter check).
    pub calls: u64,
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
pub fn time_loop(n: u64, mut f: impl FnMut()) -> Timed {
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
pub fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}")
}

/// A cell name that is unlinked when dropped (in the parent only).
pub struct CellName {
    pub name: String,
    pid: u32,
}

impl CellName {
    pub fn new() -> CellName {
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
pub struct Arena<L> {
    pub lock: L,
    pub counter: AtomicU64,
}

/// `counter += 1` as a plain read-modify-write (the lock orders it).
#[inline(always)]
pub fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

pub fn expect_count(got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "counter is {got}, expected {want}: mutual exclusion broken"
        ))
    }
}

/// Times [`BATCHES`] batches of `per` attaches (each kept until its batch
/// is timed, then released untimed); µs per attach in the fastest batch
/// (see [`time_loop`]).
pub fn time_attach<H>(
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
