//! `notify_one` is not lost when the waiter it woke dies before acting on
//! it (issue 12, section 7): with two processes in an untimed
//! `wait_while`, a notifier sets the value, calls `notify_one` under the
//! lock and kills the first waiter — the one the kernel woke, now blocked
//! re-acquiring the lock, so its death is no owner death. The second
//! waiter must still get the value.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use shmsync::testing::{self, ChildCtx, ChildSpec, Running, TestName};
use shmsync::{FileLock, LockBackend, NamedSemaphore, RobustMutex, ShmCell};

/// Offset of the header's `notify_waiters` word (format 2, documented in
/// `segment::header`): how many processes are registered to wait.
const NOTIFY_WAITERS: u64 = 152;

macro_rules! per_backend {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[test]
            fn robust_mutex() {
                let child = testing::child!(|ctx| super::waiter::<RobustMutex>(ctx));
                super::$scenario::<RobustMutex>(child);
            }

            #[test]
            fn file_lock() {
                let child = testing::child!(|ctx| super::waiter::<FileLock>(ctx));
                super::$scenario::<FileLock>(child);
            }

            #[test]
            fn named_semaphore() {
                let child = testing::child!(|ctx| super::waiter::<NamedSemaphore>(ctx));
                super::$scenario::<NamedSemaphore>(child);
            }
        }
    };
}

/// Waits, untimed, for a job, and takes it.
fn waiter<L: LockBackend>(ctx: &ChildCtx) {
    let cell = ShmCell::<u64, L>::open(ctx.arg(0)).unwrap();
    let mut jobs = cell
        .lock()
        .and_then(|g| g.wait_while(|jobs| *jobs == 0))
        .map_err(|e| e.without_guard())
        .unwrap();
    *jobs -= 1;
}

fn registered(path: &str) -> u32 {
    let mut word = [0u8; 4];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut word, NOTIFY_WAITERS)
        .unwrap();
    u32::from_ne_bytes(word)
}

/// Whether every thread of `pid` sleeps (state `S`).
fn all_asleep(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('S')))
            .unwrap_or(false)
    })
}

/// Starts a waiter and returns once it is registered and asleep (bounded
/// poll), so that the kernel queues the waiters in start order.
fn start_waiter(child: &ChildSpec, name: &TestName, nth: u32) -> Running {
    let running = child.arg(name).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(registered(&name.path()) == nth && all_asleep(running.pid())) {
        assert!(
            Instant::now() < deadline,
            "waiter {nth} never went to sleep"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    running
}

fn notify_one_survives_the_woken_waiter_dying<L: LockBackend>(child: ChildSpec) {
    let name = TestName::new("n1");
    let cell = ShmCell::<u64, L>::create(&name, 0).unwrap();
    let first = start_waiter(&child, &name, 1);
    let mut second = start_waiter(&child, &name, 2);
    second.set_bound(Duration::from_secs(10));
    {
        let mut jobs = cell.lock().unwrap();
        *jobs = 1;
        // Wakes the first queued waiter, which then blocks on the lock we
        // hold — and dies there, before it could look at the value.
        cell.notify_one();
        first.kill().unwrap();
    }
    second
        .wait()
        .expect("the second waiter should take the job the dead one never saw");
    assert_eq!(*cell.lock().unwrap(), 0, "the job was taken once");
}

per_backend!(notify_one_survives_the_woken_waiter_dying);
