//! The writer/reader pair end to end, as two real processes, with a crash.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! The program re-executes itself twice (`std::env::current_exe()`, the role
//! in an environment variable): once as the reader, once as the writer of
//! `examples/reader.rs` and `examples/writer.rs` (the same code, from
//! `examples/common`). It sends a few lines through the shared message,
//! then makes the writer take the lock, write half a line and stop — and
//! kills it with `SIGKILL`. The reader notices (its wait times out, its
//! re-lock reports `OwnerDied`), discards the half line, makes the value
//! consistent; a second writer sends one more line and `end`, which stops
//! both. Exit status 0 when every step happened as it should, 1 otherwise;
//! the segment is removed either way.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The role a re-executed copy plays (`reader` or `writer`).
const ROLE: &str = "SHMSYNC_DEMO_ROLE";
/// For the writer role: the line on which it takes the lock and stops.
const HOLD_ON: &str = "SHMSYNC_DEMO_HOLD_ON";
/// How long each side sleeps before checking on the other.
const PATIENCE: Duration = Duration::from_millis(200);
/// The bound on every step; a step that takes longer fails the demo.
const STEP: Duration = Duration::from_secs(10);

const LINES: [&str; 3] = [
    "hello from the writer",
    "each line crosses in shared memory; nobody spins while waiting",
    "the reader prints it and clears the `written` flag",
];
const CUT_SHORT: &str = "this line is cut short: its writer is killed holding the lock";
const AFTER: &str = "a second writer, after the recovery";

fn main() -> ExitCode {
    let name = std::env::args().nth(1);
    match (std::env::var(ROLE).as_deref(), name) {
        (Ok("reader"), Some(name)) => common::run_reader(&common::ReaderOptions {
            name,
            verbose: true,
            patience: PATIENCE,
        }),
        (Ok("writer"), Some(name)) => common::run_writer(
            &common::WriterOptions {
                name,
                patience: PATIENCE,
                hold_on: std::env::var(HOLD_ON).ok().map(String::into_bytes),
            },
            std::io::stdin().lock(),
        ),
        _ => {
            let mut demo = Demo {
                name: format!("/shmsync-demo-{}", std::process::id()),
                procs: Vec::new(),
            };
            let result = demo.run();
            demo.clean_up();
            match result {
                Ok(()) => {
                    println!("demo: success");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("demo: FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A line a child printed.
enum Output {
    Stdout(String),
    Stderr(String),
}

/// A child process playing one role, its output arriving on a channel.
struct Proc {
    role: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    output: Receiver<Output>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one line to the child's stdin.
    fn send(&mut self, line: &str) -> Result<(), String> {
        println!("demo: writer pid {} ← {line:?}", self.pid());
        let stdin = self.stdin.as_mut().ok_or("stdin already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("cannot write to the {}: {e}", self.role))
    }

    /// The child's next line of output, waiting until `deadline`.
    fn next(&mut self, what: &str, deadline: Instant) -> Result<Output, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.output.recv_timeout(left) {
            Ok(out) => Ok(out),
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("the {} did not {what} within {STEP:?}", self.role))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("the {} ended before it could {what}", self.role))
            }
        }
    }

    /// Shows the child's output until a line satisfies `wanted`, at most
    /// `STEP`; returns that line.
    fn expect(&mut self, what: &str, wanted: impl Fn(&Output) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + STEP;
        loop {
            let out = self.next(what, deadline)?;
            show(self.role, &out);
            if wanted(&out) {
                let (Output::Stdout(l) | Output::Stderr(l)) = out;
                return Ok(l);
            }
        }
    }

    /// Waits (bounded) for the child to close its output and exit 0.
    fn expect_exit_ok(&mut self) -> Result<(), String> {
        self.stdin = None;
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(out) => show(self.role, &out),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("the {} did not exit within {STEP:?}", self.role))
                }
            }
        }
        // Its output is closed: it is exiting (a bounded wait in practice).
        let status = self
            .child
            .wait()
            .map_err(|e| format!("wait for the {}: {e}", self.role))?;
        if !status.success() {
            return Err(format!("the {} ended with {status}", self.role));
        }
        println!(
            "demo: {} pid {} exited with status 0",
            self.role,
            self.pid()
        );
        Ok(())
    }
}

/// Prints a child's line, indented.
fn show(role: &str, out: &Output) {
    match out {
        Output::Stderr(l) => println!("    {l}"),
        Output::Stdout(l) => println!("    {role} stdout: {l}"),
    }
}

struct Demo {
    name: String,
    procs: Vec<Proc>,
}

impl Demo {
    /// Starts this program again in `role`.
    fn spawn(&mut self, role: &'static str, hold_on: Option<&str>) -> Result<usize, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg(&self.name)
            .env(ROLE, role)
            .env_remove(HOLD_ON)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(line) = hold_on {
            cmd.env(HOLD_ON, line);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the {role}: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(Output::Stdout(l));
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(Output::Stderr(l));
            }
        });
        println!("demo: started the {role}, pid {}", child.id());
        self.procs.push(Proc {
            role,
            stdin: child.stdin.take(),
            child,
            output: rx,
        });
        Ok(self.procs.len() - 1)
    }

    fn run(&mut self) -> Result<(), String> {
        println!(
            "demo: one ShmCell<Message> named {}, a reader and a writer in two processes",
            self.name
        );
        let r = self.spawn("reader", None)?;
        self.procs[r].expect(
            "create the segment",
            |o| matches!(o, Output::Stderr(l) if l.contains("waiting for lines")),
        )?;

        println!("\ndemo: step 1 — a few lines, each handed over through shared memory");
        let w = self.spawn("writer", Some(CUT_SHORT))?;
        self.procs[w].expect(
            "connect",
            |o| matches!(o, Output::Stderr(l) if l.contains("connected")),
        )?;
        for line in LINES {
            self.hand_over(w, r, line)?;
        }

        println!("\ndemo: step 2 — the writer dies holding the lock, half-way through a line");
        self.procs[w].send(CUT_SHORT)?;
        self.procs[w].expect(
            "take the lock",
            |o| matches!(o, Output::Stderr(l) if l.contains("holding the lock")),
        )?;
        let victim = self.procs[w].pid();
        let killed = Instant::now();
        self.procs[w]
            .child
            .kill()
            .map_err(|e| format!("kill the writer: {e}"))?;
        let status = self.procs[w]
            .child
            .wait()
            .map_err(|e| format!("reap the writer: {e}"))?;
        println!("demo: sent SIGKILL to writer pid {victim} while it held the lock ({status})");
        self.procs[r].expect(
            "notice the dead writer",
            |o| matches!(o, Output::Stderr(l) if l.contains("died holding the lock")),
        )?;
        println!(
            "demo: the reader recovered {:.0} ms after the kill (its wait wakes every {} ms; \
             the lock reported OwnerDied)",
            killed.elapsed().as_secs_f64() * 1e3,
            PATIENCE.as_millis()
        );

        println!("\ndemo: step 3 — a new writer; `end` stops both");
        let w2 = self.spawn("writer", None)?;
        self.procs[w2].expect(
            "connect",
            |o| matches!(o, Output::Stderr(l) if l.contains("connected")),
        )?;
        self.hand_over(w2, r, AFTER)?;
        self.procs[w2].send("end")?;
        self.procs[w2].expect_exit_ok()?;
        self.procs[r].expect_exit_ok()?;

        let path = format!("/dev/shm{}", self.name);
        if std::path::Path::new(&path).exists() {
            return Err(format!("{path} is still there"));
        }
        println!("demo: {path} is gone: nothing left in /dev/shm");
        Ok(())
    }

    /// Sends `line` through writer `w` and checks that reader `r` prints it.
    fn hand_over(&mut self, w: usize, r: usize, line: &str) -> Result<(), String> {
        self.procs[w].send(line)?;
        // The reader reports the hand-off on stderr and prints the line on
        // stdout; the two pipes race, so collect both and show them in order.
        let reader = &mut self.procs[r];
        let deadline = Instant::now() + STEP;
        let (mut printed, mut handoff) = (None, None);
        while printed.is_none() || handoff.is_none() {
            match reader.next("print the line", deadline)? {
                Output::Stdout(l) => printed = Some(l),
                Output::Stderr(l) if l.contains("hand-off") => handoff = Some(l),
                other => show("reader", &other),
            }
        }
        let (printed, handoff) = (printed.unwrap_or_default(), handoff.unwrap_or_default());
        println!("    {handoff}");
        println!("    reader stdout: {printed}");
        if printed != line {
            return Err(format!("the reader printed {printed:?}, expected {line:?}"));
        }
        Ok(())
    }

    /// Kills and reaps what still runs; removes the segment if it is left.
    fn clean_up(&mut self) {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        let _ = common::Cell::unlink(&self.name);
    }
}
