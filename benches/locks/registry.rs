//! The row registry: every row of the table, in table order, each one call
//! `b.row(SECTION, name, baseline, robust, closure)`, the closure usually
//! one of the measuring functions of the row's module.

use std::cell::Cell;
use std::rc::Rc;

use crate::attach::{big_open, cell_open, raw_attach};
use crate::contend::{self, tag, Counter, Locker};
use crate::contended_span::{
    cell_contended, flock_contended, process_sync_contended, raw_sync_contended, sem_contended,
};
use crate::handoff::{cell_handoff, condvar_pair, futex_pair, pipe_pair, sem_pair};
use crate::harness::{Bench, Params};
use crate::kinds;
use crate::raw::MutexKind;
use crate::rwlock;
use crate::sections::*;
use crate::uncontended::{
    cell_lock, cell_try_lock, process_sync_lock, raw_flock_lock, raw_lock, raw_sem_lock,
    raw_sync_lock, robust_mutex_lock, Raw,
};
use crate::value_size::{big_lock, cell_4k_lock};
use shmsync::{NamedSemaphore, RobustMutex, RobustRwLock};

/// Every row, in table order (a section's rows must be registered
/// together: the table starts a section where the section changes).
pub fn register<'a>(b: &mut Bench<'a>, big: &'a str) {
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
        CELL_SEM,
        Some(RAW_SEM),
        "yes",
        cell_lock::<shmsync::NamedSemaphore>,
    );
    // The reader-writer lock: its read side (a load, no increment), its
    // write side, and a raw process-shared rwlock's read side.
    b.row(
        &UNCONTENDED,
        CELL_RW_READ_LOAD,
        rb,
        "yes",
        rwlock::cell_read,
    );
    b.row(
        &UNCONTENDED,
        CELL_RW_LOCK,
        rb,
        "yes",
        cell_lock::<RobustRwLock>,
    );
    b.row(
        &UNCONTENDED,
        RAW_RWLOCK_READ_LOAD,
        rb,
        "no",
        rwlock::raw_read,
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
    b.row(&CONTENDED, CELL_SEM, Some(RAW_SEM), "yes", move |p| {
        cell_contended::<shmsync::NamedSemaphore>(p, &c2(p), SEM_OPS)
    });

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

    // Two processes reading at once.
    let rr = Some(RAW_RWLOCK_READ);
    b.row(&CONTENDED_READ, CELL_RW_READ, rr, "yes", move |p| {
        rwlock::cell_read_contended(p, &c2(p), RWLOCK_READ_OPS)
    });
    b.row(&CONTENDED_READ, CELL_LOCK, rr, "yes", move |p| {
        rwlock::mutex_read_contended(p, &c2(p), READ_OPS)
    });
    b.row(&CONTENDED_READ, RAW_RWLOCK_READ, rr, "no", move |p| {
        rwlock::raw_read_contended(p, &c2(p), READ_OPS)
    });

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

    // The semaphore backend by process count (its semaphore is an object
    // of its own: the raw semaphore's counter is in a mapping of its own).
    for procs in [1usize, 2, 4, 8] {
        let cpus = move |p: &Params| (0..procs).map(|i| Some(p.cpu(i))).collect::<Vec<_>>();
        let base = format!("{RAW_SEM} x{procs}");
        b.row(
            &SCALING,
            format!("{CELL_SEM} [in] x{procs}"),
            Some(&base),
            "yes",
            move |p| {
                let r =
                    contend::cell::<NamedSemaphore>(p, &cpus(p), SEM_OPS, Counter::InCell, false)?;
                Ok(r.mlps)
            },
        );
        b.row(&SCALING, base.clone(), Some(&base), "no", move |p| {
            Ok(contend::named_sem(p, &cpus(p), SEM_OPS)?.mlps)
        });
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

    // Per kind of backing (benches/locks/kinds.rs).
    kinds::register_rows(b);
}
