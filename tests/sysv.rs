//! System V cells (`shmget`): the lock × state table of the robust mutex,
//! bad inputs refused before any read-write attach, a kill loop, another
//! user, `IPC_PRIVATE` removal at the last detach, a creator killed at
//! each initialisation step, racing `open_or_create`s, and cleanup.
//!
//! Default libtest harness; other processes are this binary re-run by
//! `shmsync::testing::child!`. Every key a test uses is removed by a drop
//! guard (`IPC_RMID`), also when the test fails.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shmsync::testing::{self, Watchdog};
use shmsync::{
    Backing, CreateOptions, Error, FileLock, LockError, NamedSemaphore, RobustRwLock, ShmCell,
    ShmSafe, SysvKey,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Pair {
    a: u64,
    b: u64,
}
// SAFETY: two integers, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Pair {
    const TYPE_TAG: u64 = 0x5157_0001;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Other {
    x: u64,
    y: u64,
}
// SAFETY: as Pair.
unsafe impl ShmSafe for Other {
    const TYPE_TAG: u64 = 0x5157_0002;
}

const BOUND: Duration = Duration::from_secs(60);

/// A key no other test process uses (this pid, a counter), whose segment
/// is removed on drop — also when the test panics.
struct Key(SysvKey);

impl Key {
    fn new() -> Key {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed) & 0xff;
        let raw = 0x4000_0000 | ((std::process::id() & 0x3f_ffff) << 8) | n;
        let key = Key(SysvKey::new(raw as i32).unwrap());
        remove_key(key.raw());
        key
    }

    fn raw(&self) -> i32 {
        self.0.raw()
    }

    fn arg(&self) -> String {
        self.raw().to_string()
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        remove_key(self.raw());
    }
}

fn remove_key(key: i32) {
    // SAFETY: plain system calls on a key this test owns.
    unsafe {
        let id = libc::shmget(key, 0, 0);
        if id >= 0 {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

fn key_arg(s: &str) -> SysvKey {
    SysvKey::new(s.parse().unwrap()).unwrap()
}

/// `IPC_STAT` of `id`: `None` once the segment is gone.
fn ipc_stat(id: i32) -> Option<libc::shmid_ds> {
    // SAFETY: zero is a valid shmid_ds, and the call fills it.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        (libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0).then_some(ds)
    }
}

fn id_of(key: &Key) -> Option<i32> {
    // SAFETY: plain system call.
    let id = unsafe { libc::shmget(key.raw(), 0, 0) };
    (id >= 0).then_some(id)
}

/// A segment made the way another program would: `shmget` of `size`
/// bytes, filled with `bytes` from the start.
fn raw_segment(key: &Key, size: usize, bytes: &[u8]) -> i32 {
    // SAFETY: plain system calls; the mapping is `size ≥ bytes.len()`
    // bytes and detached before returning.
    unsafe {
        let id = libc::shmget(key.raw(), size, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
        assert!(id >= 0, "{}", std::io::Error::last_os_error());
        let p = libc::shmat(id, std::ptr::null(), 0);
        assert_ne!(p as isize, -1);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len());
        libc::shmdt(p);
        id
    }
}

/// The bytes of segment `id` (read-only attach).
fn segment_bytes(id: i32, n: usize) -> Vec<u8> {
    // SAFETY: a read-only attach of a segment at least `n` bytes long,
    // detached before returning.
    unsafe {
        let p = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
        assert_ne!(p as isize, -1);
        let v = std::slice::from_raw_parts(p.cast::<u8>(), n).to_vec();
        libc::shmdt(p);
        v
    }
}

/// Waits (bounded) until `cond` holds. Attach counts are polled, not read
/// once: a test in this process that spawns a child forks, and until the
/// fork execs it holds every segment this process has attached
/// (`shm_nattch` counts it).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < end, "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn repaired(cell: &ShmCell<Pair>) -> (Pair, bool) {
    match cell.lock() {
        Ok(g) => (*g, false),
        Err(LockError::OwnerDied(mut g)) => {
            g.b = g.a;
            g.make_consistent();
            (*g, true)
        }
        Err(e) => panic!("{:?}", e.without_guard()),
    }
}

#[test]
fn sysv_cell_shared_by_two_processes_listed_by_ipcs_and_removed() {
    let other = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_sysv(key_arg(ctx.arg(0))).unwrap();
        let mut g = cell.lock().unwrap();
        g.a += 1;
        g.b = 7;
    });
    let _w = Watchdog::arm(BOUND);
    let key = Key::new();
    let cell = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 1, b: 0 }).unwrap();
    let id = cell.sysv_id().unwrap();
    assert_eq!(cell.backing(), Backing::SysV { key: key.raw(), id });
    let ds = ipc_stat(id).unwrap();
    assert_eq!(ds.shm_perm.mode & 0o777, 0o600);
    assert_eq!(ds.shm_segsz as u64, cell.info().total_size);
    other.arg(key.arg()).run().unwrap();
    assert_eq!(*cell.lock().unwrap(), Pair { a: 2, b: 7 });
    // `ipcs -m` shows it under its key with this one attachment.
    let out = std::process::Command::new("ipcs").arg("-m").output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("id {id} not in ipcs -m:\n{text}"));
        assert!(
            line.starts_with(&format!("{:#010x}", key.raw() as u32)),
            "{line}"
        );
    }
    assert!(matches!(
        ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }),
        Err(Error::AlreadyExists { .. })
    ));
    ShmCell::<Pair>::remove_sysv(key.0).unwrap();
    // The key is free at once; the segment goes with our detach.
    assert!(matches!(
        ShmCell::<Pair>::open_sysv(key.0),
        Err(Error::NotFound { .. })
    ));
    assert!(ipc_stat(id).is_some());
    drop(cell);
    eventually("removed at the last detach", || ipc_stat(id).is_none());
}

/// The four states of the lock × the three ways to take it, on a System V
/// cell guarded by the robust mutex.
#[test]
fn sysv_robust_mutex_lock_state_table() {
    let child = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_sysv(key_arg(ctx.arg(1))).unwrap();
        let mut g = cell.lock().unwrap();
        g.a = 1;
        testing::point("holding");
        g.a = 2;
        g.b = 2;
        if ctx.arg(0) == "die" {
            // Dies below with the lock held.
            testing::point("dying");
        }
    });
    let _w = Watchdog::arm(BOUND);
    let key = Key::new();
    let cell = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap();
    let ms = Duration::from_millis(50);

    // Free.
    drop(cell.lock().unwrap());
    drop(cell.try_lock().unwrap());
    drop(cell.lock_timeout(ms).unwrap());

    // Held by a live process.
    let mut holder = child
        .command()
        .args(["hold", &key.arg()])
        .stop_at("holding")
        .spawn()
        .unwrap();
    holder.wait_stopped().unwrap();
    assert!(matches!(cell.try_lock(), Err(LockError::WouldBlock)));
    assert!(matches!(cell.lock_timeout(ms), Err(LockError::TimedOut)));
    holder.resume().unwrap();
    assert_eq!(*cell.lock().unwrap(), Pair { a: 2, b: 2 });
    holder.wait().unwrap();

    // Holder SIGKILLed: each way takes the lock with OwnerDied (and the
    // half-done value); repaired, the lock is clean again. A fresh cell
    // per way, each holder killed while holding it.
    for way in ["lock", "try_lock", "lock_timeout"] {
        let key = Key::new();
        let cell = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap();
        let ended = child
            .command()
            .args(["die", &key.arg()])
            .kill_at("holding")
            .unwrap();
        assert!(ended.killed, "{way}");
        let r = match way {
            "lock" => cell.lock(),
            "try_lock" => cell.try_lock(),
            _ => cell.lock_timeout(ms),
        };
        match r {
            Err(LockError::OwnerDied(mut g)) => {
                assert_eq!(*g, Pair { a: 1, b: 0 }, "{way}: the half-done value");
                g.b = 1;
                g.make_consistent();
            }
            other => panic!("{way}: {:?}", other.map(|g| *g).map_err(|e| e.kind_name())),
        }
        assert_eq!(*cell.lock().unwrap(), Pair { a: 1, b: 1 }, "{way}");
    }

    // Not recoverable: an owner-died guard dropped unrepaired.
    let key = Key::new();
    let cell = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap();
    let ended = child
        .command()
        .args(["die", &key.arg()])
        .kill_at("holding")
        .unwrap();
    assert!(ended.killed);
    match cell.lock() {
        Err(LockError::OwnerDied(g)) => drop(g),
        other => panic!("{:?}", other.map(|g| *g).map_err(|e| e.kind_name())),
    }
    assert_eq!(
        cell.lock().err().map(|e| e.kind_name()),
        Some("NotRecoverable")
    );
    assert_eq!(
        cell.try_lock().err().map(|e| e.kind_name()),
        Some("NotRecoverable")
    );
    assert_eq!(
        cell.lock_timeout(ms).err().map(|e| e.kind_name()),
        Some("NotRecoverable")
    );
    // Seen so by another process too.
    let other = ShmCell::<Pair>::open_sysv(key.0).unwrap();
    assert_eq!(
        other.try_lock().err().map(|e| e.kind_name()),
        Some("NotRecoverable")
    );
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl<G> KindName for LockError<G> {
    fn kind_name(&self) -> &'static str {
        match self {
            LockError::OwnerDied(_) => "OwnerDied",
            LockError::NotRecoverable => "NotRecoverable",
            LockError::WouldBlock => "WouldBlock",
            LockError::TimedOut => "TimedOut",
            LockError::Deadlock => "Deadlock",
            _ => "other",
        }
    }
}

#[test]
fn sysv_bad_inputs_are_refused_before_any_read_write_attach() {
    let _w = Watchdog::arm(BOUND);
    let total = {
        let key = Key::new();
        let c = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap();
        c.info().total_size as usize
    };
    let is_incompatible = |r: &Result<ShmCell<Pair>, Error>, field: &str| matches!(r, Err(Error::Incompatible { field: f, .. }) if *f == field);

    // Short, zero-filled (a raw shmget of another program): no magic.
    let key = Key::new();
    let id = raw_segment(&key, 64, &[]);
    let r = ShmCell::<Pair>::open_sysv(key.0);
    assert!(is_incompatible(&r, "magic"), "{r:?}");
    assert_eq!(segment_bytes(id, 64), vec![0; 64]);
    // Short with our magic and format: too small for a header.
    let key = Key::new();
    let mut prefix = b"SHMSYNC\0".to_vec();
    prefix.extend_from_slice(&shmsync::segment::header::FORMAT_VERSION.to_ne_bytes());
    raw_segment(&key, 64, &prefix);
    let r = ShmCell::<Pair>::open_sysv(key.0);
    assert!(matches!(r, Err(Error::TooSmall { size: 64, .. })), "{r:?}");

    // Foreign content at exactly our size: refused, never attached
    // read-write (its bytes are unchanged and nobody is attached), and
    // neither open_or_create nor remove_sysv touches it.
    let key = Key::new();
    let garbage: Vec<u8> = (0..total).map(|i| (i * 7 + 3) as u8).collect();
    let id = raw_segment(&key, total, &garbage);
    let r = ShmCell::<Pair>::open_sysv(key.0);
    assert!(is_incompatible(&r, "magic"), "{r:?}");
    let r = ShmCell::<Pair>::open_or_create_sysv(key.0, Pair { a: 0, b: 0 });
    assert!(is_incompatible(&r, "magic"), "{r:?}");
    assert!(matches!(
        ShmCell::<Pair>::remove_sysv(key.0),
        Err(Error::Incompatible { .. })
    ));
    assert_eq!(segment_bytes(id, total), garbage);
    eventually("nobody attached", || ipc_stat(id).unwrap().shm_nattch == 0);

    // All zeros at another size: foreign too (not an abandoned creation).
    let key = Key::new();
    raw_segment(&key, total + 8, &[]);
    let r = ShmCell::<Pair>::open_or_create_sysv(key.0, Pair { a: 0, b: 0 });
    assert!(matches!(r, Err(Error::Incompatible { .. })), "{r:?}");

    // Another type, another lock kind's refusal, IPC_PRIVATE as a key.
    let key = Key::new();
    let _c = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap();
    let r = ShmCell::<Other>::open_sysv(key.0);
    assert!(
        matches!(
            r,
            Err(Error::Incompatible {
                field: "type_tag",
                ..
            })
        ),
        "{r:?}"
    );
    let r = ShmCell::<[u8; 3]>::open_sysv(key.0);
    assert!(matches!(r, Err(Error::Incompatible { .. })), "{r:?}");
    for r in [
        ShmCell::<Pair, FileLock>::open_sysv(key.0).map(drop),
        ShmCell::<Pair, NamedSemaphore>::open_sysv(key.0).map(drop),
        ShmCell::<Pair, FileLock>::create_sysv(Key::new().0, Pair { a: 0, b: 0 }).map(drop),
        ShmCell::<Pair, NamedSemaphore>::create_private_sysv(Pair { a: 0, b: 0 }).map(drop),
        ShmCell::<Pair, RobustRwLock>::open_sysv(key.0).map(drop),
        ShmCell::<Pair, RobustRwLock>::create_sysv(Key::new().0, Pair { a: 0, b: 0 }).map(drop),
    ] {
        assert!(matches!(r, Err(Error::LockUnsupported { .. })), "{r:?}");
    }
    assert!(matches!(SysvKey::new(0), Err(Error::InvalidName { .. })));
    let missing = Key::new();
    assert!(matches!(
        ShmCell::<Pair>::open_sysv(missing.0),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn sysv_ftok_keys_agree_between_processes() {
    let other = testing::child!(|ctx| {
        let key = SysvKey::ftok(ctx.arg(0), b'q').unwrap();
        let cell = ShmCell::<Pair>::open_sysv(key).unwrap();
        cell.lock().unwrap().b = 5;
    });
    let _w = Watchdog::arm(BOUND);
    let path = std::env::temp_dir().join(format!("shmsync-sysv-ftok-{}", std::process::id()));
    std::fs::write(&path, b"").unwrap();
    let key = SysvKey::ftok(&path, b'q').unwrap();
    let guard = Key(key);
    let cell = ShmCell::<Pair>::create_sysv(key, Pair { a: 4, b: 0 }).unwrap();
    other.arg(path.to_str().unwrap()).run().unwrap();
    assert_eq!(*cell.lock().unwrap(), Pair { a: 4, b: 5 });
    assert!(matches!(
        SysvKey::ftok(path.with_extension("missing"), b'q'),
        Err(Error::NotFound { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    drop((cell, guard));
}

#[test]
fn sysv_kill_loop_each_writer_killed_at_a_random_moment_is_repaired() {
    let worker = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_sysv(key_arg(ctx.arg(0))).unwrap();
        testing::point("attached");
        loop {
            let mut g = match cell.lock() {
                Ok(g) => g,
                Err(LockError::OwnerDied(g)) => {
                    g.make_consistent();
                    g
                }
                Err(e) => panic!("{:?}", e.without_guard()),
            };
            g.a += 1;
            g.b += 1;
        }
    });
    let _w = Watchdog::arm(BOUND);
    let key = Key::new();
    let cell = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap();
    let mut died = 0;
    for _ in 0..8 {
        let ended = worker
            .arg(key.arg())
            .kill_within("attached", Duration::from_millis(20))
            .unwrap();
        assert!(ended.killed);
        let (v, owner_died) = repaired(&cell);
        died += usize::from(owner_died);
        assert_eq!(v.a, v.b);
        // The killed worker's attachment is gone: only ours is counted.
        eventually("one attachment", || cell.sysv_attached() == Some(1));
    }
    assert!(cell.lock().unwrap().a > 0, "the workers made progress");
    eprintln!("8 workers killed, {died} while holding the lock");
}

#[test]
fn sysv_mode_decides_which_other_user_may_attach() {
    let other = testing::child!(|ctx| {
        // SAFETY: dropping privileges in this child process only.
        unsafe {
            assert_eq!(libc::setgid(65534), 0);
            assert_eq!(libc::setuid(65534), 0);
        }
        let private = ShmCell::<Pair>::open_sysv(key_arg(ctx.arg(0)));
        assert!(
            matches!(private, Err(Error::PermissionDenied { .. })),
            "{private:?}"
        );
        assert!(matches!(
            ShmCell::<Pair>::remove_sysv(key_arg(ctx.arg(0))),
            Err(Error::PermissionDenied { .. })
        ));
        let shared = ShmCell::<Pair>::open_sysv(key_arg(ctx.arg(1))).unwrap();
        shared.lock().unwrap().a = 99;
        // Somebody else's abandoned creation is never adopted.
        let r = ShmCell::<Pair>::open_or_create_sysv(key_arg(ctx.arg(2)), Pair { a: 0, b: 0 });
        assert!(matches!(r, Err(Error::ForeignOwner { .. })), "{r:?}");
    });
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a child as another user");
        return;
    }
    let _w = Watchdog::arm(BOUND);
    let (k1, k2, k3) = (Key::new(), Key::new(), Key::new());
    let _private = ShmCell::<Pair>::create_sysv(k1.0, Pair { a: 0, b: 0 }).unwrap();
    let shared = ShmCell::<Pair>::create_sysv_with(
        k2.0,
        Pair { a: 0, b: 0 },
        &CreateOptions::new().mode(0o666),
    )
    .unwrap();
    assert_eq!(
        ipc_stat(shared.sysv_id().unwrap()).unwrap().shm_perm.mode & 0o777,
        0o666
    );
    // An abandoned creation (zero-filled, our size, nobody attached),
    // world-writable, owned by root.
    // SAFETY: plain system call.
    let id = unsafe {
        libc::shmget(
            k3.raw(),
            shared.info().total_size as usize,
            libc::IPC_CREAT | libc::IPC_EXCL | 0o666,
        )
    };
    assert!(id >= 0);
    other
        .command()
        .args([k1.arg(), k2.arg(), k3.arg()])
        .run()
        .unwrap();
    assert_eq!(shared.lock().unwrap().a, 99);
}

#[test]
fn sysv_private_segment_is_removed_when_the_last_process_detaches() {
    let other = testing::child!(|ctx| {
        let id: i32 = ctx.arg(0).parse().unwrap();
        let cell = ShmCell::<Pair>::open_sysv_id(id).unwrap();
        cell.lock().unwrap().a = 3;
        testing::point("attached");
        cell.lock().unwrap().b = 4;
    });
    let _w = Watchdog::arm(BOUND);
    let cell = ShmCell::<Pair>::create_private_sysv(Pair { a: 0, b: 0 }).unwrap();
    let id = cell.sysv_id().unwrap();
    assert!(matches!(cell.backing(), Backing::SysV { key: 0, .. }));
    let ds = ipc_stat(id).unwrap();
    assert_ne!(
        ds.shm_perm.mode & 0o1000,
        0,
        "marked for removal (SHM_DEST)"
    );
    let mut running = other
        .arg(id.to_string())
        .stop_at("attached")
        .spawn()
        .unwrap();
    running.wait_stopped().unwrap();
    assert_eq!(cell.lock().unwrap().a, 3);
    eventually("two attachments", || cell.sysv_attached() == Some(2));
    // The creator leaves first: the child keeps it alive.
    drop(cell);
    eventually("the child's attachment only", || {
        ipc_stat(id).unwrap().shm_nattch == 1
    });
    running.resume().unwrap();
    running.wait().unwrap();
    eventually("gone with the last detach", || ipc_stat(id).is_none());
}

#[test]
fn sysv_creator_killed_at_each_init_step_is_taken_over() {
    let creator = testing::child!(|ctx| {
        testing::points_at_init_steps();
        let _ = ShmCell::<Pair>::create_sysv(key_arg(ctx.arg(0)), Pair { a: 1, b: 1 });
        panic!("creator survived its kill point");
    });
    let _w = Watchdog::arm(BOUND);
    for step in shmsync::segment::InitStep::ALL {
        let key = Key::new();
        let ended = creator
            .arg(key.arg())
            .kill_at(&testing::init_point(step))
            .unwrap_or_else(|e| panic!("step {step:?}: {e}"));
        assert!(ended.killed, "{step:?}");
        let published = step == shmsync::segment::InitStep::Published;
        match ShmCell::<Pair>::open_sysv(key.0) {
            Ok(c) => {
                assert!(published, "{step:?}: a half-initialised segment opened");
                assert_eq!(*c.lock().unwrap(), Pair { a: 1, b: 1 });
            }
            Err(Error::AbandonedInit { .. }) => assert!(!published, "{step:?}"),
            Err(e) => panic!("{step:?}: {e:?}"),
        }
        let c = ShmCell::<Pair>::open_or_create_sysv(key.0, Pair { a: 2, b: 2 }).unwrap();
        let expect = if published { 1 } else { 2 };
        assert_eq!(
            *c.lock().unwrap(),
            Pair {
                a: expect,
                b: expect
            },
            "{step:?}"
        );
        // The abandoned segment was reused, not replaced.
        eventually("only our attachment", || c.sysv_attached() == Some(1));
    }
    // An abandoned creation can also just be removed, at every step.
    for step in shmsync::segment::InitStep::ALL {
        let key = Key::new();
        let ended = creator
            .arg(key.arg())
            .kill_at(&testing::init_point(step))
            .unwrap_or_else(|e| panic!("step {step:?}: {e}"));
        assert!(ended.killed, "{step:?}");
        ShmCell::<Pair>::remove_sysv(key.0).unwrap_or_else(|e| panic!("step {step:?}: {e}"));
        assert!(id_of(&key).is_none(), "{step:?}");
    }
}

#[test]
fn sysv_open_or_create_racers_initialise_exactly_once() {
    let racer = testing::child!(|ctx| {
        let key = key_arg(ctx.arg(0));
        let cell = ShmCell::<Pair>::open_or_create_sysv(key, Pair { a: 0, b: 0 }).unwrap();
        let mut g = cell.lock().unwrap();
        g.a += 1;
        testing::point("counted");
    });
    let _w = Watchdog::arm(BOUND);
    for _ in 0..3 {
        let key = Key::new();
        let running: Vec<_> = (0..4)
            .map(|_| racer.arg(key.arg()).spawn().unwrap())
            .collect();
        for r in running {
            r.wait().unwrap();
        }
        let cell = ShmCell::<Pair>::open_sysv(key.0).unwrap();
        assert_eq!(
            cell.lock().unwrap().a,
            4,
            "one initialisation, four updates"
        );
    }
}

#[test]
fn sysv_fork_inherits_the_attachment() {
    let forker = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_sysv(key_arg(ctx.arg(0))).unwrap();
        // SAFETY: the forked child only locks, writes and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = cell.lock().map(|mut g| g.b = 8).is_ok()
                && cell.sysv_attached().is_some_and(|n| n >= 3);
            // SAFETY: leaves the forked child without running destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    });
    let _w = Watchdog::arm(BOUND);
    let key = Key::new();
    let cell = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap();
    forker.arg(key.arg()).run().unwrap();
    assert_eq!(cell.lock().unwrap().b, 8);
    eventually("the children detached", || cell.sysv_attached() == Some(1));
}

#[test]
fn sysv_removed_key_leaves_nothing_and_ids_are_gone() {
    let _w = Watchdog::arm(BOUND);
    let key = Key::new();
    let cell = ShmCell::<Pair>::create_sysv_zeroed(key.0).unwrap();
    let id = cell.sysv_id().unwrap();
    assert_eq!(*cell.lock().unwrap(), Pair { a: 0, b: 0 });
    assert!(!cell.is_unlinked());
    cell.mark_sysv_removed().unwrap();
    assert!(cell.is_unlinked());
    assert!(id_of(&key).is_none(), "the key is free at once");
    // A new cell can take the key while the old one is still attached.
    let again = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 1, b: 1 }).unwrap();
    assert_ne!(again.sysv_id(), Some(id));
    drop(cell);
    eventually("the old segment is gone", || ipc_stat(id).is_none());
    drop(again);
    ShmCell::<Pair>::remove_sysv(key.0).unwrap();
    assert!(id_of(&key).is_none());
}

#[test]
fn sysv_inspect_lists_and_cleans_only_crashed_unattached_cells() {
    use shmsync::inspect::{self, CleanAction, State, SysvRef, SysvScope};
    let holder = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_sysv(key_arg(ctx.arg(0))).unwrap();
        let _g = cell.lock().unwrap();
        testing::point("holding");
    });
    let creator = testing::child!(|ctx| {
        testing::points_at_init_steps();
        let _ = ShmCell::<Pair>::create_sysv(key_arg(ctx.arg(0)), Pair { a: 1, b: 1 });
    });
    let _w = Watchdog::arm(BOUND);
    let state_of = |k: &Key| inspect::inspect_sysv(SysvRef::Key(k.raw())).unwrap();

    // A Ready cell nobody is attached to is kept: System V cells persist.
    let ready = Key::new();
    drop(ShmCell::<Pair>::create_sysv(ready.0, Pair { a: 0, b: 0 }).unwrap());
    let i = state_of(&ready);
    assert_eq!((i.state, i.stale), (State::Ready, false), "{i:?}");
    assert_eq!(i.lock.kind, Some(shmsync::segment::LockKind::RobustMutex));
    assert!(inspect::list_sysv()
        .unwrap()
        .iter()
        .any(|l| l.key == ready.raw()));

    // Its holder killed: owner-died, kept while we are attached, stale once
    // nobody is.
    let died = Key::new();
    let cell = ShmCell::<Pair>::create_sysv(died.0, Pair { a: 0, b: 0 }).unwrap();
    assert!(holder.arg(died.arg()).kill_at("holding").unwrap().killed);
    let i = state_of(&died);
    assert_eq!(i.state, State::OwnerDied, "{i:?}");
    let out = inspect::clean_sysv(SysvScope::One(SysvRef::Key(died.raw())), false).unwrap();
    assert_eq!(out[0].action, CleanAction::Skipped, "{out:?}");
    drop(cell);
    eventually("nobody attached", || state_of(&died).attached_count == 0);
    assert!(state_of(&died).stale);

    // A creator killed mid-initialisation: abandoned-init, stale.
    let abandoned = Key::new();
    let step = testing::init_point(shmsync::segment::InitStep::LockInitialised);
    assert!(creator.arg(abandoned.arg()).kill_at(&step).unwrap().killed);
    eventually("the creator detached", || {
        state_of(&abandoned).attached_count == 0
    });
    let i = state_of(&abandoned);
    assert_eq!((i.state, i.stale), (State::AbandonedInit, true), "{i:?}");

    // Dry run, then the real thing, each scoped to one key.
    for k in [&died, &abandoned] {
        let scope = SysvScope::One(SysvRef::Key(k.raw()));
        let dry = inspect::clean_sysv(scope, true).unwrap();
        assert_eq!(dry[0].action, CleanAction::WouldRemove, "{dry:?}");
        assert!(id_of(k).is_some());
        let out = inspect::clean_sysv(scope, false).unwrap();
        assert_eq!(out[0].action, CleanAction::Removed, "{out:?}");
        assert!(id_of(k).is_none());
    }
    let out = inspect::clean_sysv(SysvScope::One(SysvRef::Key(ready.raw())), false).unwrap();
    assert_eq!(out[0].action, CleanAction::Skipped, "{out:?}");
    assert!(id_of(&ready).is_some());

    // A foreign segment is listed as such and never removed.
    let foreign = Key::new();
    raw_segment(&foreign, 4096, b"not ours");
    let i = state_of(&foreign);
    assert_eq!((i.state, i.stale), (State::Foreign, false), "{i:?}");
    let out = inspect::clean_sysv(SysvScope::One(SysvRef::Key(foreign.raw())), false).unwrap();
    assert_eq!(out[0].action, CleanAction::Skipped);
    assert!(id_of(&foreign).is_some());
}

#[cfg(feature = "cli")]
#[test]
fn sysv_command_lists_and_cleans_nothing_without_a_scope() {
    let holder = testing::child!(|ctx| {
        let cell = ShmCell::<Pair>::open_sysv(key_arg(ctx.arg(0))).unwrap();
        let _g = cell.lock().unwrap();
        testing::point("holding");
    });
    let _w = Watchdog::arm(BOUND);
    let bin = env!("CARGO_BIN_EXE_shmsync");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let key = Key::new();
    let hex = format!("{:#010x}", key.raw() as u32);
    drop(ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap());
    assert!(holder.arg(key.arg()).kill_at("holding").unwrap().killed);
    eventually("nobody attached", || {
        ipc_stat(id_of(&key).unwrap()).unwrap().shm_nattch == 0
    });
    let out = run(&["sysv", "list", "--json"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let row = rows
        .iter()
        .find(|r| r["key"] == hex.as_str())
        .unwrap_or_else(|| panic!("{hex} not listed: {text}"));
    assert_eq!(row["state"], "owner-died");
    assert_eq!(row["stale"], true);
    // No scope: nothing removed, exit status 2.
    let out = run(&["sysv", "clean"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(id_of(&key).is_some());
    let out = run(&["sysv", "clean", "--key", &hex]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
    assert!(id_of(&key).is_none());
}

/// The pid-namespace record without descriptor locks: a robust-mutex
/// System V cell refuses a process of another pid namespace while a
/// process of the recorded one is attached, and is recorded anew by the
/// first to attach once nobody is.
#[test]
fn sysv_robust_mutex_refuses_another_pid_namespace_until_all_left() {
    let other_ns = testing::child!(|ctx| {
        let key = key_arg(ctx.arg(0));
        match ctx.arg(1) {
            "refused" => {
                let r = ShmCell::<Pair>::open_sysv(key);
                assert!(matches!(r, Err(Error::ForeignPidNamespace { .. })), "{r:?}");
            }
            _ => {
                let cell = ShmCell::<Pair>::open_sysv(key).unwrap();
                cell.lock().unwrap().a += 1;
                testing::point("attached");
            }
        }
    });
    const PID_NS: [&str; 3] = ["--pid", "--fork", "--kill-child"];
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let unshare_ok = root
        && std::process::Command::new("unshare")
            .args(PID_NS)
            .arg("true")
            .status()
            .is_ok_and(|s| s.success());
    if !unshare_ok {
        eprintln!("skipped: needs root and `unshare --pid`");
        return;
    }
    let _w = Watchdog::arm(BOUND);
    let key = Key::new();
    let cell = ShmCell::<Pair>::create_sysv(key.0, Pair { a: 0, b: 0 }).unwrap();
    let run = |role: &str| {
        other_ns
            .command()
            .args([key.arg(), role.to_string()])
            .wrapper("unshare", PID_NS)
            .run()
            .unwrap()
    };
    // We are attached: the other namespace is refused.
    run("refused");
    drop(cell);
    eventually("nobody attached", || {
        ipc_stat(id_of(&key).unwrap()).unwrap().shm_nattch == 0
    });
    // Nobody attached: the other namespace records itself and uses it.
    run("opens");
    eventually("nobody attached", || {
        ipc_stat(id_of(&key).unwrap()).unwrap().shm_nattch == 0
    });
    // And then ours again.
    let cell = ShmCell::<Pair>::open_sysv(key.0).unwrap();
    assert_eq!(cell.lock().unwrap().a, 1);
    drop(cell);
    eventually("nobody attached", || {
        ipc_stat(id_of(&key).unwrap()).unwrap().shm_nattch == 0
    });
    // While a process of the other namespace is attached, we are refused.
    let mut holder = other_ns
        .command()
        .args([key.arg(), "opens".to_string()])
        .wrapper("unshare", PID_NS)
        .stop_at("attached")
        .spawn()
        .unwrap();
    holder.wait_stopped().unwrap();
    let r = ShmCell::<Pair>::open_sysv(key.0);
    assert!(matches!(r, Err(Error::ForeignPidNamespace { .. })), "{r:?}");
    holder.resume().unwrap();
    holder.wait().unwrap();
    eventually("nobody attached", || {
        ipc_stat(id_of(&key).unwrap()).unwrap().shm_nattch == 0
    });
    let cell = ShmCell::<Pair>::open_sysv(key.0).unwrap();
    assert_eq!(cell.lock().unwrap().a, 2);
}

#[test]
fn sysv_big_value_created_in_place_and_opened_on_a_small_stack() {
    const BIG: usize = 64 << 20;
    #[repr(C)]
    struct Big {
        seq: u64,
        bytes: [u8; BIG],
    }
    // SAFETY: integers only, repr(C), every bit pattern valid.
    unsafe impl ShmSafe for Big {
        const TYPE_TAG: u64 = 0x5157_0b16;
    }
    let other = testing::child!(|ctx| {
        let key = key_arg(ctx.arg(0));
        let run = move || {
            let cell = ShmCell::<Big>::open_or_create_sysv_zeroed(key).unwrap();
            let mut g = cell.lock().unwrap();
            assert_eq!((g.seq, g.bytes[BIG - 1]), (1, 0xab));
            g.seq = 2;
        };
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    });
    let _w = Watchdog::arm(BOUND);
    let key = Key::new();
    let k = key.0;
    let cell = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || {
            ShmCell::<Big>::create_sysv_in_place(k, &CreateOptions::new(), |b| {
                b.seq = 1;
                b.bytes[BIG - 1] = 0xab;
            })
            .unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    other.arg(key.arg()).run().unwrap();
    assert_eq!(cell.lock().unwrap().seq, 2);
    assert!(cell.info().total_size > BIG as u64);
}

/// The `sysv_pair` example, built and run as a user would: two processes,
/// lines from stdin, `end` stops both, exit 0, and its segment is gone.
#[test]
fn sysv_pair_example_runs_two_processes_and_leaves_nothing() {
    let _w = Watchdog::arm(Duration::from_secs(300));
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "--example", "sysv_pair"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        other => {
            eprintln!("skipped: unknown profile directory {other:?}");
            return;
        }
    }
    let built = cmd.output().unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut child = std::process::Command::new(profile_dir.join("examples").join("sysv_pair"))
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"first line\nsecond\nend\nnever read\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["first line", "second", "end"] {
        assert!(
            text.contains(&format!("consumer: read {line:?}")),
            "{line}: {text}"
        );
    }
    assert!(!text.contains("never read"), "{text}");
    let id: i32 = text
        .split("(id ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no id in {text}"));
    assert!(ipc_stat(id).is_none(), "segment {id} left behind");
}

/// A creator killed at a random moment while three other processes race
/// `open_or_create_sysv`: exactly one initialisation is ever seen (every
/// racer's update survives: nothing re-initialises a segment somebody
/// opened), whoever wins.
#[test]
fn sysv_creator_killed_at_random_while_racers_open_or_create() {
    let creator = testing::child!(|ctx| {
        let key = key_arg(ctx.arg(0));
        testing::point("start");
        let _ = ShmCell::<Pair>::create_sysv(key, Pair { a: 1, b: 0 });
        testing::point("created");
        // Stays attached (an idle user) until killed.
        loop {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let racer = testing::child!(|ctx| {
        let key = key_arg(ctx.arg(0));
        testing::point("go");
        let cell = ShmCell::<Pair>::open_or_create_sysv(key, Pair { a: 2, b: 0 }).unwrap();
        let mut g = match cell.lock() {
            Ok(g) => g,
            Err(e) => panic!("{:?}", e.without_guard()),
        };
        g.b += 1;
    });
    let _w = Watchdog::arm(BOUND);
    let mut winners = [0; 3];
    for round in 0..16 {
        let key = Key::new();
        let mut racers: Vec<_> = (0..3)
            .map(|_| racer.arg(key.arg()).stop_at("go").spawn().unwrap())
            .collect();
        for r in &mut racers {
            r.wait_stopped().unwrap();
        }
        let spawn = creator.arg(key.arg());
        std::thread::scope(|s| {
            let killer = s.spawn(move || {
                spawn
                    .kill_within("start", Duration::from_millis(2))
                    .unwrap()
            });
            // Every other round the racers go as soon as the creator has
            // made the segment (mid-initialisation, or killed in it); the
            // others, at once.
            if round % 2 == 0 {
                let end = std::time::Instant::now() + Duration::from_secs(10);
                while id_of(&key).is_none() && !killer.is_finished() {
                    assert!(std::time::Instant::now() < end);
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            for r in &mut racers {
                r.resume().unwrap();
            }
            assert!(killer.join().unwrap().killed);
        });
        for r in racers {
            r.wait().unwrap();
        }
        let cell = ShmCell::<Pair>::open_sysv(key.0).unwrap();
        let v = *cell.lock().unwrap();
        assert_eq!(v.b, 3, "{v:?}: an update was lost to a re-initialisation");
        assert!(v.a == 1 || v.a == 2, "{v:?}");
        winners[v.a as usize] += 1;
    }
    eprintln!(
        "initialised by the creator {} times, by a racer {} times",
        winners[1], winners[2]
    );
}
