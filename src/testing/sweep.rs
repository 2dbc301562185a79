//! The die-at-every-point sweep: one scenario, run once without a kill and
//! then once per point the child declares, the child killed exactly there
//! each time.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::child::{ChildSpec, RunRecord, Sink, Spawn};
use super::watchdog::describe_point;

impl ChildSpec {
    /// A sweep over this child's kill points (see [`Sweep`]).
    pub fn sweep(&self) -> Sweep {
        Sweep {
            spec: *self,
            every_occurrence: false,
            expected: None,
            bound: super::default_bound(),
        }
    }
}

/// Runs a scenario once per kill point of a child — Samba tdb's
/// die-at-every-hook pattern — and collects what the parent saw each time.
///
/// 1. **Discovery**: the scenario runs once with the child left to finish
///    ([`SweepRun::point`] is `None`); the points the child reports, in
///    order, are its declared points.
/// 2. **One run per point**: the scenario runs again for each point, its
///    child killed exactly there (the first occurrence of each name by
///    default; every occurrence with
///    [`every_occurrence`](Sweep::every_occurrence)).
///
/// The scenario builds fresh state each time (a new
/// [`TestName`](crate::testing::TestName)), starts the child with
/// [`SweepRun::child`]`.arg(..).run()` — exactly once per run: the sweep
/// checks it, and that the child died at the point — and returns what it
/// saw after recovery (typically [`recover`](crate::testing::recover)'s
/// [`Seen`](crate::testing::Seen)). A panic or an `Err` in one run is
/// recorded for that point and the sweep goes on.
///
/// ```no_run
/// # use shmsync::testing::{self, TestName};
/// # use shmsync::ShmCell;
/// #[test]
/// fn counter_survives_every_point() {
///     let bump = testing::child!(|ctx| {
///         let cell = ShmCell::<u64>::open(ctx.arg(0)).unwrap();
///         let mut n = cell.lock().unwrap();
///         testing::point("locked");
///         *n += 1;
///         testing::point("bumped");
///     });
///     bump.sweep()
///         .expect_points(["locked", "bumped"])
///         .run(|run| -> Result<_, Box<dyn std::error::Error>> {
///             let name = TestName::new("counter");
///             let cell = ShmCell::<u64>::create(&name, 0)?;
///             run.child().arg(&name).run()?;
///             Ok(testing::recover(&cell, |_| {})?)
///         })
///         .assert_ok();
/// }
/// # fn main() {}
/// ```
#[must_use = "a Sweep does nothing until it is run"]
#[derive(Debug)]
pub struct Sweep {
    spec: ChildSpec,
    every_occurrence: bool,
    expected: Option<Vec<String>>,
    bound: Duration,
}

impl Sweep {
    /// Kills at every occurrence of every point (a point in a loop is a
    /// target each time round), not only at the first of each name.
    pub fn every_occurrence(mut self) -> Sweep {
        self.every_occurrence = true;
        self
    }

    /// The point names the child must declare, in order of first
    /// occurrence; a renamed, removed or new point fails the sweep (so a
    /// sweep cannot silently shrink).
    pub fn expect_points<I, S>(mut self, names: I) -> Sweep
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.expected = Some(names.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// The bound of every wait of every run (see [`Spawn::bound`]).
    pub fn bound(mut self, bound: Duration) -> Sweep {
        self.bound = bound;
        self
    }

    /// Runs the sweep (see [`Sweep`]).
    pub fn run<T, E, F>(self, mut scenario: F) -> SweepReport<T>
    where
        E: fmt::Debug,
        F: FnMut(&SweepRun) -> Result<T, E>,
    {
        let child = format!(
            "child {:?} of test `{}`",
            self.spec.label(),
            self.spec.test()
        );
        let mut report = SweepReport {
            child,
            completed: Err("not run".into()),
            outcomes: Vec::new(),
            problem: None,
        };
        let (completed, records) = self.one_run(&mut scenario, None);
        report.completed = completed;
        if let Err(e) = &report.completed {
            report.problem = Some(format!("the run without a kill failed: {e}"));
            return report;
        }
        let points = match records.as_slice() {
            [one] => one.points.clone(),
            _ => {
                report.problem = Some(format!(
                    "the scenario must start its child exactly once per run \
                     (`run.child()…run()`); it started it {} times",
                    records.len()
                ));
                return report;
            }
        };
        let mut names: Vec<String> = Vec::new();
        for (n, _) in &points {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        if names.is_empty() {
            report.problem = Some("the child reached no point (testing::point)".into());
            return report;
        }
        if let Some(expected) = &self.expected {
            if *expected != names {
                report.problem = Some(format!(
                    "the child declared points {names:?}, the test expects {expected:?}"
                ));
            }
        }
        let targets: Vec<(String, u32)> = if self.every_occurrence {
            points
        } else {
            names.into_iter().map(|n| (n, 1)).collect()
        };
        for target in targets {
            let (result, records) = self.one_run(&mut scenario, Some(target.clone()));
            let result = result.and_then(|value| match records.as_slice() {
                [r] if r.killed_at.as_ref() == Some(&target) => Ok(value),
                [r] => Err(format!(
                    "the child was not killed at the point (it reached {:?})",
                    r.points.iter().map(|(n, _)| n).collect::<Vec<_>>()
                )),
                _ => Err(format!(
                    "the scenario must start its child exactly once per run; it started it {} times",
                    records.len()
                )),
            });
            report.outcomes.push(PointOutcome {
                point: target.0,
                occurrence: target.1,
                result,
            });
        }
        report
    }

    fn one_run<T, E, F>(
        &self,
        scenario: &mut F,
        target: Option<(String, u32)>,
    ) -> (Result<T, String>, Vec<RunRecord>)
    where
        E: fmt::Debug,
        F: FnMut(&SweepRun) -> Result<T, E>,
    {
        let sink: Sink = Arc::new(Mutex::new(Vec::new()));
        let run = SweepRun {
            spec: self.spec,
            target,
            bound: self.bound,
            sink: sink.clone(),
        };
        let result = match panic::catch_unwind(AssertUnwindSafe(|| scenario(&run))) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(p) => Err(p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .map_or_else(|| "panicked".to_string(), |m| format!("panicked: {m}"))),
        };
        drop(run);
        let records = std::mem::take(&mut *sink.lock().unwrap_or_else(|e| e.into_inner()));
        (result, records)
    }
}

/// One run of a [`Sweep`]'s scenario.
#[derive(Debug)]
pub struct SweepRun {
    spec: ChildSpec,
    target: Option<(String, u32)>,
    bound: Duration,
    sink: Sink,
}

impl SweepRun {
    /// The point the child will be killed at in this run; `None` in the
    /// discovery run, where it finishes.
    pub fn point(&self) -> Option<&str> {
        self.target.as_ref().map(|(n, _)| n.as_str())
    }

    /// Which occurrence of [`point`](SweepRun::point) (from 1).
    pub fn occurrence(&self) -> u32 {
        self.target.as_ref().map_or(0, |(_, k)| *k)
    }

    /// The child, set up for this run: add arguments, then
    /// [`run`](Spawn::run) it (killed at this run's point, or left to
    /// finish in the discovery run).
    pub fn child(&self) -> Spawn {
        let s = self
            .spec
            .command()
            .bound(self.bound)
            .sink(self.sink.clone());
        match &self.target {
            Some((name, k)) => s.stop_at_nth(name, *k),
            None => s,
        }
    }
}

/// What one run of a sweep saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PointOutcome<T> {
    /// The point the child was killed at.
    pub point: String,
    /// Which occurrence of it (from 1).
    pub occurrence: u32,
    /// What the scenario returned, or why that run failed.
    pub result: Result<T, String>,
}

/// Everything a [`Sweep`] saw, point by point.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SweepReport<T> {
    /// Which child was swept.
    pub child: String,
    /// The discovery run (the child left to finish).
    pub completed: Result<T, String>,
    /// One entry per point, in the order the child reached them.
    pub outcomes: Vec<PointOutcome<T>>,
    /// What made the sweep itself fail (discovery, a point list that does
    /// not match [`expect_points`](Sweep::expect_points)).
    pub problem: Option<String>,
}

impl<T> SweepReport<T> {
    /// The points swept, in order.
    pub fn points(&self) -> Vec<&str> {
        self.outcomes.iter().map(|o| o.point.as_str()).collect()
    }

    /// The runs that failed.
    pub fn failures(&self) -> Vec<&PointOutcome<T>> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }

    /// Whether discovery and every run succeeded.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
            && self.completed.is_ok()
            && !self.outcomes.is_empty()
            && self.failures().is_empty()
    }

    /// The value each run returned, by point.
    ///
    /// # Panics
    ///
    /// As [`assert_ok`](SweepReport::assert_ok).
    pub fn values(&self) -> Vec<(&str, &T)> {
        if !self.is_ok() {
            panic!("{self}");
        }
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok().map(|v| (o.point.as_str(), v)))
            .collect()
    }

    /// Panics with the whole report unless [`is_ok`](SweepReport::is_ok);
    /// prints what was done otherwise: "killed at each of the N points
    /// (…); the scenario's own checks passed after every kill". The sweep
    /// checks nothing by itself: a scenario that asserts nothing passes.
    ///
    /// # Panics
    ///
    /// If any run failed, or discovery did.
    pub fn assert_ok(&self) -> &Self {
        if !self.is_ok() {
            panic!("{self}");
        }
        println!("{self}");
        self
    }
}

impl<T> fmt::Display for SweepReport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(
                f,
                "{}: killed at each of the {} points ({}); the scenario's own checks passed after every kill",
                self.child,
                self.outcomes.len(),
                self.outcomes
                    .iter()
                    .map(|o| describe_point(&o.point, o.occurrence))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        write!(
            f,
            "{}: sweep failed: {} of {} points failed",
            self.child,
            self.failures().len(),
            self.outcomes.len()
        )?;
        if let Some(p) = &self.problem {
            write!(f, "\n  problem: {p}")?;
        }
        if let Err(e) = &self.completed {
            write!(f, "\n  run without a kill: {e}")?;
        }
        for o in &self.outcomes {
            let at = describe_point(&o.point, o.occurrence);
            match &o.result {
                Ok(_) => write!(f, "\n  ok    {at}")?,
                Err(e) => write!(f, "\n  FAIL  {at}: {e}")?,
            }
        }
        Ok(())
    }
}
