//! A counter in a file that keeps its value from one run to the next, with
//! a writer killed in the middle of an update and recovered.
//!
//! ```text
//! cargo run --example file_backed            # ./shmsync-counter.cell
//! cargo run --example file_backed -- PATH    # any path on a local filesystem
//! ```
//!
//! Each run opens (or creates) the file cell, then re-executes itself
//! twice: a *writer* that takes the lock, writes half an update and is
//! killed with `SIGKILL` while it holds the lock; and an *adder* that adds
//! one normally (it gets `OwnerDied` first if the parent has not repaired
//! yet — here the parent repairs before starting it). The parent repairs
//! the half update it finds (`OwnerDied`: roll back), adds one itself,
//! `flush`es while holding the lock and prints the counter. Run it again:
//! the count goes on. Only the file is left behind (remove it to start
//! over). Exit status 0 when every step happened as it should, 1 otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shmsync::{LockError, ShmCell, ShmSafe};

/// The role of a re-executed copy (`writer` or `adder`).
const ROLE: &str = "SHMSYNC_FILE_BACKED_ROLE";
const DEFAULT_PATH: &str = "shmsync-counter.cell";
/// The bound on every step.
const STEP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, ShmSafe)]
#[repr(C)]
struct Counter {
    /// The count.
    value: u64,
    /// Non-zero while an update is half done: the value being written.
    pending: u64,
    /// Runs of this example that completed.
    runs: u64,
}

type Cell = ShmCell<Counter>;

/// Locks, rolling back a half update left by a dead writer.
fn lock_repaired(cell: &Cell) -> Result<(shmsync::ShmGuard<'_, Counter>, bool), String> {
    match cell.lock() {
        Ok(g) => Ok((g, false)),
        Err(LockError::OwnerDied(mut g)) => {
            // The writer died between writing `pending` and `value`: the
            // update never happened.
            g.pending = 0;
            g.make_consistent();
            Ok((g, true))
        }
        Err(e) => Err(e.without_guard().to_string()),
    }
}

fn writer(path: &str) -> Result<(), String> {
    let cell = Cell::open_file(path).map_err(|e| e.to_string())?;
    let mut g = cell.lock().map_err(|e| e.without_guard().to_string())?;
    g.pending = g.value + 1;
    println!("half-way");
    // Wait to be killed (bounded: the parent kills at once).
    std::thread::sleep(STEP * 3);
    Err("the writer was not killed".into())
}

fn adder(path: &str) -> Result<(), String> {
    let cell = Cell::open_file(path).map_err(|e| e.to_string())?;
    let (mut g, _) = lock_repaired(&cell)?;
    g.pending = g.value + 1;
    g.value = g.pending;
    g.pending = 0;
    Ok(())
}

/// Runs a copy of this program in `role` on `path`; for the writer, kills
/// it once it says it is half-way.
fn run(role: &str, path: &str) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg(path)
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let outcome = if role == "writer" {
        match rx.recv_timeout(STEP) {
            Ok(line) if line == "half-way" => {
                println!(
                    "writer {}: holds the lock, half-way: killing it",
                    child.id()
                );
                Ok(())
            }
            other => Err(format!("the writer did not get half-way: {other:?}")),
        }
    } else {
        Ok(())
    };
    if role == "writer" {
        let _ = child.kill();
    }
    let deadline = std::time::Instant::now() + STEP;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(s) => break s,
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the {role} did not end in time"));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    outcome?;
    if role != "writer" && !status.success() {
        return Err(format!("the {role} failed: {status}"));
    }
    Ok(())
}

fn parent(path: &str) -> Result<(), String> {
    let cell = Cell::open_or_create_file(
        path,
        Counter {
            value: 0,
            pending: 0,
            runs: 0,
        },
    )
    .map_err(|e| format!("{path}: {e}"))?;
    let before = {
        let (g, repaired) = lock_repaired(&cell)?;
        if repaired {
            println!("a previous run left a half update: rolled back");
        }
        *g
    };
    println!(
        "{path}: counter {} after {} earlier runs",
        before.value, before.runs
    );
    run("writer", path)?;
    let (mut g, repaired) = lock_repaired(&cell)?;
    if !repaired {
        return Err("the killed writer's death was not reported".into());
    }
    println!(
        "parent: OwnerDied, rolled back the writer's half update (counter still {})",
        g.value
    );
    g.value += 1;
    drop(g);
    run("adder", path)?;
    let (mut g, _) = lock_repaired(&cell)?;
    g.runs += 1;
    // On disk, consistent: flushed while the lock is held.
    cell.flush().map_err(|e| e.to_string())?;
    let now = *g;
    drop(g);
    println!(
        "counter {} (+1 by the parent, +1 by the adder); run {} — run me again",
        now.value, now.runs
    );
    if now.value != before.value + 2 || now.pending != 0 {
        return Err(format!("unexpected value {now:?} after {before:?}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let result = match std::env::var(ROLE).as_deref() {
        Ok("writer") => writer(&path),
        Ok("adder") => adder(&path),
        _ => parent(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("file_backed: {e}");
            ExitCode::FAILURE
        }
    }
}
