//! Snapshots (`CreateOptions::snapshots`, `ShmCell::snapshot`): a copy of
//! the value as of the last completed write, read without any lock; never
//! torn, never stalled by a writer that is killed or stopped anywhere.
//!
//! Default libtest harness; other processes are this binary re-run by
//! `shmsync::testing::child!`.

use std::time::{Duration, Instant};

use shmsync::testing::{self, ChildSpec, TestName};
use shmsync::{
    CreateOptions, Error, FileLock, LockBackend, LockError, NamedSemaphore, RobustMutex, ShmCell,
    ShmSafe, SnapshotError,
};

/// 4 KiB: a sequence number, a checksum over the rest, and data.
#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Page {
    seq: u64,
    sum: u64,
    data: [u64; 510],
}
const _: () = assert!(std::mem::size_of::<Page>() == 4096);

/// 64 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ShmSafe)]
#[repr(C)]
struct Small {
    seq: u64,
    words: [u64; 7],
}

/// Deliberately with padding (7 bytes after `a`), implemented by hand:
/// `HAS_PADDING` keeps its default, `true`.
#[derive(Clone, Copy)]
#[repr(C)]
struct Padded {
    a: u8,
    b: u64,
}
// SAFETY: integers only, repr(C), every bit pattern valid, no pointers.
unsafe impl ShmSafe for Padded {}

/// How long one `snapshot()` may take at most, in wall-clock time.
/// Generous: on a shared 2-core machine running the kill loops side by
/// side, a reader descheduled mid-copy was seen taking 0.85 s; a snapshot
/// that waited for a stopped or dead writer would never end.
const SNAPSHOT_BOUND: Duration = Duration::from_secs(5);
/// Writer kill cycles of the default backend's loop (the others run
/// fewer: each cycle starts a process, and the three loops run at once).
const CYCLES: u32 = 200;
const CYCLES_OTHER: u32 = 80;

fn snap() -> CreateOptions {
    CreateOptions::new().snapshots(true)
}

fn checksum(p: &Page) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ p.seq;
    for &d in &p.data {
        h = (h ^ d).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn page(seq: u64) -> Page {
    let mut p = Page {
        seq,
        sum: 0,
        data: [0; 510],
    };
    for (i, d) in p.data.iter_mut().enumerate() {
        *d = mix(seq, i);
    }
    p.sum = checksum(&p);
    p
}

fn mix(seq: u64, i: usize) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).rotate_left(17)
}

fn assert_whole(p: &Page, what: &str) {
    assert_eq!(checksum(p), p.sum, "{what}: torn snapshot (seq {})", p.seq);
}

/// One write of the page, with a point half-way through the data.
fn update(p: &mut Page) {
    p.seq += 1;
    for i in 0..p.data.len() {
        p.data[i] = mix(p.seq, i);
        if i == p.data.len() / 2 {
            testing::point("mid-update");
        }
    }
    p.sum = checksum(p);
}

/// A snapshot, checked whole and timed.
fn timed_snapshot<L: LockBackend>(cell: &ShmCell<Page, L>) -> Page {
    let t = Instant::now();
    let s = cell.snapshot().expect("snapshot");
    let took = t.elapsed();
    assert!(took < SNAPSHOT_BOUND, "snapshot took {took:?}");
    assert_whole(&s, "snapshot");
    s
}

// ------------------------------------------------------------ round trip

fn round_trip<L: LockBackend>(child: &ChildSpec) {
    let name = TestName::new("snap-rt");
    let cell = ShmCell::<Small, L>::create_with(
        &name,
        Small {
            seq: 1,
            words: [1; 7],
        },
        &snap(),
    )
    .unwrap();
    assert!(cell.has_snapshots());
    assert_eq!(cell.info().snapshot_offset % 64, 0);
    assert_ne!(cell.info().snapshot_offset, 0);
    assert_eq!(cell.snapshot().unwrap().seq, 1);
    child.arg(&name).run().unwrap();
    let s = cell.snapshot().unwrap();
    assert_eq!(
        s,
        Small {
            seq: 2,
            words: [2; 7]
        }
    );
    assert_eq!(*cell.lock().unwrap(), s);
}

fn round_trip_child<L: LockBackend>(name: &str) {
    let cell = ShmCell::<Small, L>::open(name).unwrap();
    assert!(cell.has_snapshots());
    assert_eq!(cell.snapshot().unwrap().seq, 1, "the creator's value");
    let mut g = cell.lock().unwrap();
    g.seq = 2;
    g.words = [2; 7];
    // Not published before the release.
    assert_eq!(cell.snapshot().unwrap().seq, 1);
    drop(g);
    assert_eq!(cell.snapshot().unwrap().seq, 2);
}

#[test]
fn round_trip_across_processes_robust_mutex() {
    let child = testing::child!(|ctx| round_trip_child::<RobustMutex>(ctx.arg(0)));
    round_trip::<RobustMutex>(&child);
}

#[test]
fn round_trip_across_processes_flock() {
    let child = testing::child!(|ctx| round_trip_child::<FileLock>(ctx.arg(0)));
    round_trip::<FileLock>(&child);
}

#[test]
fn round_trip_across_processes_semaphore() {
    let child = testing::child!(|ctx| round_trip_child::<NamedSemaphore>(ctx.arg(0)));
    round_trip::<NamedSemaphore>(&child);
}

// ------------------------------------------------------- refusals, header

#[test]
fn cell_created_without_snapshots_answers_not_enabled() {
    let child = testing::child!(|ctx| {
        let cell = ShmCell::<Small>::open(ctx.arg(0)).unwrap();
        assert!(!cell.has_snapshots());
        assert_eq!(cell.snapshot(), Err(SnapshotError::NotEnabled));
    });
    let name = TestName::new("snap-off");
    let cell = ShmCell::<Small>::create(
        &name,
        Small {
            seq: 1,
            words: [0; 7],
        },
    )
    .unwrap();
    assert!(!cell.has_snapshots());
    assert_eq!(cell.info().snapshot_offset, 0);
    assert_eq!(cell.snapshot(), Err(SnapshotError::NotEnabled));
    child.arg(&name).run().unwrap();
    // The lock still works, and nothing is published anywhere.
    cell.lock().unwrap().seq = 2;
    assert_eq!(cell.snapshot(), Err(SnapshotError::NotEnabled));
}

#[test]
fn open_or_create_with_snapshots_opens_a_cell_made_without() {
    let name = TestName::new("snap-ooc");
    let _made = ShmCell::<Small>::create(
        &name,
        Small {
            seq: 1,
            words: [0; 7],
        },
    )
    .unwrap();
    let opened = ShmCell::<Small>::open_or_create_with(
        &name,
        Small {
            seq: 9,
            words: [9; 7],
        },
        &snap(),
    )
    .unwrap();
    assert_eq!(opened.snapshot(), Err(SnapshotError::NotEnabled));
    assert_eq!(opened.lock().unwrap().seq, 1);
}

#[test]
fn a_type_with_padding_is_refused_before_anything_is_created() {
    let name = TestName::new("snap-pad");
    let r = ShmCell::<Padded>::create_with(&name, Padded { a: 1, b: 2 }, &snap());
    assert!(
        matches!(r, Err(Error::SnapshotPadding { type_name }) if type_name.ends_with("Padded")),
        "{:?}",
        r.map(|_| ())
    );
    assert!(name.leftovers().is_empty(), "{:?}", name.leftovers());
    let r = ShmCell::<Padded, FileLock>::open_or_create_with(&name, Padded { a: 1, b: 2 }, &snap());
    assert!(matches!(r, Err(Error::SnapshotPadding { .. })));
    let r = ShmCell::<Padded>::create_anonymous_with(Padded { a: 1, b: 2 }, &snap());
    assert!(matches!(r, Err(Error::SnapshotPadding { .. })));
    assert!(name.leftovers().is_empty(), "{:?}", name.leftovers());
    // Without snapshots the type is fine.
    let cell = ShmCell::<Padded>::create(&name, Padded { a: 1, b: 2 }).unwrap();
    assert_eq!(cell.lock().unwrap().b, 2);
}

#[test]
fn a_damaged_snapshot_offset_is_refused_by_openers() {
    use std::io::{Seek, SeekFrom, Write};
    let name = TestName::new("snap-hdr");
    let cell = ShmCell::<Small>::create_with(
        &name,
        Small {
            seq: 1,
            words: [0; 7],
        },
        &snap(),
    )
    .unwrap();
    let good = cell.info().snapshot_offset;
    drop(cell);
    let write_offset = |v: u64| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(name.path())
            .unwrap();
        f.seek(SeekFrom::Start(192)).unwrap();
        f.write_all(&v.to_ne_bytes()).unwrap();
    };
    for bad in [0, good + 8, good - 64, u64::MAX] {
        write_offset(bad);
        let r = ShmCell::<Small>::open(&name);
        assert!(
            matches!(r, Err(Error::Corrupted { .. })),
            "snapshot_offset {bad}: {:?}",
            r.map(|_| ())
        );
    }
    write_offset(good);
    assert_eq!(
        ShmCell::<Small>::open(&name)
            .unwrap()
            .snapshot()
            .unwrap()
            .seq,
        1
    );
}

#[test]
fn memfd_and_file_cells_keep_snapshots_too() {
    let child = testing::child!(|ctx| {
        let cell = ShmCell::<Page, FileLock>::open_file(ctx.arg(0)).unwrap();
        assert_eq!(timed_snapshot(&cell).seq, 1);
        update(&mut cell.lock().unwrap());
    });
    let cell = ShmCell::<Page>::create_anonymous_with(page(1), &snap()).unwrap();
    assert_eq!(timed_snapshot(&cell).seq, 1);
    update(&mut cell.lock().unwrap());
    assert_eq!(timed_snapshot(&cell).seq, 2);

    let dir = std::env::temp_dir().join(format!("shmsync-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("page");
    let result = std::panic::catch_unwind(|| {
        let cell =
            ShmCell::<Page, FileLock>::create_file_in_place(&path, &snap(), |p| *p = page(1))
                .unwrap();
        child.arg(path.to_str().unwrap()).run().unwrap();
        assert_eq!(timed_snapshot(&cell).seq, 2);
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

// ---------------------------------------------- writers stopped or killed

/// Writer of the stop/kill scenarios: one update, with the publication
/// hook pointed at `testing::point` when asked (`arg(1) == "hook"`).
fn one_update<L: LockBackend>(name: &str, hook: &str) {
    if hook == "hook" {
        shmsync::set_snapshot_hook(Some(testing::point));
    }
    let cell = ShmCell::<Page, L>::open(name).unwrap();
    let mut g = cell.lock().unwrap();
    update(&mut g);
}

const MID_COPY: &str = "shmsync: snapshot half-copied";

fn stopped_and_killed_writers<L: LockBackend>(writer: &ChildSpec) {
    let name = TestName::new("snap-stop");
    let cell = ShmCell::<Page, L>::create_with(&name, page(0), &snap()).unwrap();
    let steady = |cell: &ShmCell<Page, L>, seq: u64| {
        for _ in 0..2000 {
            assert_eq!(timed_snapshot(cell).seq, seq);
        }
    };

    // 1. Stopped mid-update, holding the lock: snapshots go on, unchanged.
    let mut w = writer
        .arg(&name)
        .arg("-")
        .stop_at("mid-update")
        .spawn()
        .unwrap();
    w.wait_stopped().unwrap();
    assert!(matches!(cell.try_lock(), Err(LockError::WouldBlock)));
    steady(&cell, 0);
    w.resume().unwrap();
    w.wait().unwrap();
    assert_eq!(timed_snapshot(&cell).seq, 1);

    // 2. Stopped mid-publication (half of the unpublished copy written):
    //    the published copy is still read, whole.
    let mut w = writer
        .arg(&name)
        .arg("hook")
        .stop_at(MID_COPY)
        .spawn()
        .unwrap();
    w.wait_stopped().unwrap();
    steady(&cell, 1);
    w.resume().unwrap();
    w.wait().unwrap();
    assert_eq!(timed_snapshot(&cell).seq, 2);

    // 3. Killed mid-publication: the torn copy is never read; the repairer
    //    (the value itself was whole) publishes on its consistent release.
    let ended = writer.arg(&name).arg("hook").kill_at(MID_COPY).unwrap();
    assert!(ended.killed);
    steady(&cell, 2);
    match cell.lock_timeout(Duration::from_secs(10)) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.seq, 3);
            assert_eq!(checksum(&g), g.sum);
            steady(&cell, 2);
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    }
    assert_eq!(timed_snapshot(&cell).seq, 3);

    // 4. Killed mid-update, then an owner-died guard dropped unrepaired:
    //    nothing is published; the lock is not recoverable; snapshots still
    //    answer the last completed write.
    let ended = writer.arg(&name).arg("-").kill_at("mid-update").unwrap();
    assert!(ended.killed);
    steady(&cell, 3);
    match cell.lock_timeout(Duration::from_secs(10)) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(g.seq, 4);
            assert_ne!(checksum(&g), g.sum, "half-updated");
            drop(g);
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        cell.lock_timeout(Duration::from_secs(10)),
        Err(LockError::NotRecoverable)
    ));
    steady(&cell, 3);
}

#[test]
fn writers_stopped_or_killed_mid_update_and_mid_publication_robust_mutex() {
    let writer = testing::child!(|ctx| one_update::<RobustMutex>(ctx.arg(0), ctx.arg(1)));
    stopped_and_killed_writers::<RobustMutex>(&writer);
}

#[test]
fn writers_stopped_or_killed_mid_update_and_mid_publication_flock() {
    let writer = testing::child!(|ctx| one_update::<FileLock>(ctx.arg(0), ctx.arg(1)));
    stopped_and_killed_writers::<FileLock>(&writer);
}

#[test]
fn writers_stopped_or_killed_mid_update_and_mid_publication_semaphore() {
    let writer = testing::child!(|ctx| one_update::<NamedSemaphore>(ctx.arg(0), ctx.arg(1)));
    stopped_and_killed_writers::<NamedSemaphore>(&writer);
}

/// Writer of the loops: updates for ever (until killed), repairing what a
/// killed predecessor left.
fn write_forever<L: LockBackend>(name: &str) {
    let cell = ShmCell::<Page, L>::open(name).unwrap();
    testing::point("attached");
    loop {
        let mut g = match cell.lock() {
            Ok(g) => g,
            Err(LockError::OwnerDied(mut g)) => {
                g.sum = checksum(&g);
                g.make_consistent();
                g
            }
            Err(e) => panic!("{:?}", e.without_guard()),
        };
        update(&mut g);
    }
}

/// Whether every thread of process `pid` is stopped (state `T`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                == Some("T")
        })
    })
}

#[test]
fn writer_sigstopped_at_a_random_moment_does_not_stall_snapshots() {
    let writer = testing::child!(|ctx| write_forever::<RobustMutex>(ctx.arg(0)));
    let name = TestName::new("snap-sigstop");
    let cell = ShmCell::<Page>::create_with(&name, page(0), &snap()).unwrap();
    for round in 0..5 {
        let mut w = writer.arg(&name).spawn().unwrap();
        w.wait_point("attached").unwrap();
        // Let it publish a few times (bounded poll), then stop the whole
        // process wherever it is.
        let start = timed_snapshot(&cell).seq;
        let deadline = Instant::now() + Duration::from_secs(10);
        while timed_snapshot(&cell).seq < start + 3 + round {
            assert!(Instant::now() < deadline, "the writer made no progress");
            std::thread::yield_now();
        }
        let st = std::process::Command::new("kill")
            .args(["-STOP", &w.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        // The signal takes effect when each thread next enters the kernel:
        // wait (bounded poll) until every thread of it is stopped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(w.pid()) {
            assert!(Instant::now() < deadline, "SIGSTOP did not take");
            std::thread::yield_now();
        }
        // Once stopped, nothing is published any more: every snapshot
        // answers the same whole value.
        let first = timed_snapshot(&cell);
        for _ in 0..2000 {
            let s = timed_snapshot(&cell);
            assert_eq!(s.seq, first.seq);
        }
        let ended = w.kill().unwrap();
        assert!(ended.killed);
        // Repair if it was stopped holding the lock.
        match cell.lock_timeout(Duration::from_secs(10)) {
            Ok(g) => assert_eq!(checksum(&g), g.sum),
            Err(LockError::OwnerDied(mut g)) => {
                g.sum = checksum(&g);
                g.make_consistent();
            }
            Err(e) => panic!("{:?}", e.without_guard()),
        }
    }
}

// ------------------------------------------------------------ kill loop

/// Reader process of the kill loop: snapshots until the flag cell says
/// stop; checks every one (whole, sequence never going back, bounded
/// time); prints its counts.
fn read_until_told<L: LockBackend>(name: &str, flag: &str) {
    let cell = ShmCell::<Page, L>::open(name).unwrap();
    let flag = ShmCell::<u64>::open(flag).unwrap();
    testing::point("reading");
    let (mut reads, mut contended, mut max, mut last) = (0u64, 0u64, Duration::ZERO, 0u64);
    let started = Instant::now();
    while flag.snapshot().unwrap() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never told to stop"
        );
        let t = Instant::now();
        let r = cell.snapshot();
        let took = t.elapsed();
        max = max.max(took);
        assert!(took < SNAPSHOT_BOUND, "snapshot took {took:?}");
        match r {
            Ok(s) => {
                assert_whole(&s, "reader");
                assert!(s.seq >= last, "went back from {last} to {}", s.seq);
                last = s.seq;
                reads += 1;
            }
            Err(SnapshotError::Contended { .. }) => contended += 1,
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "reader: reads={reads} contended={contended} max_us={} last_seq={last}",
        max.as_micros()
    );
}

fn kill_loop<L: LockBackend>(writer: &ChildSpec, reader: &ChildSpec, cycles: u32) {
    let name = TestName::new("snap-loop");
    let flag_name = TestName::new("snap-flag");
    let cell = ShmCell::<Page, L>::create_with(&name, page(0), &snap()).unwrap();
    let flag = ShmCell::<u64>::create_with(&flag_name, 0, &snap()).unwrap();
    let mut r = reader
        .arg(&name)
        .arg(&flag_name)
        .bound(Duration::from_secs(150))
        .spawn()
        .unwrap();
    r.wait_point("reading").unwrap();
    let started = Instant::now();
    let (mut died, mut last) = (0, 0);
    for cycle in 0..cycles {
        let ended = writer
            .arg(&name)
            .kill_within("attached", Duration::from_millis(4))
            .unwrap();
        assert!(ended.killed, "cycle {cycle}");
        let s = timed_snapshot(&cell);
        assert!(s.seq >= last);
        last = s.seq;
        match cell.lock_timeout(Duration::from_secs(10)) {
            Ok(g) => assert_eq!(checksum(&g), g.sum, "cycle {cycle}"),
            Err(LockError::OwnerDied(mut g)) => {
                died += 1;
                g.sum = checksum(&g);
                g.make_consistent();
            }
            Err(e) => panic!("cycle {cycle}: {:?}", e.without_guard()),
        }
    }
    *flag.lock().unwrap() = 1;
    let out = r.wait().unwrap().stdout;
    let line = out
        .lines()
        .find(|l| l.starts_with("reader:"))
        .unwrap_or_else(|| panic!("no report from the reader: {out:?}"));
    let field = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line:?}"))
    };
    assert!(field("reads") > 0, "{line}");
    assert!(last > 0, "the writers made progress");
    eprintln!(
        "{}: {cycles} writers killed ({died} holding the lock) in {:?}, last seq {last}; {line}",
        std::any::type_name::<L>(),
        started.elapsed()
    );
}

#[test]
fn kill_loop_every_snapshot_is_whole_robust_mutex() {
    let writer = testing::child!(|ctx| write_forever::<RobustMutex>(ctx.arg(0)));
    let reader = testing::child!(|ctx| read_until_told::<RobustMutex>(ctx.arg(0), ctx.arg(1)));
    kill_loop::<RobustMutex>(&writer, &reader, CYCLES);
}

#[test]
fn kill_loop_every_snapshot_is_whole_flock() {
    let writer = testing::child!(|ctx| write_forever::<FileLock>(ctx.arg(0)));
    let reader = testing::child!(|ctx| read_until_told::<FileLock>(ctx.arg(0), ctx.arg(1)));
    kill_loop::<FileLock>(&writer, &reader, CYCLES_OTHER);
}

#[test]
fn kill_loop_every_snapshot_is_whole_semaphore() {
    let writer = testing::child!(|ctx| write_forever::<NamedSemaphore>(ctx.arg(0)));
    let reader = testing::child!(|ctx| read_until_told::<NamedSemaphore>(ctx.arg(0), ctx.arg(1)));
    kill_loop::<NamedSemaphore>(&writer, &reader, CYCLES_OTHER);
}
