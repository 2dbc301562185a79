//! Waiting without busy loops (`wait_while`, `wait_while_timeout`,
//! `notify_*`) across processes, and the writer/reader examples end to end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Child, TestName, BOUND};
use shmsync::{LockBackend, LockError, NamedSemaphore, RobustMutex, ShmCell, ShmSafe};

fn main() {
    // The waiting protocol relies only on the lock backend trait: the tests
    // that involve the lock run for every backend.
    common::run(&[
        (
            "handoff_100k_in_order/robust_mutex",
            handoff_100k_in_order::<RobustMutex>,
        ),
        (
            "handoff_100k_in_order/named_semaphore",
            handoff_100k_in_order::<NamedSemaphore>,
        ),
        (
            "handoff_100k_in_order/file_lock",
            handoff_100k_in_order::<shmsync::FileLock>,
        ),
        ("idle_waiter_uses_no_cpu", idle_waiter_uses_no_cpu),
        (
            "timeout_returns_with_lock_held/robust_mutex",
            timeout_returns_with_lock_held::<RobustMutex>,
        ),
        (
            "timeout_returns_with_lock_held/named_semaphore",
            timeout_returns_with_lock_held::<NamedSemaphore>,
        ),
        (
            "timeout_returns_with_lock_held/file_lock",
            timeout_returns_with_lock_held::<shmsync::FileLock>,
        ),
        (
            "predicate_false_returns_at_once",
            predicate_false_returns_at_once,
        ),
        (
            "notifier_killed_holding_lock_gives_owner_died/robust_mutex",
            notifier_killed_holding_lock_gives_owner_died::<RobustMutex>,
        ),
        (
            "notifier_killed_holding_lock_gives_owner_died/named_semaphore",
            notifier_killed_holding_lock_gives_owner_died::<NamedSemaphore>,
        ),
        (
            "notifier_killed_holding_lock_gives_owner_died/file_lock",
            notifier_killed_holding_lock_gives_owner_died::<shmsync::FileLock>,
        ),
        (
            "dead_notifier_timeout_returns",
            dead_notifier_timeout_returns,
        ),
        (
            "dead_notifier_holding_lock_found_by_timeout/robust_mutex",
            dead_notifier_holding_lock_found_by_timeout::<RobustMutex>,
        ),
        (
            "dead_notifier_holding_lock_found_by_timeout/named_semaphore",
            dead_notifier_holding_lock_found_by_timeout::<NamedSemaphore>,
        ),
        (
            "dead_notifier_holding_lock_found_by_timeout/file_lock",
            dead_notifier_holding_lock_found_by_timeout::<shmsync::FileLock>,
        ),
        ("notify_one_wakes_a_waiter", notify_one_wakes_a_waiter),
        (
            "notify_all_wakes_every_waiter/robust_mutex",
            notify_all_wakes_every_waiter::<RobustMutex>,
        ),
        (
            "notify_all_wakes_every_waiter/named_semaphore",
            notify_all_wakes_every_waiter::<NamedSemaphore>,
        ),
        (
            "notify_all_wakes_every_waiter/file_lock",
            notify_all_wakes_every_waiter::<shmsync::FileLock>,
        ),
        (
            "signals_do_not_shorten_the_timeout",
            signals_do_not_shorten_the_timeout,
        ),
        (
            "waiting_on_unrepaired_guard_is_refused/robust_mutex",
            waiting_on_unrepaired_guard_is_refused::<RobustMutex>,
        ),
        (
            "waiting_on_unrepaired_guard_is_refused/named_semaphore",
            waiting_on_unrepaired_guard_is_refused::<NamedSemaphore>,
        ),
        (
            "waiting_on_unrepaired_guard_is_refused/file_lock",
            waiting_on_unrepaired_guard_is_refused::<shmsync::FileLock>,
        ),
        (
            "forked_copy_of_guard_cannot_wait",
            forked_copy_of_guard_cannot_wait,
        ),
        ("writer_reader_end_to_end", writer_reader_end_to_end),
        ("demo_succeeds_and_cleans_up", demo_succeeds_and_cleans_up),
    ]);
}

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

/// Fails the test process if `progress` stops moving for `stall`: a lost
/// wake-up shows up as a stall at a known message, not only as the
/// runner's whole-test watchdog.
fn watchdog(progress: &'static AtomicU64, stall: Duration) {
    std::thread::spawn(move || {
        let mut last = progress.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(stall);
            let now = progress.load(Ordering::Relaxed);
            if now == last {
                println!(
                    "    watchdog: no progress for {stall:?} at message {now} (lost wake-up?)"
                );
                let _ = std::io::stdout().flush();
                // SAFETY: end this test process at once; the runner reports it.
                unsafe { libc::_exit(2) };
            }
            last = now;
        }
    });
}

/// 100,000 hand-offs between two processes through one slot: every message
/// arrives once and in order, and nobody sleeps forever.
fn handoff_100k_in_order<L: LockBackend>() {
    const N: u64 = 100_000;
    static PROGRESS: AtomicU64 = AtomicU64::new(0);
    let name = TestName::new("handoff");
    let cell = ShmCell::<Slot, L>::create(name.as_str(), EMPTY).unwrap();
    let n = name.0.clone();
    let mut producer = Child::spawn(move |_| {
        let c = ShmCell::<Slot, L>::open(&n).unwrap();
        for i in 1..=N {
            let mut s = c
                .lock()
                .and_then(|g| g.wait_while(|s| s.full != 0))
                .expect("producer wait");
            s.seq = i;
            s.full = 1;
            drop(s);
            c.notify_all();
        }
    });
    // The consumer is this process; the producer was forked before the
    // watchdog thread starts.
    watchdog(&PROGRESS, Duration::from_secs(15));
    for expected in 1..=N {
        let mut s = cell
            .lock()
            .and_then(|g| g.wait_while(|s| s.full == 0))
            .expect("consumer wait");
        assert_eq!(s.seq, expected, "message out of order, lost or repeated");
        s.full = 0;
        drop(s);
        cell.notify_all();
        PROGRESS.store(expected, Ordering::Relaxed);
    }
    producer.join();
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

/// A process waiting 1 s on a value nobody changes uses < 20 ms of CPU.
fn idle_waiter_uses_no_cpu() {
    let name = TestName::new("idle");
    let cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
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

/// With nothing changing, `wait_while_timeout` returns after the timeout
/// (not before), timed out, holding the lock again.
fn timeout_returns_with_lock_held<L: LockBackend>() {
    let name = TestName::new("tmo");
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
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = ShmCell::<u64, L>::open(&n).unwrap();
        assert_eq!(c.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    })
    .join();
    drop(g);
    // …until it is dropped, and the write made through it is there.
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = ShmCell::<u64, L>::open(&n).unwrap();
        assert_eq!(*c.try_lock().unwrap(), 7);
    })
    .join();
}

/// A predicate that is false from the start never releases the lock, with
/// or without a timeout (even a zero one); a zero timeout with a true
/// predicate reports the timeout without sleeping.
fn predicate_false_returns_at_once() {
    let name = TestName::new("false");
    let cell = ShmCell::<u64>::create(name.as_str(), 3).unwrap();
    let g = cell.lock().unwrap().wait_while(|v| *v == 0).unwrap();
    let (g, res) = g.wait_while_timeout(|v| *v == 0, Duration::ZERO).unwrap();
    assert!(!res.timed_out());
    let (g, res) = g.wait_while_timeout(|v| *v == 3, Duration::ZERO).unwrap();
    assert!(res.timed_out());
    assert_eq!(*g, 3);
}

/// The notifier changes the value, notifies and is SIGKILLed still holding
/// the lock: the waiter's re-acquire reports OwnerDied, with the value.
fn notifier_killed_holding_lock_gives_owner_died<L: LockBackend>() {
    let name = TestName::new("nkill");
    let cell = ShmCell::<u64, L>::create(name.as_str(), 0).unwrap();
    let g = cell.lock().unwrap();
    let n = name.0.clone();
    // The child blocks in lock() until the waiter below releases the lock.
    let mut child = Child::spawn(move |_| {
        let c = ShmCell::<u64, L>::open(&n).unwrap();
        let mut v = c.lock().unwrap();
        *v = 1;
        c.notify_all();
        // Killed here, at a known point: holding the lock, after notifying.
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("SIGKILL returned");
    });
    match g.wait_while(|v| *v == 0) {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(*g, 1, "the dead notifier's write is visible");
            g.make_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    }
    let status = child.wait();
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    assert_eq!(*cell.try_lock().unwrap(), 1);
}

/// The only process that would notify dies without notifying: nothing
/// wakes the waiter, and `wait_while_timeout` returns at its timeout.
fn dead_notifier_timeout_returns() {
    let name = TestName::new("ndead");
    let cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    let n = name.0.clone();
    let mut notifier = Child::spawn(move |ctx| {
        let _c = ShmCell::<u64>::open(&n).unwrap();
        ctx.reached_and_wait(b'O');
    });
    assert_eq!(notifier.expect_reached(), b'O');
    notifier.kill();
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
fn dead_notifier_holding_lock_found_by_timeout<L: LockBackend>() {
    let name = TestName::new("nhold");
    let cell = ShmCell::<u64, L>::create(name.as_str(), 0).unwrap();
    let mut g = cell.lock().unwrap();
    let n = name.0.clone();
    let mut child = Child::spawn(move |_| {
        let c = ShmCell::<u64, L>::open(&n).unwrap();
        let mut v = c.lock().unwrap();
        *v = 1; // half-done, never notified
                // SAFETY: signalling ourselves, holding the lock.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("SIGKILL returned");
    });
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
    let status = child.wait();
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}

/// `notify_one` wakes a waiter in another process.
fn notify_one_wakes_a_waiter() {
    let name = TestName::new("one");
    let cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    let g = cell.lock().unwrap();
    let n = name.0.clone();
    let mut waiter = Child::spawn(move |_| {
        let c = ShmCell::<u64>::open(&n).unwrap();
        let mut g = c.lock().unwrap();
        // Tell the parent (by the value) that we are about to wait, then wait.
        *g = 1;
        c.notify_all();
        let g = g.wait_while(|v| *v == 1).unwrap();
        assert_eq!(*g, 2);
    });
    // Wait (in this process) until the child has registered and released.
    let mut g = g.wait_while(|v| *v == 0).unwrap_or_else(|_| panic!("wait"));
    *g = 2;
    drop(g);
    // The child set 1 then released the lock inside wait_while; it may or
    // may not be asleep yet — either way the notification is not lost.
    cell.notify_one();
    waiter.join();
}

/// Three processes wait for `full` to become 1; one `notify_all` after the
/// change wakes them all.
fn notify_all_wakes_every_waiter<L: LockBackend>() {
    const WAITERS: u32 = 3;
    let name = TestName::new("all");
    let cell = ShmCell::<Slot, L>::create(name.as_str(), EMPTY).unwrap();
    let mut children: Vec<Child> = (0..WAITERS)
        .map(|_| {
            let n = name.0.clone();
            Child::spawn(move |_| {
                let c = ShmCell::<Slot, L>::open(&n).unwrap();
                let mut s = c.lock().unwrap();
                s.pad += 1; // "I am about to wait"
                c.notify_all();
                let s = s.wait_while(|s| s.full == 0).unwrap();
                assert_eq!(s.full, 1);
            })
        })
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
    for c in &mut children {
        c.join();
    }
}

static ALARMS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, Ordering::Relaxed);
}

/// A signal every 5 ms interrupts the futex wait (`EINTR`, no
/// `SA_RESTART`); the wait still lasts its whole timeout.
fn signals_do_not_shorten_the_timeout() {
    let name = TestName::new("eintr");
    let cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    // SAFETY: installing a handler that only does an atomic add; all-zero
    // is a valid sigaction and itimerval.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_alarm as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = 0;
        assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
        let mut it: libc::itimerval = std::mem::zeroed();
        it.it_interval.tv_usec = 5_000;
        it.it_value.tv_usec = 5_000;
        assert_eq!(
            libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()),
            0
        );
    }
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let (g, res) = cell
        .lock()
        .unwrap()
        .wait_while_timeout(|v| *v == 0, timeout)
        .unwrap();
    let elapsed = started.elapsed();
    // SAFETY: stopping the timer (all-zero itimerval).
    unsafe {
        let off: libc::itimerval = std::mem::zeroed();
        libc::setitimer(libc::ITIMER_REAL, &off, std::ptr::null_mut());
    }
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

/// Waiting with an owner-died guard that was not made consistent is refused:
/// the guard comes back as OwnerDied, still holding the lock (another
/// process still finds it taken), and once repaired the same guard waits
/// normally — the lock never becomes not recoverable by accident.
fn waiting_on_unrepaired_guard_is_refused<L: LockBackend>() {
    let name = TestName::new("unrep");
    let cell = ShmCell::<u64, L>::create(name.as_str(), 0).unwrap();
    let n = name.0.clone();
    let mut holder = Child::spawn(move |ctx| {
        let c = ShmCell::<u64, L>::open(&n).unwrap();
        let _g = c.lock().unwrap();
        ctx.reached_and_wait(b'H');
    });
    assert_eq!(holder.expect_reached(), b'H');
    holder.kill();
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
    let n = name.0.clone();
    Child::spawn(move |_| {
        let c = ShmCell::<u64, L>::open(&n).unwrap();
        assert_eq!(c.try_lock().err().map(|e| e.kind()), Some("WouldBlock"));
    })
    .join();
    g.make_consistent();
    let (g, timeout) = g
        .wait_while_timeout(|v| *v == 0, Duration::from_millis(10))
        .unwrap_or_else(|e| panic!("wait after repair: {e}"));
    assert!(timeout.timed_out());
    drop(g);
    assert!(cell.try_lock().is_ok(), "the lock is healthy");
}

/// A guard copied into a forked child belongs to the parent: waiting with it
/// is refused (`EPERM`) and does not release the parent's lock.
fn forked_copy_of_guard_cannot_wait() {
    let name = TestName::new("forkw");
    let cell = ShmCell::<u64>::create(name.as_str(), 0).unwrap();
    let guard = cell.lock().unwrap();
    let (guard_ref, cell_ref) = (&guard, &cell);
    Child::spawn(move |_| {
        // SAFETY: the child's copy of the parent's guard, used once.
        let copy = unsafe { std::ptr::read(guard_ref) };
        match copy.wait_while(|v| *v == 0) {
            Err(LockError::Os(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("expected EPERM, got {:?}", other.map(|_| ())),
        }
        assert_eq!(
            cell_ref.try_lock().err().map(|e| e.kind()),
            Some("WouldBlock")
        );
    })
    .join();
    drop(guard);
}

/// The built `reader` and `writer` examples, as processes: lines in, the
/// same lines out, a long line refused, `end` stops both, nothing left in
/// `/dev/shm`.
fn writer_reader_end_to_end() {
    let (reader_bin, writer_bin) = (example("reader"), example("writer"));
    let name = TestName::new("pair");
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
fn demo_succeeds_and_cleans_up() {
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
