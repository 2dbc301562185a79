//! Segments: names, bad objects, header corruption, permissions, and the
//! initialisation race — each failure a distinct error, never a crash.
//!
//! Default libtest harness: tests run in parallel threads of one process.
//! Other processes are this binary re-run by `shmsync::testing::child!`,
//! killed or stopped at kill points (`testing::point`, and the
//! initialisation steps as points); a test that changes process-wide state
//! (the umask, the user) does so in such a child.

mod support;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::Duration;

use shmsync::segment::{InitStep, LockKind};
use shmsync::testing::{self, init_point, ChildCtx};
use shmsync::{CreateOptions, Error, Segment, ShmCell, ShmSafe};

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Rec {
    x: u64,
    y: [u32; 6],
}
// SAFETY: integers only, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Rec {
    const TYPE_TAG: u64 = 0xabc;
    const TYPE_VERSION: u32 = 3;
}

#[derive(Clone, Copy)]
#[repr(C)]
struct RecV4(Rec);
// SAFETY: as Rec.
unsafe impl ShmSafe for RecV4 {
    const TYPE_TAG: u64 = 0xabc;
    const TYPE_VERSION: u32 = 4;
}

#[derive(Clone, Copy)]
#[repr(C)]
struct OtherTag(Rec);
// SAFETY: as Rec.
unsafe impl ShmSafe for OtherTag {
    const TYPE_TAG: u64 = 0xdef;
    const TYPE_VERSION: u32 = 3;
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Aligned(Rec);
// SAFETY: as Rec.
unsafe impl ShmSafe for Aligned {
    const TYPE_TAG: u64 = 0xabc;
    const TYPE_VERSION: u32 = 3;
}

const REC: Rec = Rec {
    x: 42,
    y: [1, 2, 3, 4, 5, 6],
};

use support::Name;

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn write_object(name: &Name, bytes: &[u8]) {
    std::fs::write(name.path(), bytes).unwrap();
}

#[test]
fn not_found() {
    let name = Name::new("nf");
    assert!(matches!(
        ShmCell::<Rec>::open(name.as_str()),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn already_exists() {
    let name = Name::new("ae");
    let _c = ShmCell::<Rec>::create(name.as_str(), REC).unwrap();
    assert!(matches!(
        ShmCell::<Rec>::create(name.as_str(), REC),
        Err(Error::AlreadyExists { .. })
    ));
    // open_or_create opens the existing value instead of replacing it.
    let c2 = ShmCell::<Rec>::open_or_create(name.as_str(), Rec { x: 0, y: [0; 6] }).unwrap();
    assert_eq!(*c2.lock().unwrap(), REC);
}

#[test]
fn invalid_names() {
    let long = format!("/{}", "n".repeat(256));
    for bad in [
        "",
        "noslash",
        "/",
        "/a/b",
        "/.",
        "/..",
        "/nul\0byte",
        long.as_str(),
    ] {
        for r in [
            ShmCell::<Rec>::create(bad, REC).map(|_| ()),
            ShmCell::<Rec>::open(bad).map(|_| ()),
            ShmCell::<Rec>::open_or_create(bad, REC).map(|_| ()),
            ShmCell::<Rec>::unlink(bad),
        ] {
            assert!(
                matches!(r, Err(Error::InvalidName { .. })),
                "{bad:?}: {r:?}"
            );
        }
    }
}

fn expect_incompatible<T>(r: Result<T, Error>, field: &str) {
    match r {
        Err(Error::Incompatible { field: f, .. }) if f == field => {}
        Err(e) => panic!("expected Incompatible({field}), got {e:?}"),
        Ok(_) => panic!("expected Incompatible({field}), got Ok"),
    }
}

#[test]
fn other_value_type() {
    let name = Name::new("type");
    let _c = ShmCell::<Rec>::create(name.as_str(), REC).unwrap();
    expect_incompatible(ShmCell::<u64>::open(name.as_str()), "value_size");
    expect_incompatible(ShmCell::<[u32; 8]>::open(name.as_str()), "value_align");
    expect_incompatible(ShmCell::<OtherTag>::open(name.as_str()), "type_tag");
    expect_incompatible(ShmCell::<RecV4>::open(name.as_str()), "type_version");
    expect_incompatible(ShmCell::<Aligned>::open(name.as_str()), "value_size");
    // open_or_create does not overwrite another type's segment either.
    expect_incompatible(
        ShmCell::<u64>::open_or_create(name.as_str(), 1),
        "value_size",
    );
}

/// A standalone segment's lock is the user's (`External`): `ShmCell`
/// refuses it (its zeroed mutex would be neither robust nor shared), and a
/// standalone segment cannot claim a managed lock kind it did not
/// initialise.
#[test]
fn other_lock_kind() {
    let name = Name::new("kind");
    let mut spec = ShmCell::<Rec>::spec();
    for managed in [
        LockKind::RobustMutex,
        LockKind::FileLock,
        LockKind::NamedSemaphore,
    ] {
        spec.lock_kind = managed;
        assert!(matches!(
            Segment::create(name.as_str(), &spec, &CreateOptions::new()),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            ShmCell::<Rec>::open(name.as_str()),
            Err(Error::NotFound { .. })
        ));
    }
    spec.lock_kind = LockKind::External;
    let _seg = Segment::create(name.as_str(), &spec, &CreateOptions::new()).unwrap();
    expect_incompatible(ShmCell::<Rec>::open(name.as_str()), "lock_kind");
    expect_incompatible(
        ShmCell::<Rec>::open_or_create(name.as_str(), REC),
        "lock_kind",
    );
}

#[test]
fn other_format_version() {
    let name = Name::new("ver");
    drop(ShmCell::<Rec>::create(name.as_str(), REC).unwrap());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(name.path())
        .unwrap();
    let other = shmsync::segment::header::FORMAT_VERSION + 1;
    f.write_at(&other.to_ne_bytes(), 8).unwrap();
    expect_incompatible(ShmCell::<Rec>::open(name.as_str()), "format_version");
}

#[test]
fn three_byte_object() {
    let name = Name::new("three");
    write_object(&name, b"abc");
    assert!(matches!(
        ShmCell::<Rec>::open(name.as_str()),
        Err(Error::TooSmall { size: 3, .. })
    ));
    // Ours or not, it is never taken over.
    assert!(matches!(
        ShmCell::<Rec>::open_or_create(name.as_str(), REC),
        Err(Error::TooSmall { .. })
    ));
    assert_eq!(std::fs::read(name.path()).unwrap(), b"abc");
}

#[test]
fn zero_length_object() {
    let name = Name::new("zero");
    write_object(&name, b"");
    assert!(matches!(
        ShmCell::<Rec>::open(name.as_str()),
        Err(Error::AbandonedInit { creator_pid: 0, .. })
    ));
    let c = ShmCell::<Rec>::open_or_create(name.as_str(), REC).unwrap();
    assert_eq!(*c.lock().unwrap(), REC);
}

#[test]
fn garbage_object() {
    let name = Name::new("garbage");
    let mut rng = Rng::new(7);
    let bytes: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    write_object(&name, &bytes);
    expect_incompatible(ShmCell::<Rec>::open(name.as_str()), "magic");
    expect_incompatible(ShmCell::<Rec>::open_or_create(name.as_str(), REC), "magic");
    assert_eq!(
        std::fs::read(name.path()).unwrap(),
        bytes,
        "a foreign object is never modified"
    );
}

#[test]
fn truncated_segment() {
    let name = Name::new("trunc");
    drop(ShmCell::<[u8; 8192]>::create(name.as_str(), [7; 8192]).unwrap());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(name.path())
        .unwrap();
    for len in [4096u64, 300, 256] {
        f.set_len(len).unwrap();
        assert!(
            matches!(ShmCell::<[u8; 8192]>::open(name.as_str()), Err(Error::TooSmall { size, .. }) if size == len),
            "len {len}"
        );
    }
    f.set_len(255).unwrap();
    assert!(matches!(
        ShmCell::<[u8; 8192]>::open(name.as_str()),
        Err(Error::TooSmall { size: 255, .. })
    ));
}

/// Opens `name` after a corruption: either an error, or a handle whose
/// meaning is identical (same value, same header identity).
fn check_corrupted_open(name: &Name, reference: &shmsync::segment::HeaderInfo, what: &str) {
    match ShmCell::<Rec>::open(name.as_str()) {
        Ok(c) => {
            let i = c.info();
            assert_eq!(
                (
                    i.value_size,
                    i.value_align,
                    i.type_tag,
                    i.type_version,
                    i.lock_kind_code
                ),
                (
                    reference.value_size,
                    reference.value_align,
                    reference.type_tag,
                    reference.type_version,
                    reference.lock_kind_code
                ),
                "{what}: opened with another meaning"
            );
            assert_eq!(
                (i.lock_offset, i.value_offset, i.total_size),
                (
                    reference.lock_offset,
                    reference.value_offset,
                    reference.total_size
                )
            );
            // The live `suspect` word (offset 156) is not checksummed: a
            // damaged one must be reported, never ignored.
            let mut word = [0u8; 4];
            std::fs::File::open(name.path())
                .unwrap()
                .read_exact_at(&mut word, 156)
                .unwrap();
            let suspect = u32::from_ne_bytes(word);
            match c.lock_timeout(Duration::from_secs(2)) {
                Ok(g) => {
                    assert_eq!(suspect, 0, "{what}: a suspect value was not reported");
                    assert_eq!(*g, REC, "{what}: value changed");
                }
                Err(shmsync::LockError::OwnerDied(g)) if suspect != 0 && suspect != 2 => {
                    assert_eq!(*g, REC, "{what}: value changed");
                    g.make_consistent();
                }
                Err(shmsync::LockError::NotRecoverable) if suspect == 2 => {}
                Err(e) => panic!("{what}: {e:?} (suspect word {suspect})"),
            }
        }
        Err(Error::Io { op, source }) => panic!("{what}: untyped error {op}: {source}"),
        Err(_) => {}
    }
}

#[test]
fn corrupt_every_header_byte() {
    let name = Name::new("corrupt");
    let reference = ShmCell::<Rec>::create(name.as_str(), REC)
        .unwrap()
        .info()
        .clone();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.path())
        .unwrap();
    let mut original = [0u8; 256];
    f.read_exact_at(&mut original, 0).unwrap();
    let (mut ok, mut refused) = (0, 0);
    for off in 0..256u64 {
        let orig = original[off as usize];
        for val in [0x00, 0xff, orig ^ 0x01, orig ^ 0x80] {
            if val == orig {
                continue;
            }
            f.write_at(&[val], off).unwrap();
            match ShmCell::<Rec>::open(name.as_str()) {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            }
            check_corrupted_open(&name, &reference, &format!("byte {off} = {val:#x}"));
            f.write_at(&[orig], off).unwrap();
        }
    }
    println!("    header sweep: {ok} corruptions opened with identical meaning, {refused} refused");
    // Every byte of the immutable part (0..144) is protected.
    assert!(refused >= 144 * 3, "too few corruptions refused: {refused}");
}

#[test]
fn corrupt_header_proptest() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let name = Name::new("prop");
    let reference = ShmCell::<Rec>::create(name.as_str(), REC)
        .unwrap()
        .info()
        .clone();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.path())
        .unwrap();
    let mut original = vec![0u8; reference.total_size as usize];
    f.read_exact_at(&mut original, 0).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec((0usize..256, any::<u8>()), 1..8),
        proptest::option::of(0u64..400),
    );
    runner
        .run(&strategy, |(writes, truncate)| {
            for &(off, val) in &writes {
                f.write_at(&[val], off as u64).unwrap();
            }
            if let Some(len) = truncate {
                f.set_len(len).unwrap();
            }
            check_corrupted_open(
                &name,
                &reference,
                &format!("{writes:?} truncate {truncate:?}"),
            );
            f.set_len(original.len() as u64).unwrap();
            f.write_at(&original, 0).unwrap();
            Ok(())
        })
        .unwrap();
}

#[test]
fn permission_denied() {
    // In a child: a root run drops privileges (setuid is process-wide).
    let opener = testing::child!("opener", |ctx| {
        let n = ctx.arg(0);
        if ctx.arg(1) == "root" {
            // SAFETY: dropping privileges in this child process only.
            unsafe {
                assert_eq!(libc::setgid(65534), 0);
                assert_eq!(libc::setuid(65534), 0);
            }
        }
        assert!(matches!(
            ShmCell::<Rec>::open(n),
            Err(Error::PermissionDenied { .. })
        ));
        assert!(matches!(
            ShmCell::<Rec>::open_or_create(n, REC),
            Err(Error::PermissionDenied { .. })
        ));
    });
    let name = Name::new("perm");
    let _c = ShmCell::<Rec>::create(&name, REC).unwrap();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // Same user: a mode without owner bits still denies a non-root user.
        std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    opener
        .arg(name.as_str())
        .arg(if root { "root" } else { "user" })
        .run()
        .unwrap();
}

#[test]
fn mode_is_exact_despite_umask() {
    // In a child: the umask is process-wide.
    let creator = testing::child!("umask", |ctx| {
        let (name, other) = (ctx.arg(0), ctx.arg(1));
        let third = format!("{name}-x");
        // SAFETY: umask only changes this child process's creation mask.
        let old = unsafe { libc::umask(0o077) };
        let c = ShmCell::<Rec>::create_with(name, REC, &CreateOptions::new().mode(0o664)).unwrap();
        let d = ShmCell::<Rec>::create(other, REC).unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(0o777) };
        let e = ShmCell::<Rec>::open_or_create_with(&third, REC, &CreateOptions::new().mode(0o640))
            .unwrap();
        // SAFETY: restore.
        unsafe { libc::umask(old) };
        drop((c, d, e));
    });
    let name = Name::new("mode");
    let other = Name::new("mode2");
    creator
        .arg(name.as_str())
        .arg(other.as_str())
        .run()
        .unwrap();
    let mode = |p: String| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(name.path()), 0o664);
    assert_eq!(mode(other.path()), 0o600);
    assert_eq!(mode(format!("{}-x", name.path())), 0o640);
    ShmCell::<Rec>::unlink(&format!("{}-x", name.as_str())).unwrap();
}

#[test]
fn unlink_errors() {
    let name = Name::new("unl");
    assert!(matches!(
        ShmCell::<Rec>::unlink(name.as_str()),
        Err(Error::NotFound { .. })
    ));
    let c = ShmCell::<Rec>::create(name.as_str(), REC).unwrap();
    ShmCell::<Rec>::unlink(name.as_str()).unwrap();
    // The attached handle keeps working; the name is free for a new cell.
    assert_eq!(*c.lock().unwrap(), REC);
    let d = ShmCell::<Rec>::create(name.as_str(), Rec { x: 1, y: [0; 6] }).unwrap();
    assert_eq!(d.lock().unwrap().x, 1);
    assert_eq!(c.lock().unwrap().x, 42);
}

/// The creator is SIGKILLed at each step of initialisation; `open` then
/// answers NotFound (killed before the object got its name: a creator makes
/// it unnamed and links it once locked), AbandonedInit, or the value once
/// Ready was published; `open_or_create` always succeeds with a whole
/// value.
#[test]
fn creator_killed_at_each_init_step() {
    let creator = testing::child!("creator", |ctx| {
        testing::points_at_init_steps();
        let _ = ShmCell::<Rec>::create(ctx.arg(0), REC);
        panic!("creator survived its kill point");
    });
    for step in InitStep::ALL {
        let name = Name::new("init");
        let ended = creator
            .arg(name.as_str())
            .kill_at(&init_point(step))
            .unwrap_or_else(|e| panic!("step {step:?}: {e}"));
        assert!(
            ended.killed && ended.killed_at == Some(init_point(step)),
            "step {step:?}: {ended:?}"
        );
        let published = step == InitStep::Published;
        match ShmCell::<Rec>::open(&name) {
            Err(Error::NotFound { .. }) => {
                assert_eq!(step, InitStep::Opened, "only an unnamed object vanishes");
            }
            Ok(c) => {
                assert!(published, "{step:?}: a half-initialised segment opened");
                assert_eq!(*c.lock().unwrap(), REC);
            }
            Err(Error::AbandonedInit { creator_pid, .. }) => {
                assert!(!published, "{step:?}");
                assert_ne!(step, InitStep::Opened, "an unnamed object was visible");
                let written = !matches!(step, InitStep::Created | InitStep::Sized);
                assert_eq!(
                    creator_pid == ended.pid,
                    written,
                    "{step:?}: creator pid {creator_pid}"
                );
            }
            Err(e) => panic!("{step:?}: {e:?}"),
        }
        let fresh = Rec { x: 9, y: [9; 6] };
        let c = ShmCell::<Rec>::open_or_create(&name, fresh).unwrap();
        let expect = if published { REC } else { fresh };
        assert_eq!(*c.lock().unwrap(), expect, "{step:?}");
        assert_eq!(
            *ShmCell::<Rec>::open(&name).unwrap().lock().unwrap(),
            expect
        );
    }
}

/// Several processes race to take over one abandoned initialisation:
/// exactly one initialises, all see its value.
#[test]
fn racing_takeover_of_abandoned_init() {
    let creator = testing::child!("creator", |ctx| {
        testing::points_at_init_steps();
        let _ = ShmCell::<Rec>::create(ctx.arg(0), REC);
    });
    let racer = testing::child!("racer", racer);
    let name = Name::new("race");
    creator
        .arg(name.as_str())
        .kill_at(&init_point(InitStep::HeaderWritten))
        .unwrap();
    assert!(matches!(
        ShmCell::<Rec>::open(&name),
        Err(Error::AbandonedInit { .. })
    ));
    race_open_or_create(racer, &name);
}

/// A racer of [`race_open_or_create`]: stops at point "ready" until the
/// test releases all racers, then `open_or_create`s `arg(0)` with
/// `x = arg(1)`, increments `y[5]` and prints the `x` it found.
fn racer(ctx: &ChildCtx) {
    let k: u64 = ctx.arg(1).parse().unwrap();
    testing::point("ready");
    let c = ShmCell::<Rec>::open_or_create(ctx.arg(0), Rec { x: k, y: [0; 6] }).unwrap();
    let mut g = c.lock().unwrap();
    g.y[5] += 1;
    let x = g.x;
    drop(g);
    println!("winner {x}");
}

/// Four processes released at once each `open_or_create` `name` with their
/// own value (`x = 1..=4`) and increment `y[5]` under the lock: all must see
/// the same winner's value, and a later opener must see all four
/// increments (an increment lost means a racer got a segment the name does
/// not reach).
fn race_open_or_create(racer: testing::ChildSpec, name: &Name) {
    let mut racers: Vec<testing::Running> = (1..=4u64)
        .map(|k| {
            let mut c = racer
                .arg(name.as_str())
                .arg(k.to_string())
                .stop_at("ready")
                .spawn()
                .unwrap();
            c.wait_stopped().unwrap();
            c
        })
        .collect();
    for r in &mut racers {
        r.resume().unwrap();
    }
    let seen: Vec<u64> = racers
        .into_iter()
        .map(|r| {
            let ended = r.wait().unwrap();
            ended
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("winner ")?.parse().ok())
                .unwrap_or_else(|| panic!("a racer reported no winner: {ended:?}"))
        })
        .collect();
    assert!(
        seen.iter().all(|&s| s == seen[0] && (1..=4).contains(&s)),
        "racers disagree: {seen:?}"
    );
    let later = ShmCell::<Rec>::open(name).unwrap();
    let g = later.lock().unwrap();
    assert_eq!(
        (g.x, g.y[5]),
        (seen[0], 4),
        "a racer wrote to a segment the name does not reach"
    );
}

/// Racing open_or_create on a fresh name: one creates, all agree.
#[test]
fn racing_open_or_create() {
    let racer = testing::child!("racer", racer);
    for _ in 0..10 {
        race_open_or_create(racer, &Name::new("ooc"));
    }
}

/// A creator paused mid-initialisation: `open` reports `InitTimedOut` after
/// its bounded wait, and an opener running across the release sees the
/// whole value (never a half-built one).
#[test]
fn open_waits_for_live_creator() {
    let creator = testing::child!("creator", |ctx| {
        testing::points_at_init_steps();
        ShmCell::<Rec>::create(ctx.arg(0), REC).unwrap();
    });
    let opener = testing::child!("opener", |ctx| {
        testing::point("opening");
        let c = ShmCell::<Rec>::open(ctx.arg(0)).expect("open across the release");
        assert_eq!(*c.lock().unwrap(), REC);
    });
    let name = Name::new("wait");
    let mut creator = creator
        .arg(name.as_str())
        .stop_at(&init_point(InitStep::HeaderWritten))
        .spawn()
        .unwrap();
    creator.wait_stopped().unwrap(); // paused mid-initialisation
                                     // Deterministic: while the creator is paused, an open waits its bounded
                                     // time and reports the live initialisation.
    assert!(matches!(
        ShmCell::<Rec>::open(&name),
        Err(Error::InitTimedOut { .. })
    ));
    // An opener started now waits for the creator, which is released
    // right after: it must see the whole value.
    let mut opener = opener.arg(name.as_str()).spawn().unwrap();
    opener.wait_point("opening").unwrap();
    creator.resume().unwrap();
    creator.wait().unwrap();
    opener.wait().unwrap();
}

fn ofd_write_lock_free(path: &str) -> bool {
    let f = std::fs::File::open(path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: zeroed flock is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = 0;
    fl.l_len = 1;
    // SAFETY: valid flock for F_OFD_GETLK.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(r, 0);
    fl.l_type == libc::F_UNLCK as i16
}

/// Every attached handle holds the attach lock; when the last attacher is
/// killed the lock is free (what a cleaner checks).
#[test]
fn attach_lock_tracks_live_handles() {
    let attacher = testing::child!("attacher", |ctx| {
        let _c = ShmCell::<Rec>::open(ctx.arg(0)).unwrap();
        testing::point("attached");
    });
    let name = Name::new("attach");
    drop(ShmCell::<Rec>::create(&name, REC).unwrap());
    assert!(
        ofd_write_lock_free(&name.path()),
        "no handle: nobody attached"
    );
    let mut child = attacher
        .arg(name.as_str())
        .stop_at("attached")
        .spawn()
        .unwrap();
    child.wait_stopped().unwrap();
    assert!(
        !ofd_write_lock_free(&name.path()),
        "a live handle is attached"
    );
    child.kill().unwrap();
    assert!(
        ofd_write_lock_free(&name.path()),
        "the killed attacher's lock is gone"
    );
}

/// A creator descheduled (stopped) at each step of its initialisation,
/// for longer than an opener's grace for empty objects, is never taken for
/// a dead one: before it is locked its object has no name (an opener finds
/// nothing, and `open_or_create` makes its own: the creator then answers
/// AlreadyExists and leaves nothing), and once named it is write-locked by
/// the live creator (an opener waits, `InitTimedOut`, and never takes it
/// over). On the old code (named with `shm_open(O_EXCL)`, locked after),
/// `open` answered `AbandonedInit` for the stopped live creator at `Opened`
/// and `open_or_create` re-initialised its object.
#[test]
fn creator_descheduled_before_its_lock() {
    let slow = testing::child!("slow creator", |ctx| {
        let n = ctx.arg(0);
        testing::points_at_init_steps();
        // Stopped at Opened until the test resumes it.
        assert!(matches!(
            ShmCell::<Rec>::create(n, REC),
            Err(Error::AlreadyExists { .. })
        ));
        let c = ShmCell::<Rec>::open_or_create(n, REC).unwrap();
        let mut g = c.lock().unwrap();
        assert_eq!(g.x, 77, "the slow creator sees the taker's value");
        g.y[0] += 1;
    });
    let name = Name::new("desched");
    let mut slow = slow
        .arg(name.as_str())
        .stop_at(&init_point(InitStep::Opened))
        .spawn()
        .unwrap();
    slow.wait_stopped().unwrap(); // paused before its lock
    std::thread::sleep(std::time::Duration::from_millis(150)); // past the grace
    assert!(
        matches!(ShmCell::<Rec>::open(&name), Err(Error::NotFound { .. })),
        "a live creator's object is visible before it is locked"
    );
    let taker = ShmCell::<Rec>::open_or_create(&name, Rec { x: 77, y: [0; 6] }).unwrap();
    assert_eq!(taker.lock().unwrap().x, 77);
    slow.resume().unwrap();
    slow.wait().unwrap();
    assert_eq!(
        taker.lock().unwrap().y[0],
        1,
        "the slow creator wrote to the same segment"
    );
    let later = ShmCell::<Rec>::open(&name).unwrap();
    assert_eq!(
        *later.lock().unwrap(),
        Rec {
            x: 77,
            y: [1, 0, 0, 0, 0, 0]
        }
    );
}

/// A creator stopped once its object is named (and locked), for longer
/// than the grace: openers wait for it (bounded: `InitTimedOut`) and never
/// take its object over; resumed, it finishes and its value is there.
#[test]
fn stopped_creator_after_its_link_is_waited_for() {
    let slow = testing::child!("stopped creator", |ctx| {
        testing::points_at_init_steps();
        let c = ShmCell::<Rec>::create(ctx.arg(0), REC).unwrap();
        assert_eq!(*c.lock().unwrap(), REC, "its object is still its own");
    });
    let name = Name::new("desched2");
    let mut slow = slow
        .arg(name.as_str())
        .stop_at(&init_point(InitStep::Created))
        .spawn()
        .unwrap();
    slow.wait_stopped().unwrap();
    assert!(std::fs::metadata(name.path()).is_ok(), "named once locked");
    let taker = ShmCell::<Rec>::open_or_create(&name, Rec { x: 77, y: [0; 6] });
    assert!(
        matches!(taker, Err(Error::InitTimedOut { .. })),
        "a live creator's object was judged: {taker:?}"
    );
    slow.resume().unwrap();
    slow.wait().unwrap();
    assert_eq!(*ShmCell::<Rec>::open(&name).unwrap().lock().unwrap(), REC);
}

/// An all-zero object (another program's fresh `ftruncate`) is foreign:
/// refused and never overwritten, whatever its size — unless it has
/// exactly the size our own creator gives a segment of this type before
/// writing the header.
#[test]
fn zero_filled_foreign_object_is_never_taken_over() {
    let name = Name::new("zeros");
    let size = 4096; // not the 328 bytes of a Rec segment
    write_object(&name, &vec![0u8; size]);
    expect_incompatible(ShmCell::<Rec>::open(name.as_str()), "magic");
    expect_incompatible(ShmCell::<Rec>::open_or_create(name.as_str(), REC), "magic");
    assert_eq!(std::fs::read(name.path()).unwrap(), vec![0u8; size]);
}

#[test]
fn unlink_refuses_foreign_objects() {
    let name = Name::new("foreign");
    write_object(&name, &[0x5a; 4096]);
    expect_incompatible(ShmCell::<Rec>::unlink(name.as_str()), "magic");
    assert!(
        std::fs::metadata(name.path()).is_ok(),
        "a foreign object was removed"
    );
    write_object(&name, b"abc");
    assert!(matches!(
        ShmCell::<Rec>::unlink(name.as_str()),
        Err(Error::TooSmall { .. })
    ));
    // The explicit, unconditional removal.
    Segment::unlink(name.as_str()).unwrap();
    assert!(std::fs::metadata(name.path()).is_err());
}

#[test]
fn io_errors_show_the_os_error() {
    let e = Error::Io {
        op: "posix_fallocate",
        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
    };
    let text = e.to_string();
    assert!(
        text.contains("posix_fallocate") && text.contains("No space left"),
        "{text}"
    );
}

/// A FIFO (or any non-regular file) under the name is someone else's: every
/// entry point refuses it without waiting on it or changing its mode.
#[test]
fn a_fifo_under_the_name_is_never_touched() {
    let name = Name::new("fifo");
    let path = std::ffi::CString::new(name.path()).unwrap();
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    expect_incompatible(ShmCell::<Rec>::open(name.as_str()), "file type");
    expect_incompatible(
        ShmCell::<Rec>::open_or_create(name.as_str(), REC),
        "file type",
    );
    expect_incompatible(ShmCell::<Rec>::unlink(name.as_str()), "file type");
    let meta = std::fs::symlink_metadata(name.path()).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "mode changed");
}

/// `u64`, `i64`, `f64` and `[u64; 1]` share size and alignment but not
/// meaning: their tags keep them apart.
#[test]
fn same_layout_builtins_do_not_open_each_other() {
    let name = Name::new("tags");
    let _c = ShmCell::<u64>::create(name.as_str(), 7).unwrap();
    expect_incompatible(ShmCell::<i64>::open(name.as_str()), "type_tag");
    expect_incompatible(ShmCell::<f64>::open(name.as_str()), "type_tag");
    expect_incompatible(ShmCell::<[u64; 1]>::open(name.as_str()), "type_tag");
    let atomic = ShmCell::<std::sync::atomic::AtomicU64>::open(name.as_str()).unwrap();
    assert_eq!(
        atomic
            .lock()
            .unwrap()
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );
}
