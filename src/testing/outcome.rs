//! How a child ended: [`Ended`] and [`ChildError`].

use std::fmt;
use std::io;
use std::time::Duration;

use super::child::QUOTE_STDERR;

/// How a child ended, as data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ended {
    /// Its process id (now reaped).
    pub pid: u32,
    /// Whether this module killed it (at a point, at a random moment, or
    /// by [`Running::kill`](super::Running::kill)); false if it exited by itself, successfully.
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
                if seen.is_empty() {
                    // The commonest cause: points compiled out of a library
                    // whose `testing` feature the test build did not enable.
                    write!(
                        f,
                        " (if the point is in library code behind a cargo feature, \
                         enable it for the test build, e.g. `cargo test --features mylib/testing`)"
                    )?;
                }
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
