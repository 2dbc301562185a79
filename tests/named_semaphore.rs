//! The standalone `NamedSemaphore`: names, create/open/unlink, exact mode,
//! post/wait across processes, try_wait, timed waits (zero, short,
//! `Duration::MAX`) and a signal storm during a timed wait.
//!
//! Default libtest harness: tests run in parallel threads of one process.
//! Other processes are this binary re-run by `shmsync::testing::child!`;
//! a test that changes process-wide state (the umask, a signal handler)
//! does so in such a child, never in the harness.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmsync::lock::MAX_SEM_NAME;
use shmsync::testing;
use shmsync::{Error, NamedSemaphore, SemaphoreError, SemaphoreOptions};

use support::Name;

fn sem_file(name: &str) -> String {
    format!("/dev/shm/sem.{}", &name[1..])
}

/// A leading '/', then 1..=251 bytes without '/' or NUL, not '.'/'..'.
#[test]
fn name_validation() {
    assert_eq!(MAX_SEM_NAME, 251);
    let base = Name::new("p");
    // `BASE-yyy…`: removed with `base` (its `sem.NAME-*` companions).
    let pad = |len: usize| format!("{}-{}", base.as_str(), "y".repeat(len - base.len()));
    let ok = pad(251);
    assert_eq!(ok.len(), 252);
    let s = NamedSemaphore::create(&ok, 0).unwrap();
    assert!(Path::new(&sem_file(&ok)).exists());
    drop(s);
    let long = pad(252);
    assert!(matches!(
        NamedSemaphore::create(&long, 0),
        Err(Error::InvalidName { .. })
    ));
    for bad in ["", "noslash", "/", "/a/b", "/.", "/..", "/a\0b"] {
        for r in [
            NamedSemaphore::create(bad, 0).err(),
            NamedSemaphore::open(bad).err(),
            NamedSemaphore::open_or_create(bad, 0).err(),
            NamedSemaphore::unlink(bad).err(),
        ] {
            assert!(
                matches!(r, Some(Error::InvalidName { .. })),
                "{bad:?}: {r:?}"
            );
        }
    }
}

/// Exclusive create, AlreadyExists, open, NotFound after unlink.
#[test]
fn create_open_unlink() {
    let name = Name::new("sem");
    assert!(matches!(
        NamedSemaphore::open(&name),
        Err(Error::NotFound { .. })
    ));
    let a = NamedSemaphore::create(&name, 2).unwrap();
    assert_eq!(a.name(), name.as_str());
    assert!(matches!(
        NamedSemaphore::create(&name, 0),
        Err(Error::AlreadyExists { .. })
    ));
    let b = NamedSemaphore::open(&name).unwrap();
    assert_eq!(b.value().unwrap(), 2);
    NamedSemaphore::unlink(&name).unwrap();
    assert!(!Path::new(&sem_file(&name)).exists());
    assert!(matches!(
        NamedSemaphore::open(&name),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        NamedSemaphore::unlink(&name),
        Err(Error::NotFound { .. })
    ));
    // Open handles keep working on the unlinked semaphore.
    a.post().unwrap();
    assert_eq!(b.value().unwrap(), 3);
}

/// Two open_or_create calls (here in two processes) share one semaphore;
/// the initial value applies only to the creator.
#[test]
fn open_or_create_shares_one() {
    let other = testing::child!(|ctx| {
        let b = NamedSemaphore::open_or_create(ctx.arg(0), 7).unwrap();
        assert_eq!(b.value().unwrap(), 1);
        b.post().unwrap();
    });
    let name = Name::new("ooc");
    let a = NamedSemaphore::open_or_create(&name, 1).unwrap();
    other.arg(name.as_str()).run().unwrap();
    assert_eq!(a.value().unwrap(), 2);
}

/// A handle closes on drop and never unlinks, unless it created the name
/// with `unlink_on_drop`.
#[test]
fn drop_unlinks_only_if_owned() {
    let name = Name::new("keep");
    drop(NamedSemaphore::create(&name, 0).unwrap());
    assert!(Path::new(&sem_file(&name)).exists());
    // Opened (not created) with the option: still not unlinked.
    let opts = SemaphoreOptions::new().unlink_on_drop(true);
    drop(NamedSemaphore::open_or_create_with(&name, 0, &opts).unwrap());
    assert!(Path::new(&sem_file(&name)).exists());
    NamedSemaphore::unlink(&name).unwrap();

    let owned = Name::new("owned");
    let s = NamedSemaphore::create_with(&owned, 0, &opts).unwrap();
    let other = NamedSemaphore::open(&owned).unwrap();
    drop(s);
    assert!(!Path::new(&sem_file(&owned)).exists());
    other.post().unwrap();
}

/// (umask, mode) pairs of [`mode_is_exact_despite_umask`].
const UMASK_MODES: [(u32, u32); 4] = [(0o077, 0o644), (0o022, 0o666), (0o777, 0o600), (0, 0o640)];

/// The requested mode is applied exactly, whatever the umask. (In a child:
/// the umask is process-wide.)
#[test]
fn mode_is_exact_despite_umask() {
    let creator = testing::child!("umask", |ctx| {
        for (i, (umask, mode)) in UMASK_MODES.into_iter().enumerate() {
            let name = ctx.arg(i);
            // SAFETY: umask is process-wide; this is a child process of
            // its own.
            let old = unsafe { libc::umask(umask) };
            let s = NamedSemaphore::create_with(name, 0, &SemaphoreOptions::new().mode(mode));
            // SAFETY: as above.
            unsafe { libc::umask(old) };
            let _s = s.unwrap();
            let got = std::fs::metadata(sem_file(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(got & 0o777, mode, "umask {umask:o}");
        }
        let name = ctx.arg(UMASK_MODES.len());
        let _s = NamedSemaphore::create(name, 0).unwrap();
        let got = std::fs::metadata(sem_file(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(got & 0o777, 0o600);
    });
    let mut names: Vec<Name> = UMASK_MODES.iter().map(|_| Name::new("mode")).collect();
    names.push(Name::new("default"));
    creator
        .command()
        .args(names.iter().map(|n| n.as_str()))
        .run()
        .unwrap();
    for n in &names {
        assert!(Path::new(&sem_file(n)).exists(), "{}", n.as_str());
    }
}

/// Initial values above SEM_VALUE_MAX are refused; posting past it is
/// Overflow.
#[test]
fn value_limits() {
    let name = Name::new("max");
    assert!(matches!(
        NamedSemaphore::create(&name, u32::MAX),
        Err(Error::Unsupported { .. })
    ));
    assert!(!Path::new(&sem_file(&name)).exists());
    let s = NamedSemaphore::create(&name, i32::MAX as u32).unwrap();
    assert!(matches!(s.post(), Err(SemaphoreError::Overflow)));
    assert_eq!(s.value().unwrap(), i32::MAX as u32);
}

/// A child blocks in `wait` until the parent posts; then it posts back.
#[test]
fn post_wait_across_processes() {
    let echo = testing::child!(|ctx| {
        let s = NamedSemaphore::open(ctx.arg(0)).unwrap();
        let b = NamedSemaphore::open(ctx.arg(1)).unwrap();
        testing::point("opened");
        for _ in 0..100 {
            s.wait().unwrap();
            b.post().unwrap();
        }
    });
    let name = Name::new("pw");
    let back = Name::new("back");
    let s = NamedSemaphore::create(&name, 0).unwrap();
    let b = NamedSemaphore::create(&back, 0).unwrap();
    let mut child = echo
        .command()
        .args([name.as_str(), back.as_str()])
        .spawn()
        .unwrap();
    child.wait_point("opened").unwrap();
    for _ in 0..100 {
        s.post().unwrap();
        b.wait_timeout(testing::default_bound()).unwrap();
    }
    child.wait().unwrap();
    assert_eq!(s.value().unwrap(), 0);
    assert_eq!(b.value().unwrap(), 0);
}

#[test]
fn try_wait() {
    let name = Name::new("try");
    let s = NamedSemaphore::create(&name, 0).unwrap();
    assert!(matches!(s.try_wait(), Err(SemaphoreError::WouldBlock)));
    s.post().unwrap();
    s.post().unwrap();
    s.try_wait().unwrap();
    s.try_wait().unwrap();
    assert!(matches!(s.try_wait(), Err(SemaphoreError::WouldBlock)));
    assert_eq!(s.value().unwrap(), 0);
}

/// A zero timeout takes an available unit and does not wait otherwise.
#[test]
fn wait_timeout_zero() {
    let name = Name::new("zero");
    let s = NamedSemaphore::create(&name, 1).unwrap();
    s.wait_timeout(Duration::ZERO).unwrap();
    assert!(matches!(
        s.wait_timeout(Duration::ZERO),
        Err(SemaphoreError::TimedOut)
    ));
    assert_eq!(s.value().unwrap(), 0);
}

/// A short timeout with nothing posted ends with TimedOut, not before it.
#[test]
fn wait_timeout_short() {
    let name = Name::new("short");
    let s = NamedSemaphore::create(&name, 0).unwrap();
    let timeout = Duration::from_millis(30);
    let started = Instant::now();
    assert!(matches!(
        s.wait_timeout(timeout),
        Err(SemaphoreError::TimedOut)
    ));
    assert!(started.elapsed() >= timeout, "returned before its deadline");
}

/// This thread's id (the test runs on one of the harness's threads: a
/// process-wide state would be the harness's main thread's).
fn gettid() -> i32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() }
}

/// `Duration::MAX` is a valid timeout (not EINVAL, not an instant
/// timeout): the parent sleeps until another process posts.
#[test]
fn wait_timeout_max_woken_by_other_process() {
    let poster = testing::child!(|ctx| {
        let s = NamedSemaphore::open(ctx.arg(0)).unwrap();
        // Post once the parent's test thread sleeps in its wait.
        await_sleeping(ctx.arg(1).parse().unwrap(), ctx.arg(2).parse().unwrap());
        s.post().unwrap();
    });
    let name = Name::new("max");
    let s = NamedSemaphore::create(&name, 0).unwrap();
    let child = poster
        .arg(name.as_str())
        .arg(std::process::id().to_string())
        .arg(gettid().to_string())
        .spawn()
        .unwrap();
    s.wait_timeout(Duration::MAX).unwrap();
    child.wait().unwrap();
    assert_eq!(s.value().unwrap(), 0);
}

static ALARMS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, Ordering::Relaxed);
}

/// Installs a SIGALRM handler *without* `SA_RESTART` (so blocking calls
/// fail with EINTR) and a 1 ms interval timer aimed at the calling thread
/// (`SIGEV_THREAD_ID`: the process has other threads, libtest's, that
/// must not take the signals); returns a guard that stops the timer.
///
/// Process-wide state: call it only in a child process.
fn signal_storm() -> impl Drop {
    struct Stop(libc::timer_t);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: a timer this guard created and deletes once.
            unsafe { libc::timer_delete(self.0) };
        }
    }
    // SAFETY: an all-zero sigaction is valid; we fill in what we use.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as usize;
    sa.sa_flags = 0; // no SA_RESTART
                     // SAFETY: sa_mask is valid storage.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: installing a handler that only does an atomic add.
    let r = unsafe { libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0);
    // SAFETY: an all-zero sigevent is valid; we fill in what we use.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_THREAD_ID;
    sev.sigev_signo = libc::SIGALRM;
    sev.sigev_notify_thread_id = gettid();
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid sigevent and timer pointers.
    let r = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) };
    assert_eq!(r, 0);
    let tick = libc::timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    };
    let it = libc::itimerspec {
        it_interval: tick,
        it_value: tick,
    };
    // SAFETY: the timer just created; valid itimerspec pointer.
    let r = unsafe { libc::timer_settime(timer, 0, &it, std::ptr::null_mut()) };
    assert_eq!(r, 0);
    Stop(timer)
}

/// During a storm of signals (handler without SA_RESTART), a timed wait
/// neither returns early (EINTR is retried) nor misses its deadline (the
/// retry keeps the original absolute deadline): it returns TimedOut, at or
/// after the deadline. A behaviour check, not a speed check. (In a child:
/// the handler is process-wide.)
#[test]
fn signal_storm_neither_ends_nor_extends_wait() {
    let stormed = testing::child!("storm", |ctx| {
        let s = NamedSemaphore::open(ctx.arg(0)).unwrap();
        let timeout = Duration::from_millis(200);
        let storm = signal_storm();
        let started = Instant::now();
        let r = s.wait_timeout(timeout);
        let elapsed = started.elapsed();
        drop(storm);
        assert!(matches!(r, Err(SemaphoreError::TimedOut)), "{r:?}");
        assert!(elapsed >= timeout, "returned early after {elapsed:?}");
        assert!(
            ALARMS.load(Ordering::Relaxed) > 10,
            "the storm happened ({} signals)",
            ALARMS.load(Ordering::Relaxed)
        );
    });
    let name = Name::new("storm");
    let s = NamedSemaphore::create(&name, 0).unwrap();
    stormed.arg(name.as_str()).run().unwrap();
    assert_eq!(s.value().unwrap(), 0);
}

/// Waits (bounded) until thread `tid` of process `pid` sleeps (state 'S'
/// in /proc).
fn await_sleeping(pid: u32, tid: i32) {
    let deadline = Instant::now() + testing::default_bound();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
        if state == Some("S") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "thread {tid} of process {pid} never slept"
        );
        std::thread::yield_now();
    }
}

/// `wait` (no timeout) interrupted again and again by a handler without
/// SA_RESTART keeps waiting until another process posts. The waiter is a
/// child (the handler is process-wide); the test signals its waiting
/// thread, then posts.
#[test]
fn blocking_wait_survives_signals() {
    let waiter = testing::child!("waiter", |ctx| {
        let s = NamedSemaphore::open(ctx.arg(0)).unwrap();
        let storm = signal_storm(); // installs the handler (and a timer)
                                    // This thread's only blocking call from now on is `wait`.
        testing::point(&format!("tid {}", gettid()));
        testing::point("waiting");
        let r = s.wait();
        drop(storm);
        r.unwrap();
    });
    let name = Name::new("bstorm");
    let s = NamedSemaphore::create(&name, 0).unwrap();
    let mut child = waiter.arg(name.as_str()).spawn().unwrap();
    child.wait_point("waiting").unwrap();
    let pid = child.pid();
    let tid: i32 = child
        .points()
        .iter()
        .find_map(|p| p.strip_prefix("tid ")?.parse().ok())
        .expect("the waiter reported its thread");
    for _ in 0..20 {
        await_sleeping(pid, tid);
        // SAFETY: signalling our child's waiting thread, which handles
        // SIGALRM.
        assert_eq!(unsafe { libc::tgkill(pid as i32, tid, libc::SIGALRM) }, 0);
    }
    await_sleeping(pid, tid);
    s.post().unwrap();
    child.wait().unwrap();
    assert_eq!(s.value().unwrap(), 0);
}
