//! Other users on the same host (issue 12, section 2): `/dev/shm` is
//! world-writable, so any local user can plant files under the names a
//! program will use. Real processes, real uids (the tests run as root, as
//! CI does, and drop to unprivileged uids in children; without root they
//! say so and skip).
//!
//! Each test failed on the code before the fix, as noted on it.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shmsync::segment::InitStep;
use shmsync::testing::{self, init_point, TestName};
use shmsync::{Error, NamedSemaphore, ShmCell};

/// The uid that plants objects (`nobody`).
const ATTACKER: u32 = 65534;
/// The unprivileged uid of the victim in children.
const VICTIM: u32 = 65533;

const BIN: &str = env!("CARGO_BIN_EXE_shmsync");

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Drops every privilege of this (child) process to `uid`/`uid`.
fn become_user(uid: u32) {
    // SAFETY: plain system calls; the child is ours to change.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setresgid(uid, uid, uid), 0, "setresgid");
        assert_eq!(libc::setresuid(uid, uid, uid), 0, "setresuid");
    }
}

/// A file at `path` with `bytes`, mode `mode`, owned by `uid`.
fn plant(path: &str, bytes: &[u8], mode: u32, uid: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

fn sem_path(name: &TestName) -> String {
    format!("/dev/shm/sem.{}", &name.as_str()[1..])
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root to act as other users (CI runs as root)");
            return;
        }
    };
}

// ------------------------------------------- open_or_create adopting objects

/// Another user pre-creates the name, empty, mode 0666. `open_or_create`
/// used to take it for an abandoned creation of its own, `fchmod` it
/// (failing silently for an unprivileged victim) and return `Ok`: the
/// "private" cell lived in an attacker-owned, world-writable object. Now:
/// `ForeignOwner`, for an unprivileged victim and for root alike, and the
/// object is untouched.
#[test]
fn foreign_empty_object_is_not_adopted() {
    let victim = testing::child!("victim", |ctx| {
        become_user(VICTIM);
        match ShmCell::<u64>::open_or_create(ctx.arg(0), 7) {
            Err(Error::ForeignOwner { uid, .. }) => assert_eq!(uid, ATTACKER),
            other => panic!("adopted another user's object: {other:?}"),
        }
    });
    need_root!();
    let name = TestName::new("foreign-empty");
    plant(&name.path(), b"", 0o666, ATTACKER);
    victim.arg(&name).run().unwrap();
    match ShmCell::<u64>::open_or_create(&name, 7) {
        Err(Error::ForeignOwner { uid, .. }) => assert_eq!(uid, ATTACKER),
        other => panic!("root adopted another user's object: {other:?}"),
    }
    let md = std::fs::metadata(name.path()).unwrap();
    assert_eq!(
        (md.uid(), md.len(), md.mode() & 0o7777),
        (ATTACKER, 0, 0o666),
        "the planted object was changed"
    );
}

/// An abandoned initialisation (creator killed after sizing) that belongs
/// to another user is not taken over either (it used to be, with a
/// best-effort `fchmod`).
#[test]
fn foreign_abandoned_object_is_not_taken_over() {
    let creator = testing::child!("creator", |ctx| {
        testing::points_at_init_steps();
        let _ = ShmCell::<u64>::create(ctx.arg(0), 1);
        panic!("creator survived its kill point");
    });
    need_root!();
    let name = TestName::new("foreign-abandoned");
    creator
        .arg(&name)
        .kill_at(&init_point(InitStep::HeaderWritten))
        .unwrap();
    assert!(matches!(
        ShmCell::<u64>::open(&name),
        Err(Error::AbandonedInit { .. })
    ));
    std::os::unix::fs::chown(name.path(), Some(ATTACKER), Some(ATTACKER)).unwrap();
    std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    match ShmCell::<u64>::open_or_create(&name, 7) {
        Err(Error::ForeignOwner { uid, .. }) => assert_eq!(uid, ATTACKER),
        other => panic!("took over another user's object: {other:?}"),
    }
    assert_eq!(std::fs::metadata(name.path()).unwrap().uid(), ATTACKER);
}

// ------------------------------------------------- inspection never hangs

/// A FIFO `X` beside a regular file `sem.X`: inspecting `sem.X` looks for
/// the cell `X` it might belong to, and used to open the FIFO read-only
/// without `O_NONBLOCK`, waiting forever for a writer — in `list`,
/// `inspect` and `clean` alike, so any local user could stop everyone's
/// cleanup. Checked through the library (in a bounded child) and through
/// the `shmsync` command (bounded).
#[test]
fn fifo_beside_a_semaphore_file_does_not_hang_inspection() {
    let looker = testing::child!("looker", |ctx| {
        let (cell, sem) = (ctx.arg(0), ctx.arg(1));
        let listed = shmsync::inspect::list_matching(|n| n == cell || n == sem).unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        for i in &listed {
            assert_eq!(i.state.name(), "foreign", "{i:?}");
        }
        assert_eq!(
            shmsync::inspect::inspect(sem).unwrap().state.name(),
            "foreign"
        );
        assert_eq!(
            shmsync::inspect::inspect(cell).unwrap().state.name(),
            "foreign"
        );
        for n in [cell, sem] {
            let out =
                shmsync::inspect::clean_one(n, &shmsync::inspect::CleanOptions::new()).unwrap();
            assert_eq!(out.action, shmsync::inspect::CleanAction::Skipped);
        }
    });
    let name = TestName::new("fifo");
    let c = std::ffi::CString::new(name.path()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo");
    plant(&sem_path(&name), &[0u8; 32], 0o600, 0);
    let sem_name = format!("/sem.{}", &name.as_str()[1..]);
    let prefix = name.as_str().to_string();
    looker
        .arg(&name)
        .arg(&sem_name)
        .bound(Duration::from_secs(20))
        .run()
        .unwrap_or_else(|e| panic!("inspection through the library: {e}"));
    // And the command.
    let sem_prefix = format!("/sem.{}", &name.as_str()[1..]);
    for args in [
        vec!["list", "--json", "--prefix", &prefix],
        vec!["list", "--json", "--prefix", &sem_prefix],
        vec!["inspect", &sem_name],
        vec!["inspect", name.as_str()],
        vec!["clean", &sem_name],
        vec!["clean", name.as_str()],
    ] {
        let out = support::output_bounded(Command::new(BIN).args(&args), Duration::from_secs(20));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.lines().any(|l| l.starts_with("removed ")) || text.contains("removed 0 of"),
            "shmsync {args:?} removed something: {text}"
        );
        assert!(
            text.contains(name.as_str()),
            "shmsync {args:?} did not report the object: {text}"
        );
    }
    assert!(Path::new(&name.path()).exists());
    assert!(Path::new(&sem_path(&name)).exists());
}

// ------------------------------------------------ short semaphore files

/// `NamedSemaphore::open` of a short `sem.NAME` (empty, truncated, planted)
/// used to return `Ok`, and the first `post()` died of `SIGBUS` (glibc maps
/// `sizeof(sem_t)` bytes without a size check). Now: `TooSmall`; a FIFO or
/// a symbolic link is `Incompatible` (file type). Run in a child, so that
/// the old behaviour (a SIGBUS) fails the test rather than the binary.
#[test]
fn short_or_odd_semaphore_files_are_refused() {
    let opener = testing::child!("opener", |ctx| {
        let name = ctx.arg(0);
        match NamedSemaphore::open(name) {
            Err(Error::TooSmall { size, needed }) => {
                assert_eq!(size, ctx.arg(1).parse::<u64>().unwrap());
                assert!(needed >= 16, "{needed}");
            }
            Err(Error::Incompatible { field, .. }) if ctx.arg(1) == "odd" => {
                assert_eq!(field, "file type")
            }
            Ok(sem) => {
                let _ = sem.post(); // SIGBUS on the old code
                panic!("a short semaphore file opened");
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
        // open_or_create does not replace it either.
        assert!(NamedSemaphore::open_or_create(name, 0).is_err());
    });
    for size in [0usize, 8, 16] {
        let name = TestName::new("shortsem");
        plant(&sem_path(&name), &vec![0u8; size], 0o666, 0);
        opener
            .arg(&name)
            .arg(size.to_string())
            .run()
            .unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        let md = std::fs::metadata(sem_path(&name)).unwrap();
        assert_eq!(md.len(), size as u64, "left as it was");
    }
    let name = TestName::new("fifosem");
    let c = std::ffi::CString::new(sem_path(&name)).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo");
    opener
        .arg(&name)
        .arg("odd")
        .bound(Duration::from_secs(20))
        .run()
        .unwrap();
    let name = TestName::new("linksem");
    std::os::unix::fs::symlink("/dev/null", sem_path(&name)).unwrap();
    opener.arg(&name).arg("odd").run().unwrap();
}

/// The semaphore of a semaphore-locked cell is checked the same way when a
/// handle attaches: truncated, or replaced by another user's file, it is
/// refused (it used to be mapped: `SIGBUS` at the first wake-up, or a
/// semaphore another user controls).
#[test]
fn a_cells_damaged_or_planted_semaphore_is_refused() {
    let opener = testing::child!("cell opener", |ctx| {
        let r = ShmCell::<u64, NamedSemaphore>::open(ctx.arg(0));
        match (ctx.arg(1), r) {
            ("short", Err(Error::TooSmall { size: 0, .. })) => {}
            ("planted", Err(Error::ForeignOwner { uid, .. })) => assert_eq!(uid, ATTACKER),
            (what, Ok(cell)) => {
                // The old code: a handle on a semaphore it must not use.
                drop(cell.lock());
                panic!("{what}: opened");
            }
            (what, Err(e)) => panic!("{what}: unexpected {e:?}"),
        }
    });
    need_root!();
    let name = TestName::new("cellsem");
    let cell = ShmCell::<u64, NamedSemaphore>::create(&name, 3).unwrap();
    // Truncated (by its owner, or damage).
    std::fs::OpenOptions::new()
        .write(true)
        .open(sem_path(&name))
        .unwrap()
        .set_len(0)
        .unwrap();
    opener.arg(&name).arg("short").run().unwrap();
    // Replaced by another user's file of the right size.
    std::fs::remove_file(sem_path(&name)).unwrap();
    plant(&sem_path(&name), &[0u8; 32], 0o666, ATTACKER);
    opener.arg(&name).arg("planted").run().unwrap();
    drop(cell);
}

// --------------------------------- a cell never unlinks a live semaphore

/// A standalone `NamedSemaphore` in use by another process under the name a
/// semaphore-locked cell is then created with: the create used to unlink it
/// silently (later openers got a new semaphore, its holder kept the old
/// one, so posts were lost between them). Now the create answers
/// `AlreadyExists` naming `/sem.X` and leaves nothing; the holder still
/// receives what others post by name.
#[test]
fn creating_a_cell_never_unlinks_a_live_semaphore() {
    let holder = testing::child!("holder", |ctx| {
        let sem = NamedSemaphore::create(ctx.arg(0), 0).unwrap();
        testing::point("created");
        sem.wait_timeout(Duration::from_secs(10))
            .expect("the post by name reaches the semaphore in use");
    });
    let name = TestName::new("livesem");
    let mut h = holder.arg(&name).stop_at("created").spawn().unwrap();
    h.wait_stopped().unwrap();
    match ShmCell::<u64, NamedSemaphore>::create(&name, 1) {
        Err(Error::AlreadyExists { name: n }) => {
            assert_eq!(n, format!("/sem.{}", &name.as_str()[1..]))
        }
        other => panic!("expected AlreadyExists for sem.X: {other:?}"),
    }
    assert!(!Path::new(&name.path()).exists(), "no segment left");
    NamedSemaphore::open(&name).unwrap().post().unwrap();
    h.resume().unwrap();
    h.wait().unwrap();
}
