//! The reader-writer rows: `ShmCell<u64, RobustRwLock>`'s read side,
//! uncontended and with two processes reading at once, against a raw
//! process-shared `pthread_rwlock_t` (not robust) and against taking the
//! robust mutex to read. (The write side's uncontended row is the generic
//! `uncontended::cell_lock::<RobustRwLock>`.)
//!
//! No writer runs during these rows, so every read must see the value the
//! cell was created with; each read checks it (a wrong value fails the
//! row), and the uncontended rows check the number of reads by their sum.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::contend;
use crate::harness::Params;
use crate::measure::{err, fail, time_loop, CellName};
use crate::procs::SharedAnon;
use crate::raw::PRwLock;
use shmsync::{RobustRwLock, ShmCell};

/// The value the contended read rows' cells hold.
const SHOWN: u64 = 0x5eed_cafe;

/// A raw rwlock and the value on the cache line after it, where `ShmCell`
/// puts its value after its lock (`PRwLock` is 64-byte aligned, 56 bytes).
#[repr(C)]
struct Beside {
    lock: PRwLock,
    value: NextLine,
}

/// A value on a cache line of its own.
#[repr(C, align(64))]
struct NextLine(AtomicU64);

/// A fresh raw rwlock in shared memory, its value set to `v`.
fn raw_beside(v: u64) -> SharedAnon<Beside> {
    // SAFETY: zeroed bytes are valid storage; the rwlock is initialised next.
    let a = unsafe { SharedAnon::<Beside>::zeroed() };
    // SAFETY: fresh mapping, never moved, nobody uses it yet.
    unsafe { a.get().lock.init() };
    a.get().value.0.store(v, Ordering::Relaxed);
    a
}

/// The value a read saw, checked (out of line when wrong).
#[inline(always)]
fn checked(v: u64, want: u64) -> u64 {
    if v != want {
        fail("read", format_args!("saw {v:#x}, expected {want:#x}"));
    }
    v
}

fn expect_reads(sum: u64, calls: u64) -> Result<(), String> {
    if sum == calls {
        Ok(())
    } else {
        Err(format!("reads summed to {sum}, expected {calls}"))
    }
}

/// Uncontended: read guard, load the value (1), drop the guard.
pub fn cell_read(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<u64, RobustRwLock>::create(&name.name, 1).map_err(err)?;
    let mut sum = 0u64;
    let t = time_loop(p.iters(2_000_000), || match cell.read() {
        Ok(g) => sum += *g,
        Err(e) => fail("read", e),
    });
    expect_reads(sum, t.calls)?;
    Ok(t.ns)
}

/// Uncontended: `pthread_rwlock_rdlock`, load the value (1), unlock.
pub fn raw_read(p: &Params) -> Result<f64, String> {
    let a = raw_beside(1);
    let (rw, v) = (&a.get().lock, &a.get().value.0);
    let mut sum = 0u64;
    let t = time_loop(p.iters(2_000_000), || {
        if rw.rdlock() != 0 {
            fail("pthread_rwlock_rdlock", "error");
        }
        sum += v.load(Ordering::Relaxed);
        rw.unlock();
    });
    expect_reads(sum, t.calls)?;
    Ok(t.ns)
}

fn per_child(p: &Params, cpus: &[Option<usize>], total: u64) -> u64 {
    (p.iters(total) / cpus.len() as u64).max(1)
}

/// Contended: each process opens the cell by name and reads through
/// `read()`; million reads per second, all processes together.
pub fn cell_read_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
    let name = CellName::new();
    let _cell = ShmCell::<u64, RobustRwLock>::create(&name.name, SHOWN).map_err(err)?;
    let r = contend::run(cpus, per_child(p, cpus, total), false, |_| {
        let mine = ShmCell::<u64, RobustRwLock>::open(&name.name).map_err(err)?;
        Ok(move || match mine.read() {
            Ok(g) => checked(*g, SHOWN),
            Err(e) => fail("read", e),
        })
    })?;
    Ok(r.mlps)
}

/// Contended: the same reads through the default robust mutex's `lock()`.
pub fn mutex_read_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
    let name = CellName::new();
    let _cell = ShmCell::<u64>::create(&name.name, SHOWN).map_err(err)?;
    let r = contend::run(cpus, per_child(p, cpus, total), false, |_| {
        let mine = ShmCell::<u64>::open(&name.name).map_err(err)?;
        Ok(move || match mine.lock() {
            Ok(g) => checked(*g, SHOWN),
            Err(e) => fail("lock", e),
        })
    })?;
    Ok(r.mlps)
}

/// Contended: a raw process-shared rwlock, read-locked by every process.
pub fn raw_read_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
    let a = raw_beside(SHOWN);
    let (rw, v) = (&a.get().lock, &a.get().value.0);
    let r = contend::run(cpus, per_child(p, cpus, total), false, |_| {
        Ok(move || {
            if rw.rdlock() != 0 {
                fail("pthread_rwlock_rdlock", "error");
            }
            let seen = v.load(Ordering::Relaxed);
            rw.unlock();
            checked(seen, SHOWN)
        })
    })?;
    Ok(r.mlps)
}
