//! What the `writer`, `reader` and `demo` examples share: the message that
//! lives in shared memory and the two loops. Included with `mod common;`.
//!
//! The protocol is the classic "written flag": the reader sleeps while
//! `written == 0`; the writer sleeps while `written == 1`, copies a line in,
//! sets the flag and notifies; the reader prints the line, clears the flag
//! and notifies. Both sleep in `wait_while_timeout` slices: nothing spins,
//! and at each timeout a side checks that the other is still alive. A side
//! that died holding the lock is reported by the lock itself (`OwnerDied`).
#![allow(dead_code)]

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use shmsync::{Error, LockError, ShmCell, ShmGuard, ShmSafe};

/// The name both sides use when none is given.
pub const DEFAULT_NAME: &str = "/shmsync-demo";
/// Bytes one line may have (without its newline).
pub const CAPACITY: usize = 256;
/// How long a side sleeps before it checks on the other side.
pub const PATIENCE: Duration = Duration::from_secs(1);

/// The shared value: one line in flight.
#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
pub struct Message {
    /// `1` while a line waits for the reader, `0` when the buffer is free.
    pub written: u32,
    /// Bytes of `text` in use (≤ `CAPACITY`).
    pub len: u32,
    /// The reader that serves this segment, 0 if none.
    pub reader_pid: u32,
    /// The writer that last wrote, 0 if none.
    pub writer_pid: u32,
    /// `CLOCK_MONOTONIC` in nanoseconds when the line was published (the
    /// reader prints the hand-off latency from it).
    pub sent_ns: u64,
    /// The line's bytes, not NUL-terminated.
    pub text: [u8; CAPACITY],
}

impl Message {
    pub const EMPTY: Message = Message {
        written: 0,
        len: 0,
        reader_pid: 0,
        writer_pid: 0,
        sent_ns: 0,
        text: [0; CAPACITY],
    };

    /// The line, with `len` clamped to the buffer (a dead writer may have
    /// left anything).
    pub fn line(&self) -> &[u8] {
        &self.text[..(self.len as usize).min(CAPACITY)]
    }
}

pub type Cell = ShmCell<Message>;
type Guard<'a> = ShmGuard<'a, Message>;

/// `CLOCK_MONOTONIC` now, in nanoseconds (the same clock in every process).
pub fn monotonic_ns() -> u64 {
    // SAFETY: all-zero is a valid timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether process `pid` is alive (a zombie is not): `/proc/PID/stat`.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => false,
    }
}

/// Shown for a lock error that ends a side.
fn lock_failed(who: &str, e: LockError<Guard<'_>>) -> ExitCode {
    eprintln!("{who}: cannot lock the message: {}", e.without_guard());
    ExitCode::FAILURE
}

/// Options of the reader.
pub struct ReaderOptions {
    pub name: String,
    /// Print each line's hand-off latency on stderr.
    pub verbose: bool,
    pub patience: Duration,
}

/// The reader: creates (or takes over) the segment, prints every line it
/// receives on stdout until `end`, then removes the segment.
pub fn run_reader(opts: &ReaderOptions) -> ExitCode {
    let me = std::process::id();
    let name = opts.name.as_str();
    let cell = match Cell::open_or_create(name, Message::EMPTY) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reader: cannot create {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Claim the segment: refuse if another reader serves it, discard what a
    // dead reader or writer left behind.
    let mut msg = match cell.lock() {
        Ok(g) => g,
        Err(LockError::OwnerDied(g)) => {
            eprintln!("reader: a process died holding the lock of {name}; starting afresh");
            g.make_consistent();
            g
        }
        Err(e) => return lock_failed("reader", e),
    };
    if msg.reader_pid != 0 && msg.reader_pid != me && pid_alive(msg.reader_pid) {
        eprintln!(
            "reader: another reader (pid {}) already serves {name}",
            msg.reader_pid
        );
        return ExitCode::FAILURE;
    }
    *msg = Message {
        reader_pid: me,
        ..Message::EMPTY
    };
    eprintln!("reader: created {name}, waiting for lines (pid {me})");

    let mut stdout = std::io::stdout().lock();
    let mut count = 0u64;
    let code = loop {
        msg = match msg.wait_while_timeout(|m| m.written == 0, opts.patience) {
            Ok((mut m, timeout)) if timeout.timed_out() => {
                // Idle: is the writer we last heard from still there?
                if m.writer_pid != 0 && !pid_alive(m.writer_pid) {
                    eprintln!(
                        "reader: writer pid {} is gone without sending `end`; waiting for another writer",
                        m.writer_pid
                    );
                    m.writer_pid = 0;
                }
                m
            }
            Ok((mut m, _)) => {
                let latency_ns = monotonic_ns().saturating_sub(m.sent_ns);
                let (line, writer) = (m.line().to_vec(), m.writer_pid);
                m.written = 0;
                drop(m);
                cell.notify_all();
                if line == b"end" {
                    break ExitCode::SUCCESS;
                }
                count += 1;
                if opts.verbose {
                    eprintln!(
                        "reader: line {count} from writer pid {writer}, {} bytes, hand-off {:.1} µs",
                        line.len(),
                        latency_ns as f64 / 1e3
                    );
                }
                let printed = stdout
                    .write_all(&line)
                    .and_then(|()| stdout.write_all(b"\n"))
                    .and_then(|()| stdout.flush());
                if let Err(e) = printed {
                    eprintln!("reader: cannot write to stdout: {e}");
                    break ExitCode::FAILURE;
                }
                match cell.lock() {
                    Ok(m) => m,
                    Err(LockError::OwnerDied(m)) => recover_from_writer(m),
                    Err(e) => break lock_failed("reader", e),
                }
            }
            // The writer died holding the lock, half-way through a line.
            Err(LockError::OwnerDied(m)) => recover_from_writer(m),
            Err(e) => break lock_failed("reader", e),
        };
    };
    drop(cell);
    match Cell::unlink(name) {
        Ok(()) | Err(Error::NotFound { .. }) => {}
        Err(e) => {
            eprintln!("reader: cannot remove {name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if code == ExitCode::SUCCESS {
        eprintln!("reader: got `end` after {count} lines; removed {name}");
    }
    code
}

/// Discards the unfinished line of a writer that died holding the lock and
/// marks the value consistent.
fn recover_from_writer(mut m: Guard<'_>) -> Guard<'_> {
    eprintln!(
        "reader: writer pid {} died holding the lock; discarded its unfinished line ({} bytes) and made the value consistent",
        m.writer_pid,
        m.line().len()
    );
    m.written = 0;
    m.len = 0;
    m.writer_pid = 0;
    m.make_consistent();
    m
}

/// Options of the writer.
pub struct WriterOptions {
    pub name: String,
    pub patience: Duration,
    /// Demo only: on this line, take the lock, write half of it and stop
    /// (until killed) — a writer dying mid-update.
    pub hold_on: Option<Vec<u8>>,
}

/// The writer: opens the segment and sends every line of `input` (refusing
/// lines longer than `CAPACITY`); `end`, or the end of `input`, stops both.
pub fn run_writer(opts: &WriterOptions, mut input: impl BufRead) -> ExitCode {
    let me = std::process::id();
    let name = opts.name.as_str();
    let cell = match Cell::open(name) {
        Ok(c) => c,
        Err(Error::NotFound { .. }) => {
            eprintln!("writer: no segment {name}: start the reader first (cargo run --example reader -- {name})");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("writer: cannot open {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reader = match lock_as_writer(&cell) {
        Ok(m) => m.reader_pid,
        Err(code) => return code,
    };
    eprintln!("writer: connected to {name} (pid {me}); reader is pid {reader}");

    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        let line: &[u8] = match input.read_until(b'\n', &mut buf) {
            Ok(0) => b"end", // end of input stops the reader too
            Ok(_) => buf.strip_suffix(b"\n").unwrap_or(&buf),
            Err(e) => {
                eprintln!("writer: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        number += 1;
        if line.len() > CAPACITY {
            eprintln!(
                "writer: line {number} is {} bytes, longer than the {CAPACITY}-byte buffer: refused, not sent",
                line.len()
            );
            continue;
        }
        if opts.hold_on.as_deref() == Some(line) {
            hold(&cell, line);
        }
        if let Err(code) = send(&cell, line, opts.patience) {
            return code;
        }
        if line == b"end" {
            return ExitCode::SUCCESS;
        }
    }
}

/// Waits for the buffer to be free, publishes `line`, notifies.
fn send(cell: &Cell, line: &[u8], patience: Duration) -> Result<(), ExitCode> {
    let me = std::process::id();
    let mut m = lock_as_writer(cell)?;
    let mut m = loop {
        m = match m.wait_while_timeout(|m| m.written != 0, patience) {
            Ok((m, timeout)) if timeout.timed_out() => {
                if !pid_alive(m.reader_pid) {
                    eprintln!(
                        "writer: reader pid {} is gone; nobody reads {} any more",
                        m.reader_pid,
                        cell.name()
                    );
                    return Err(ExitCode::FAILURE);
                }
                m
            }
            Ok((m, _)) => break m,
            Err(LockError::OwnerDied(m)) => writer_recover(cell, m)?,
            Err(e) => return Err(lock_failed("writer", e)),
        };
    };
    m.text[..line.len()].copy_from_slice(line);
    m.len = line.len() as u32;
    m.writer_pid = me;
    m.sent_ns = monotonic_ns();
    m.written = 1;
    drop(m);
    cell.notify_all();
    Ok(())
}

/// Locks for the writer; an owner death is recovered by [`writer_recover`].
fn lock_as_writer(cell: &Cell) -> Result<Guard<'_>, ExitCode> {
    match cell.lock() {
        Ok(m) => Ok(m),
        Err(LockError::OwnerDied(m)) => writer_recover(cell, m),
        Err(e) => Err(lock_failed("writer", e)),
    }
}

/// A process died holding the lock. A line is only ever flagged complete,
/// so the value needs no repair: make it consistent (usable by the next
/// reader too), and give up if it was the reader that died.
fn writer_recover<'a>(cell: &Cell, m: Guard<'a>) -> Result<Guard<'a>, ExitCode> {
    m.make_consistent();
    if pid_alive(m.reader_pid) {
        eprintln!("writer: another process died holding the lock; made the value consistent");
        Ok(m)
    } else {
        eprintln!(
            "writer: reader pid {} died holding the lock; nobody reads {} any more",
            m.reader_pid,
            cell.name()
        );
        Err(ExitCode::FAILURE)
    }
}

/// Demo only: takes the lock, writes half of `line`, says so and stops.
fn hold(cell: &Cell, line: &[u8]) -> ! {
    let Ok(mut m) = lock_as_writer(cell) else {
        std::process::exit(1);
    };
    let half = line.len() / 2;
    m.text[..half].copy_from_slice(&line[..half]);
    m.len = half as u32;
    m.writer_pid = std::process::id();
    eprintln!(
        "writer: holding the lock half-way through a line ({half} of {} bytes written)",
        line.len()
    );
    loop {
        std::thread::park();
    }
}

/// Parses `[-v|--verbose] [--patience-ms N] [NAME]`.
pub fn parse_args(
    program: &str,
    args: impl Iterator<Item = String>,
) -> Result<(String, bool, Duration), String> {
    let (mut name, mut verbose, mut patience) = (None, false, PATIENCE);
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-v" | "--verbose" => verbose = true,
            "--patience-ms" => {
                let ms = args
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("--patience-ms needs a number of milliseconds")?;
                patience = Duration::from_millis(ms.max(1));
            }
            "-h" | "--help" => {
                // Asked for: the usage on stdout, and success.
                println!(
                    "usage: {program} [-v|--verbose] [--patience-ms N] [NAME]   (NAME defaults to {DEFAULT_NAME})"
                );
                std::process::exit(0);
            }
            _ if name.is_none() && !a.starts_with('-') => name = Some(a),
            _ => return Err(format!("{program}: unexpected argument {a:?} (try --help)")),
        }
    }
    Ok((
        name.unwrap_or_else(|| DEFAULT_NAME.to_string()),
        verbose,
        patience,
    ))
}
