//! `shmsync clean` never destroys data someone wants (issue 12, section
//! 5): a bare `clean` removes nothing; with a scope it removes what
//! crashed and keeps what its users left normally unless asked; `list`
//! tells the two apart; a `--prefix` is normalised or refused, never
//! silently matches nothing.
//!
//! The processes that use cells are this binary re-run by
//! `shmsync::testing::child!` in a role ([`role`]); a role that stays
//! attached stops at point `ready` until the test kills (SIGKILL) or
//! resumes it. The command runs under a bound ([`run`]). Every object lives
//! under a unique [`TestName`] prefix, removed when the test ends. No sleeps
//! order anything.

mod support;

use std::process::Command;

use serde_json::Value;
use shmsync::inspect::{self, Leftover};
use shmsync::segment::{CreateOptions, InitStep, LockKind, Segment, SegmentSpec};
use shmsync::testing::{self, init_point, ChildCtx, ChildSpec, Running, TestName};
use shmsync::ShmCell;

const BIN: &str = env!("CARGO_BIN_EXE_shmsync");

// ---------------------------------------------------------------- children

/// A standalone segment's spec (lock kind `external`).
fn segment_spec() -> SegmentSpec {
    SegmentSpec {
        value_size: 8,
        value_align: 8,
        type_tag: 0,
        type_version: 0,
        lock_kind: LockKind::External,
        lock_size: 8,
        lock_align: 8,
    }
}

/// Role `arg(0)` on the object named `arg(1)`. The roles that stay stop at
/// point `ready`; if resumed, they drop their handle and exit normally.
fn role(ctx: &ChildCtx) {
    let (role, name) = (ctx.arg(0), ctx.arg(1));
    let ready = || testing::point("ready");
    match role {
        // Create the cell, drop the handle, exit normally.
        "create-exit" => drop(ShmCell::<u64>::create(name, 7).expect("create")),
        // Create it into a `static` (never dropped) and exit normally.
        "static-exit" => {
            static CELL: std::sync::OnceLock<ShmCell<u64>> = std::sync::OnceLock::new();
            let cell = CELL.get_or_init(|| ShmCell::create(name, 7).expect("create"));
            *cell.lock().expect("lock") += 1;
            std::process::exit(0);
        }
        // Create it and call `process::exit` with the handle alive.
        "exit-attached" => {
            let _cell = ShmCell::<u64>::create(name, 7).expect("create");
            std::process::exit(0);
        }
        // Create it, fork; the forked copy drops its copy of the handle
        // and ends; then stay attached (the test kills us).
        "fork-drop-copy" => {
            let cell = ShmCell::<u64>::create(name, 7).expect("create");
            // SAFETY: the child only drops the handle (getpid, a lock query
            // and an atomic) and `_exit`s; this process's other thread is
            // libtest's main thread, waiting on the test thread.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                drop(cell);
                // SAFETY: ends the forked child without running exit
                // handlers.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: reaps our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(r, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            ready();
            drop(cell);
        }
        // Open it, drop the handle, exit normally.
        "open-exit" => drop(ShmCell::<u64>::open(name).expect("open")),
        // Create and stay attached.
        "hold" => {
            let _cell = ShmCell::<u64>::create(name, 7).expect("create");
            ready();
        }
        // Open and stay attached.
        "open-hold" => {
            let _cell = ShmCell::<u64>::open(name).expect("open");
            ready();
        }
        // Create and hold the lock.
        "hold-locked" => {
            let cell = ShmCell::<u64>::create(name, 7).expect("create");
            let _guard = cell.lock().expect("lock");
            ready();
        }
        // Stopped in the middle of initialising (killed there).
        "die-in-init" => {
            testing::points_at_init_steps();
            let _ = ShmCell::<u64>::create(name, 7);
            std::process::exit(3); // reached only if the test let it go on
        }
        // A standalone segment, attached until killed or resumed.
        "segment-hold" => {
            let _seg = Segment::create(name, &segment_spec(), &CreateOptions::new())
                .expect("create segment");
            ready();
        }
        other => panic!("unknown child role {other}"),
    }
}

/// Spawns `role` on `name` and waits (bounded) until it stops at its ready
/// point. Killed and reaped when dropped.
fn spawn(roles: ChildSpec, role: &str, name: &str) -> Running {
    let point = match role {
        "die-in-init" => init_point(InitStep::LockInitialised),
        _ => "ready".to_string(),
    };
    let mut child = roles
        .arg(role)
        .arg(name)
        .stop_at(&point)
        .spawn()
        .expect("spawn child");
    if let Err(e) = child.wait_stopped() {
        panic!("child {role} did not reach {point}: {e}");
    }
    child
}

/// SIGKILL and reap: its attach lock is released, its handle never
/// dropped.
fn kill(child: Running) {
    let ended = child.kill().expect("kill child");
    assert!(ended.killed, "{ended:?}");
}

/// Lets a stopped child go on: it drops its handle and exits normally.
fn finish(mut child: Running) {
    child.resume().expect("resume child");
    child.wait().expect("child exits normally");
}

/// Runs a role to its normal end.
fn run_role(roles: ChildSpec, role: &str, name: &str) {
    roles
        .arg(role)
        .arg(name)
        .run()
        .expect("role runs to its end");
}

// ---------------------------------------------------------------- command

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the command to its end, bounded by `testing::default_bound()`.
fn run(args: &[&str]) -> Out {
    let out = support::output_bounded(Command::new(BIN).args(args), testing::default_bound());
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(
        out.code,
        Some(0),
        "shmsync {args:?}: {}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn json_array(text: &str) -> Vec<Value> {
    match serde_json::from_str(text).expect("JSON") {
        Value::Array(v) => v,
        other => panic!("not an array: {other}"),
    }
}

/// `list --json --prefix P`, the entry for `name`.
fn listed(prefix: &str, name: &str) -> Value {
    json_array(&ok(&["list", "--json", "--prefix", prefix]))
        .into_iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed"))
}

/// `clean --json` with `args`, the action taken on `name`.
fn clean_action(args: &[&str], name: &str) -> String {
    let mut all = vec!["clean", "--json"];
    all.extend_from_slice(args);
    json_array(&ok(&all))
        .into_iter()
        .find(|o| o["name"] == name)
        .and_then(|o| o["action"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no outcome for {name} from clean {args:?}"))
}

fn exists(name: &str) -> bool {
    std::fs::symlink_metadata(format!("/dev/shm{name}")).is_ok()
}

/// A unique base name (removed with everything under it on drop) and the
/// prefix `BASE-` the test's objects share.
fn scope(tag: &str) -> (TestName, String) {
    let base = TestName::new(tag);
    let prefix = format!("{}-", base.as_str());
    (base, prefix)
}

// ------------------------------------------------------------------ tests

/// Without names, `--prefix` or `--all`, `clean` removes nothing, says why
/// and exits 2 — also for a cell that crashed. (On main it walked every
/// application's objects and exited 0.)
#[test]
fn bare_clean_exits_2_and_removes_nothing() {
    let roles = testing::child!("role", role);
    let (_base, prefix) = scope("bare");
    let name = format!("{prefix}crashed");
    kill(spawn(roles, "hold", &name));
    assert_eq!(listed(&prefix, &name)["leftover"], "crashed");

    // The dry run first: should a build still walk everything, this one
    // removes nothing of anybody's.
    for args in [&["clean", "--dry-run"][..], &["clean"][..]] {
        let out = run(args);
        assert_eq!(out.code, Some(2), "shmsync {args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("scope") && out.stderr.contains("removed nothing"),
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        assert!(exists(&name), "a bare clean removed {name}");
    }
    // With a scope it goes.
    assert_eq!(clean_action(&["--prefix", &prefix], &name), "removed");
    assert!(!exists(&name));
}

/// A cell whose only user dropped its handle and exited normally (a service
/// that is not running) is `detached`: kept by `clean --prefix`, removed
/// with `--include-detached`. (On main `clean --prefix` removed it.)
#[test]
fn detached_cell_is_kept_unless_include_detached() {
    let roles = testing::child!("role", role);
    let (_base, prefix) = scope("detached");
    let name = format!("{prefix}idle");
    run_role(roles, "create-exit", &name);

    let e = listed(&prefix, &name);
    assert_eq!(e["state"], "ready");
    assert_eq!(e["attached"], "none");
    assert_eq!(e["leftover"], "detached");
    assert_eq!(e["stale"], false);
    let table = ok(&["list", "--prefix", &prefix]);
    let row = table.lines().find(|l| l.starts_with(&name)).expect("row");
    assert!(row.contains("detached"), "{table}");

    assert_eq!(clean_action(&["--prefix", &prefix], &name), "skipped");
    let text = ok(&["clean", "--prefix", &prefix]);
    assert!(
        text.contains("detached") && text.contains("--include-detached"),
        "{text}"
    );
    assert!(exists(&name), "clean --prefix removed a detached cell");
    // Still the user's value.
    assert_eq!(
        *ShmCell::<u64>::open(&name)
            .expect("open")
            .lock()
            .expect("lock"),
        7
    );
    // Opened and dropped again by this process: still detached.
    assert_eq!(listed(&prefix, &name)["leftover"], "detached");

    let dry = ["--prefix", &prefix, "--include-detached", "--dry-run"];
    assert_eq!(clean_action(&dry, &name), "would-remove");
    assert!(exists(&name));
    let args = ["--prefix", &prefix, "--include-detached"];
    assert_eq!(clean_action(&args, &name), "removed");
    assert!(!exists(&name));
}

/// A forked child's copy of a handle is not counted: its drop takes
/// nothing away, so the parent killed afterwards still leaves a crash.
#[test]
fn a_forked_copy_of_a_handle_is_not_counted() {
    let roles = testing::child!("role", role);
    let (_base, prefix) = scope("fork");
    let name = format!("{prefix}cell");
    let parent = spawn(roles, "fork-drop-copy", &name);
    let e = listed(&prefix, &name);
    assert_eq!(e["attached"], "live");
    let v: Value = serde_json::from_str(&ok(&["inspect", "--json", &name])).expect("JSON");
    assert_eq!(v["header"]["handles"], 1, "{v}");
    kill(parent);
    assert_eq!(listed(&prefix, &name)["leftover"], "crashed");
}

/// A process that exits normally with a handle it never dropped (in a
/// `static`, or alive at `process::exit`) detached normally: its cell is
/// kept. (Uncounted by the exit handler.)
#[test]
fn normal_exit_without_drop_is_detached() {
    let roles = testing::child!("role", role);
    let (_base, prefix) = scope("exit");
    let (in_static, at_exit) = (format!("{prefix}static"), format!("{prefix}exit"));
    roles
        .arg("static-exit")
        .arg(&in_static)
        .run()
        .expect("exits 0");
    roles
        .arg("exit-attached")
        .arg(&at_exit)
        .run()
        .expect("exits 0");
    for name in [&in_static, &at_exit] {
        let e = listed(&prefix, name);
        assert_eq!(e["attached"], "none", "{name}");
        assert_eq!(e["leftover"], "detached", "{name}: {e}");
        assert_eq!(clean_action(&["--prefix", &prefix], name), "skipped");
        assert!(exists(name));
    }
    let cell = ShmCell::<u64>::open(&in_static).expect("open");
    assert_eq!(*cell.lock().expect("lock"), 8, "the static's update");
}

/// A cell whose last user was SIGKILLed is `crashed` and `clean --prefix`
/// removes it, even when an earlier user had left normally; a crashed cell
/// that is reopened and closed normally is `detached` again.
#[test]
fn cell_whose_last_user_was_killed_is_crashed_and_removed() {
    let roles = testing::child!("role", role);
    let (_base, prefix) = scope("killed");
    let (alone, last, healed) = (
        format!("{prefix}alone"),
        format!("{prefix}last"),
        format!("{prefix}healed"),
    );
    // Its only user killed.
    kill(spawn(roles, "hold", &alone));
    // Two users: the creator leaves normally, then the other is killed.
    let creator = spawn(roles, "hold", &last);
    let other = spawn(roles, "open-hold", &last);
    finish(creator);
    assert_eq!(listed(&prefix, &last)["attached"], "live");
    kill(other);
    // Killed, then reopened by a process that exits normally.
    kill(spawn(roles, "hold", &healed));
    assert_eq!(listed(&prefix, &healed)["leftover"], "crashed");
    run_role(roles, "open-exit", &healed);

    for name in [&alone, &last] {
        let e = listed(&prefix, name);
        assert_eq!(e["state"], "ready", "{name}");
        assert_eq!(e["attached"], "none", "{name}");
        assert_eq!(e["leftover"], "crashed", "{name}");
        assert_eq!(e["stale"], true, "{name}");
    }
    let e = listed(&prefix, &healed);
    assert_eq!(e["leftover"], "detached");
    assert_eq!(e["stale"], false);
    let table = ok(&["list", "--prefix", &prefix]);
    let row = table.lines().find(|l| l.starts_with(&alone)).expect("row");
    assert!(row.contains("crashed"), "{table}");

    let outcomes = json_array(&ok(&["clean", "--json", "--prefix", &prefix]));
    let action = |name: &str| {
        outcomes
            .iter()
            .find(|o| o["name"] == name)
            .map(|o| (o["action"].clone(), o["leftover"].clone()))
            .unwrap_or_else(|| panic!("no outcome for {name}: {outcomes:?}"))
    };
    assert_eq!(action(&alone), ("removed".into(), "crashed".into()));
    assert_eq!(action(&last), ("removed".into(), "crashed".into()));
    assert_eq!(action(&healed), ("skipped".into(), "detached".into()));
    assert!(!exists(&alone) && !exists(&last) && exists(&healed));
}

/// Abandoned initialisation and dead lock holders with nobody attached are
/// crashes, whatever the handle count: `clean --prefix` removes them.
#[test]
fn abandoned_init_and_dead_holders_are_removed() {
    let roles = testing::child!("role", role);
    let (_base, prefix) = scope("dead");
    let (half, died, gone) = (
        format!("{prefix}half"),
        format!("{prefix}died"),
        format!("{prefix}gone"),
    );
    kill(spawn(roles, "die-in-init", &half));
    kill(spawn(roles, "hold-locked", &died));
    // Dropped normally (count 0), then a lock word naming a thread that
    // cannot exist: a holder the kernel did not mark.
    run_role(roles, "create-exit", &gone);
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("number");
    let v: Value = serde_json::from_str(&ok(&["inspect", "--json", &gone])).expect("JSON");
    let lock_offset = v["header"]["lock_offset"].as_u64().expect("lock_offset");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/shm{gone}"))
            .expect("open for writing");
        f.write_all_at(&(pid_max + 1).to_ne_bytes(), lock_offset)
            .expect("write lock word");
    }

    for (name, state) in [
        (&half, "abandoned-init"),
        (&died, "owner-died"),
        (&gone, "holder-dead"),
    ] {
        let e = listed(&prefix, name);
        assert_eq!(e["state"], state, "{name}");
        assert_eq!(e["leftover"], "crashed", "{name}");
        assert_eq!(e["stale"], true, "{name}");
    }
    let outcomes = json_array(&ok(&["clean", "--json", "--prefix", &prefix]));
    for name in [&half, &died, &gone] {
        let o = outcomes
            .iter()
            .find(|o| o["name"] == **name)
            .expect("outcome");
        assert_eq!(o["action"], "removed", "{o}");
        assert_eq!(o["leftover"], "crashed", "{o}");
        assert!(!exists(name), "{name} left");
    }
}

/// `--prefix` without its leading `/` (or as a `/dev/shm/` path) means the
/// same objects; a prefix that would match every object or none is refused
/// with a message and exit 2, removing nothing.
#[test]
fn prefix_is_normalised_or_refused() {
    let roles = testing::child!("role", role);
    let (_base, prefix) = scope("prefix");
    let (one, two) = (format!("{prefix}one"), format!("{prefix}two"));
    kill(spawn(roles, "hold", &one));
    kill(spawn(roles, "hold", &two));

    let bare = &prefix[1..];
    assert!(!bare.starts_with('/'));
    let listed_names = json_array(&ok(&["list", "--json", "--prefix", bare]));
    assert_eq!(listed_names.len(), 2, "{listed_names:?}");
    let one_bare = &one[1..];
    assert_eq!(clean_action(&["--prefix", one_bare], &one), "removed");
    assert!(!exists(&one) && exists(&two));
    let as_path = format!("/dev/shm{two}");
    assert_eq!(clean_action(&["--prefix", &as_path], &two), "removed");
    assert!(!exists(&one) && !exists(&two));

    // Refused: would match everything (dry run first, as above) or nothing.
    let three = format!("{prefix}three");
    kill(spawn(roles, "hold", &three));
    for p in ["", "/", "/dev/shm/"] {
        for args in [
            &["clean", "--dry-run", "--prefix", p][..],
            &["clean", "--prefix", p][..],
        ] {
            let out = run(args);
            assert_eq!(out.code, Some(2), "{args:?}: {}", out.stdout);
            assert!(out.stderr.contains("--all"), "{args:?}: {}", out.stderr);
            assert!(exists(&three), "{args:?} removed {three}");
        }
    }
    let slash = format!("{bare}/x");
    for args in [
        &["clean", "--prefix", &slash][..],
        &["list", "--prefix", &slash][..],
    ] {
        let out = run(args);
        assert_eq!(out.code, Some(2), "{args:?}");
        assert!(out.stderr.contains("can match nothing"), "{}", out.stderr);
    }
    assert!(exists(&three));
}

/// The count itself, in one process: each handle counts once, a normal
/// drop uncounts, and a standalone `Segment` counts like a cell (killed:
/// crashed).
#[test]
fn handles_are_counted_and_a_segment_counts_like_a_cell() {
    let roles = testing::child!("role", role);
    let (_base, prefix) = scope("count");
    let (cell_name, seg_name) = (format!("{prefix}cell"), format!("{prefix}seg"));
    let handles = |name: &str| {
        inspect::inspect(name)
            .expect("inspect")
            .header
            .expect("header")
            .handles
    };
    let a = ShmCell::<u64>::create(&cell_name, 1).expect("create");
    assert_eq!(handles(&cell_name), 1);
    let b = ShmCell::<u64>::open(&cell_name).expect("open");
    assert_eq!(handles(&cell_name), 2);
    drop(a);
    assert_eq!(handles(&cell_name), 1);
    {
        let c = ShmCell::<u64>::open(&cell_name).expect("open");
        assert_eq!(handles(&cell_name), 2);
        drop(c);
    }
    drop(b);
    let i = inspect::inspect(&cell_name).expect("inspect");
    assert_eq!(i.header.as_ref().map(|h| h.handles), Some(0));
    assert_eq!(i.leftover, Some(Leftover::Detached));
    let again = ShmCell::<u64>::open(&cell_name).expect("open");
    assert_eq!(*again.try_lock().expect("the lock is free"), 1);

    let seg = spawn(roles, "segment-hold", &seg_name);
    assert_eq!(handles(&seg_name), 1);
    assert_eq!(listed(&prefix, &seg_name)["lock_kind"], "external");
    kill(seg);
    assert_eq!(listed(&prefix, &seg_name)["leftover"], "crashed");
    let seg = Segment::open(&seg_name, &segment_spec()).expect("reopen");
    assert_eq!(handles(&seg_name), 1, "the first attacher alone resets");
    drop(seg);
    assert_eq!(listed(&prefix, &seg_name)["leftover"], "detached");
}
