//! End-to-end tests of the `shmsync` command, run as processes.
//!
//! Default libtest harness: tests run in parallel threads of one process.
//! The processes that create or open cells are this binary re-run by
//! `shmsync::testing::child!` in a *role* ([`role`]): each sets up, reaches
//! point `ready` and is stopped there (holding its cell or lock) until the
//! test kills it; every child is killed and reaped by its handle, within a
//! bound. The `shmsync` command itself runs under a watchdog
//! ([`output_bounded`]). Every object name is unique (a
//! [`TestName`] prefix) and removed by a guard even when a test fails,
//! which also fails the test if something under the name is left. No
//! sleeps order anything.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use serde_json::Value;
use shmsync::segment::{InitStep, Segment};
use shmsync::testing::{self, init_point, ChildCtx, ChildSpec, Running};
use shmsync::{FileLock, LockError, NamedSemaphore, ShmCell};

const BIN: &str = env!("CARGO_BIN_EXE_shmsync");

// ---------------------------------------------------------------- children

/// The code of every child (`child!("role", role)`): role `arg(0)` on the
/// cell named `arg(1)`. A role that stays (holds a cell or a lock) stops at
/// point `ready` until the test kills it.
fn role(ctx: &ChildCtx) {
    let (role, name) = (ctx.arg(0), ctx.arg(1));
    // The thread that locks (libtest's test thread, not the main one): its
    // id is what a robust mutex records as the owner.
    // SAFETY: gettid cannot fail.
    testing::point(&format!("tid {}", unsafe { libc::gettid() }));
    let ready = || testing::point("ready");
    match role {
        // A live cell: create it and stay attached.
        "hold" => {
            let _cell = ShmCell::<u64>::create(name, 7).expect("create");
            ready();
        }
        // Create it and hold its lock (the test SIGKILLs us).
        "hold-locked" => {
            let cell = ShmCell::<u64>::create(name, 7).expect("create");
            let _guard = cell.lock().expect("lock");
            ready();
        }
        // Take the lock from a dead owner and give up: drop the guard
        // without make_consistent, which makes the lock not recoverable.
        "give-up" => {
            let cell = ShmCell::<u64>::open(name).expect("open");
            match cell.lock() {
                Err(LockError::OwnerDied(guard)) => drop(guard),
                other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
            }
            ready();
        }
        // Take the lock from a dead owner and keep it, not yet repaired.
        "recover-hold" => {
            let cell = ShmCell::<u64>::open(name).expect("open");
            let _guard = match cell.lock() {
                Err(LockError::OwnerDied(guard)) => guard,
                other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
            };
            ready();
        }
        // The same two with the semaphore backend.
        "sem-hold" => {
            let _cell = ShmCell::<u64, NamedSemaphore>::create(name, 7).expect("create");
            ready();
        }
        "sem-hold-locked" => {
            let cell = ShmCell::<u64, NamedSemaphore>::create(name, 7).expect("create");
            let _guard = cell.lock().expect("lock");
            ready();
        }
        // And with the flock backend.
        "flock-hold-locked" => {
            let cell = ShmCell::<u64, FileLock>::create(name, 7).expect("create");
            let _guard = cell.lock().expect("lock");
            ready();
        }
        // Attach to an existing cell and stay attached.
        "open-hold" => {
            let _cell = ShmCell::<u64>::open(name).expect("open");
            ready();
        }
        // Stop in the middle of initialising (write lock held, header in
        // state Initialising) until killed: the test stops it at the
        // LockInitialised step's point.
        "die-in-init" => {
            testing::points_at_init_steps();
            let _ = ShmCell::<u64>::create(name, 7);
            std::process::exit(3); // reached only if the test let us go on
        }
        other => panic!("unknown child role {other}"),
    }
}

/// The point a role is stopped at once it is set up.
fn ready_point(role: &str) -> String {
    match role {
        "die-in-init" => init_point(InitStep::LockInitialised),
        _ => "ready".to_string(),
    }
}

/// A child in a role, stopped at its ready point; killed (SIGKILL) and
/// reaped when dropped.
struct ChildGuard {
    child: Option<Running>,
    pid: u32,
    tid: u32,
}

impl ChildGuard {
    /// Spawns `role` on `name` and waits (bounded) until it is ready.
    fn spawn(roles: ChildSpec, role: &str, name: &str) -> ChildGuard {
        let mut child = roles
            .arg(role)
            .arg(name)
            .stop_at(&ready_point(role))
            .spawn()
            .expect("spawn child");
        if let Err(e) = child.wait_stopped() {
            panic!("child {role} did not report ready: {e}");
        }
        let tid = child
            .points()
            .iter()
            .find_map(|p| p.strip_prefix("tid ")?.parse().ok())
            .expect("the child reported its thread id");
        ChildGuard {
            pid: child.pid(),
            tid,
            child: Some(child),
        }
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    /// The id of the child's thread that ran the role (and locked).
    fn tid(&self) -> u32 {
        self.tid
    }

    /// SIGKILL, then reap: when this returns the process is gone, its OFD
    /// locks are released and its robust list has been processed.
    fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            let ended = c.kill().expect("kill the child");
            assert!(ended.killed, "{ended:?}");
        }
    }
}

// ------------------------------------------------------------------ names

use support::Name;
/// A unique prefix for one test's objects (`NAME-`, from a [`Name`]): every
/// object under it is removed when the guard drops (even after a failed
/// assertion), and one left behind then fails the test.
struct Prefix {
    _base: Name,
    prefix: String,
}

impl Prefix {
    fn new(label: &str) -> Prefix {
        let base = Name::new(label);
        let prefix = format!("{}-", base.as_str());
        Prefix {
            _base: base,
            prefix,
        }
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }
}

fn path_of(name: &str) -> String {
    format!("/dev/shm{name}")
}

fn exists(name: &str) -> bool {
    std::fs::symlink_metadata(path_of(name)).is_ok()
}

// ---------------------------------------------------------------- command

/// Kills a process that outlives the bound of `testing`
/// ([`testing::default_bound`]): a hung `shmsync` fails the test instead
/// of hanging it. Watches a pidfd, so it can never signal a reused pid.
struct Watchdog(Option<JoinHandle<bool>>);

impl Watchdog {
    fn new(child: &Child) -> Watchdog {
        // SAFETY: plain system call on our own, unreaped child.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let ms = testing::default_bound().as_millis().min(i32::MAX as u128) as i32;
        Watchdog(Some(std::thread::spawn(move || {
            let mut pfd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                if r > 0 {
                    return false; // it ended
                }
                if r < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                // SAFETY: signalling the process the pidfd refers to.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                return true;
            }
        })))
    }

    /// After the process ended: fails the test if the watchdog killed it.
    fn check(mut self, what: &str) {
        if let Some(t) = self.0.take() {
            let fired = t.join().expect("watchdog thread");
            assert!(
                !fired,
                "watchdog: {what} did not end within {:?} and was killed",
                testing::default_bound()
            );
        }
    }
}

/// Runs `cmd` to its end (stdin closed, output captured), bounded.
fn output_bounded(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shmsync");
    let watchdog = Watchdog::new(&child);
    let out = child.wait_with_output().expect("wait for shmsync");
    watchdog.check(&format!("{cmd:?}"));
    out
}

fn shmsync(args: &[&str]) -> Output {
    output_bounded(Command::new(BIN).args(args))
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(args: &[&str]) -> String {
    let out = shmsync(args);
    assert!(
        out.status.success(),
        "shmsync {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_of(&out)
}

/// `shmsync list --json --prefix P`, parsed.
fn list(prefix: &str) -> Vec<Value> {
    let text = ok(&["list", "--json", "--prefix", prefix]);
    match serde_json::from_str(&text).expect("list --json parses") {
        Value::Array(v) => v,
        other => panic!("list --json is not an array: {other}"),
    }
}

fn entry<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed in {rows:?}"))
}

fn clean(prefix: &str, dry_run: bool) -> Vec<Value> {
    let mut args = vec!["clean", "--json", "--prefix", prefix];
    if dry_run {
        args.push("--dry-run");
    }
    match serde_json::from_str(&ok(&args)).expect("clean --json parses") {
        Value::Array(v) => v,
        other => panic!("clean --json is not an array: {other}"),
    }
}
fn action_for<'a>(outcomes: &'a [Value], name: &str) -> &'a str {
    outcomes
        .iter()
        .find(|o| o["name"] == name)
        .and_then(|o| o["action"].as_str())
        .unwrap_or_else(|| panic!("no clean outcome for {name} in {outcomes:?}"))
}

// ------------------------------------------------------------------ tests

/// The documented fields of `list --json` (see `src/bin/shmsync.rs`).
const FIELDS: &[&str] = &[
    "name",
    "path",
    "state",
    "reason",
    "stale",
    "leftover",
    "size",
    "uid",
    "mode",
    "attached",
    "lock_kind",
    "lock_state",
    "holder_tid",
    "holder_pid",
    "holder_alive",
    "holder_state",
    "lock_words",
    "creator_pid",
    "created_unix",
    "age_secs",
    "format_version",
    "value_size",
    "value_align",
    "type_tag",
    "type_version",
];

#[test]
fn live_cells_are_attached_and_survive_clean() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("live");
    let (idle, locked) = (p.name("idle"), p.name("locked"));
    let a = ChildGuard::spawn(roles, "hold", &idle);
    let b = ChildGuard::spawn(roles, "hold-locked", &locked);

    let rows = list(&p.prefix);
    let e = entry(&rows, &idle);
    assert_eq!(e["state"], "ready");
    assert_eq!(e["attached"], "live");
    assert_eq!(e["stale"], false);
    assert_eq!(e["lock_kind"], "robust-mutex");
    assert_eq!(e["lock_state"], "free");
    assert_eq!(e["holder_pid"], Value::Null);
    assert_eq!(e["creator_pid"], a.pid());
    assert_eq!(e["mode"], "0600");
    assert_eq!(e["value_size"], 8);
    let e = entry(&rows, &locked);
    assert_eq!(e["state"], "ready");
    assert_eq!(e["lock_state"], "held");
    assert_eq!(e["holder_pid"], b.pid());
    assert_eq!(e["holder_alive"], true);
    assert_eq!(e["stale"], false);

    let outcomes = clean(&p.prefix, false);
    assert_eq!(action_for(&outcomes, &idle), "skipped");
    assert_eq!(action_for(&outcomes, &locked), "skipped");
    assert!(
        exists(&idle) && exists(&locked),
        "clean removed a live cell"
    );
    // The cells still work for their owners.
    let cell = ShmCell::<u64>::open(&idle).expect("open after clean");
    assert_eq!(*cell.lock().expect("lock"), 7);
}

#[test]
fn killed_attachers_leave_stale_cells_that_clean_removes() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("stale");
    let (idle, locked) = (p.name("idle"), p.name("locked"));
    let mut a = ChildGuard::spawn(roles, "hold", &idle);
    let mut b = ChildGuard::spawn(roles, "hold-locked", &locked);
    let b_tid = b.tid();
    a.kill();
    b.kill();

    let rows = list(&p.prefix);
    let e = entry(&rows, &idle);
    assert_eq!(e["state"], "ready");
    assert_eq!(e["attached"], "none");
    assert_eq!(e["stale"], true);
    let e = entry(&rows, &locked);
    assert_eq!(e["state"], "owner-died");
    assert_eq!(e["lock_state"], "owner-died");
    assert_eq!(e["holder_tid"], b_tid, "glibc __owner keeps the dead tid");
    assert_eq!(e["holder_alive"], false);
    assert_eq!(e["stale"], true);

    let dry = clean(&p.prefix, true);
    assert_eq!(action_for(&dry, &idle), "would-remove");
    assert_eq!(action_for(&dry, &locked), "would-remove");
    assert!(
        exists(&idle) && exists(&locked),
        "--dry-run removed something"
    );

    let done = clean(&p.prefix, false);
    assert_eq!(action_for(&done, &idle), "removed");
    assert_eq!(action_for(&done, &locked), "removed");
    assert!(
        !exists(&idle) && !exists(&locked),
        "clean left a stale cell"
    );
}

#[test]
fn initialising_then_abandoned_init() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("init");
    let name = p.name("half");
    let mut creator = ChildGuard::spawn(roles, "die-in-init", &name);

    let e = entry(&list(&p.prefix), &name).clone();
    assert_eq!(e["state"], "initialising");
    assert_eq!(e["attached"], "creator");
    assert_eq!(e["stale"], false);
    assert_eq!(e["creator_pid"], creator.pid());
    assert_eq!(action_for(&clean(&p.prefix, false), &name), "skipped");
    assert!(exists(&name), "clean removed an object being initialised");

    creator.kill();
    let e = entry(&list(&p.prefix), &name).clone();
    assert_eq!(e["state"], "abandoned-init");
    assert_eq!(e["attached"], "none");
    assert_eq!(e["stale"], true);
    assert_eq!(action_for(&clean(&p.prefix, false), &name), "removed");
    assert!(!exists(&name));
}

#[test]
fn not_recoverable_cell_is_shown() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("nrec");
    let name = p.name("wedged");
    let mut holder = ChildGuard::spawn(roles, "hold-locked", &name);
    holder.kill();
    roles.arg("give-up").arg(&name).run().unwrap();
    {
        let cell = ShmCell::<u64>::open(&name).expect("open");
        assert!(matches!(cell.try_lock(), Err(LockError::NotRecoverable)));
    }
    let mut user = ChildGuard::spawn(roles, "open-hold", &name);

    let e = entry(&list(&p.prefix), &name).clone();
    assert_eq!(e["state"], "not-recoverable");
    assert_eq!(e["lock_state"], "not-recoverable");
    assert_eq!(e["lock_words"]["owner_word"], 0x7fff_fffe_u32);
    assert_eq!(e["attached"], "live");
    assert_eq!(e["stale"], false);
    assert_eq!(action_for(&clean(&p.prefix, false), &name), "skipped");

    user.kill();
    let e = entry(&list(&p.prefix), &name).clone();
    assert_eq!(e["state"], "not-recoverable");
    assert_eq!(e["stale"], true);
    assert_eq!(action_for(&clean(&p.prefix, false), &name), "removed");
    assert!(!exists(&name));
}

#[test]
fn recovering_and_holder_dead_cells_are_shown() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("recov");
    let (recov, gone) = (p.name("recovering"), p.name("gone"));

    // Recovering: a live process took the lock with OwnerDied and has not
    // made it consistent yet.
    ChildGuard::spawn(roles, "hold-locked", &recov).kill();
    let mut fixer = ChildGuard::spawn(roles, "recover-hold", &recov);
    let e = entry(&list(&p.prefix), &recov).clone();
    assert_eq!(e["state"], "recovering");
    assert_eq!(e["lock_state"], "recovering");
    assert_eq!(e["lock_words"]["owner_word"], 0x7fff_ffff_u32);
    assert_eq!(e["holder_pid"], fixer.pid());
    assert_eq!(e["holder_alive"], true);
    assert_eq!(e["stale"], false);
    // ... and dies: owner died again.
    fixer.kill();
    let e = entry(&list(&p.prefix), &recov).clone();
    assert_eq!(e["state"], "owner-died");
    assert_eq!(e["stale"], true);

    // Holder dead: a lock word naming a thread that cannot exist (above
    // pid_max) and no owner-died mark, as the kernel leaves it when it
    // could not process the holder's robust list.
    drop(ShmCell::<u64>::create(&gone, 1).expect("create"));
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("number");
    let v: Value = serde_json::from_str(&ok(&["inspect", "--json", &gone])).expect("json");
    let lock_offset = v["header"]["lock_offset"].as_u64().expect("lock_offset");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path_of(&gone))
            .expect("open for writing");
        f.write_all_at(&(pid_max + 1).to_ne_bytes(), lock_offset)
            .expect("write lock word");
    }
    let e = entry(&list(&p.prefix), &gone).clone();
    assert_eq!(e["state"], "holder-dead");
    assert_eq!(e["lock_state"], "held");
    assert_eq!(e["holder_tid"], pid_max + 1);
    assert_eq!(e["holder_alive"], false);
    assert_eq!(e["stale"], true);

    let done = clean(&p.prefix, false);
    assert_eq!(action_for(&done, &recov), "removed");
    assert_eq!(action_for(&done, &gone), "removed");
}

#[test]
fn semaphore_cells_show_their_holder_and_go_with_their_semaphore() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("sem");
    let (idle, locked) = (p.name("idle"), p.name("locked"));
    let sem_file = |name: &str| format!("/sem.{}", &name[1..]);
    // The semaphore files' prefix (its guard removes leftovers too).
    let sem_prefix = sem_file(&p.prefix);
    let mut a = ChildGuard::spawn(roles, "sem-hold", &idle);
    let mut b = ChildGuard::spawn(roles, "sem-hold-locked", &locked);

    let rows = list(&p.prefix);
    let e = entry(&rows, &idle);
    assert_eq!(e["lock_kind"], "semaphore");
    assert_eq!(
        (e["state"].as_str(), e["lock_state"].as_str()),
        (Some("ready"), Some("free"))
    );
    assert_eq!(e["attached"], "live");
    let e = entry(&rows, &locked);
    assert_eq!(e["lock_state"], "held");
    assert_eq!(e["holder_pid"], b.pid());
    assert_eq!(e["holder_alive"], true);
    assert_eq!(e["stale"], false);
    // The semaphore file is listed as the cell's companion.
    let sems = list(&sem_prefix);
    let e = entry(&sems, &sem_file(&locked));
    assert_eq!(e["state"], "companion", "{e}");
    assert_eq!(e["stale"], false);

    a.kill();
    b.kill();
    let rows = list(&p.prefix);
    assert_eq!(entry(&rows, &idle)["stale"], true);
    let e = entry(&rows, &locked);
    assert_eq!(e["state"], "owner-died");
    assert_eq!(e["holder_pid"], b.pid());
    assert_eq!(e["holder_alive"], false);
    assert_eq!(e["stale"], true);

    // Cleaning the cells removes their semaphores; cleaning the semaphore
    // names alone never does.
    let outcomes = clean(&sem_prefix, false);
    assert_eq!(action_for(&outcomes, &sem_file(&idle)), "skipped");
    assert!(exists(&sem_file(&idle)));
    let outcomes = clean(&p.prefix, false);
    assert_eq!(action_for(&outcomes, &idle), "removed");
    assert_eq!(action_for(&outcomes, &locked), "removed");
    for name in [&idle, &locked] {
        assert!(
            !exists(name) && !exists(&sem_file(name)),
            "{name} left behind"
        );
    }
}

#[test]
fn flock_cells_show_their_holder() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("flock");
    let name = p.name("cell");
    let mut holder = ChildGuard::spawn(roles, "flock-hold-locked", &name);
    let e = entry(&list(&p.prefix), &name).clone();
    assert_eq!(e["lock_kind"], "flock");
    assert_eq!(
        (e["state"].as_str(), e["lock_state"].as_str()),
        (Some("ready"), Some("held"))
    );
    assert_eq!(e["holder_pid"], holder.pid());
    assert_eq!(e["holder_alive"], true);
    assert_eq!(e["lock_words"]["flock_state"], 1);
    assert_eq!(e["stale"], false);

    holder.kill();
    let e = entry(&list(&p.prefix), &name).clone();
    assert_eq!(e["state"], "owner-died");
    assert_eq!(e["holder_pid"], holder.pid());
    assert_eq!(e["holder_alive"], false);
    assert_eq!(e["stale"], true);
    // The next locker is told, as the listing said.
    {
        let cell = ShmCell::<u64, FileLock>::open(&name).expect("open");
        assert!(matches!(cell.try_lock(), Err(LockError::OwnerDied(_))));
    }
    // That guard was dropped unrepaired: not recoverable.
    let e = entry(&list(&p.prefix), &name).clone();
    assert_eq!(e["state"], "not-recoverable");
    assert_eq!(action_for(&clean(&p.prefix, false), &name), "removed");
}

#[test]
fn foreign_and_garbage_objects_are_listed_and_never_removed() {
    let p = Prefix::new("foreign");
    let text = p.name("text");
    let zeros = p.name("zeros");
    let empty = p.name("empty");
    let damaged = p.name("damaged");
    let short = p.name("short");
    let link = p.name("link");
    let newer = p.name("newer");
    std::fs::write(path_of(&text), b"hello, not a segment").expect("write");
    std::fs::write(path_of(&zeros), vec![0u8; 4096]).expect("write");
    std::fs::write(path_of(&empty), b"").expect("write");
    // Our magic and format version, then garbage claiming to be Ready: a
    // bad checksum.
    let ours = shmsync::segment::header::FORMAT_VERSION.to_ne_bytes();
    let mut garbage = [&b"SHMSYNC\0"[..], &ours].concat();
    garbage.extend((0..500u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    garbage[144..148].copy_from_slice(&2u32.to_ne_bytes());
    std::fs::write(path_of(&damaged), &garbage).expect("write");
    std::fs::write(
        path_of(&short),
        [&b"SHMSYNC\0"[..], &ours, b" short"].concat(),
    )
    .expect("write");
    let mut future = garbage.clone();
    let next = shmsync::segment::header::FORMAT_VERSION + 1;
    future[8..12].copy_from_slice(&next.to_ne_bytes()); // a newer format
    std::fs::write(path_of(&newer), &future).expect("write");
    std::os::unix::fs::symlink(path_of(&damaged), path_of(&link)).expect("symlink");

    let rows = list(&p.prefix);
    for (name, state) in [
        (&text, "foreign"),
        (&zeros, "foreign"),
        (&empty, "foreign"),
        (&damaged, "damaged"),
        (&short, "damaged"),
        (&newer, "incompatible"),
        (&link, "foreign"),
    ] {
        let e = entry(&rows, name);
        assert_eq!(e["state"], state, "{name}: {e}");
        assert_eq!(e["stale"], false, "{name}");
        assert!(
            e["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{name}: no reason"
        );
    }
    let reason = &entry(&rows, &damaged)["reason"];
    assert!(
        reason.as_str().is_some_and(|r| r.contains("checksum")),
        "{reason}"
    );
    assert!(entry(&rows, &link)["reason"]
        .as_str()
        .is_some_and(|r| r.contains("symbolic link")));

    let outcomes = clean(&p.prefix, false);
    for name in [&text, &zeros, &empty, &damaged, &short, &newer, &link] {
        assert_eq!(action_for(&outcomes, name), "skipped", "{name}");
        assert!(exists(name), "clean removed {name}");
    }
    assert_eq!(
        std::fs::read(path_of(&damaged)).expect("read"),
        garbage,
        "clean changed a damaged object"
    );

    // The table shows them with their reason, and exits 0.
    let table = ok(&["list", "--prefix", &p.prefix]);
    assert!(table.contains("no shmsync magic"), "{table}");

    // Forced unlink removes a foreign object, with a warning.
    let out = shmsync(&["unlink", &text]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a shmsync object"));
    assert!(!exists(&text));
}

#[test]
fn json_output_has_the_documented_fields() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("json");
    let name = p.name("cell");
    let _live = ChildGuard::spawn(roles, "hold", &name);
    std::fs::write(path_of(&p.name("foreign")), b"xyz").expect("write");

    let rows = list(&p.prefix);
    assert_eq!(rows.len(), 2);
    for row in &rows {
        for f in FIELDS {
            assert!(row.get(f).is_some(), "field {f} missing in {row}");
        }
        assert_eq!(
            row.as_object().expect("object").len(),
            FIELDS.len(),
            "{row}"
        );
    }

    let one: Value =
        serde_json::from_str(&ok(&["inspect", "--json", &name])).expect("inspect --json parses");
    for f in FIELDS {
        assert!(one.get(f).is_some(), "inspect --json lacks {f}");
    }
    assert_eq!(one["header"]["state"], 2);
    assert_eq!(one["header"]["checksum_ok"], true);
    assert_eq!(one["header"]["value_size"], 8);

    for o in clean(&p.prefix, true) {
        for f in ["name", "action", "reason", "state"] {
            assert!(o.get(f).is_some(), "clean --json lacks {f}: {o}");
        }
    }
}

#[test]
fn clean_skips_a_name_replaced_between_check_and_unlink() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("race");
    let name = p.name("cell");
    ChildGuard::spawn(roles, "hold", &name).kill(); // stale
    let old_ino = ino(&name);

    let mut cleaner = Reaped(
        Command::new(BIN)
            .args(["clean", "--prefix", &p.prefix])
            .env("SHMSYNC_CLEAN_PAUSE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clean"),
    );
    let watchdog = Watchdog::new(&cleaner.0);
    let child = &mut cleaner.0;
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("read stderr");
    assert!(line.contains("paused") && line.contains(&name), "{line}");

    // The cleaner holds the exclusive lock on the old inode: remove the
    // name and create a new (also stale-looking) object under it.
    Segment::unlink(&name).expect("forced unlink");
    drop(ShmCell::<u64>::create(&name, 9).expect("re-create"));
    let new_ino = ino(&name);
    assert_ne!(old_ino, new_ino);

    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"\n")
        .expect("resume");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    let status = child.wait().expect("wait");
    watchdog.check("shmsync clean (paused)");
    assert!(status.success(), "clean failed: {status}");
    assert!(out.contains("skipped") && out.contains("replaced"), "{out}");
    assert!(exists(&name), "clean removed the replacement");
    assert_eq!(ino(&name), new_ino);
    let cell = ShmCell::<u64>::open(&name).expect("replacement intact");
    assert_eq!(*cell.lock().expect("lock"), 9);
}

/// A child that is killed and reaped on drop unless it has exited.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn ino(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path_of(name))
        .expect("stat")
        .ino()
}

#[test]
fn unlink_is_forced_and_warns_when_attached() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("unlink");
    let name = p.name("cell");
    let _live = ChildGuard::spawn(roles, "hold", &name);
    let out = shmsync(&["unlink", &name]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("attached"), "{err}");
    assert!(!exists(&name));

    let out = shmsync(&["unlink", &name]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unlinking a missing name must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one-line message: {err}");
}

#[test]
fn inspect_explains_every_field() {
    let roles = testing::child!("role", role);
    let p = Prefix::new("inspect");
    let name = p.name("cell");
    let _live = ChildGuard::spawn(roles, "hold-locked", &name);
    let text = ok(&["inspect", &name]);
    for f in [
        "format_version",
        "arch",
        "lock_kind",
        "creator_pid",
        "created_unix",
        "checksum",
        "state_word",
        "lock_word",
        "owner_word",
        "holder_pid",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(f) && l.split_whitespace().count() > 2),
            "inspect lacks an explained {f}:\n{text}"
        );
    }
    // Inspecting took nothing: the holder still holds the lock.
    let cell = ShmCell::<u64>::open(&name).expect("open");
    assert!(matches!(cell.try_lock(), Err(LockError::WouldBlock)));

    let out = shmsync(&["inspect", &p.name("missing")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shared object"));
}

#[test]
fn usage_and_help() {
    for sub in ["list", "inspect", "clean", "unlink"] {
        let text = ok(&[sub, "--help"]);
        assert!(
            text.contains("Example"),
            "{sub} --help has no example:\n{text}"
        );
        assert!(text.contains("shmsync"), "{sub} --help");
    }
    let p = Prefix::new("usage");
    let missing = p.name("missing");
    let text = ok(&["clean", &missing]);
    assert!(text.contains("no such object"), "{text}");
    let out = shmsync(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "bad usage exits 2");
    assert!(!out.stderr.is_empty());
}

static BIN_DIRS: AtomicU32 = AtomicU32::new(0);

/// A copy of the `shmsync` binary that user `nobody` (65534) can run, in a
/// fresh directory of mode 0755, removed on drop.
///
/// The built binary lives in the checkout's `target/`, which `nobody`
/// cannot reach when the checkout is under a directory closed to others
/// (a clone in `mktemp -d`, or under `/root`): exec fails with EACCES.
struct BinForNobody {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl Drop for BinForNobody {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether every directory from `/` down to `dir` lets others through
/// (`o+x`).
fn reachable_by_others(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let mode = std::fs::metadata(d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!("{} has mode {:o}", d.display(), mode & 0o7777));
        }
    }
    Ok(())
}

/// Copies the binary where `nobody` can run it, or says why it cannot be
/// done here.
fn bin_for_nobody() -> Result<BinForNobody, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut why = Vec::new();
    for base in [std::env::temp_dir(), std::path::PathBuf::from("/tmp")] {
        if let Err(e) = reachable_by_others(&base) {
            why.push(e);
            continue;
        }
        let n = BIN_DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("shmsync-t-{}-{n}-bin", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            why.push(format!("{}: {e}", dir.display()));
            continue;
        }
        let guard = BinForNobody {
            bin: dir.join("shmsync"),
            dir,
        };
        let perm = |p: &std::path::Path| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        };
        let copied = perm(&guard.dir)
            .and_then(|()| std::fs::copy(BIN, &guard.bin).map(|_| ()))
            .and_then(|()| perm(&guard.bin));
        match copied {
            Ok(()) => return Ok(guard),
            Err(e) => why.push(format!("copy to {}: {e}", guard.dir.display())),
        }
    }
    Err(why.join("; "))
}

/// Run as an unprivileged user (`nobody`): another user's objects are
/// unreadable and never cleaned. Runs only as root (to switch user);
/// otherwise, or when no directory `nobody` can reach can hold a copy of
/// the binary, it says so on stderr and checks nothing.
#[test]
fn other_users_objects_are_unreadable_and_kept() {
    let roles = testing::child!("role", role);
    if !is_root() {
        eprintln!(
            "SKIPPED other_users_objects_are_unreadable_and_kept: needs root (to run \
             shmsync as user nobody)"
        );
        return;
    }
    let bin = match bin_for_nobody() {
        Ok(b) => b,
        Err(why) => {
            eprintln!(
                "SKIPPED other_users_objects_are_unreadable_and_kept: no directory user \
                 nobody can reach to run a copy of shmsync from ({why})"
            );
            return;
        }
    };
    let p = Prefix::new("uid");
    let name = p.name("cell");
    ChildGuard::spawn(roles, "hold", &name).kill(); // stale, root's, mode 0600
    let run_as_nobody =
        |args: &[&str]| output_bounded(Command::new(&bin.bin).args(args).uid(65534).gid(65534));
    let out = run_as_nobody(&["list", "--json", "--prefix", &p.prefix]);
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let e = entry(&rows, &name);
    assert_eq!(e["state"], "unreadable");
    assert_eq!(e["reason"], "permission denied");
    let out = run_as_nobody(&["clean", "--prefix", &p.prefix]);
    assert!(out.status.success(), "{out:?}");
    assert!(exists(&name), "an unprivileged clean removed root's object");
}

/// Whether we may switch to another user (for the unprivileged test).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `shmsync inspect PATH` reads a file-backed cell the way it reads a named
/// one: ready while held by nobody, the lock word's holder once a process
/// holds it, and a FIFO at a path is foreign, never opened for waiting.
#[test]
fn inspect_reads_a_file_backed_cell_by_path() {
    let dir = std::env::temp_dir().join(format!("shmsync-cli-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let path = dir.join("counter.cell");
    let cell = ShmCell::<u64>::create_file(&path, 7).expect("create_file");
    let p = path.to_str().unwrap();
    let v: Value = serde_json::from_str(&ok(&["inspect", "--json", p])).expect("json");
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["lock_kind"], "robust-mutex", "{v}");
    assert_eq!(v["attached"], "live", "{v}");
    let g = cell.lock().unwrap();
    let v: Value = serde_json::from_str(&ok(&["inspect", "--json", p])).expect("json");
    assert_eq!(v["lock_state"], "held", "{v}");
    drop(g);
    drop(cell);
    // A FIFO where a cell should be: reported, not waited on.
    let fifo = dir.join("fifo.cell");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let v: Value =
        serde_json::from_str(&ok(&["inspect", "--json", fifo.to_str().unwrap()])).expect("json");
    assert_eq!(v["state"], "foreign", "{v}");
    let missing = dir.join("none.cell");
    let out = shmsync(&["inspect", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a missing path is an error");
    ShmCell::<u64>::remove_file(&path).ok();
}
