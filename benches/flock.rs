//! What the flock backend and the standalone `FileLock` cost, measured in
//! one run so that the ratios mean something (absolute times differ a lot
//! between machines).
//!
//! `cargo bench --bench flock` prints:
//! 1. uncontended lock + unlock (ns): `ShmCell` with the robust mutex and
//!    with `FileLock`, the standalone `FileLock` (by path and by
//!    descriptor), and a bare `flock(LOCK_EX)` + `flock(LOCK_UN)` pair;
//! 2. hand-off latency across processes (µs from the holder's release to
//!    the waiter's return): a blocking waiter vs a timed waiter (`LOCK_NB`
//!    with backoff), for the standalone lock and the cell;
//! 3. the CPU time a timed waiter burns while it waits, per second;
//! 4. the fixed cost of the rejected signal-based design (a per-thread
//!    timer created, armed and deleted around each timed wait).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmsync::{FileLock, RobustMutex, ShmCell};

fn mono_ns() -> u64 {
    // SAFETY: all-zero is a valid timespec; CLOCK_MONOTONIC always exists.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cpu_ns() -> u64 {
    // SAFETY: all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Best of three runs of `n` iterations, in ns per iteration.
fn per_op(n: u32, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

struct Shared {
    ptr: *mut u8,
}

impl Shared {
    fn new() -> Shared {
        // SAFETY: a fresh anonymous shared page.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Shared { ptr: p.cast() }
    }
    fn released_at(&self) -> &AtomicU64 {
        // SAFETY: zeroed page, aligned offset 0.
        unsafe { &*(self.ptr as *const AtomicU64) }
    }
    fn round(&self) -> &AtomicU32 {
        // SAFETY: zeroed page, aligned offset 8.
        unsafe { &*(self.ptr.add(8) as *const AtomicU32) }
    }
}

fn fork(f: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the bench is single-threaded when it forks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        f();
        // SAFETY: leave the child without running the parent's state.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn reap(pid: libc::pid_t) {
    let mut st = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A child holds the lock `hold` each round, stamps the time and releases;
/// the parent waits in `acquire` and measures release → return.
fn handoff<'a>(
    rounds: u32,
    hold: Duration,
    child_lock: impl Fn() -> Box<dyn FnOnce()>,
    parent_acquire: impl Fn() -> Box<dyn FnOnce() + 'a>,
) -> Vec<f64> {
    let sh = Shared::new();
    let (released, round) = (sh.released_at(), sh.round());
    let pid = fork(|| {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for r in 1..=rounds {
            let unlock = child_lock();
            round.store(r, Ordering::SeqCst);
            // Jitter of 0..2 ms so the release falls at a random phase of
            // a timed waiter's backoff.
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            std::thread::sleep(hold + Duration::from_micros((seed >> 33) % 2_000));
            released.store(mono_ns(), Ordering::SeqCst);
            unlock();
            // Wait until the parent has had its turn.
            while round.load(Ordering::SeqCst) != u32::MAX - r {
                std::thread::yield_now();
            }
        }
    });
    let mut lat = Vec::new();
    for r in 1..=rounds {
        while round.load(Ordering::SeqCst) != r {
            std::thread::yield_now();
        }
        let release = parent_acquire();
        let got = mono_ns();
        lat.push((got - released.load(Ordering::SeqCst)) as f64 / 1_000.0);
        release();
        round.store(u32::MAX - r, Ordering::SeqCst);
    }
    reap(pid);
    lat
}

fn report(what: &str, mut v: Vec<f64>) {
    println!(
        "  {what:<44} median {:>7.1} µs   p90 {:>7.1} µs   max {:>7.1} µs",
        percentile(&mut v, 0.5),
        percentile(&mut v, 0.9),
        percentile(&mut v, 1.0)
    );
}

fn main() {
    let dir = std::env::temp_dir().join(format!("shmsync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.lock");
    let names = [
        format!("/shmsync-bench-{}-m", std::process::id()),
        format!("/shmsync-bench-{}-f", std::process::id()),
    ];
    let result = std::panic::catch_unwind(|| run(&path, &names));
    for n in &names {
        let _ = ShmCell::<u64>::unlink(n);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn run(path: &std::path::Path, names: &[String; 2]) {
    const N: u32 = 200_000;
    println!("\n1. uncontended lock + unlock, one thread (best of 3 × {N})");
    let mutex_cell = ShmCell::<u64, RobustMutex>::create(&names[0], 0).unwrap();
    let flock_cell = ShmCell::<u64, FileLock>::create(&names[1], 0).unwrap();
    let by_path = FileLock::open_or_create(path).unwrap();
    let by_fd = FileLock::from_file(std::fs::File::open(path).unwrap()).unwrap();
    let raw = std::fs::File::open(path).unwrap();
    let fd = raw.as_raw_fd();

    let m = per_op(N, || *mutex_cell.lock().unwrap() += 1);
    let f = per_op(N, || *flock_cell.lock().unwrap() += 1);
    let ft = per_op(N, || *flock_cell.try_lock().unwrap() += 1);
    let p = per_op(N, || drop(by_path.lock_exclusive().unwrap()));
    let d = per_op(N, || drop(by_fd.lock_exclusive().unwrap()));
    let s = per_op(N, || drop(by_fd.lock_shared().unwrap()));
    let r = per_op(N, || {
        // SAFETY: plain system calls on an open descriptor.
        unsafe {
            libc::flock(fd, libc::LOCK_EX);
            libc::flock(fd, libc::LOCK_UN);
        }
    });
    let row = |what: &str, ns: f64| println!("  {what:<44} {ns:>8.0} ns   {:>5.1}× mutex", ns / m);
    row("ShmCell<u64, RobustMutex>::lock", m);
    row("ShmCell<u64, FileLock>::lock", f);
    row("ShmCell<u64, FileLock>::try_lock", ft);
    row("FileLock (path) lock_exclusive", p);
    row("FileLock (fd) lock_exclusive", d);
    row("FileLock (fd) lock_shared", s);
    row("bare flock(LOCK_EX) + flock(LOCK_UN)", r);
    drop(mutex_cell);

    println!("\n2. hand-off across processes: holder's release → waiter's return (200 rounds, holder holds 5–7 ms)");
    let hold = Duration::from_millis(5);
    let lock_path = path.to_path_buf();
    // The child opens its handle once (the statics are the child's own
    // copies after the fork).
    static CHILD_LOCK: std::sync::OnceLock<FileLock> = std::sync::OnceLock::new();
    static CHILD_CELL: std::sync::OnceLock<ShmCell<u64, FileLock>> = std::sync::OnceLock::new();
    let child_side = || -> Box<dyn FnOnce()> {
        let l = CHILD_LOCK
            .get_or_init(|| FileLock::from_file(std::fs::File::open(&lock_path).unwrap()).unwrap());
        let g = l.lock_exclusive().unwrap();
        Box::new(move || drop(g))
    };
    report(
        "FileLock lock_exclusive (blocking flock)",
        handoff(200, hold, child_side, || {
            let g = by_fd.lock_exclusive().unwrap();
            Box::new(move || drop(g)) as Box<dyn FnOnce()>
        }),
    );
    report(
        "FileLock lock_exclusive_timeout (LOCK_NB+backoff)",
        handoff(200, hold, child_side, || {
            let g = by_fd
                .lock_exclusive_timeout(Duration::from_secs(10))
                .unwrap();
            Box::new(move || drop(g)) as Box<dyn FnOnce()>
        }),
    );
    let cell_name = names[1].clone();
    let cell_child = || -> Box<dyn FnOnce()> {
        let c = CHILD_CELL.get_or_init(|| ShmCell::<u64, FileLock>::open(&cell_name).unwrap());
        let g = c.lock().unwrap();
        Box::new(move || drop(g))
    };
    report(
        "ShmCell<_, FileLock>::lock",
        handoff(200, hold, cell_child, || {
            let g = flock_cell.lock().unwrap();
            Box::new(move || drop(g)) as Box<dyn FnOnce()>
        }),
    );
    report(
        "ShmCell<_, FileLock>::lock_timeout",
        handoff(200, hold, cell_child, || {
            let g = flock_cell.lock_timeout(Duration::from_secs(10)).unwrap();
            Box::new(move || drop(g)) as Box<dyn FnOnce()>
        }),
    );

    println!("\n3. CPU burnt by a waiter while another process holds the lock for 2 s");
    let sh = Shared::new();
    let round = sh.round();
    let p2 = path.to_path_buf();
    let pid = fork(|| {
        let l = FileLock::open(&p2).unwrap();
        let _g = l.lock_exclusive().unwrap();
        round.store(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(5));
    });
    while round.load(Ordering::SeqCst) != 1 {
        std::hint::spin_loop();
    }
    let (c0, t0) = (cpu_ns(), mono_ns());
    let timed = by_fd.lock_exclusive_timeout(Duration::from_secs(2));
    assert!(timed.is_err());
    let (c1, t1) = (cpu_ns(), mono_ns());
    // SAFETY: our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
    println!(
        "  timed waiter (LOCK_NB + backoff ≤ 1 ms): {:.2} ms CPU per s of waiting ({:.2} % of a core)",
        (c1 - c0) as f64 / 1e6 / ((t1 - t0) as f64 / 1e9),
        (c1 - c0) as f64 / (t1 - t0) as f64 * 100.0
    );

    println!("\n4. the signal-based alternative's fixed cost per timed wait");
    let t = per_op(20_000, || {
        // SAFETY: plain system calls on valid out-pointers. The timer is
        // armed an hour ahead and deleted at once, so its signal (whose
        // default action would end the process) never fires: this measures
        // the bookkeeping alone.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = libc::SIGRTMIN() + 5;
            sev.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::mem::zeroed();
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer);
            let mut its: libc::itimerspec = std::mem::zeroed();
            its.it_value.tv_sec = 3600;
            libc::timer_settime(timer, 0, &its, std::ptr::null_mut());
            libc::timer_delete(timer);
        }
    });
    println!(
        "  timer_create + timer_settime + timer_delete: {t:.0} ns (vs a bare flock pair {r:.0} ns)"
    );
}
