//! The targets table: the issues' goals, each a ratio of two rows taken
//! within each round (or a bound on one row), checked against the run.

use crate::contend::{tag, Counter};
use crate::harness::{key, Bench, Check, Section};
use crate::kinds;
use crate::sections::*;

/// Every target, in table order (after the rows they name).
pub fn register(b: &mut Bench<'_>) {
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
            (&UNCONTENDED, CELL_SEM),
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
    kinds::register_targets(b);

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
    for procs in [2, 4, 8] {
        b.target(
            leak(format!(
                "(15) semaphore backend contended, {procs} processes: ShmCell<NamedSemaphore> >= 1.0x raw sem"
            )),
            ratio(
                (&SCALING, &format!("{CELL_SEM} [in] x{procs}")),
                (&SCALING, &format!("{RAW_SEM} x{procs}")),
                Some(1.0),
                None,
            ),
        );
    }
    b.target(
        "(15) rwlock read, 2 processes: RobustRwLock read >= 1.0x raw pthread rwlock read",
        ratio(
            (&CONTENDED_READ, CELL_RW_READ),
            (&CONTENDED_READ, RAW_RWLOCK_READ),
            Some(1.0),
            None,
        ),
    );
    b.target(
        "(context) rwlock read, 2 processes: RobustRwLock read / ShmCell<RobustMutex>::lock",
        ratio(
            (&CONTENDED_READ, CELL_RW_READ),
            (&CONTENDED_READ, CELL_LOCK),
            None,
            None,
        ),
    );
}

/// A target's text made at registration (the harness keeps `&'static str`).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
