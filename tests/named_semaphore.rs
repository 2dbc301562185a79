//! The standalone `NamedSemaphore`: names, create/open/unlink, exact mode,
//! post/wait across processes, try_wait, timed waits (zero, short,
//! `Duration::MAX`) and a signal storm during a timed wait.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Child, TestName};
use shmsync::lock::MAX_SEM_NAME;
use shmsync::{Error, NamedSemaphore, SemaphoreError, SemaphoreOptions};

fn main() {
    let tests: [(&str, common::TestFn); 13] = [
        ("name_validation", name_validation),
        ("create_open_unlink", create_open_unlink),
        ("open_or_create_shares_one", open_or_create_shares_one),
        ("drop_unlinks_only_if_owned", drop_unlinks_only_if_owned),
        ("mode_is_exact_despite_umask", mode_is_exact_despite_umask),
        ("value_limits", value_limits),
        ("post_wait_across_processes", post_wait_across_processes),
        ("try_wait", try_wait),
        ("wait_timeout_zero", wait_timeout_zero),
        ("wait_timeout_short", wait_timeout_short),
        (
            "wait_timeout_max_woken_by_other_process",
            wait_timeout_max_woken_by_other_process,
        ),
        (
            "signal_storm_neither_ends_nor_extends_wait",
            signal_storm_neither_ends_nor_extends_wait,
        ),
        (
            "blocking_wait_survives_signals",
            blocking_wait_survives_signals,
        ),
    ];
    common::run(&tests);
}

fn sem_file(name: &TestName) -> String {
    format!("/dev/shm/sem.{}", &name.as_str()[1..])
}

/// A leading '/', then 1..=251 bytes without '/' or NUL, not '.'/'..'.
fn name_validation() {
    assert_eq!(MAX_SEM_NAME, 251);
    let base = TestName::new("");
    let pad = |len: usize| format!("{}{}", base.as_str(), "y".repeat(len - (base.0.len() - 1)));
    let ok = TestName(pad(251));
    let s = NamedSemaphore::create(ok.as_str(), 0).unwrap();
    assert!(Path::new(&sem_file(&ok)).exists());
    drop(s);
    let long = TestName(pad(252));
    assert!(matches!(
        NamedSemaphore::create(long.as_str(), 0),
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
fn create_open_unlink() {
    let name = TestName::new("sem");
    assert!(matches!(
        NamedSemaphore::open(name.as_str()),
        Err(Error::NotFound { .. })
    ));
    let a = NamedSemaphore::create(name.as_str(), 2).unwrap();
    assert_eq!(a.name(), name.as_str());
    assert!(matches!(
        NamedSemaphore::create(name.as_str(), 0),
        Err(Error::AlreadyExists { .. })
    ));
    let b = NamedSemaphore::open(name.as_str()).unwrap();
    assert_eq!(b.value().unwrap(), 2);
    NamedSemaphore::unlink(name.as_str()).unwrap();
    assert!(!Path::new(&sem_file(&name)).exists());
    assert!(matches!(
        NamedSemaphore::open(name.as_str()),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        NamedSemaphore::unlink(name.as_str()),
        Err(Error::NotFound { .. })
    ));
    // Open handles keep working on the unlinked semaphore.
    a.post().unwrap();
    assert_eq!(b.value().unwrap(), 3);
}

/// Two open_or_create calls (here in two processes) share one semaphore;
/// the initial value applies only to the creator.
fn open_or_create_shares_one() {
    let name = TestName::new("ooc");
    let a = NamedSemaphore::open_or_create(name.as_str(), 1).unwrap();
    let n = name.0.clone();
    Child::spawn(move |_| {
        let b = NamedSemaphore::open_or_create(&n, 7).unwrap();
        assert_eq!(b.value().unwrap(), 1);
        b.post().unwrap();
    })
    .join();
    assert_eq!(a.value().unwrap(), 2);
}

/// A handle closes on drop and never unlinks, unless it created the name
/// with `unlink_on_drop`.
fn drop_unlinks_only_if_owned() {
    let name = TestName::new("keep");
    drop(NamedSemaphore::create(name.as_str(), 0).unwrap());
    assert!(Path::new(&sem_file(&name)).exists());
    // Opened (not created) with the option: still not unlinked.
    let opts = SemaphoreOptions::new().unlink_on_drop(true);
    drop(NamedSemaphore::open_or_create_with(name.as_str(), 0, &opts).unwrap());
    assert!(Path::new(&sem_file(&name)).exists());
    NamedSemaphore::unlink(name.as_str()).unwrap();

    let owned = TestName::new("owned");
    let s = NamedSemaphore::create_with(owned.as_str(), 0, &opts).unwrap();
    let other = NamedSemaphore::open(owned.as_str()).unwrap();
    drop(s);
    assert!(!Path::new(&sem_file(&owned)).exists());
    other.post().unwrap();
}

/// The requested mode is applied exactly, whatever the umask.
fn mode_is_exact_despite_umask() {
    for (umask, mode) in [(0o077, 0o644), (0o022, 0o666), (0o777, 0o600), (0, 0o640)] {
        let name = TestName::new("mode");
        // SAFETY: umask is process-wide; this test runs in its own process.
        let old = unsafe { libc::umask(umask) };
        let s = NamedSemaphore::create_with(name.as_str(), 0, &SemaphoreOptions::new().mode(mode));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let _s = s.unwrap();
        let got = std::fs::metadata(sem_file(&name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(got & 0o777, mode, "umask {umask:o}");
    }
    let name = TestName::new("default");
    let _s = NamedSemaphore::create(name.as_str(), 0).unwrap();
    let got = std::fs::metadata(sem_file(&name))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(got & 0o777, 0o600);
}

/// Initial values above SEM_VALUE_MAX are refused; posting past it is
/// Overflow.
fn value_limits() {
    let name = TestName::new("max");
    assert!(matches!(
        NamedSemaphore::create(name.as_str(), u32::MAX),
        Err(Error::Unsupported { .. })
    ));
    assert!(!Path::new(&sem_file(&name)).exists());
    let s = NamedSemaphore::create(name.as_str(), i32::MAX as u32).unwrap();
    assert!(matches!(s.post(), Err(SemaphoreError::Overflow)));
    assert_eq!(s.value().unwrap(), i32::MAX as u32);
}

/// A child blocks in `wait` until the parent posts; then it posts back.
fn post_wait_across_processes() {
    let name = TestName::new("pw");
    let back = TestName::new("back");
    let s = NamedSemaphore::create(name.as_str(), 0).unwrap();
    let b = NamedSemaphore::create(back.as_str(), 0).unwrap();
    let (n, bn) = (name.0.clone(), back.0.clone());
    let mut child = Child::spawn(move |ctx| {
        let s = NamedSemaphore::open(&n).unwrap();
        let b = NamedSemaphore::open(&bn).unwrap();
        ctx.reached(b'W');
        for _ in 0..100 {
            s.wait().unwrap();
            b.post().unwrap();
        }
    });
    assert_eq!(child.expect_reached(), b'W');
    for _ in 0..100 {
        s.post().unwrap();
        b.wait_timeout(common::BOUND).unwrap();
    }
    child.join();
    assert_eq!(s.value().unwrap(), 0);
    assert_eq!(b.value().unwrap(), 0);
}

fn try_wait() {
    let name = TestName::new("try");
    let s = NamedSemaphore::create(name.as_str(), 0).unwrap();
    assert!(matches!(s.try_wait(), Err(SemaphoreError::WouldBlock)));
    s.post().unwrap();
    s.post().unwrap();
    s.try_wait().unwrap();
    s.try_wait().unwrap();
    assert!(matches!(s.try_wait(), Err(SemaphoreError::WouldBlock)));
    assert_eq!(s.value().unwrap(), 0);
}

/// A zero timeout takes an available unit and does not wait otherwise.
fn wait_timeout_zero() {
    let name = TestName::new("zero");
    let s = NamedSemaphore::create(name.as_str(), 1).unwrap();
    s.wait_timeout(Duration::ZERO).unwrap();
    assert!(matches!(
        s.wait_timeout(Duration::ZERO),
        Err(SemaphoreError::TimedOut)
    ));
    assert_eq!(s.value().unwrap(), 0);
}

/// A short timeout with nothing posted ends with TimedOut, not before it.
fn wait_timeout_short() {
    let name = TestName::new("short");
    let s = NamedSemaphore::create(name.as_str(), 0).unwrap();
    let timeout = Duration::from_millis(30);
    let started = Instant::now();
    assert!(matches!(
        s.wait_timeout(timeout),
        Err(SemaphoreError::TimedOut)
    ));
    assert!(started.elapsed() >= timeout, "returned before its deadline");
}

/// `Duration::MAX` is a valid timeout (not EINVAL, not an instant
/// timeout): the parent sleeps until another process posts.
fn wait_timeout_max_woken_by_other_process() {
    let name = TestName::new("max");
    let s = NamedSemaphore::create(name.as_str(), 0).unwrap();
    let n = name.0.clone();
    let parent = std::process::id();
    let mut child = Child::spawn(move |_| {
        let s = NamedSemaphore::open(&n).unwrap();
        // Post once the parent sleeps in its wait.
        await_sleeping(parent);
        s.post().unwrap();
    });
    s.wait_timeout(Duration::MAX).unwrap();
    child.join();
    assert_eq!(s.value().unwrap(), 0);
}

static ALARMS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, Ordering::Relaxed);
}

/// Installs a SIGALRM handler *without* `SA_RESTART` (so blocking calls
/// fail with EINTR) and a 1 ms interval timer; returns a guard that stops
/// the timer.
fn signal_storm() -> impl Drop {
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: an all-zero itimerval disarms the timer.
            let zero: libc::itimerval = unsafe { std::mem::zeroed() };
            // SAFETY: valid itimerval pointers.
            unsafe { libc::setitimer(libc::ITIMER_REAL, &zero, std::ptr::null_mut()) };
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
    let tick = libc::timeval {
        tv_sec: 0,
        tv_usec: 1000,
    };
    let it = libc::itimerval {
        it_interval: tick,
        it_value: tick,
    };
    // SAFETY: valid itimerval pointer.
    let r = unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
    assert_eq!(r, 0);
    Stop
}

/// During a storm of signals (handler without SA_RESTART), a timed wait
/// neither returns early (EINTR is retried) nor misses its deadline (the
/// retry keeps the original absolute deadline): it returns TimedOut, at or
/// after the deadline. A behaviour check, not a speed check.
fn signal_storm_neither_ends_nor_extends_wait() {
    let name = TestName::new("storm");
    let s = NamedSemaphore::create(name.as_str(), 0).unwrap();
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
}

/// Waits (bounded) until process `pid` sleeps (state 'S' in /proc).
fn await_sleeping(pid: u32) {
    let deadline = Instant::now() + common::BOUND;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
        if state == Some("S") {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} never slept");
        std::thread::yield_now();
    }
}

/// `wait` (no timeout) interrupted again and again by a handler without
/// SA_RESTART keeps waiting until another process posts.
fn blocking_wait_survives_signals() {
    let name = TestName::new("bstorm");
    let s = NamedSemaphore::create(name.as_str(), 0).unwrap();
    let n = name.0.clone();
    let parent = std::process::id();
    let storm = signal_storm(); // installs the handler (and a timer)
    let mut child = Child::spawn(move |_| {
        let s = NamedSemaphore::open(&n).unwrap();
        // The parent's only blocking call from now on is `wait`: each time
        // it sleeps, interrupt it.
        for _ in 0..20 {
            await_sleeping(parent);
            // SAFETY: signalling our parent, which handles SIGALRM.
            unsafe { libc::kill(parent as i32, libc::SIGALRM) };
        }
        await_sleeping(parent);
        s.post().unwrap();
    });
    let r = s.wait();
    drop(storm);
    r.unwrap();
    child.join();
    assert_eq!(s.value().unwrap(), 0);
}
