//! A child process while it runs: [`Running`] waits for its points,
//! stops, resumes, kills and reaps it.

use std::fmt;
use std::io;
use std::time::Duration;

use super::child::{RunRecord, Sink};
use super::outcome::{ChildError, Ended};
use super::watchdog::{describe_point, Monitor, State, Wait};
use crate::sys::time::Monotonic;

/// A child process that is running (or stopped at a point).
///
/// Dropping it kills and reaps it (bounded): no zombie, no orphan, also
/// when the test panics.
pub struct Running {
    pub(super) mon: Monitor,
    pub(super) command: Option<std::fs::File>,
    pub(super) desc: String,
    pub(super) test: String,
    pub(super) stop: Option<(String, u32)>,
    pub(super) bound: Duration,
    pub(super) sink: Option<Sink>,
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
    /// As [`Spawn::kill_at`](super::Spawn::kill_at).
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
    /// As [`Spawn::kill_at`](super::Spawn::kill_at).
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
    pub(super) fn pump(
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
    pub(super) fn ended_ok(&mut self) -> Result<Ended, ChildError> {
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
