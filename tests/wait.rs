//! Waiting without busy loops (`wait_while`, `wait_while_timeout`,
//! `notify_*`) across processes, and the writer/reader examples end to end.
//!
//! The waiting protocol relies only on the lock backend trait: the tests
//! that involve the lock run for every backend, as `TEST::robust_mutex`,
//! `TEST::named_semaphore`, `TEST::file_lock`.

mod backend_suite;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backend_suite::{forked, name, Guard, BOUND};
use shmsync::testing::{self, ChildCtx, ChildError, ChildSpec};
use shmsync::{FileLock, LockBackend, LockError, NamedSemaphore, RobustMutex, ShmCell, ShmSafe};

/// One `#[test]` per lock kind for the generic scenario `$test::<L>`:
/// `$test::robust_mutex`, `$test::named_semaphore`, `$test::file_lock`.
/// Each declares the children of this file ([`roles`]) for its `L`.
macro_rules! per_backend {
    ($test:ident) => {
        mod $test {
            use super::*;

            #[test]
            fn robust_mutex() {
                let child = testing::child!(roles::<RobustMutex>);
                let _guard = Guard::new();
                super::$test::<RobustMutex>(child);
            }

            #[test]
            fn named_semaphore() {
                let child = testing::child!(roles::<NamedSemaphore>);
                let _guard = Guard::new();
                super::$test::<NamedSemaphore>(child);
            }

            #[test]
            fn file_lock() {
                let child = testing::child!(roles::<FileLock>);
                let _guard = Guard::new();
                super::$test::<FileLock>(child);
            }
        }
    };
}

per_backend!(handoff_100k_in_order);
per_backend!(timeout_returns_with_lock_held);
per_backend!(notifier_killed_holding_lock_gives_owner_died);
per_backend!(dead_notifier_holding_lock_found_by_timeout);
per_backend!(notify_all_wakes_every_waiter);
per_backend!(waiting_on_unrepaired_guard_is_refused);

/// One message slot: `full` is 1 while `seq` waits for the consumer.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Slot {
    full: u32,
    pad: u32,
    seq: u64,
}
// SAFETY: integers, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Slot {
    const TYPE_TAG: u64 = 0x510d;
}

const EMPTY: Slot = Slot {
    full: 0,
    pad: 0,
    seq: 0,
};

/// Messages of [`handoff_100k_in_order`].
const HANDOFFS: u64 = 100_000;

/// Every child of this file, for lock kind `L`: `ctx.arg(0)` is the role,
/// `ctx.arg(1)` the cell's name.
fn roles<L: LockBackend>(ctx: &ChildCtx) {
    let n = ctx.arg(1);
    match ctx.arg(0) {
        "producer" => {
            let c = ShmCell::<Slot, L>::open(n).unwrap();
            for i in 1..=HANDOFFS {
                let mut s = c
                    .lock()
                    .and_then(|g| g.wait_while(|s| s.full != 0))
                    .expect("producer wait");
                s.seq = i;
                s.full = 1;
                drop(s);
                c.notify_all();
            }
        }
        "consumer" => {
            static PROGRESS: AtomicU64 = AtomicU64::new(0);
            let c = ShmCell::<Slot, L>::open(n).unwrap();
            stall_watchdog(&PROGRESS, Duration::from_secs(15));
            for expected in 1..=HANDOFFS {
                let mut s = c
                    .lock()
                    .and_then(|g| g.wait_while(|s| s.full == 0))
                    .expect("consumer wait");
                assert_eq!(s.seq, expected, "message out of order, lost or repeated");
                s.full = 0;
                drop(s);
                c.notify_all();
                PROGRESS.store(expected, Ordering::Relaxed);
            }
        }
        "idle" => idle_waiter(n),
        "expect_held" => {
            let c = ShmCell::<u64, L>::open(n).unwrap();
            assert_eq!(c.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
        }
        "expect_7" => {
            let c = ShmCell::<u64, L>::open(n).unwrap();
            assert_eq!(*c.try_lock().unwrap(), 7);
        }
        "notify_then_die" => {
            let c = ShmCell::<u64, L>::open(n).unwrap();
            let mut v = c.lock().unwrap();
            *v = 1;
            c.notify_all();
            // Killed here, at a known point: holding the lock, after notifying.
            // SAFETY: signalling ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL returned");
        }
        "open_only" => {
            let _c = ShmCell::<u64, L>::open(n).unwrap();
            testing::point("open");
        }
        "hold_then_die" => {
            let c = ShmCell::<u64, L>::open(n).unwrap();
            let mut v = c.lock().unwrap();
            *v = 1; // half-done, never notified
                    // SAFETY: signalling ourselves, holding the lock.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL returned");
        }
        "one_waiter" => {
            let c = ShmCell::<u64, L>::open(n).unwrap();
            let mut g = c.lock().unwrap();
            // Tell the parent (by the value) that we are about to wait, then wait.
            *g = 1;
            c.notify_all();
            let g = g.wait_while(|v| *v == 1).unwrap();
            assert_eq!(*g, 2);
        }
        "all_waiter" => {
            let c = ShmCell::<Slot, L>::open(n).unwrap();
            let mut s = c.lock().unwrap();
            s.pad += 1; // "I am about to wait"
            c.notify_all();
            let s = s.wait_while(|s| s.full == 0).unwrap();
            assert_eq!(s.full, 1);
        }
        "signals" => signals_during_wait(n),
        "holder" => {
            let c = ShmCell::<u64, L>::open(n).unwrap();
            let _g = c.lock().unwrap();
            testing::point("holding");
        }
        "forked_copy" => forked_copy_of_guard(n),
        other => panic!("no role {other:?}"),
    }
}

/// Fails the child process if `progress` stops moving for `stall`: a lost
/// wake-up shows up as a stall at a known message, not only as the
/// child's bound.
fn stall_watchdog(progress: &'static AtomicU64, stall: Duration) {
    std::thread::spawn(move || {
        let mut last = progress.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(stall);
            let now = progress.load(Ordering::Relaxed);
            if now == last {
                eprintln!(
                    "    watchdog: no progress for {stall:?} at message {now} (lost wake-up?)"
                );
                let _ = std::io::stderr().flush();
                // SAFETY: end this child process at once; the test reports it.
                unsafe { libc::_exit(2) };
            }
            last = now;
        }
    });
}

/// 100,000 hand-offs between two processes through one slot: every message
/// arrives once and in order, and nobody sleeps forever. Both ends are
/// children (the consumer's stall watchdog ends its process).
fn handoff_100k_in_order<L: LockBackend>(child: ChildSpec) {
    let name = name("handoff");
    let _cell = ShmCell::<Slot, L>::create(name.as_str(), EMPTY).unwrap();
    let bound = Duration::from_secs(120);
    let producer = child
        .command()
        .args(["producer", &name])
        .bound(bound)
        .spawn()
        .unwrap();
    let consumer = child
        .command()
        .args(["consumer", &name])
        .bound(bound)
        .spawn()
        .unwrap();
    consumer.wait().unwrap();
    producer.wait().unwrap();
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    // SAFETY: all-zero is a valid rusage; getrusage fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The child's side of [`idle_waiter_uses_no_cpu`].
fn idle_waiter(n: &str) {
    let cell = ShmCell::<u64>::open(n).unwrap();
    let g = cell.lock().unwrap();
    let before = cpu_time();
    let (g, res) = g
        .wait_while_timeout(|v| *v == 0, Duration::from_secs(1))
        .unwrap();
    let used = cpu_time() - before;
    assert!(res.timed_out());
    assert_eq!(*g, 0);
    println!("    CPU used while waiting 1 s: {used:?}");
    assert!(
        used < Duration::from_millis(20),
        "waiting used {used:?} of CPU"
    );
}

/// A process waiting 1 s on a value nobody changes uses < 20 ms of CPU
/// (measured for the whole process: in a child, alone).
#[test]
fn idle_waiter_uses_no_cpu() {
    let child = testing::child!(roles::<RobustMutex>);
    let _guard = Guard::new();
    let name = name("idle");
    let _cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    let ended = child.command().args(["idle", &name]).run().unwrap();
    print!("{}", ended.stdout);
}

/// With nothing changing, `wait_while_timeout` returns after the timeout
/// (not before), timed out, holding the lock again.
fn timeout_returns_with_lock_held<L: LockBackend>(child: ChildSpec) {
    let name = name("tmo");
    let cell = ShmCell::<u64, L>::create(name.as_str(), 0).unwrap();
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let (mut g, res) = cell
        .lock()
        .unwrap()
        .wait_while_timeout(|v| *v == 0, timeout)
        .unwrap();
    let elapsed = started.elapsed();
    assert!(res.timed_out());
    assert!(
        elapsed >= timeout,
        "returned after {elapsed:?} < {timeout:?}"
    );
    assert!(elapsed < timeout + BOUND, "returned only after {elapsed:?}");
    // The guard holds the lock: another process cannot take it…
    *g = 7;
    child.command().args(["expect_held", &name]).run().unwrap();
    drop(g);
    // …until it is dropped, and the write made through it is there.
    child.command().args(["expect_7", &name]).run().unwrap();
}

/// A predicate that is false from the start never releases the lock, with
/// or without a timeout (even a zero one); a zero timeout with a true
/// predicate reports the timeout without sleeping.
#[test]
fn predicate_false_returns_at_once() {
    let _guard = Guard::new();
    let name = name("false");
    let cell = ShmCell::<u64>::create(name.as_str(), 3).unwrap();
    let g = cell.lock().unwrap().wait_while(|v| *v == 0).unwrap();
    let (g, res) = g.wait_while_timeout(|v| *v == 0, Duration::ZERO).unwrap();
    assert!(!res.timed_out());
    let (g, res) = g.wait_while_timeout(|v| *v == 3, Duration::ZERO).unwrap();
    assert!(res.timed_out());
    assert_eq!(*g, 3);
}

/// Asserts that a child ended by a `SIGKILL` it sent itself.
fn expect_killed_itself(r: Result<testing::Ended, ChildError>) {
    match r {
        Err(ChildError::Failed { status, .. }) => {
            assert!(status.starts_with("signal 9"), "ended with {status}")
        }
        other => panic!("expected the child to die of SIGKILL: {other:?}"),
    }
}

/// The notifier changes the value, notifies and is SIGKILLed still holding
/// the lock: the waiter's re-acquire reports OwnerDied, with the value.
fn notifier_killed_holding_lock_gives_owner_died<L: LockBackend>(child: ChildSpec) {
    let name = name("nkill");
    let cell = ShmCell::<u64, L>::create(name.as_str(), 0).unwrap();
    let g = cell.lock().unwrap();
    // The child blocks in lock() until the waiter below releases the lock.
    let child = child
        .command()
        .args(["notify_then_die", &name])
        .spawn()
        .unwrap();
    match g.wait_while(|v| *v == 0) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(*g, 1, "the dead notifier's write is visible");
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    }
    expect_killed_itself(child.wait());
    assert_eq!(*cell.try_lock().unwrap(), 1);
}

/// The only process that would notify dies without notifying: nothing
/// wakes the waiter, and `wait_while_timeout` returns at its timeout.
#[test]
fn dead_notifier_timeout_returns() {
    let child = testing::child!(roles::<RobustMutex>);
    let _guard = Guard::new();
    let name = name("ndead");
    let cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    child
        .command()
        .args(["open_only", &name])
        .kill_at("open")
        .unwrap();
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let (mut g, res) = cell
        .lock()
        .unwrap()
        .wait_while_timeout(|v| *v == 0, timeout)
        .unwrap();
    assert!(res.timed_out());
    assert!(started.elapsed() >= timeout);
    *g = 2; // usable
}

/// The only notifier dies *holding the lock* half-way through an update,
/// without notifying. The kernel's robust list marks the lock but wakes no
/// sequence waiter: a waiter sleeping in timeout slices finds out at its
/// next re-acquire, as OwnerDied.
fn dead_notifier_holding_lock_found_by_timeout<L: LockBackend>(child: ChildSpec) {
    let name = name("nhold");
    let cell = ShmCell::<u64, L>::create(name.as_str(), 0).unwrap();
    let mut g = cell.lock().unwrap();
    let child = child
        .command()
        .args(["hold_then_die", &name])
        .spawn()
        .unwrap();
    // Sleep in slices; the child takes the lock during one of them.
    let mut slices = 0;
    loop {
        match g.wait_while_timeout(|v| *v == 0, Duration::from_millis(100)) {
            Ok((g2, res)) => {
                assert!(
                    res.timed_out(),
                    "woken with the value changed but no owner death"
                );
                slices += 1;
                assert!(slices < 200, "the child never took the lock");
                g = g2;
            }
            Err(LockError::OwnerDied(g2)) => {
                assert_eq!(*g2, 1);
                g2.make_consistent();
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    println!(
        "    found the dead holder after {} timeout slice(s)",
        slices + 1
    );
    expect_killed_itself(child.wait());
}

/// `notify_one` wakes a waiter in another process.
#[test]
fn notify_one_wakes_a_waiter() {
    let child = testing::child!(roles::<RobustMutex>);
    let _guard = Guard::new();
    let name = name("one");
    let cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    let g = cell.lock().unwrap();
    let waiter = child.command().args(["one_waiter", &name]).spawn().unwrap();
    // Wait (in this process) until the child has registered and released.
    let mut g = g.wait_while(|v| *v == 0).unwrap_or_else(|_| panic!("wait"));
    *g = 2;
    drop(g);
    // The child set 1 then released the lock inside wait_while; it may or
    // may not be asleep yet — either way the notification is not lost.
    cell.notify_one();
    waiter.wait().unwrap();
}

/// Three processes wait for `full` to become 1; one `notify_all` after the
/// change wakes them all.
fn notify_all_wakes_every_waiter<L: LockBackend>(child: ChildSpec) {
    const WAITERS: u32 = 3;
    let name = name("all");
    let cell = ShmCell::<Slot, L>::create(name.as_str(), EMPTY).unwrap();
    let children: Vec<testing::Running> = (0..WAITERS)
        .map(|_| child.command().args(["all_waiter", &name]).spawn().unwrap())
        .collect();
    // Once all three have counted themselves, each is registered or asleep
    // (it released the lock only inside wait_while).
    let mut s = cell
        .lock()
        .and_then(|g| g.wait_while(|s| s.pad < WAITERS))
        .unwrap_or_else(|e| panic!("{e}"));
    s.full = 1;
    drop(s);
    cell.notify_all();
    for c in children {
        c.wait().unwrap();
    }
}

static ALARMS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, Ordering::Relaxed);
}

/// The child's side of [`signals_do_not_shorten_the_timeout`]: the
/// handler is process-wide, and the timer's signals go to this thread
/// (`SIGEV_THREAD_ID`), the waiting one — not to libtest's main thread.
fn signals_during_wait(n: &str) {
    let cell = ShmCell::<u64>::open(n).unwrap();
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: installing a handler that only does an atomic add; all-zero
    // is a valid sigaction, sigevent and itimerspec; the timer signals
    // this thread.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_alarm as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = 0;
        assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
        let mut sev: libc::sigevent = std::mem::zeroed();
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGALRM;
        sev.sigev_notify_thread_id = libc::gettid();
        assert_eq!(
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer),
            0
        );
        let mut it: libc::itimerspec = std::mem::zeroed();
        it.it_interval.tv_nsec = 5_000_000;
        it.it_value.tv_nsec = 5_000_000;
        assert_eq!(libc::timer_settime(timer, 0, &it, std::ptr::null_mut()), 0);
    }
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let (g, res) = cell
        .lock()
        .unwrap()
        .wait_while_timeout(|v| *v == 0, timeout)
        .unwrap();
    let elapsed = started.elapsed();
    // SAFETY: stopping the timer we made.
    unsafe { libc::timer_delete(timer) };
    let alarms = ALARMS.load(Ordering::Relaxed);
    println!("    {alarms} signals during the wait");
    assert!(alarms > 1, "the timer did not interrupt the wait");
    assert!(res.timed_out());
    assert!(
        elapsed >= timeout,
        "returned after {elapsed:?} < {timeout:?}"
    );
    assert_eq!(*g, 0);
}

/// A signal every 5 ms interrupts the futex wait (`EINTR`, no
/// `SA_RESTART`); the wait still lasts its whole timeout. In a child: the
/// signal handler is process-wide.
#[test]
fn signals_do_not_shorten_the_timeout() {
    let child = testing::child!(roles::<RobustMutex>);
    let _guard = Guard::new();
    let name = name("eintr");
    let _cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    let ended = child.command().args(["signals", &name]).run().unwrap();
    print!("{}", ended.stdout);
}

/// Waiting with an owner-died guard that was not made consistent is refused:
/// the guard comes back as OwnerDied, still holding the lock (another
/// process still finds it taken), and once repaired the same guard waits
/// normally — the lock never becomes not recoverable by accident.
fn waiting_on_unrepaired_guard_is_refused<L: LockBackend>(child: ChildSpec) {
    let name = name("unrep");
    let cell = ShmCell::<u64, L>::create(name.as_str(), 0).unwrap();
    child
        .command()
        .args(["holder", &name])
        .kill_at("holding")
        .unwrap();
    let g = cell
        .lock()
        .err()
        .and_then(LockError::into_owner_died)
        .expect("OwnerDied");
    let g = match g.wait_while_timeout(|v| *v == 0, Duration::from_millis(10)) {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!("expected OwnerDied back, got {:?}", other.map(|_| ())),
    };
    assert!(g.is_inconsistent());
    child.command().args(["expect_held", &name]).run().unwrap();
    g.make_consistent();
    let (g, timeout) = g
        .wait_while_timeout(|v| *v == 0, Duration::from_millis(10))
        .unwrap_or_else(|e| panic!("wait after repair: {e}"));
    assert!(timeout.timed_out());
    drop(g);
    assert!(cell.try_lock().is_ok(), "the lock is healthy");
}

/// The child's side of [`forked_copy_of_guard_cannot_wait`].
fn forked_copy_of_guard(n: &str) {
    let cell = ShmCell::<u64>::open(n).unwrap();
    let guard = cell.lock().unwrap();
    let (guard_ref, cell_ref) = (&guard, &cell);
    let status = forked(move || {
        // SAFETY: the forked process's copy of the guard, used once.
        let copy = unsafe { std::ptr::read(guard_ref) };
        match copy.wait_while(|v| *v == 0) {
            Err(LockError::Os(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("expected EPERM, got {:?}", other.map(|_| ())),
        }
        assert_eq!(
            cell_ref.try_lock().err().map(|e| e.kind()),
            Some("WouldBlock")
        );
    });
    assert_eq!(status, 0, "the forked process's checks failed");
    drop(guard);
}

/// A guard copied into a forked process belongs to its parent: waiting
/// with it is refused (`EPERM`) and does not release the parent's lock.
/// (The forking is done by a child.)
#[test]
fn forked_copy_of_guard_cannot_wait() {
    let child = testing::child!(roles::<RobustMutex>);
    let _guard = Guard::new();
    let name = name("forkw");
    let _cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    child.command().args(["forked_copy", &name]).run().unwrap();
}

/// The built `reader` and `writer` examples, as processes: lines in, the
/// same lines out, a long line refused, `end` stops both, nothing left in
/// `/dev/shm`.
#[test]
fn writer_reader_end_to_end() {
    let _guard = Guard::new();
    let (reader_bin, writer_bin) = (example("reader"), example("writer"));
    let name = name("pair");
    let mut reader = Proc(
        Command::new(&reader_bin)
            .arg(name.as_str())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start reader"),
    );
    // Its first line on stderr says the segment exists.
    let mut reader_err = BufReader::new(reader.0.stderr.take().unwrap());
    let mut ready = String::new();
    reader_err.read_line(&mut ready).unwrap();
    assert!(ready.contains("waiting for lines"), "reader said {ready:?}");

    let long = "x".repeat(300);
    let lines = ["first line", "ünïcödé and tabs\tinside", "", "last line"];
    let mut input = String::new();
    for l in &lines[..2] {
        input += &format!("{l}\n");
    }
    input += &format!("{long}\n");
    for l in &lines[2..] {
        input += &format!("{l}\n");
    }
    input += "end\nafter end: never sent\n";
    let mut writer = Proc(
        Command::new(&writer_bin)
            .arg(name.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start writer"),
    );
    writer
        .0
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();

    let writer_status = writer.wait();
    let reader_status = reader.wait();
    let mut out = String::new();
    let mut writer_err = String::new();
    let mut rest = String::new();
    reader
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut werr = writer.0.stderr.take().unwrap();
    werr.read_to_string(&mut writer_err).unwrap();
    reader_err.read_to_string(&mut rest).unwrap();
    assert!(
        writer_status.success(),
        "writer: {writer_status}\n{writer_err}"
    );
    assert!(reader_status.success(), "reader: {reader_status}\n{rest}");
    let expected: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(out, expected);
    assert!(
        writer_err.contains("line 3 is 300 bytes") && writer_err.contains("refused"),
        "writer stderr: {writer_err}"
    );
    assert!(rest.contains("got `end`"), "reader stderr: {rest}");
    assert!(
        !std::path::Path::new(&name.path()).exists(),
        "the reader left {}",
        name.path()
    );
}

/// The README's first command: the demo (a writer killed holding the lock
/// included) exits 0 and leaves its segment removed.
#[test]
fn demo_succeeds_and_cleans_up() {
    let _guard = Guard::new();
    let mut demo = Proc(
        Command::new(example("demo"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start demo"),
    );
    let pid = demo.0.id();
    let mut out = String::new();
    demo.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = demo.wait();
    assert!(status.success(), "demo: {status}\n{out}");
    assert!(out.contains("died holding the lock"), "{out}");
    assert!(out.ends_with("demo: success\n"), "{out}");
    let path = format!("/dev/shm/shmsync-demo-{pid}");
    assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
}

/// A process started with `Command`: waited for within `BOUND`, and killed
/// and reaped on drop if it still runs (a failing test leaves no orphan).
struct Proc(std::process::Child);

impl Proc {
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pid {} did not exit within {BOUND:?}",
                self.0.id()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The path of example `name`, built (or found up to date) by `cargo build
/// --example` in this test binary's own target directory and profile.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/wait-HASH
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let profile = profile_dir.file_name().unwrap().to_str().unwrap();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "--example", name, "--all-features"])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().expect("run cargo build --example");
    assert!(
        out.status.success(),
        "cargo build --example {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join("examples").join(name)
}
