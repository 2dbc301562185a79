//! The parent's side of a child: every wait bounded, the child always
//! killed and reaped.
//!
//! A [`Monitor`] owns the child process. A reader thread per child drains
//! its three pipes (reports, stdout, stderr) *all the time*, not only while
//! the test waits: a child that prints or reports a lot while the test
//! does something else (waits for a lock the child holds, say) never
//! blocks on a full pipe. The thread also watches a pidfd (readable when
//! the child ends; `/proc/PID/stat` every few milliseconds before Linux
//! 5.3) and publishes everything in one [`State`] behind a mutex and a
//! condition variable.
//!
//! [`Monitor::pump_until`] is the only place that waits: on that condition
//! variable, bounded by the caller's deadline. When the child ends, its
//! whole process group is `SIGKILL`ed *before* it is reaped (the leader's
//! unreaped pid keeps the group's number from being reused), so nothing
//! it started survives it; then the reader drains what is left without
//! waiting for end of file (a grandchild might hold a pipe open) and stops.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::points::{self, Record};
use crate::sys;
use crate::sys::time::Monotonic;

/// Bytes of each of the child's stdout and stderr kept (the tail).
const KEEP_OUTPUT: usize = 1 << 20;
/// How often the reader re-checks the child when the kernel has no pidfd.
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

/// What the child reported so far.
#[derive(Default)]
pub(crate) struct State {
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
    /// The child ended (it is a zombie until the monitor reaps it).
    exited: bool,
    report_buf: Vec<u8>,
}

impl State {
    /// The last point reported, for messages.
    pub(crate) fn last_point(&self) -> Option<String> {
        self.points.last().map(|(n, k)| describe_point(n, *k))
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
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A child process and what it reported so far.
pub(crate) struct Monitor {
    proc: std::process::Child,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    /// Written once to make the reader drain what is left and stop.
    wake: Option<File>,
    /// The exit status, once reaped.
    pub(crate) status: Option<ExitStatus>,
    /// Whether this side sent the `SIGKILL`.
    pub(crate) killed_by_us: bool,
}

impl Monitor {
    /// Starts watching `proc` through the read ends of its pipes.
    pub(crate) fn new(
        proc: std::process::Child,
        report: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<Monitor> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (wake_r, wake_w) = sys::spawn::pipe_cloexec()?;
        // ENOSYS before Linux 5.3: the reader falls back to /proc.
        let pidfd = sys::spawn::pidfd_open(proc.id()).ok();
        let reader = Reader {
            shared: shared.clone(),
            pipes: [
                Some(report.into()),
                Some(stdout.into()),
                Some(stderr.into()),
            ],
            wake: Some(wake_r),
            pidfd,
            pid: proc.id(),
        };
        let mut monitor = Monitor {
            proc,
            shared,
            reader: None,
            wake: Some(wake_w.into()),
            status: None,
            killed_by_us: false,
        };
        // If the thread cannot be made, `monitor` is dropped: the child is
        // killed and reaped.
        monitor.reader = Some(
            std::thread::Builder::new()
                .name(format!("shmsync-child-{}", monitor.pid()))
                .spawn(move || reader.run())?,
        );
        Ok(monitor)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// What the child reported so far.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Waits until `done(state)`, the child ends, or `deadline`.
    pub(crate) fn pump_until(
        &mut self,
        deadline: Monotonic,
        done: impl Fn(&State) -> bool,
    ) -> io::Result<Wait> {
        loop {
            let exited = {
                let mut st = self.shared.lock();
                loop {
                    if done(&st) {
                        return Ok(Wait::Done);
                    }
                    if self.status.is_some() {
                        return Ok(Wait::Ended);
                    }
                    if st.exited {
                        break true;
                    }
                    let left = deadline.remaining();
                    if left.is_zero() {
                        break false;
                    }
                    // Without a reader (it could not start, or its poll
                    // failed), nobody reports the exit: look every few ms.
                    let reader_gone = self.reader.as_ref().map_or(true, |t| t.is_finished());
                    if reader_gone {
                        drop(st);
                        if let Some(status) = self.proc.try_wait()? {
                            self.status = Some(status);
                            self.stop_reader();
                            return Ok(if done(&self.shared.lock()) {
                                Wait::Done
                            } else {
                                Wait::Ended
                            });
                        }
                        std::thread::sleep(left.min(NO_PIDFD_SLICE));
                        st = self.shared.lock();
                        continue;
                    }
                    st = self
                        .shared
                        .changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            if !exited {
                return Ok(Wait::TimedOut);
            }
            self.reap()?;
        }
    }

    /// The child ended: kill its group, reap it, let the reader drain the
    /// pipes and stop.
    fn reap(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // The leader is a zombie, not reaped: its pid still names the group.
        let _ = sys::proc::sigkill_group(self.pid());
        self.status = Some(self.proc.wait()?);
        self.stop_reader();
        Ok(())
    }

    /// Tells the reader to drain what is in the pipes now and stop, and
    /// joins it (it only makes non-blocking reads from then on).
    fn stop_reader(&mut self) {
        if let Some(mut w) = self.wake.take() {
            let _ = w.write_all(b"w");
        }
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }

    /// `SIGKILL`s the child's process group (if it still runs) and reaps
    /// it, waiting at most `bound`. `Ok(false)` if it could not be reaped
    /// in time (a process stuck in the kernel).
    pub(crate) fn kill(&mut self, bound: Duration) -> io::Result<bool> {
        if self.status.is_none() {
            self.killed_by_us = true;
            self.shared.lock().stopped = None;
            let _ = sys::proc::sigkill_group(self.pid());
        }
        let wait = self.pump_until(Monotonic::now().after(bound), |_| false)?;
        Ok(wait == Wait::Ended)
    }

    /// Resumes a child stopped at a point (one byte on its command pipe).
    pub(crate) fn resume(&mut self, command: &mut File) -> io::Result<()> {
        command.write_all(b"c")?;
        self.shared.lock().stopped = None;
        Ok(())
    }

    /// How the child ended, for messages (`"exit status 0"`, `"signal 9
    /// (SIGKILL)"`).
    pub(crate) fn status_text(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.status {
            None => "still running".into(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(sig)) if sig == sys::spawn::SIGKILL => "signal 9 (SIGKILL)".into(),
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
        self.stop_reader();
    }
}

/// The reader thread's side.
struct Reader {
    shared: Arc<Shared>,
    /// Report, stdout, stderr; `None` once at end of file.
    pipes: [Option<File>; 3],
    wake: Option<OwnedFd>,
    pidfd: Option<OwnedFd>,
    pid: u32,
}

impl Reader {
    fn run(mut self) {
        loop {
            // poll failing means a bug or a lost descriptor: stop reading;
            // the monitor then watches the child itself.
            let finishing = self.wait_once().unwrap_or(true);
            if finishing {
                for i in 0..3 {
                    let _ = self.drain(i);
                }
                break;
            }
            if self.pipes.iter().all(Option::is_none) && self.pidfd.is_none() && self.exited() {
                break;
            }
        }
        self.shared.changed.notify_all();
    }

    fn exited(&self) -> bool {
        self.shared.lock().exited
    }

    /// One `poll`; returns whether the monitor asked to finish.
    fn wait_once(&mut self) -> io::Result<bool> {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(5);
        let mut which: Vec<usize> = Vec::with_capacity(5);
        for (i, p) in self.pipes.iter().enumerate() {
            if let Some(f) = p {
                fds.push(f.as_fd());
                which.push(i);
            }
        }
        if let Some(w) = &self.wake {
            fds.push(w.as_fd());
            which.push(3);
        }
        if let Some(p) = &self.pidfd {
            fds.push(p.as_fd());
            which.push(4);
        }
        let no_pidfd = self.pidfd.is_none() && !self.exited();
        let timeout = no_pidfd.then_some(NO_PIDFD_SLICE);
        let ready = sys::spawn::poll_readable(&fds, timeout)?;
        let ready: Vec<usize> = which
            .iter()
            .zip(ready)
            .filter(|(_, r)| *r)
            .map(|(i, _)| *i)
            .collect();
        drop(fds);
        let mut finishing = false;
        for i in ready {
            match i {
                0..=2 => self.drain(i)?,
                3 => finishing = true,
                _ => {
                    self.pidfd = None;
                    self.set_exited();
                }
            }
        }
        if no_pidfd
            && sys::proc::stat_state_and_start(self.pid)
                .is_ok_and(|s| matches!(s, None | Some((b'Z' | b'X', _))))
        {
            self.set_exited();
        }
        Ok(finishing)
    }

    fn set_exited(&self) {
        self.shared.lock().exited = true;
        self.shared.changed.notify_all();
    }

    /// Reads what pipe `i` holds now (non-blocking).
    fn drain(&mut self, i: usize) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        loop {
            let Some(f) = self.pipes[i].as_mut() else {
                return Ok(());
            };
            match f.read(&mut chunk) {
                Ok(0) => {
                    self.pipes[i] = None;
                    return Ok(());
                }
                Ok(n) => {
                    let mut st = self.shared.lock();
                    match i {
                        0 => {
                            st.report_buf.extend_from_slice(&chunk[..n]);
                            let mut buf = std::mem::take(&mut st.report_buf);
                            for r in points::parse_records(&mut buf) {
                                st.record(r);
                            }
                            st.report_buf = buf;
                        }
                        1 => keep_tail(&mut st.out, &chunk[..n]),
                        _ => keep_tail(&mut st.err, &chunk[..n]),
                    }
                    drop(st);
                    self.shared.changed.notify_all();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pipes[i] = None;
                    return Err(e);
                }
            }
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
