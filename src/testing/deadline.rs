//! [`Watchdog`]: a bound on a whole test, for waits that no child handle
//! bounds (the test's own thread blocked in `lock()` or `wait_while`).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::sys::time::Monotonic;

/// A per-test watchdog: if it is still armed when `bound` has passed, it
/// prints which test hung and **aborts the whole test binary**; dropping
/// it (the test ended, also by a panic) disarms it.
///
/// Every wait of a child handle is bounded already ([`Spawn::bound`](crate::testing::Spawn::bound)).
/// This is for the waits of the test's own thread that depend on another
/// process: `cell.lock()` while a child holds the lock, a
/// `wait_while` whose notifier is a child. Under the default harness a
/// test thread stuck there cannot be stopped from outside; aborting turns
/// a hung `cargo test` into a failure that names the test. (Children die
/// with it: their `PR_SET_PDEATHSIG` fires as the process goes.)
///
/// ```no_run
/// use std::time::Duration;
/// use shmsync::testing::{self, TestName, Watchdog};
/// use shmsync::ShmCell;
///
/// #[test]
/// fn lock_waits_for_the_holder() {
///     let holder = testing::child!(|ctx| {
///         let cell = ShmCell::<u64>::open(ctx.arg(0)).unwrap();
///         let mut g = cell.lock().unwrap();
///         testing::point("holding");
///         *g = 2;
///     });
///     let _watchdog = Watchdog::arm(Duration::from_secs(60));
///     let name = TestName::new("held");
///     let cell = ShmCell::<u64>::create(&name, 1).unwrap();
///     let mut child = holder.arg(&name).stop_at("holding").spawn().unwrap();
///     child.wait_stopped().unwrap();
///     child.resume().unwrap();
///     assert_eq!(*cell.lock().unwrap(), 2); // bounded by the watchdog
///     child.wait().unwrap();
/// }
/// # fn main() {}
/// ```
#[must_use = "the watchdog is disarmed as soon as it is dropped"]
pub struct Watchdog {
    disarmed: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

impl Watchdog {
    /// Arms a watchdog for the current test (named after the current
    /// thread, which is the test's name under libtest).
    ///
    /// # Panics
    ///
    /// If its thread cannot be started.
    pub fn arm(bound: Duration) -> Watchdog {
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed thread>")
            .to_string();
        let disarmed = Arc::new((Mutex::new(false), Condvar::new()));
        let shared = disarmed.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shmsync-watchdog-{test}"))
            .spawn(move || {
                let deadline = Monotonic::now().after(bound);
                let (lock, cv) = &*shared;
                let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*done {
                    let left = deadline.remaining();
                    if left.is_zero() {
                        let _ = writeln!(
                            std::io::stderr(),
                            "shmsync::testing::Watchdog: test `{test}` did not finish within \
                             {bound:?}; aborting the test binary"
                        );
                        std::process::abort();
                    }
                    done = cv
                        .wait_timeout(done, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })
            .expect("start the watchdog thread");
        Watchdog {
            disarmed,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.disarmed;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
