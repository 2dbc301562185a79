//! Child processes under the default multi-threaded `cargo test`: the test
//! binary re-executed to run one test's child code ([`child!`]), the
//! parent's handles ([`ChildSpec`], [`Spawn`], [`Running`]) and what comes
//! back ([`Ended`], [`ChildError`]).
//!
//! [`child!`]: crate::testing::child

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::outcome::{ChildError, Ended};
use super::points::{self, child_env, hex, ChildEnv};
use super::running::Running;
use super::watchdog::{Monitor, Wait};
use crate::sys;
use crate::sys::time::Monotonic;

/// Arguments `libtest` gets in the child: run exactly one test, let its
/// output through (to the parent's pipes), on one thread, even if it is
/// `#[ignore]`d (the parent runs, so it was selected).
const LIBTEST_ARGS: [&str; 5] = [
    "--nocapture",
    "--test-threads=1",
    "--include-ignored",
    "--quiet",
    "--exact",
];

/// Bytes of the child's stderr quoted in an error message (the tail).
pub(super) const QUOTE_STDERR: usize = 4000;

/// What the child's code receives: the arguments the parent passed.
#[derive(Debug)]
pub struct ChildCtx {
    args: &'static [String],
}

impl ChildCtx {
    /// The `i`-th argument the parent passed with [`Spawn::arg`].
    ///
    /// # Panics
    ///
    /// If the parent passed fewer arguments (the panic comes back to the
    /// parent as [`ChildError::Panicked`]).
    pub fn arg(&self, i: usize) -> &'static str {
        match self.args.get(i) {
            Some(a) => a,
            None => panic!(
                "the child's code asked for argument {i}, but the parent passed {}: {:?}",
                self.args.len(),
                self.args
            ),
        }
    }

    /// Every argument the parent passed.
    pub fn args(&self) -> &'static [String] {
        self.args
    }
}

/// A child's code, declared with [`child!`](crate::testing::child) at the
/// top of a test; the parent starts copies of it.
///
/// `Copy`: it only names the test and the place of the declaration.
#[derive(Clone, Copy, Debug)]
pub struct ChildSpec {
    raw: &'static str,
    site: &'static str,
    label: &'static str,
}

impl ChildSpec {
    /// The name `libtest` knows the enclosing test by (`module::test`),
    /// which the child is re-run with (`--exact`).
    pub fn test(&self) -> String {
        test_path(self.raw)
    }

    /// The label given to [`child!`](crate::testing::child) (`"child"` by
    /// default), used in messages.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// A builder for one run of this child.
    pub fn command(&self) -> Spawn {
        Spawn {
            spec: *self,
            args: Vec::new(),
            stop: None,
            bound: super::default_bound(),
            sink: None,
            wrapper: None,
        }
    }

    /// `self.command().arg(a)`.
    pub fn arg(&self, a: impl AsRef<str>) -> Spawn {
        self.command().arg(a)
    }

    /// `self.command().kill_at(point)`.
    ///
    /// # Errors
    ///
    /// As [`Spawn::kill_at`].
    pub fn kill_at(&self, point: &str) -> Result<Ended, ChildError> {
        self.command().kill_at(point)
    }

    /// `self.command().run()`.
    ///
    /// # Errors
    ///
    /// As [`Spawn::run`].
    pub fn run(&self) -> Result<Ended, ChildError> {
        self.command().run()
    }
}

/// One run of a child, being configured. Nothing starts until
/// [`spawn`](Spawn::spawn), [`run`](Spawn::run),
/// [`kill_at`](Spawn::kill_at) or [`kill_within`](Spawn::kill_within).
#[must_use = "a Spawn does nothing until it is run"]
#[derive(Debug)]
pub struct Spawn {
    spec: ChildSpec,
    args: Vec<String>,
    stop: Option<(String, u32)>,
    bound: Duration,
    sink: Option<Sink>,
    wrapper: Option<(String, Vec<String>)>,
}

/// Where a sweep learns what one run of its child did.
pub(crate) type Sink = Arc<Mutex<Vec<RunRecord>>>;

/// What a sweep needs to know of a run.
#[derive(Clone, Debug)]
pub(crate) struct RunRecord {
    pub(crate) points: Vec<(String, u32)>,
    pub(crate) killed_at: Option<(String, u32)>,
}

impl Spawn {
    /// Appends an argument (a [`TestName`](crate::testing::TestName), a
    /// number…): the child reads it with [`ChildCtx::arg`].
    pub fn arg(mut self, a: impl AsRef<str>) -> Spawn {
        self.args.push(a.as_ref().to_string());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// The bound of every wait for this child (default
    /// [`default_bound`](crate::testing::default_bound)): a child that
    /// takes longer to reach a point or to end is killed and the wait fails
    /// with [`ChildError::Hung`].
    pub fn bound(mut self, bound: Duration) -> Spawn {
        self.bound = bound;
        self
    }

    /// Stops the child the first time it reaches [`point`](crate::testing::point)
    /// `name`: that thread blocks there until the parent kills or
    /// [resumes](Running::resume) it.
    pub fn stop_at(self, name: &str) -> Spawn {
        self.stop_at_nth(name, 1)
    }

    /// Stops the child the `n`-th time (from 1) it reaches point `name`.
    pub fn stop_at_nth(mut self, name: &str, n: u32) -> Spawn {
        self.stop = Some((name.to_string(), n.max(1)));
        self
    }

    /// Starts the child as `program args… TEST-BINARY …`: through a
    /// command that runs its last arguments, for example
    /// `unshare --pid --fork --kill-child` to run it in a new pid
    /// namespace. The wrapper must keep the inherited descriptors and the
    /// environment, stay in the child's process group, and end when its
    /// command ends.
    pub fn wrapper<I, S>(mut self, program: &str, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        self.wrapper = Some((program.to_string(), args));
        self
    }

    pub(crate) fn sink(mut self, sink: Sink) -> Spawn {
        self.sink = Some(sink);
        self
    }

    /// Starts the child (`/proc/self/exe --exact TEST …`) and returns at
    /// once.
    ///
    /// The child runs in its own process group, with `PR_SET_PDEATHSIG`
    /// set to `SIGKILL`: it dies with the thread that spawned it (spawn
    /// from the test's own thread, or one that outlives the child).
    ///
    /// # Errors
    ///
    /// [`ChildError::Spawn`] if a pipe or the process cannot be made.
    ///
    /// # Panics
    ///
    /// In a child process outside its child's code: the test's parent code
    /// is running in a child, which means the child's role was not declared
    /// before it (see [the module docs](crate::testing#what-a-child-re-runs)).
    pub fn spawn(self) -> Result<Running, ChildError> {
        refuse_before_child_body("Spawn::spawn");
        let test = self.spec.test();
        let desc = format!(
            "child {:?} of test `{test}` ({})",
            self.spec.label, self.spec.site
        );
        let spawn_err = |source: io::Error| ChildError::Spawn {
            child: desc.clone(),
            source,
        };
        let (report_r, report_w) = sys::spawn::pipe_cloexec().map_err(spawn_err)?;
        let (command_r, command_w) = sys::spawn::pipe_cloexec().map_err(spawn_err)?;
        let (out_r, out_w) = sys::spawn::pipe_cloexec().map_err(spawn_err)?;
        let (err_r, err_w) = sys::spawn::pipe_cloexec().map_err(spawn_err)?;
        for fd in [&report_r, &out_r, &err_r] {
            sys::spawn::set_nonblocking(fd.as_fd()).map_err(spawn_err)?;
        }
        let mut cmd = Command::new("/proc/self/exe");
        if let Some((program, args)) = &self.wrapper {
            cmd = Command::new(program);
            cmd.args(args)
                .arg(std::env::current_exe().map_err(spawn_err)?);
        } else if let Ok(exe) = std::env::current_exe() {
            cmd.arg0(exe);
        }
        cmd.args(LIBTEST_ARGS).arg(&test);
        cmd.env(
            points::ENV_ROLE,
            format!("{},{}", hex(&test), hex(self.spec.site)),
        );
        let (rw, cr) = (report_w.as_raw_fd(), command_r.as_raw_fd());
        let parent = sys::proc::getpid();
        // The pipes' inode numbers let the child tell them from whatever
        // a grandchild inheriting these variables finds under the numbers
        // (a pid would not do: a wrapper such as `unshare --pid` is the
        // child's parent, and pids differ across namespaces).
        let ino = |fd, write| sys::spawn::pipe_end_inode(fd, write).unwrap_or(0);
        cmd.env(
            points::ENV_FDS,
            format!("{rw},{cr},{},{}", ino(rw, true), ino(cr, false)),
        );
        let args: Vec<String> = self.args.iter().map(|a| hex(a)).collect();
        cmd.env(points::ENV_ARGS, args.join(","));
        match &self.stop {
            Some((name, k)) => cmd.env(points::ENV_STOP, format!("{},{k}", hex(name))),
            None => cmd.env_remove(points::ENV_STOP),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .process_group(0);
        // SAFETY: the closure runs in the forked child before `exec`, where
        // only async-signal-safe calls are allowed: it makes three system
        // calls (`fcntl`, `prctl`, `getppid`) and possibly `_exit`, touches
        // no lock and allocates nothing (an `io::Error` from an errno is not
        // allocated). The two descriptors are the child's copies.
        unsafe {
            cmd.pre_exec(move || {
                sys::spawn::set_cloexec(rw, false)?;
                sys::spawn::set_cloexec(cr, false)?;
                sys::spawn::kill_me_when_parent_dies()?;
                if sys::spawn::getppid() != parent {
                    // The parent died before PR_SET_PDEATHSIG was set.
                    sys::spawn::exit_now(points::EXIT_ORPHANED);
                }
                Ok(())
            })
        };
        let proc = cmd.spawn().map_err(spawn_err)?;
        // Our copies of the child's ends go, so that only the child holds
        // them (and the Command's stdio ends with it).
        drop((report_w, command_r, cmd));
        let pid = proc.id();
        Ok(Running {
            mon: Monitor::new(proc, report_r, out_r, err_r).map_err(spawn_err)?,
            command: Some(command_w.into()),
            desc: format!(
                "child {:?} (pid {pid}) of test `{test}` ({})",
                self.spec.label, self.spec.site
            ),
            test,
            stop: self.stop,
            bound: self.bound,
            sink: self.sink,
        })
    }

    /// Runs the child until it ends: if a stop point is set
    /// ([`stop_at`](Spawn::stop_at)), it must reach it and is killed
    /// there; otherwise it must end by itself, successfully.
    ///
    /// # Errors
    ///
    /// As [`Running::wait_stopped`] and [`Running::wait`].
    pub fn run(self) -> Result<Ended, ChildError> {
        let stop = self.stop.is_some();
        let mut child = self.spawn()?;
        if stop {
            child.wait_stopped()?;
            child.kill()
        } else {
            child.wait()
        }
    }

    /// Runs the child until it reaches point `name` (the first time), then
    /// `SIGKILL`s and reaps it: the child dies exactly there, nothing after
    /// the point runs.
    ///
    /// # Errors
    ///
    /// [`ChildError::NotReached`] if it ended without reaching the point,
    /// [`ChildError::Panicked`] / [`ChildError::Failed`] /
    /// [`ChildError::NotRun`] if it failed first, [`ChildError::Hung`] if
    /// it did not get there within the bound.
    pub fn kill_at(self, name: &str) -> Result<Ended, ChildError> {
        self.stop_at(name).run()
    }

    /// Soak: starts the child, waits until it reaches point `after`, then
    /// kills it at a random moment within `window` — unless it ends by
    /// itself first (then [`Ended::killed`] is false). Loop it to find
    /// what a fixed point would not (glibc's `tst-robust8` pattern).
    ///
    /// # Errors
    ///
    /// As [`kill_at`](Spawn::kill_at) for reaching `after`; a child that
    /// ends by itself within the window must end successfully.
    pub fn kill_within(self, after: &str, window: Duration) -> Result<Ended, ChildError> {
        let mut child = self.spawn()?;
        child.wait_point(after)?;
        let delay = random_below(window);
        match child.pump(Monotonic::now().after(delay), |_| false, "run")? {
            Wait::Ended => child.ended_ok(),
            _ => child.kill(),
        }
    }
}

/// The test name `libtest` uses, from the type name of a function item
/// declared in the test's body: `krate::module::test::{{closure}}::marker`
/// → `module::test`.
pub(crate) fn test_path(raw: &str) -> String {
    let mut parts: Vec<&str> = raw.split("::").collect();
    parts.pop();
    parts.retain(|p| !p.starts_with("{{"));
    if !parts.is_empty() {
        parts.remove(0);
    }
    parts.join("::")
}

/// `std::any::type_name` of a value's type (for the `child!` macro).
#[doc(hidden)]
pub fn __type_name_of<T>(_: &T) -> &'static str {
    std::any::type_name::<T>()
}

/// The expansion of [`child!`](crate::testing::child): in the child
/// process whose role is this declaration, runs `body` and exits;
/// everywhere else, returns the declaration.
#[doc(hidden)]
pub fn __declare<F>(
    raw: &'static str,
    site: &'static str,
    label: &'static str,
    body: F,
) -> ChildSpec
where
    F: FnOnce(&ChildCtx),
{
    let spec = ChildSpec { raw, site, label };
    if let Some(env) = child_env() {
        if env.site == site && env.test == spec.test() && !env.is_in_body() {
            run_body(env, body);
        }
    }
    spec
}

/// Runs the child's code in the child process and ends the process: exit
/// status 0, or 101 if it panicked.
fn run_body<F>(env: &'static ChildEnv, body: F) -> !
where
    F: FnOnce(&ChildCtx),
{
    env.in_body.store(true, Ordering::Release);
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "Box<dyn Any>".to_string());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        env.send(points::TAG_PANIC, &format!("{message}{at}"));
        previous(info);
    }));
    env.send(points::TAG_BEGIN, "");
    let ctx = ChildCtx { args: &env.args };
    let code = match panic::catch_unwind(AssertUnwindSafe(|| body(&ctx))) {
        Ok(()) => 0,
        Err(_) => 101,
    };
    use std::io::Write;
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    std::process::exit(code)
}

/// Panics if this process is a child and its child's code is not running
/// yet: the test's parent code is being run in a child.
pub(crate) fn refuse_before_child_body(what: &str) {
    if let Some(env) = child_env() {
        if !env.is_in_body() {
            panic!(
                "shmsync::testing: {what} ran in a child process (test `{}`) before the child's \
                 code: declare every `child!` at the very top of the test, before any other \
                 code (the child re-runs the test from its start)",
                env.test
            );
        }
    }
}

/// A random duration in `[0, window)`: varied from run to run, as a soak
/// wants (std's `RandomState` is seeded randomly per process).
fn random_below(window: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = window.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    Duration::from_nanos(h.finish() % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_path_strips_crate_closures_and_marker() {
        assert_eq!(test_path("user_crash_test::transfer::here"), "transfer");
        assert_eq!(
            test_path("shmsync::testing::tests::t::{{closure}}::here"),
            "testing::tests::t"
        );
    }

    #[test]
    fn random_below_stays_in_window() {
        for _ in 0..1000 {
            assert!(random_below(Duration::from_micros(300)) < Duration::from_micros(300));
        }
        assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
    }
}
