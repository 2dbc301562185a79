//! The parent's side of a child: every wait bounded, the child always
//! killed and reaped.
//!
//! A [`Monitor`] owns the child process and the read ends of its three
//! pipes (reports, stdout, stderr). [`Monitor::pump_until`] is the only
//! place that waits: one `poll(2)` over the pipes and a pidfd (which turns
//! readable when the child ends), with the caller's deadline as timeout,
//! reading whatever arrived so that a chatty child never blocks on a full
//! pipe. When the child ends, its whole process group is `SIGKILL`ed
//! *before* it is reaped (the leader's unreaped pid keeps the group's
//! number from being reused), so nothing it started survives it; then the
//! pipes are drained without waiting for end of file (a grandchild could
//! hold them open).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitStatus;
use std::time::Duration;

use super::points::{self, Record};
use crate::sys;
use crate::sys::time::Monotonic;

/// Bytes of each of the child's stdout and stderr kept (the tail).
const KEEP_OUTPUT: usize = 1 << 20;
/// How often a wait re-checks the child when the kernel has no pidfd.
const NO_PIDFD_SLICE: Duration = Duration::from_millis(5);

/// How a bounded wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The condition became true.
    Done,
    /// The child ended (it is reaped) before the condition became true.
    Ended,
    /// The deadline passed; the child still runs.
    TimedOut,
}

/// A child process and what it reported so far.
pub(crate) struct Monitor {
    proc: std::process::Child,
    pidfd: Option<OwnedFd>,
    report: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    report_buf: Vec<u8>,
    pub(crate) out: Vec<u8>,
    pub(crate) err: Vec<u8>,
    /// The child's code started (`B`).
    pub(crate) began: bool,
    /// Every point reached, with its occurrence, in the order reported.
    pub(crate) points: Vec<(String, u32)>,
    /// The point the child is stopped at now.
    pub(crate) stopped: Option<(String, u32)>,
    /// Panic messages of the child's threads.
    pub(crate) panics: Vec<String>,
    /// The exit status, once reaped.
    pub(crate) status: Option<ExitStatus>,
    /// Whether this side sent the `SIGKILL`.
    pub(crate) killed_by_us: bool,
}

impl Monitor {
    pub(crate) fn new(
        proc: std::process::Child,
        report: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Monitor {
        // ENOSYS before Linux 5.3: fall back to checking every few ms.
        let pidfd = sys::child::pidfd_open(proc.id()).ok();
        Monitor {
            proc,
            pidfd,
            report: Some(report.into()),
            stdout: Some(stdout.into()),
            stderr: Some(stderr.into()),
            report_buf: Vec::new(),
            out: Vec::new(),
            err: Vec::new(),
            began: false,
            points: Vec::new(),
            stopped: None,
            panics: Vec::new(),
            status: None,
            killed_by_us: false,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Reads and waits until `done(self)`, the child ends, or `deadline`.
    pub(crate) fn pump_until(
        &mut self,
        deadline: Monotonic,
        done: impl Fn(&Monitor) -> bool,
    ) -> io::Result<Wait> {
        loop {
            if done(self) {
                return Ok(Wait::Done);
            }
            if self.status.is_some() {
                return Ok(Wait::Ended);
            }
            let left = deadline.remaining();
            if left.is_zero() {
                return Ok(Wait::TimedOut);
            }
            let (ready, exited) = self.poll(left)?;
            for which in ready {
                self.read_from(which)?;
            }
            if exited {
                self.reap()?;
            }
        }
    }

    /// One `poll`: which pipes are readable, and whether the child ended.
    fn poll(&self, left: Duration) -> io::Result<(Vec<usize>, bool)> {
        let pipes = [&self.report, &self.stdout, &self.stderr];
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(4);
        let mut which = Vec::with_capacity(4);
        for (i, p) in pipes.iter().enumerate() {
            if let Some(f) = p {
                fds.push(f.as_fd());
                which.push(i);
            }
        }
        let slice = match &self.pidfd {
            Some(pidfd) => {
                fds.push(pidfd.as_fd());
                left
            }
            None => left.min(NO_PIDFD_SLICE),
        };
        let ready = sys::pipe::poll_readable(&fds, slice)?;
        let readable: Vec<usize> = which
            .iter()
            .zip(&ready)
            .filter(|(_, r)| **r)
            .map(|(i, _)| *i)
            .collect();
        let exited = match &self.pidfd {
            Some(_) => ready[ready.len() - 1],
            // Without a pidfd, read the state from /proc (a zombie has
            // ended but is not reaped yet).
            None => self.exited_without_pidfd(),
        };
        Ok((readable, exited))
    }

    fn exited_without_pidfd(&self) -> bool {
        sys::proc::stat_state_and_start(self.pid())
            .map(|s| matches!(s, None | Some((b'Z' | b'X', _))))
            .unwrap_or(false)
    }

    /// Reads what pipe `which` holds now (non-blocking).
    fn read_from(&mut self, which: usize) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        loop {
            let pipe = match which {
                0 => &mut self.report,
                1 => &mut self.stdout,
                _ => &mut self.stderr,
            };
            let Some(f) = pipe.as_mut() else {
                return Ok(());
            };
            match f.read(&mut chunk) {
                Ok(0) => {
                    *pipe = None;
                    return Ok(());
                }
                Ok(n) => match which {
                    0 => {
                        self.report_buf.extend_from_slice(&chunk[..n]);
                        for r in points::parse_records(&mut self.report_buf) {
                            self.record(r);
                        }
                    }
                    1 => keep_tail(&mut self.out, &chunk[..n]),
                    _ => keep_tail(&mut self.err, &chunk[..n]),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn record(&mut self, r: Record) {
        match r.tag {
            points::TAG_BEGIN => self.began = true,
            points::TAG_POINT => {
                let (k, name) = points::split_point(&r.payload);
                self.points.push((name.to_string(), k));
            }
            points::TAG_STOPPED => {
                let (k, name) = points::split_point(&r.payload);
                self.stopped = Some((name.to_string(), k));
            }
            points::TAG_PANIC => self.panics.push(r.payload),
            _ => {}
        }
    }

    /// The child ended (or must be treated so): kill its group, reap it,
    /// drain the pipes.
    fn reap(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // The leader is a zombie, not reaped: its pid still names the group.
        let _ = sys::child::sigkill_group(self.pid());
        self.status = Some(self.proc.wait()?);
        for which in 0..3 {
            self.read_from(which)?;
        }
        Ok(())
    }

    /// `SIGKILL`s the child's process group (if it still runs) and reaps
    /// it, waiting at most `bound`. `Ok(false)` if it could not be reaped
    /// in time (a process stuck in the kernel).
    pub(crate) fn kill(&mut self, bound: Duration) -> io::Result<bool> {
        if self.status.is_none() {
            self.killed_by_us = true;
            self.stopped = None;
            let _ = sys::child::sigkill_group(self.pid());
        }
        let wait = self.pump_until(Monotonic::now().after(bound), |_| false)?;
        Ok(wait == Wait::Ended)
    }

    /// Resumes a child stopped at a point (one byte on its command pipe).
    pub(crate) fn resume(&mut self, command: &mut File) -> io::Result<()> {
        use std::io::Write;
        command.write_all(b"c")?;
        self.stopped = None;
        Ok(())
    }

    /// The last point reported, for messages.
    pub(crate) fn last_point(&self) -> Option<String> {
        self.points.last().map(|(n, k)| describe_point(n, *k))
    }

    /// How the child ended, for messages (`"exit status 0"`, `"signal 9
    /// (SIGKILL)"`).
    pub(crate) fn status_text(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.status {
            None => "still running".into(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(sig)) if sig == sys::child::SIGKILL => "signal 9 (SIGKILL)".into(),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => format!("{s}"),
            },
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Never leave a zombie or an orphan: kill and reap, bounded. A
        // process that cannot be reaped within the bound is stuck in the
        // kernel; nothing more can be done from here.
        if self.status.is_none() {
            let _ = self.kill(super::default_bound());
        }
    }
}

/// `name`, or `name (#K)` for a later occurrence.
pub(crate) fn describe_point(name: &str, k: u32) -> String {
    if k <= 1 {
        format!("{name:?}")
    } else {
        format!("{name:?} (#{k})")
    }
}

fn keep_tail(buf: &mut Vec<u8>, more: &[u8]) {
    buf.extend_from_slice(more);
    if buf.len() > KEEP_OUTPUT {
        let cut = buf.len() - KEEP_OUTPUT;
        buf.drain(..cut);
    }
}
