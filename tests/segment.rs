//! Segments: names, bad objects, header corruption, permissions, and the
//! initialisation race — each failure a distinct error, never a crash.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::time::Duration;

use common::{Child, TestName};
use shmsync::segment::{InitStep, LockKind};
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

fn main() {
    common::run(&[
        ("not_found", not_found),
        ("already_exists", already_exists),
        ("invalid_names", invalid_names),
        ("other_value_type", other_value_type),
        ("other_lock_kind", other_lock_kind),
        ("other_format_version", other_format_version),
        ("three_byte_object", three_byte_object),
        ("zero_length_object", zero_length_object),
        ("garbage_object", garbage_object),
        ("truncated_segment", truncated_segment),
        ("corrupt_every_header_byte", corrupt_every_header_byte),
        ("corrupt_header_proptest", corrupt_header_proptest),
        ("permission_denied", permission_denied),
        ("mode_is_exact_despite_umask", mode_is_exact_despite_umask),
        ("unlink_errors", unlink_errors),
        (
            "creator_killed_at_each_init_step",
            creator_killed_at_each_init_step,
        ),
        (
            "racing_takeover_of_abandoned_init",
            racing_takeover_of_abandoned_init,
        ),
        ("racing_open_or_create", racing_open_or_create),
        ("open_waits_for_live_creator", open_waits_for_live_creator),
        (
            "attach_lock_tracks_live_handles",
            attach_lock_tracks_live_handles,
        ),
        (
            "creator_descheduled_before_its_lock",
            creator_descheduled_before_its_lock,
        ),
        (
            "zero_filled_foreign_object_is_never_taken_over",
            zero_filled_foreign_object_is_never_taken_over,
        ),
        (
            "unlink_refuses_foreign_objects",
            unlink_refuses_foreign_objects,
        ),
        ("io_errors_show_the_os_error", io_errors_show_the_os_error),
        (
            "a_fifo_under_the_name_is_never_touched",
            a_fifo_under_the_name_is_never_touched,
        ),
        (
            "same_layout_builtins_do_not_open_each_other",
            same_layout_builtins_do_not_open_each_other,
        ),
    ]);
}

fn write_object(name: &TestName, bytes: &[u8]) {
    std::fs::write(name.path(), bytes).unwrap();
}

fn not_found() {
    let name = TestName::new("nf");
    assert!(matches!(
        ShmCell::<Rec>::open(name.as_str()),
        Err(Error::NotFound { .. })
    ));
}

fn already_exists() {
    let name = TestName::new("ae");
    let _c = ShmCell::<Rec>::create(name.as_str(), REC).unwrap();
    assert!(matches!(
        ShmCell::<Rec>::create(name.as_str(), REC),
        Err(Error::AlreadyExists { .. })
    ));
    // open_or_create opens the existing value instead of replacing it.
    let c2 = ShmCell::<Rec>::open_or_create(name.as_str(), Rec { x: 0, y: [0; 6] }).unwrap();
    assert_eq!(*c2.lock().unwrap(), REC);
}

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

fn other_value_type() {
    let name = TestName::new("type");
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
fn other_lock_kind() {
    let name = TestName::new("kind");
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

fn other_format_version() {
    let name = TestName::new("ver");
    drop(ShmCell::<Rec>::create(name.as_str(), REC).unwrap());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(name.path())
        .unwrap();
    let other = shmsync::segment::header::FORMAT_VERSION + 1;
    f.write_at(&other.to_ne_bytes(), 8).unwrap();
    expect_incompatible(ShmCell::<Rec>::open(name.as_str()), "format_version");
}

fn three_byte_object() {
    let name = TestName::new("three");
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

fn zero_length_object() {
    let name = TestName::new("zero");
    write_object(&name, b"");
    assert!(matches!(
        ShmCell::<Rec>::open(name.as_str()),
        Err(Error::AbandonedInit { creator_pid: 0, .. })
    ));
    let c = ShmCell::<Rec>::open_or_create(name.as_str(), REC).unwrap();
    assert_eq!(*c.lock().unwrap(), REC);
}

fn garbage_object() {
    let name = TestName::new("garbage");
    let mut rng = common::Rng::new(7);
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

fn truncated_segment() {
    let name = TestName::new("trunc");
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
fn check_corrupted_open(name: &TestName, reference: &shmsync::segment::HeaderInfo, what: &str) {
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
            let g = c
                .lock_timeout(Duration::from_secs(2))
                .map_err(|e| e.kind())
                .expect(what);
            assert_eq!(*g, REC, "{what}: value changed");
        }
        Err(Error::Io { op, source }) => panic!("{what}: untyped error {op}: {source}"),
        Err(_) => {}
    }
}

fn corrupt_every_header_byte() {
    let name = TestName::new("corrupt");
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

fn corrupt_header_proptest() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let name = TestName::new("prop");
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

fn permission_denied() {
    let name = TestName::new("perm");
    let _c = ShmCell::<Rec>::create(name.as_str(), REC).unwrap();
    let n = name.0.clone();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // Same user: a mode without owner bits still denies a non-root user.
        std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let code = common::in_child(move || {
        if root {
            // SAFETY: dropping privileges in the child only.
            unsafe {
                assert_eq!(libc::setgid(65534), 0);
                assert_eq!(libc::setuid(65534), 0);
            }
        }
        assert!(matches!(
            ShmCell::<Rec>::open(&n),
            Err(Error::PermissionDenied { .. })
        ));
        assert!(matches!(
            ShmCell::<Rec>::open_or_create(&n, REC),
            Err(Error::PermissionDenied { .. })
        ));
    });
    assert_eq!(code, 0);
}

fn mode_is_exact_despite_umask() {
    let name = TestName::new("mode");
    let other = TestName::new("mode2");
    // SAFETY: umask only changes this (test) process's creation mask.
    let old = unsafe { libc::umask(0o077) };
    let c =
        ShmCell::<Rec>::create_with(name.as_str(), REC, &CreateOptions::new().mode(0o664)).unwrap();
    let d = ShmCell::<Rec>::create(other.as_str(), REC).unwrap();
    // SAFETY: as above.
    unsafe { libc::umask(0o777) };
    let e = ShmCell::<Rec>::open_or_create_with(
        &format!("{}-x", name.as_str()),
        REC,
        &CreateOptions::new().mode(0o640),
    )
    .unwrap();
    // SAFETY: restore.
    unsafe { libc::umask(old) };
    let mode = |p: String| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(name.path()), 0o664);
    assert_eq!(mode(other.path()), 0o600);
    assert_eq!(mode(format!("{}-x", name.path())), 0o640);
    drop((c, d, e));
    ShmCell::<Rec>::unlink(&format!("{}-x", name.as_str())).unwrap();
}

fn unlink_errors() {
    let name = TestName::new("unl");
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

static KILL_AT: AtomicU8 = AtomicU8::new(u8::MAX);
static PAUSE_FD: AtomicI32 = AtomicI32::new(-1);

fn kill_at_step(step: InitStep) {
    if InitStep::ALL.iter().position(|s| *s == step)
        == Some(KILL_AT.load(Ordering::SeqCst) as usize)
    {
        // SAFETY: the test child kills itself at the chosen step.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// The creator is SIGKILLed at each step of initialisation; `open` then
/// answers AbandonedInit (or the value, once Ready was published) and
/// `open_or_create` always succeeds with a whole value.
fn creator_killed_at_each_init_step() {
    for (i, step) in InitStep::ALL.iter().enumerate() {
        let name = TestName::new("init");
        let n = name.0.clone();
        let mut creator = Child::spawn(move |_| {
            KILL_AT.store(i as u8, Ordering::SeqCst);
            shmsync::segment::set_init_hook(Some(kill_at_step));
            let _ = ShmCell::<Rec>::create(&n, REC);
            panic!("creator survived its kill point");
        });
        let status = creator.wait();
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == 9,
            "step {step:?}"
        );
        let published = *step == InitStep::Published;
        match ShmCell::<Rec>::open(name.as_str()) {
            Ok(c) => {
                assert!(published, "{step:?}: a half-initialised segment opened");
                assert_eq!(*c.lock().unwrap(), REC);
            }
            Err(Error::AbandonedInit { creator_pid, .. }) => {
                assert!(!published, "{step:?}");
                let written =
                    !matches!(step, InitStep::Opened | InitStep::Created | InitStep::Sized);
                assert_eq!(
                    creator_pid == creator.pid,
                    written,
                    "{step:?}: creator pid {creator_pid}"
                );
            }
            Err(e) => panic!("{step:?}: {e:?}"),
        }
        let fresh = Rec { x: 9, y: [9; 6] };
        let c = ShmCell::<Rec>::open_or_create(name.as_str(), fresh).unwrap();
        let expect = if published { REC } else { fresh };
        assert_eq!(*c.lock().unwrap(), expect, "{step:?}");
        assert_eq!(
            *ShmCell::<Rec>::open(name.as_str()).unwrap().lock().unwrap(),
            expect
        );
    }
}

/// Several processes race to take over one abandoned initialisation:
/// exactly one initialises, all see its value.
fn racing_takeover_of_abandoned_init() {
    let name = TestName::new("race");
    let n = name.0.clone();
    let mut creator = Child::spawn(move |_| {
        let at = InitStep::ALL
            .iter()
            .position(|s| *s == InitStep::HeaderWritten);
        KILL_AT.store(at.unwrap() as u8, Ordering::SeqCst);
        shmsync::segment::set_init_hook(Some(kill_at_step));
        let _ = ShmCell::<Rec>::create(&n, REC);
    });
    creator.wait();
    assert!(matches!(
        ShmCell::<Rec>::open(name.as_str()),
        Err(Error::AbandonedInit { .. })
    ));
    race_open_or_create(&name);
}

/// Four processes released at once each `open_or_create` `name` with their
/// own value (`x = 1..=4`) and increment `y[5]` under the lock: all must see
/// the same winner's value, and a later opener must see all four
/// increments (an increment lost means a racer got a segment the name does
/// not reach).
fn race_open_or_create(name: &TestName) {
    let mut racers: Vec<Child> = (1..=4u64)
        .map(|k| {
            let n = name.0.clone();
            let mut c = Child::spawn(move |ctx| {
                ctx.reached_and_wait(b'R');
                let c = ShmCell::<Rec>::open_or_create(&n, Rec { x: k, y: [0; 6] }).unwrap();
                let mut g = c.lock().unwrap();
                g.y[5] += 1;
                let x = g.x;
                drop(g);
                std::process::exit(x as i32 + 10);
            });
            assert_eq!(c.expect_reached(), b'R');
            c
        })
        .collect();
    for r in &mut racers {
        r.command(b'G');
    }
    let seen: Vec<i32> = racers
        .iter_mut()
        .map(|r| libc::WEXITSTATUS(r.wait()))
        .collect();
    assert!(
        seen.iter().all(|&s| s == seen[0] && (11..=14).contains(&s)),
        "racers disagree: {seen:?}"
    );
    let later = ShmCell::<Rec>::open(name.as_str()).unwrap();
    let g = later.lock().unwrap();
    assert_eq!(
        (g.x as i32 + 10, g.y[5]),
        (seen[0], 4),
        "a racer wrote to a segment the name does not reach"
    );
}

/// Racing open_or_create on a fresh name: one creates, all agree.
fn racing_open_or_create() {
    for _ in 0..10 {
        race_open_or_create(&TestName::new("ooc"));
    }
}

static PAUSE_AT: AtomicU8 = AtomicU8::new(u8::MAX);
static PAUSED_FD: AtomicI32 = AtomicI32::new(-1);

fn pause_at_step(step: InitStep) {
    if InitStep::ALL.iter().position(|s| *s == step)
        == Some(PAUSE_AT.load(Ordering::SeqCst) as usize)
    {
        // SAFETY: the child's report pipe: tell the parent we are paused.
        unsafe { libc::write(PAUSED_FD.load(Ordering::SeqCst), [b'P'].as_ptr().cast(), 1) };
        let fd = PAUSE_FD.load(Ordering::SeqCst);
        let mut b = [0u8; 1];
        // SAFETY: `fd` is the child's inherited pipe; block until the
        // parent writes one byte.
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    }
}

/// A creator paused mid-initialisation: `open` reports `InitTimedOut` after
/// its bounded wait, and an opener running across the release sees the
/// whole value (never a half-built one).
fn open_waits_for_live_creator() {
    let name = TestName::new("wait");
    let (r, w) = {
        let mut fds = [0; 2];
        // SAFETY: room for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    };
    let n = name.0.clone();
    let mut creator = Child::spawn(move |ctx| {
        PAUSE_FD.store(r, Ordering::SeqCst);
        PAUSED_FD.store(ctx.report_fd(), Ordering::SeqCst);
        PAUSE_AT.store(step_index(InitStep::HeaderWritten), Ordering::SeqCst);
        shmsync::segment::set_init_hook(Some(pause_at_step));
        ShmCell::<Rec>::create(&n, REC).unwrap();
    });
    assert_eq!(creator.expect_reached(), b'P'); // paused mid-initialisation
                                                // Deterministic: while the creator is paused, an open waits its bounded
                                                // time and reports the live initialisation.
    assert!(matches!(
        ShmCell::<Rec>::open(name.as_str()),
        Err(Error::InitTimedOut { .. })
    ));
    // An opener started now waits for the creator, which is released
    // right after: it must see the whole value.
    let n = name.0.clone();
    let mut opener = Child::spawn(move |ctx| {
        ctx.reached(b'O');
        let c = ShmCell::<Rec>::open(&n).expect("open across the release");
        assert_eq!(*c.lock().unwrap(), REC);
    });
    assert_eq!(opener.expect_reached(), b'O');
    // Release the creator (one byte on the pipe it blocks on).
    // SAFETY: writing one byte to our pipe.
    assert_eq!(unsafe { libc::write(w, [1u8].as_ptr().cast(), 1) }, 1);
    creator.join();
    opener.join();
    // SAFETY: closing our pipe ends.
    unsafe {
        libc::close(r);
        libc::close(w);
    }
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
fn attach_lock_tracks_live_handles() {
    let name = TestName::new("attach");
    drop(ShmCell::<Rec>::create(name.as_str(), REC).unwrap());
    assert!(
        ofd_write_lock_free(&name.path()),
        "no handle: nobody attached"
    );
    let n = name.0.clone();
    let mut child = Child::spawn(move |ctx| {
        let _c = ShmCell::<Rec>::open(&n).unwrap();
        ctx.reached_and_wait(b'A');
    });
    assert_eq!(child.expect_reached(), b'A');
    assert!(
        !ofd_write_lock_free(&name.path()),
        "a live handle is attached"
    );
    child.kill();
    assert!(
        ofd_write_lock_free(&name.path()),
        "the killed attacher's lock is gone"
    );
}

fn step_index(step: InitStep) -> u8 {
    InitStep::ALL.iter().position(|s| *s == step).unwrap() as u8
}

/// A creator descheduled between its exclusive create and its lock for
/// longer than an opener's grace: another process takes the empty object
/// over. The slow creator must then neither initialise nor unlink it: one
/// segment, one value, reachable by name.
fn creator_descheduled_before_its_lock() {
    let name = TestName::new("desched");
    let (r, w) = {
        let mut fds = [0; 2];
        // SAFETY: room for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    };
    let n = name.0.clone();
    let mut slow = Child::spawn(move |ctx| {
        PAUSE_FD.store(r, Ordering::SeqCst);
        PAUSED_FD.store(ctx.report_fd(), Ordering::SeqCst);
        PAUSE_AT.store(step_index(InitStep::Opened), Ordering::SeqCst);
        shmsync::segment::set_init_hook(Some(pause_at_step));
        // Paused at Opened until the parent writes to the pipe.
        assert!(matches!(
            ShmCell::<Rec>::create(&n, REC),
            Err(Error::AlreadyExists { .. })
        ));
        let c = ShmCell::<Rec>::open_or_create(&n, REC).unwrap();
        let mut g = c.lock().unwrap();
        assert_eq!(g.x, 77, "the slow creator sees the taker's value");
        g.y[0] += 1;
    });
    assert_eq!(slow.expect_reached(), b'P'); // paused before its lock
                                             // The object exists, empty and unlocked: wait (bounded) until it shows.
    let deadline = std::time::Instant::now() + common::BOUND;
    while std::fs::metadata(name.path()).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "creator never created"
        );
        std::thread::yield_now();
    }
    let taker = ShmCell::<Rec>::open_or_create(name.as_str(), Rec { x: 77, y: [0; 6] }).unwrap();
    assert_eq!(taker.lock().unwrap().x, 77);
    // SAFETY: one byte to our pipe releases the slow creator.
    assert_eq!(unsafe { libc::write(w, [1u8].as_ptr().cast(), 1) }, 1);
    slow.join();
    assert_eq!(
        taker.lock().unwrap().y[0],
        1,
        "the slow creator wrote to the same segment"
    );
    let later = ShmCell::<Rec>::open(name.as_str()).unwrap();
    assert_eq!(
        *later.lock().unwrap(),
        Rec {
            x: 77,
            y: [1, 0, 0, 0, 0, 0]
        }
    );
    // SAFETY: closing our pipe ends.
    unsafe {
        libc::close(r);
        libc::close(w);
    }
}

/// An all-zero object (another program's fresh `ftruncate`) is foreign:
/// refused and never overwritten, whatever its size — unless it has
/// exactly the size our own creator gives a segment of this type before
/// writing the header.
fn zero_filled_foreign_object_is_never_taken_over() {
    let name = TestName::new("zeros");
    let size = 4096; // not the 328 bytes of a Rec segment
    write_object(&name, &vec![0u8; size]);
    expect_incompatible(ShmCell::<Rec>::open(name.as_str()), "magic");
    expect_incompatible(ShmCell::<Rec>::open_or_create(name.as_str(), REC), "magic");
    assert_eq!(std::fs::read(name.path()).unwrap(), vec![0u8; size]);
}

fn unlink_refuses_foreign_objects() {
    let name = TestName::new("foreign");
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
fn a_fifo_under_the_name_is_never_touched() {
    let name = TestName::new("fifo");
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
fn same_layout_builtins_do_not_open_each_other() {
    let name = TestName::new("tags");
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
