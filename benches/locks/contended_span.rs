//! The contended rows of the other lockers (the backends' `ShmCell`s other
//! than the robust mutex's, the peer crates, `flock`, a named semaphore):
//! one child per CPU entry, each N x (lock, increment, unlock), timed over
//! the team's whole span and checked by the counter. (The robust mutex's
//! rows, with their contention probes, are in `contend.rs`.)

use std::sync::atomic::{AtomicU64, Ordering};

use crate::harness::Params;
use crate::measure::{bump, err, expect_count, CellName};
use crate::procs::{self, fresh_name, Gate, SharedAnon};
use crate::raw;
use crate::uncontended::{raw_sync_new, PeerArena};
use shmsync::{LockBackend, ShmCell};

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

pub fn cell_contended<L: LockBackend>(
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

pub fn raw_sync_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
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

pub fn process_sync_contended(
    p: &Params,
    cpus: &[Option<usize>],
    total: u64,
) -> Result<f64, String> {
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

pub fn flock_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
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

pub fn sem_contended(p: &Params, cpus: &[Option<usize>], total: u64) -> Result<f64, String> {
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
