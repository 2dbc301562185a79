//! Child processes under the default multi-threaded `cargo test`: the test
//! binary re-executed to run one test's child code ([`child!`]), the
//! parent's handles ([`ChildSpec`], [`Spawn`], [`Running`]) and what comes
//! back ([`Ended`], [`ChildError`]).
//!
//! [`child!`]: crate::testing::child

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::points::{self, child_env, hex, ChildEnv};
use super::watchdog::{describe_point, Monitor, State, Wait};
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
const QUOTE_STDERR: usize = 4000;

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
        let (report_r, report_w) = sys::pipe::pipe_cloexec().map_err(spawn_err)?;
        let (command_r, command_w) = sys::pipe::pipe_cloexec().map_err(spawn_err)?;
        let (out_r, out_w) = sys::pipe::pipe_cloexec().map_err(spawn_err)?;
        let (err_r, err_w) = sys::pipe::pipe_cloexec().map_err(spawn_err)?;
        for fd in [&report_r, &out_r, &err_r] {
            sys::pipe::set_nonblocking(fd.as_fd()).map_err(spawn_err)?;
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
        cmd.env(points::ENV_FDS, format!("{rw},{cr}"));
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
        let parent = sys::proc::getpid();
        // SAFETY: the closure runs in the forked child before `exec`, where
        // only async-signal-safe calls are allowed: it makes three system
        // calls (`fcntl`, `prctl`, `getppid`) and possibly `_exit`, touches
        // no lock and allocates nothing (an `io::Error` from an errno is not
        // allocated). The two descriptors are the child's copies.
        unsafe {
            cmd.pre_exec(move || {
                sys::pipe::set_cloexec(rw, false)?;
                sys::pipe::set_cloexec(cr, false)?;
                sys::child::kill_me_when_parent_dies()?;
                if sys::child::getppid() != parent {
                    // The parent died before PR_SET_PDEATHSIG was set.
                    sys::child::exit_now(points::EXIT_ORPHANED);
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

/// A child process that is running (or stopped at a point).
///
/// Dropping it kills and reaps it (bounded): no zombie, no orphan, also
/// when the test panics.
pub struct Running {
    mon: Monitor,
    command: Option<std::fs::File>,
    desc: String,
    test: String,
    stop: Option<(String, u32)>,
    bound: Duration,
    sink: Option<Sink>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("child", &self.desc)
            .field("stopped", &self.mon.state().stopped)
            .finish()
    }
}

impl Running {
    /// The child's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.mon.pid()
    }

    /// Changes the bound of the waits that follow (for example a short
    /// one once the child is known to have started).
    pub fn set_bound(&mut self, bound: Duration) {
        self.bound = bound;
    }

    /// The points the child reported so far, in order (a point reached
    /// twice appears twice).
    pub fn points(&self) -> Vec<String> {
        let st = self.mon.state();
        st.points.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Waits (bounded) until the child has reached point `name` at least
    /// once. The child does not stop there unless it was asked to.
    ///
    /// # Errors
    ///
    /// As [`Spawn::kill_at`].
    pub fn wait_point(&mut self, name: &str) -> Result<(), ChildError> {
        let deadline = Monotonic::now().after(self.bound);
        let what = format!("reach point {name:?}");
        match self.pump(deadline, |m| m.points.iter().any(|(n, _)| n == name), &what)? {
            Wait::Done => Ok(()),
            _ => Err(self.not_reached(name)),
        }
    }

    /// Waits (bounded) until the child is stopped at its stop point and
    /// returns the point's name.
    ///
    /// # Errors
    ///
    /// As [`Spawn::kill_at`].
    ///
    /// # Panics
    ///
    /// If no stop point was set (a programming error in the test).
    pub fn wait_stopped(&mut self) -> Result<String, ChildError> {
        let (name, k) = self
            .stop
            .clone()
            .expect("wait_stopped: no stop point was set (Spawn::stop_at)");
        let deadline = Monotonic::now().after(self.bound);
        let what = format!("reach point {}", describe_point(&name, k));
        match self.pump(deadline, |m| m.stopped.is_some(), &what)? {
            Wait::Done => Ok(name),
            _ => Err(self.not_reached(&name)),
        }
    }

    /// Lets a stopped child go on past its stop point.
    ///
    /// # Errors
    ///
    /// [`ChildError::Spawn`] if the command pipe is gone (the child ended).
    pub fn resume(&mut self) -> Result<(), ChildError> {
        let r = match self.command.as_mut() {
            Some(c) => self.mon.resume(c),
            None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        };
        r.map_err(|source| ChildError::Spawn {
            child: self.desc.clone(),
            source,
        })
    }

    /// `SIGKILL`s the child (its whole process group) and reaps it.
    ///
    /// # Errors
    ///
    /// [`ChildError::Hung`] if it could not be reaped within the bound (a
    /// process stuck in the kernel); a child that had already ended by a
    /// failure reports that failure.
    pub fn kill(mut self) -> Result<Ended, ChildError> {
        let killed_at = self.mon.state().stopped.clone();
        if self.mon.status.is_some() && !self.mon.killed_by_us {
            // It ended by itself before the kill: report how.
            return self.ended_ok();
        }
        let reaped = self.mon.kill(self.bound).map_err(|e| self.io_err(e))?;
        if !reaped {
            return Err(self.hung("be reaped after SIGKILL"));
        }
        self.record_run(killed_at.clone());
        Ok(self.ended(killed_at))
    }

    /// Waits (bounded) for the child to end by itself; it must succeed.
    ///
    /// # Errors
    ///
    /// [`ChildError::Panicked`], [`ChildError::Failed`],
    /// [`ChildError::NotRun`], [`ChildError::Hung`] (also when it stays
    /// stopped at a point: resume it first).
    pub fn wait(mut self) -> Result<Ended, ChildError> {
        let deadline = Monotonic::now().after(self.bound);
        // With a condition that never holds, `pump` returns only when the
        // child ended (or fails with `Hung`).
        self.pump(deadline, |_| false, "end")?;
        self.ended_ok()
    }

    /// Waits with the watchdog: past `deadline`, the child is killed and
    /// the wait fails as `Hung`, naming what it was waited for and the
    /// last point it reached.
    fn pump(
        &mut self,
        deadline: Monotonic,
        done: impl Fn(&State) -> bool,
        what: &str,
    ) -> Result<Wait, ChildError> {
        match self.mon.pump_until(deadline, done) {
            Ok(Wait::TimedOut) if what == "run" => Ok(Wait::TimedOut),
            Ok(Wait::TimedOut) => {
                let _ = self.mon.kill(self.bound);
                self.record_run(None);
                Err(self.hung(what))
            }
            Ok(w) => Ok(w),
            Err(e) => Err(self.io_err(e)),
        }
    }

    fn record_run(&mut self, killed_at: Option<(String, u32)>) {
        if let Some(sink) = self.sink.take() {
            let points = self.mon.state().points.clone();
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(RunRecord { points, killed_at });
        }
    }

    /// The child ended by itself: success, or the failure it showed.
    fn ended_ok(&mut self) -> Result<Ended, ChildError> {
        self.record_run(None);
        if let Some(e) = self.failure() {
            return Err(e);
        }
        Ok(self.ended(None))
    }

    /// How an ended child failed, if it did.
    fn failure(&self) -> Option<ChildError> {
        let m = &self.mon;
        let (panic, began) = {
            let st = m.state();
            (st.panics.first().cloned(), st.began)
        };
        if let Some(message) = panic {
            return Some(ChildError::Panicked {
                child: self.desc.clone(),
                message,
                stderr: self.stderr(),
            });
        }
        let ok = m.status.is_some_and(|s| s.success());
        if !began {
            return Some(ChildError::NotRun {
                child: self.desc.clone(),
                test: self.test.clone(),
                status: m.status_text(),
                stderr: self.stderr(),
            });
        }
        if !ok {
            let mut status = m.status_text();
            if status.contains("SIGKILL") {
                status.push_str(
                    " not sent by shmsync::testing: did the thread that spawned it exit \
                     (PR_SET_PDEATHSIG), or the out-of-memory killer?",
                );
            }
            return Some(ChildError::Failed {
                child: self.desc.clone(),
                status,
                stderr: self.stderr(),
            });
        }
        None
    }

    fn not_reached(&mut self, name: &str) -> ChildError {
        self.record_run(None);
        self.failure().unwrap_or_else(|| ChildError::NotReached {
            child: self.desc.clone(),
            point: name.to_string(),
            status: self.mon.status_text(),
            seen: self.points(),
            stderr: self.stderr(),
        })
    }

    fn hung(&self, what: &str) -> ChildError {
        // One statement per lock: a guard in a struct literal would live
        // until the end of it, and `stderr()` locks again.
        let last_point = self.mon.state().last_point();
        ChildError::Hung {
            child: self.desc.clone(),
            waiting_for: what.to_string(),
            bound: self.bound,
            last_point,
            stderr: self.stderr(),
        }
    }

    fn io_err(&self, source: io::Error) -> ChildError {
        ChildError::Spawn {
            child: self.desc.clone(),
            source,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.mon.state().err).into_owned()
    }

    fn ended(&self, killed_at: Option<(String, u32)>) -> Ended {
        let st = self.mon.state();
        Ended {
            pid: self.pid(),
            killed: self.mon.killed_by_us,
            killed_at: killed_at.map(|(n, _)| n),
            points: st.points.iter().map(|(n, _)| n.clone()).collect(),
            stdout: String::from_utf8_lossy(&st.out).into_owned(),
            stderr: String::from_utf8_lossy(&st.err).into_owned(),
        }
    }
}

/// How a child ended, as data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ended {
    /// Its process id (now reaped).
    pub pid: u32,
    /// Whether this module killed it (at a point, at a random moment, or
    /// by [`Running::kill`]); false if it exited by itself, successfully.
    pub killed: bool,
    /// The stop point it was killed at, if it was stopped at one.
    pub killed_at: Option<String>,
    /// Every point it reached, in order (a point reached twice appears
    /// twice).
    pub points: Vec<String>,
    /// What it wrote to stdout (after libtest's `running 1 test` line).
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl Ended {
    /// The last point it reached.
    pub fn last_point(&self) -> Option<&str> {
        self.points.last().map(String::as_str)
    }
}

/// A child did not do what the test asked of it. Its `Display` (and its
/// `Debug`, so that `unwrap()` reads well) says which child, what
/// happened, and quotes the tail of the child's stderr.
#[non_exhaustive]
pub enum ChildError {
    /// A pipe or the process could not be made (or read).
    Spawn {
        /// Which child.
        child: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A thread of the child panicked.
    Panicked {
        /// Which child.
        child: String,
        /// The panic message and its location (`boom at tests/x.rs:9:5`).
        message: String,
        /// The child's stderr.
        stderr: String,
    },
    /// The child ended with a non-zero status (`process::exit(n)`) or a
    /// signal this module did not send.
    Failed {
        /// Which child.
        child: String,
        /// `exit status 7`, `signal 11`, …
        status: String,
        /// The child's stderr.
        stderr: String,
    },
    /// The child ended successfully without reaching the point the test
    /// waited for.
    NotReached {
        /// Which child.
        child: String,
        /// The point.
        point: String,
        /// How it ended.
        status: String,
        /// The points it did reach, in order.
        seen: Vec<String>,
        /// The child's stderr.
        stderr: String,
    },
    /// Watchdog: the child did not reach the point (or end) within the
    /// bound. It was killed and reaped.
    Hung {
        /// Which child.
        child: String,
        /// What it was waited for (`reach point "x"`, `end`).
        waiting_for: String,
        /// The bound that passed.
        bound: Duration,
        /// The last point it reported: where it was.
        last_point: Option<String>,
        /// The child's stderr.
        stderr: String,
    },
    /// The re-executed test binary never ran the child's code: the test
    /// name was not found by `--exact`, or the child's role was not
    /// declared before the test's other code.
    NotRun {
        /// Which child.
        child: String,
        /// The test name the binary was re-run with.
        test: String,
        /// How it ended.
        status: String,
        /// The child's stderr.
        stderr: String,
    },
}

impl ChildError {
    /// A short, stable name of the variant (`"Panicked"`, `"Hung"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            ChildError::Spawn { .. } => "Spawn",
            ChildError::Panicked { .. } => "Panicked",
            ChildError::Failed { .. } => "Failed",
            ChildError::NotReached { .. } => "NotReached",
            ChildError::Hung { .. } => "Hung",
            ChildError::NotRun { .. } => "NotRun",
        }
    }
}

impl fmt::Display for ChildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stderr = match self {
            ChildError::Spawn { child, source } => {
                return write!(f, "{child}: could not be started or read: {source}")
            }
            ChildError::Panicked {
                child,
                message,
                stderr,
            } => {
                write!(f, "{child} panicked: {message}")?;
                stderr
            }
            ChildError::Failed {
                child,
                status,
                stderr,
            } => {
                write!(f, "{child} failed: {status}")?;
                stderr
            }
            ChildError::NotReached {
                child,
                point,
                status,
                seen,
                stderr,
            } => {
                write!(
                    f,
                    "{child} ended ({status}) without reaching point {point:?}; points reached: {seen:?}"
                )?;
                stderr
            }
            ChildError::Hung {
                child,
                waiting_for,
                bound,
                last_point,
                stderr,
            } => {
                write!(
                    f,
                    "watchdog: {child} did not {waiting_for} within {bound:?} and was killed; "
                )?;
                match last_point {
                    Some(p) => write!(f, "the last point it reached was {p}")?,
                    None => write!(f, "it reached no point")?,
                }
                stderr
            }
            ChildError::NotRun {
                child,
                test,
                status,
                stderr,
            } => {
                write!(
                    f,
                    "{child} never ran its code ({status}): the test binary, re-run with \
                     `--exact {test}`, did not reach that `child!`. Call `child!` directly in \
                     the #[test] function, before any other code of the test, in a binary \
                     with the default libtest harness"
                )?;
                stderr
            }
        };
        quote_stderr(f, stderr)
    }
}

impl fmt::Debug for ChildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ChildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChildError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn quote_stderr(f: &mut fmt::Formatter<'_>, stderr: &str) -> fmt::Result {
    let s = stderr.trim_end();
    if s.is_empty() {
        return Ok(());
    }
    let mut start = s.len().saturating_sub(QUOTE_STDERR);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let cut = if start > 0 { "…" } else { "" };
    write!(f, "\n--- child stderr ---\n{cut}{}\n---", &s[start..])
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
