//! Kill points, child side: [`point`], the report channel to the parent,
//! and the child's view of its environment.
//!
//! # Protocol
//!
//! The child writes *records* to an inherited pipe: one tag byte, a `u32`
//! little-endian length, the payload (UTF-8, at most [`MAX_PAYLOAD`] bytes),
//! all in one `write(2)` of at most `PIPE_BUF` bytes, so records of several
//! threads never interleave.
//!
//! | tag | payload | meaning |
//! |---|---|---|
//! | `B` | — | the child's code started |
//! | `P` | `K:NAME` | point `NAME` reached for the `K`-th time |
//! | `S` | `K:NAME` | stopped there; blocks until resumed or killed |
//! | `X` | message | a thread of the child panicked |
//!
//! A stopped child blocks on a second inherited pipe: one byte from the
//! parent resumes it; end of file (the parent is gone) ends it at once.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::sys;

/// Environment variable naming the child's role: `hex(test),hex(site)`.
pub(crate) const ENV_ROLE: &str = "SHMSYNC_TESTING_CHILD";
/// Environment variable with the two inherited descriptors and the process
/// that handed them down: `report,command,PARENT_PID`.
pub(crate) const ENV_FDS: &str = "SHMSYNC_TESTING_FDS";
/// Environment variable with the stop point: `hex(name),K`.
pub(crate) const ENV_STOP: &str = "SHMSYNC_TESTING_STOP";
/// Environment variable with the child's arguments: `hex,hex,…`.
pub(crate) const ENV_ARGS: &str = "SHMSYNC_TESTING_ARGS";

/// Longest payload of one record (the whole record stays below `PIPE_BUF`).
pub(crate) const MAX_PAYLOAD: usize = 4000;

pub(crate) const TAG_BEGIN: u8 = b'B';
pub(crate) const TAG_POINT: u8 = b'P';
pub(crate) const TAG_STOPPED: u8 = b'S';
pub(crate) const TAG_PANIC: u8 = b'X';

/// Exit code of a child whose parent went away while it was stopped.
pub(crate) const EXIT_ORPHANED: i32 = 3;

/// Marks a kill point named `name` in code that runs in a child process.
///
/// * In a child started by [`child!`](crate::testing::child), it reports
///   "`name` reached for the K-th time" to the parent. If the parent asked
///   to stop there ([`Spawn::stop_at`](crate::testing::Spawn::stop_at),
///   [`kill_at`](crate::testing::Spawn::kill_at), a
///   [sweep](crate::testing::Sweep)), the calling thread blocks until the
///   parent kills the child or [resumes](crate::testing::Running::resume)
///   it.
/// * Anywhere else (the test itself, a program in production) it does
///   nothing and costs one load of an initialised `OnceLock`.
///
/// Names are free text (`"after the debit"`); the same name may be reached
/// many times (a loop), and each occurrence can be a target.
///
/// A library under test can call it behind its own feature
/// (`#[cfg(feature = "crash-points")] shmsync::testing::point("…")`), the
/// pattern of Samba tdb's die-at-a-hook tests.
pub fn point(name: &str) {
    let Some(child) = child_env() else {
        return;
    };
    let k = {
        let mut counts = child.counts.lock().unwrap_or_else(|e| e.into_inner());
        let k = counts.entry(name.to_string()).or_insert(0);
        *k += 1;
        *k
    };
    let payload = format!("{k}:{name}");
    child.send(TAG_POINT, &payload);
    if child
        .stop
        .as_ref()
        .is_some_and(|(n, target)| n == name && *target == k)
    {
        child.send(TAG_STOPPED, &payload);
        child.block();
    }
}

/// The child's view: who it is, where to report, where to stop.
pub(crate) struct ChildEnv {
    /// The test path the parent re-ran (`module::test`).
    pub(crate) test: String,
    /// The call site of the `child!` whose code this process runs.
    pub(crate) site: String,
    pub(crate) args: Vec<String>,
    stop: Option<(String, u32)>,
    report: File,
    command: Mutex<File>,
    counts: Mutex<HashMap<String, u32>>,
    /// Set once the child's code runs (names may be made from then on).
    pub(crate) in_body: AtomicBool,
}

static CHILD: OnceLock<Option<ChildEnv>> = OnceLock::new();

/// This process's child environment, if it is a child.
#[inline]
pub(crate) fn child_env() -> Option<&'static ChildEnv> {
    CHILD.get_or_init(read_env).as_ref()
}

/// Every variable of the protocol: read once, then removed from this
/// process's environment.
const ALL_VARS: [&str; 4] = [ENV_ROLE, ENV_FDS, ENV_STOP, ENV_ARGS];

/// Reads the protocol's variables and removes them from the environment,
/// so that no program this process starts (a grandchild: a helper
/// program, the test binary again) sees them. Only a process that finds
/// under the numbers in [`ENV_FDS`] the very pipe ends the parent made
/// (same inode numbers) adopts the descriptors: variables
/// inherited from further up (a grandchild started before the removal, or
/// by a program that copied its environment) are dropped, never obeyed —
/// their descriptor numbers mean nothing, or something else, here.
fn read_env() -> Option<ChildEnv> {
    let vars: Vec<Option<OsString>> = ALL_VARS.iter().map(std::env::var_os).collect();
    if vars.iter().all(Option::is_none) {
        return None;
    }
    for v in ALL_VARS {
        // Safe in Rust 2021; std's environment lock orders it with any
        // `Command` spawned by another thread (which copies the
        // environment under the same lock).
        std::env::remove_var(v);
    }
    let [role, fds, stop, args]: [Option<OsString>; 4] = vars.try_into().ok()?;
    let fds = fds.and_then(utf8);
    // Adopted only if both numbers hold the very pipe ends the parent made
    // (their inode numbers match): a grandchild inheriting the variables
    // finds nothing, or something else, under the numbers.
    let nums: Vec<u64> = fds
        .as_deref()
        .map(|f| f.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let handed_to_us = match nums.as_slice() {
        &[report, command, report_ino, command_ino] => {
            sys::spawn::pipe_end_inode(report as RawFd, true) == Some(report_ino)
                && sys::spawn::pipe_end_inode(command as RawFd, false) == Some(command_ino)
        }
        _ => false,
    };
    if !handed_to_us {
        return None;
    }
    let role = role?;
    let bad = |what: &str| -> ! {
        panic!("shmsync::testing: malformed {what} in this child's environment")
    };
    let role = utf8(role).unwrap_or_else(|| bad(ENV_ROLE));
    let (test, site) = role
        .split_once(',')
        .and_then(|(t, s)| Some((unhex(t)?, unhex(s)?)))
        .unwrap_or_else(|| bad(ENV_ROLE));
    let fds = fds.unwrap_or_else(|| bad(ENV_FDS));
    let nums: Vec<RawFd> = fds.split(',').filter_map(|f| f.parse().ok()).collect();
    let &[report, command, _, _] = nums.as_slice() else {
        bad(ENV_FDS)
    };
    // Check that they are what the parent made: the write end and the
    // read end of two pipes.
    for (fd, write) in [(report, true), (command, false)] {
        if !sys::spawn::is_pipe_end(fd, write) {
            bad(ENV_FDS);
        }
    }
    let stop = stop.and_then(utf8).map(|s| {
        s.split_once(',')
            .and_then(|(n, k)| Some((unhex(n)?, k.parse().ok()?)))
            .unwrap_or_else(|| bad(ENV_STOP))
    });
    let args = match args.and_then(utf8) {
        None => Vec::new(),
        Some(s) if s.is_empty() => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|a| unhex(a).unwrap_or_else(|| bad(ENV_ARGS)))
            .collect(),
    };
    // Programs the child's code may start must not inherit the channel.
    for fd in [report, command] {
        if sys::spawn::set_cloexec(fd, true).is_err() {
            bad(ENV_FDS);
        }
    }
    // SAFETY: the parent passed these two descriptors to this process for
    // this purpose, set_cloexec just proved them open, and this `OnceLock`
    // initialiser is the only place that takes them, once.
    let (report, command) = unsafe { (File::from_raw_fd(report), File::from_raw_fd(command)) };
    Some(ChildEnv {
        test,
        site,
        args,
        stop,
        report,
        command: Mutex::new(command),
        counts: Mutex::new(HashMap::new()),
        in_body: AtomicBool::new(false),
    })
}

impl ChildEnv {
    /// Writes one record; a parent that went away ends the child.
    pub(crate) fn send(&self, tag: u8, payload: &str) {
        let mut end = payload.len().min(MAX_PAYLOAD);
        while !payload.is_char_boundary(end) {
            end -= 1;
        }
        let body = &payload.as_bytes()[..end];
        let mut rec = Vec::with_capacity(5 + body.len());
        rec.push(tag);
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(body);
        if (&self.report).write_all(&rec).is_err() {
            sys::spawn::exit_now(EXIT_ORPHANED);
        }
    }

    /// Blocks the calling thread until the parent resumes it; ends the
    /// process if the parent is gone.
    fn block(&self) {
        let mut cmd = self.command.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = [0u8];
        loop {
            match cmd.read(&mut b) {
                Ok(1) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => sys::spawn::exit_now(EXIT_ORPHANED),
            }
        }
    }

    pub(crate) fn is_in_body(&self) -> bool {
        self.in_body.load(Ordering::Acquire)
    }
}

fn utf8(s: OsString) -> Option<String> {
    s.into_string().ok()
}

/// Lower-case hex of the bytes of `s` (environment values cannot carry NUL
/// or be split safely otherwise).
pub(crate) fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// One record as read by the parent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) tag: u8,
    pub(crate) payload: String,
}

/// Takes the complete records off the front of `buf`.
pub(crate) fn parse_records(buf: &mut Vec<u8>) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 5 {
        let len = u32::from_le_bytes(buf[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        if buf.len() < at + 5 + len {
            break;
        }
        out.push(Record {
            tag: buf[at],
            payload: String::from_utf8_lossy(&buf[at + 5..at + 5 + len]).into_owned(),
        });
        at += 5 + len;
    }
    buf.drain(..at);
    out
}

/// Splits a `K:NAME` payload.
pub(crate) fn split_point(payload: &str) -> (u32, &str) {
    match payload.split_once(':') {
        Some((k, name)) => (k.parse().unwrap_or(0), name),
        None => (0, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        for s in ["", "after the debit", "ünï,cødé\n:"] {
            assert_eq!(unhex(&hex(s)).as_deref(), Some(s));
        }
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn records_parse_across_partial_reads() {
        let mut wire = Vec::new();
        for (tag, p) in [(TAG_BEGIN, ""), (TAG_POINT, "1:a b"), (TAG_PANIC, "boom")] {
            wire.push(tag);
            wire.extend_from_slice(&(p.len() as u32).to_le_bytes());
            wire.extend_from_slice(p.as_bytes());
        }
        let mut buf = wire[..8].to_vec();
        let first = parse_records(&mut buf);
        assert_eq!(first.len(), 1);
        buf.extend_from_slice(&wire[8..]);
        let rest = parse_records(&mut buf);
        assert!(buf.is_empty());
        assert_eq!(rest[0].payload, "1:a b");
        assert_eq!(split_point(&rest[0].payload), (1, "a b"));
        assert_eq!(rest[1].tag, TAG_PANIC);
    }

    #[test]
    fn point_outside_a_child_does_nothing() {
        // This unit-test process is not a child: no channel, no blocking.
        assert!(child_env().is_none());
        point("nowhere");
    }
}
