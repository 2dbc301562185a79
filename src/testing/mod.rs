//! Test support for your own crash tests: kill a lock holder at a chosen
//! point, in a real child process, under the default multi-threaded
//! `cargo test` (feature `testing`).
//!
//! ```toml
//! [dev-dependencies]
//! shmsync = { version = "0.1", features = ["testing"] }
//! ```
//!
//! | need | tool |
//! |---|---|
//! | a name that cleans up after the test, also after a panic | [`TestName`] |
//! | code that runs in another process | [`child!`] at the top of the test |
//! | die at a known place | [`point`] in the child, [`Spawn::kill_at`] in the test |
//! | hold there, look, then go on | [`Spawn::stop_at`], [`Running::resume`] |
//! | die at a random moment (soak) | [`Spawn::kill_within`] in a loop |
//! | die at every point, one run each | [`ChildSpec::sweep`] |
//! | die half-way through creating a segment | [`points_at_init_steps`] |
//! | die at each step of shmsync's lock, unlock, wait, notify, unlink, clean | [`points_at_crate_steps`] |
//! | what the survivor saw | [`recover`] → [`Seen`] |
//! | why a child failed (panic, exit status, hang) | [`ChildError`] |
//! | bound the test's own waits (a `lock()` a child must release) | [`Watchdog`] |
//!
//! # Testing your crash recovery
//!
//! A library keeps an account in a [`ShmCell`](crate::ShmCell); a transfer
//! debits one field and credits the other under the lock. If the process
//! dies between the two writes, the next one to lock must find out
//! ([`LockError::OwnerDied`](crate::LockError::OwnerDied)) and repair the
//! value. This test proves it: a child process is killed exactly between
//! the two writes, and the parent asserts what it found and what the
//! repair made of it. (It is `tests/user_crash_test.rs` of this crate,
//! which runs under plain `cargo test`.)
//!
//! ```no_run
//! use shmsync::testing::{self, Seen, TestName};
//! use shmsync::{ShmCell, ShmSafe};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, ShmSafe)]
//! #[repr(C)]
//! struct Account {
//!     checking: u64,
//!     savings: u64,
//! }
//!
//! const TOTAL: u64 = 100;
//!
//! #[test]
//! fn a_transfer_killed_half_way_is_repaired() {
//!     // The child's code comes first: the child process runs it, then exits.
//!     let transfer = testing::child!(|ctx| {
//!         let cell = ShmCell::<Account>::open(ctx.arg(0)).unwrap();
//!         let mut acct = cell.lock().unwrap();
//!         acct.checking -= 10;
//!         testing::point("after the debit");
//!         acct.savings += 10;
//!     });
//!     // The test: a name removed even if it fails, the cell, the kill.
//!     let name = TestName::new("bank");
//!     let cell = ShmCell::<Account>::create(&name, Account { checking: TOTAL, savings: 0 }).unwrap();
//!     transfer.arg(&name).kill_at("after the debit").unwrap();
//!     // The repair rolls back a debit that has no credit.
//!     let seen = testing::recover(&cell, |a| a.checking = TOTAL - a.savings).unwrap();
//!     assert_eq!(
//!         seen,
//!         Seen::OwnerDied {
//!             found: Account { checking: 90, savings: 0 },
//!             repaired: Account { checking: TOTAL, savings: 0 },
//!         }
//!     );
//! }
//! # fn main() {}
//! ```
//!
//! What happens: `transfer.arg(&name).kill_at(..)` re-runs this test binary
//! as a child process that runs only this test; there `child!` runs the
//! closure, which locks, debits and reaches the point; the point tells the
//! parent and blocks; the parent `SIGKILL`s and reaps the child. The
//! kernel marks the robust mutex, so `recover` gets `OwnerDied` with the
//! half-done value, repairs it and makes the lock consistent. When the
//! test ends — passing or panicking — `name` removes the segment.
//!
//! To check every place the child can die rather than one, give the child
//! more points and [sweep](ChildSpec::sweep) them:
//! `transfer.sweep().run(|run| { …; run.child().arg(&name).run()?; … })`
//! runs the scenario once per point. The sweep checks nothing by itself:
//! it reports that the child was killed at each point and that the
//! scenario's own checks passed after every kill — so the scenario must
//! assert what recovery should produce (compare [`recover`]'s [`Seen`]
//! with the expected value, as above; see [`Sweep`]).
//!
//! # How a child runs
//!
//! The default `cargo test` harness runs tests on several threads, so
//! `fork` followed by arbitrary Rust is not an option: the child would
//! inherit locks (the allocator's, stdout's) held by threads that do not
//! exist in it. The sound way, used by `rusty-fork` and `procspawn`, is to
//! **re-execute the test binary**: the parent starts
//! `/proc/self/exe --exact TEST --nocapture --test-threads=1
//! --include-ignored`, where `TEST` is the name libtest knows the current
//! test by, with environment variables that select the child's role, the
//! stop point and the arguments. libtest runs that single test in the
//! child; the test reaches the same [`child!`], which recognises its role,
//! runs the closure and ends the process (exit status 0, or 101 when it
//! panicked) before the test's own code
//! runs.
//!
//! The role is the `child!`'s place in the source (file, line, column) and
//! the test's name, which the macro takes from the type name of a function
//! it declares in the test's body. So a test can declare several children
//! (a writer and a reader), each `child!` being one role.
//!
//! Why this design rather than a role registry run before `main` (with
//! `ctor`): the child's code sits next to the test that uses it, it runs
//! inside the ordinary harness with std fully initialised, and no
//! dependency is added — the feature brings none. The cost is the rule
//! below.
//!
//! ## What a child re-runs
//!
//! The child runs the test **from its start** up to its `child!`. So:
//!
//! * **Do** put every `child!` first in the `#[test]` function, directly in
//!   its body (not in a helper function: its name would not be the test's).
//!   Code before it runs in every child; keep it free of side effects
//!   (constants are fine). [`TestName::new`] and [`Spawn::spawn`] panic in
//!   a child before its code runs, to catch this.
//! * **Do** pass names and other values to the child as arguments
//!   ([`Spawn::arg`], [`ChildCtx::arg`]); the child shares no memory with
//!   the test.
//! * **Do** use the default libtest harness (`harness = true`, also under
//!   `cargo nextest`); a `harness = false` binary does not understand
//!   `--exact`. A child that never reaches its `child!` is reported as
//!   [`ChildError::NotRun`].
//! * **Do not** spawn from a thread that ends before the child should:
//!   the child gets `PR_SET_PDEATHSIG = SIGKILL`, which fires when the
//!   spawning *thread* exits.
//! * **Do not** build with `panic = "abort"` for tests: a panicking test
//!   could then not unwind into [`TestName`]'s cleanup.
//! * `#[ignore]`d tests work (the child passes `--include-ignored`); a test
//!   that the parent runs is always found by the child.
//!
//! ## What a child's code may do
//!
//! The child process is the test binary running one test, so its code
//! runs on the thread libtest starts for that test (even with
//! `--test-threads=1`), not on the process's main thread; libtest's main
//! thread only waits for the result, and this module starts no thread in
//! a child (unless the child's code starts children of its own). So:
//!
//! * Changing process-wide state (the umask, signal handlers, timers,
//!   resource limits, [`points_at_crate_steps`])
//!   is fine there — and only there: in the test itself it would reach
//!   every test running in parallel. A process-directed signal may be
//!   delivered to libtest's main thread; aim a timer at the child's
//!   thread (`timer_create` with `SIGEV_THREAD_ID`) when the code under
//!   test must be the one interrupted.
//! * Code that must run on a process's main thread — `exec` while holding
//!   a [`RobustMutex`](crate::RobustMutex) (a secondary thread that calls
//!   `exec` first gets the leader's id, so the kernel no longer finds its
//!   own id in the lock word and does not mark it: the lock stays held),
//!   a leader that exits while another thread lives on — runs in
//!   a process the child's code forks: there, the forking thread is the
//!   only one, hence the leader.
//! * `fork` without `exec` (a guard held across `fork`, a pre-fork
//!   worker) is fine there: the only other thread is parked in a channel
//!   receive and holds no lock the forked process could need. The forked
//!   process stays in the child's process group, so it dies when the
//!   child is killed or reaped, and [`point`] works in it (it inherits the
//!   report channel).
//! * Programs it starts (`Command`, `exec`) do **not** inherit the
//!   channel: the child removes the `SHMSYNC_TESTING_*` variables from
//!   its environment as it starts, its report descriptors are
//!   close-on-exec, and a process adopts descriptors only when the
//!   variables name its own parent as the test that handed them down. A
//!   test binary started from a child is an ordinary test run.
//!
//! # Kill points
//!
//! [`point`]`("name")` in the child's code (or in library code it calls)
//! reports the point over an inherited pipe. If the test asked to stop
//! there ([`Spawn::stop_at`], [`Spawn::kill_at`]), the calling thread then
//! blocks until the parent kills it — or resumes it with
//! [`Running::resume`], to look at a lock held by a live process first.
//! Outside a child, `point` does nothing. Points may repeat (a loop);
//! [`Spawn::stop_at_nth`] picks an occurrence.
//!
//! ## Points in your own library
//!
//! To kill a process inside your library's code (between two writes of a
//! transfer, say), call [`point`] there and forward a feature, so that
//! release builds of your users never link the testing code:
//!
//! ```toml
//! # your library's Cargo.toml
//! [features]
//! testing = ["shmsync/testing"]
//! ```
//!
//! ```text
//! // your library
//! pub fn transfer(cell: &ShmCell<Account>) {
//!     let mut a = cell.lock().unwrap();
//!     a.checking -= 10;
//!     #[cfg(feature = "testing")]
//!     shmsync::testing::point("after the debit");
//!     a.savings += 10;
//! }
//! ```
//!
//! and run the crash tests with `cargo test --features testing`. A test
//! built without the feature does not skip silently: the child never
//! reaches the point, and [`Spawn::kill_at`] fails with
//! [`ChildError::NotReached`], whose message names the point and this
//! cause. Gate such tests with `#[cfg(feature = "testing")]` (or
//! `required-features` on the test target) if they should not run without
//! it.
//!
//! [`Spawn::kill_within`] kills at a random moment of a window after a
//! point: loop it for a soak (glibc's `tst-robust8`). A sweep
//! ([`ChildSpec::sweep`]) runs a scenario once per declared point (Samba
//! tdb's die-at-every-hook).
//!
//! [`points_at_init_steps`] turns each [`InitStep`] of creating a segment
//! into a point named by [`init_point`], so a creator can be killed
//! half-way through initialisation.
//!
//! ## Points inside shmsync
//!
//! [`points_at_crate_steps`] does the same for every step of the crate's
//! own paths beyond initialisation, so a sweep can kill a process at each
//! of them (`tests/steps.rs` sweeps all of them for every backend). The
//! steps are compiled only with feature `testing`; without it they are
//! empty inline functions. The list is [`CRATE_STEPS`]:
//!
//! | step | a process that dies there has … |
//! |---|---|
//! | `sem:companion-written` | NamedSemaphore create (initialisation): written the marked semaphore into an unnamed file, not linked it as `sem.NAME` |
//! | `mutex:locked` | RobustMutex: returned from `pthread_mutex_*lock` (clean or `EOWNERDEAD`); no guard yet |
//! | `mutex:try-not-recoverable` | RobustMutex try: had glibc answer `ENOTRECOVERABLE` (the mutex became not recoverable after its check of `__owner`; glibc gave the word back), not woken anyone |
//! | `mutex:answered-not-recoverable` | RobustMutex: about to answer `NotRecoverable`, not woken the other sleepers |
//! | `mutex:released-unrepaired` | RobustMutex: unlocked an owner-died lock unrepaired (glibc woke one sleeper), not woken the others |
//! | `flock:locked` | FileLock: taken `flock(LOCK_EX)`, not read the held marker |
//! | `flock:holder-recorded` | FileLock: written `holder_pid`, not set the marker to held |
//! | `flock:marked` | FileLock: set the marker to held (held-inconsistent after an owner death) |
//! | `sem:holder-set` | NamedSemaphore: won the holder word (its token), not read `state` |
//! | `sem:owner-died-recorded` | NamedSemaphore: taken over a dead holder and set `state` to owner-died |
//! | `sem:holder-recorded` | NamedSemaphore: written holder thread, tid and pid: the acquire is complete |
//! | `consistent:begin` | `make_consistent`: cleared the header's `suspect` word, not told the backend |
//! | `consistent:done` | `make_consistent`: made the backend consistent (still holding the lock) |
//! | `unlock:begin` | unlock: stopped counting itself as holder, not started the backend release |
//! | `flock:marker-cleared` | FileLock unlock: set the marker to free (or not recoverable), still holding `flock` |
//! | `flock:unlocked` | FileLock unlock: done `LOCK_UN`, still holding the process-local lock |
//! | `sem:record-cleared` | NamedSemaphore unlock: cleared holder thread, tid and pid, not the holder word |
//! | `sem:holder-cleared` | NamedSemaphore unlock: cleared the holder word, not posted a sleeper |
//! | `unlock:released` | unlock: released the lock through the backend |
//! | `wait:registered` | wait: counted itself in `notify_waiters`, still holding the lock |
//! | `wait:released` | wait: released the lock, not yet asleep |
//! | `wait:woken` | wait: returned from `FUTEX_WAIT`, still counted as a waiter |
//! | `wait:relock` | wait: stopped counting itself, not re-acquired the lock |
//! | `notify:bumped` | notify: bumped the sequence word and seen waiters, not called `FUTEX_WAKE` |
//! | `notify:woken` | notify: returned from `FUTEX_WAKE` |
//! | `unlink:companions-removed` | `ShmCell::unlink`: removed the companion objects (`sem.NAME`), not the name |
//! | `clean:judged` | `inspect::clean`: judged the object stale under its exclusive attach lock, removed nothing |
//! | `clean:companions-removed` | `inspect::clean`: removed the companion objects, not the name |
//!
//! # Watchdog
//!
//! Every wait is bounded (by [`Spawn::bound`], default [`default_bound`]):
//! a child that does not reach its point or end in time is killed, and the
//! wait fails with [`ChildError::Hung`] naming what it waited for and the
//! last point the child reached. A thread per child reads its reports,
//! stdout and stderr all the time, so a chatty child never blocks on a full
//! pipe while the test waits for something else (a lock the child holds).
//! A child is killed and reaped when its
//! handle is dropped (also on panic), its whole process group with it; it
//! dies with the spawning thread (`PR_SET_PDEATHSIG`), and a stopped child
//! whose parent is gone exits. No hung `cargo test`, no zombie, no orphan.
//!
//! # Outcomes as data
//!
//! * [`Ended`]: how a child ended (killed, and where; the points it
//!   reached; its stdout and stderr).
//! * [`ChildError`]: a child's panic (message and location), its exit
//!   status, a point it never reached, a hang — with the tail of its
//!   stderr. Its `Debug` is its message, so `.unwrap()` reads well.
//! * [`recover`] → [`Seen`]: what the survivor found (`Clean` or
//!   `OwnerDied { found, repaired }`), to compare with `assert_eq!`.
//! * [`SweepReport`]: per point, what the scenario returned or why it
//!   failed.

mod child;
mod deadline;
mod names;
mod outcome;
mod points;
mod recover;
mod running;
mod sweep;
mod watchdog;

use std::sync::OnceLock;
use std::time::Duration;

pub use crate::segment::InitStep;
#[doc(hidden)]
pub use child::{__declare, __type_name_of};
pub use child::{ChildCtx, ChildSpec, Spawn};
pub use deadline::Watchdog;
pub use names::{leftovers, TestName, MAX_TEST_NAME, NAME_PREFIX};
pub use outcome::{ChildError, Ended};
pub use points::point;
pub use recover::{recover, Seen};
pub use running::Running;
pub use sweep::{PointOutcome, Sweep, SweepReport, SweepRun};

/// Declares a child's code at the top of a test; returns its
/// [`ChildSpec`].
///
/// `child!(|ctx| { … })` or, with a label for messages,
/// `child!("writer", |ctx| { … })`. The closure takes a [`&ChildCtx`](ChildCtx)
/// and returns `()`; in it, `unwrap`/`expect`/`assert!` are the way to
/// fail: a panic comes back to the test as [`ChildError::Panicked`] with
/// its message and location. (The closure returns nothing, not a
/// `Result`, so that one ending in `panic!`, `loop {}` or `process::exit`
/// needs no type annotation.)
///
/// In the child process started for this declaration, the closure runs
/// and the process exits; the macro does not return. Everywhere else it
/// returns at once. Read [what a child re-runs](crate::testing#what-a-child-re-runs)
/// before using it.
///
/// ```no_run
/// use shmsync::testing;
///
/// #[test]
/// fn child_says_hello() {
///     let hello = testing::child!("hello", |ctx| {
///         println!("hello, {}", ctx.arg(0));
///     });
///     let ended = hello.arg("world").run().unwrap();
///     assert!(ended.stdout.contains("hello, world"));
/// }
/// # fn main() {}
/// ```
#[doc(inline)]
pub use crate::__shmsync_testing_child as child;

#[doc(hidden)]
#[macro_export]
macro_rules! __shmsync_testing_child {
    ($label:literal, $body:expr $(,)?) => {{
        fn __shmsync_child_site() {}
        $crate::testing::__declare(
            $crate::testing::__type_name_of(&__shmsync_child_site),
            ::core::concat!(
                ::core::file!(),
                ":",
                ::core::line!(),
                ":",
                ::core::column!()
            ),
            $label,
            $body,
        )
    }};
    ($body:expr $(,)?) => {
        $crate::__shmsync_testing_child!("child", $body)
    };
}

/// The bound of every wait of this module unless a test sets its own: 30
/// seconds, or `SHMSYNC_TESTING_BOUND_SECS` from the environment (for slow
/// machines). Only reached when something is wrong: a passing test never
/// waits for it.
pub fn default_bound() -> Duration {
    static BOUND: OnceLock<Duration> = OnceLock::new();
    *BOUND.get_or_init(|| {
        std::env::var("SHMSYNC_TESTING_BOUND_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&s| s > 0)
            .map_or(Duration::from_secs(30), Duration::from_secs)
    })
}

/// The name of the kill point of an initialisation step:
/// `"init:"` + [`InitStep::name`] (`"init:created"`, `"init:sized"`, …).
pub fn init_point(step: InitStep) -> String {
    step.point().to_string()
}

/// In a child: from now on, every [`InitStep`] of every segment this
/// process creates (`create`, `open_or_create`, a takeover of an abandoned
/// segment) is a kill point named [`init_point`]`(step)`. Elsewhere it does
/// nothing, so the parent's own creations are never slowed or stopped.
///
/// This is how a creator is killed half-way through initialisation:
///
/// ```no_run
/// use shmsync::testing::{self, init_point, InitStep, TestName};
/// use shmsync::{Error, ShmCell};
///
/// #[test]
/// fn creator_killed_after_sizing() {
///     let create = testing::child!(|ctx| {
///         testing::points_at_init_steps();
///         ShmCell::<u64>::create(ctx.arg(0), 1).unwrap();
///     });
///     let name = TestName::new("init");
///     create.arg(&name).kill_at(&init_point(InitStep::Sized)).unwrap();
///     assert!(matches!(ShmCell::<u64>::open(&name), Err(Error::AbandonedInit { .. })));
/// }
/// # fn main() {}
/// ```
pub fn points_at_init_steps() {
    if points::child_env().is_some() {
        crate::steps::enable(crate::steps::INIT);
    }
}

/// In a child: from now on, every step of shmsync's own lock, unlock,
/// `make_consistent`, wait, notify, unlink and clean paths that this
/// process passes is a kill point, named as in
/// [points inside shmsync](self#points-inside-shmsync) ([`CRATE_STEPS`]).
/// Elsewhere it does nothing. Initialisation steps stay off (see
/// [`points_at_init_steps`]).
///
/// ```no_run
/// use shmsync::testing::{self, Seen, TestName};
/// use shmsync::{FileLock, ShmCell};
///
/// #[test]
/// fn holder_killed_between_flock_and_marker() {
///     let bump = testing::child!(|ctx| {
///         testing::points_at_crate_steps();
///         let cell = ShmCell::<u64, FileLock>::open(ctx.arg(0)).unwrap();
///         *cell.lock().unwrap() += 1;
///     });
///     let name = TestName::new("steps");
///     let cell = ShmCell::<u64, FileLock>::create(&name, 1).unwrap();
///     bump.arg(&name).kill_at("flock:locked").unwrap();
///     // The marker was never set: the death left nothing to repair.
///     assert_eq!(testing::recover(&cell, |_| {}).unwrap(), Seen::Clean(1));
/// }
/// # fn main() {}
/// ```
pub fn points_at_crate_steps() {
    if points::child_env().is_some() {
        crate::steps::enable(crate::steps::CRATE);
    }
}

/// The name of every step [`points_at_crate_steps`] turns into a kill
/// point, with what has happened when a process dies there (the table of
/// [points inside shmsync](self#points-inside-shmsync)). A backend passes
/// only its own steps (`mutex:`, `flock:`, `sem:`) besides the common
/// ones.
pub const CRATE_STEPS: &[(&str, &str)] = crate::steps::STEPS;
