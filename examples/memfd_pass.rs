//! A memfd cell handed to another program over a Unix socket.
//!
//! ```text
//! cargo run --example memfd_pass
//! ```
//!
//! The parent creates an anonymous cell (`ShmCell::create_anonymous`: a
//! sealed `memfd`, no name in `/dev/shm`), makes a socket pair, and
//! re-executes itself as the child with its end of the pair (a descriptor
//! made inheritable with `shmsync::inheritable_fd`, its number passed as an
//! argument). It sends the cell's descriptor over the socket
//! (`ShmCell::send_to`, `SCM_RIGHTS`); the child receives and validates it
//! (`ShmCell::receive_from`: a memfd, sealed, our header, our type). Both
//! then add to the same counter under the cell's lock, and the parent checks
//! that no update was lost. Nothing is left behind: the memory goes away
//! with the last descriptor. Exit status 0 on success, 1 otherwise.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use shmsync::{ShmCell, ShmSafe};

/// The role of a re-executed copy.
const ROLE: &str = "SHMSYNC_MEMFD_PASS_ROLE";
/// Additions each process makes.
const ROUNDS: u64 = 10_000;
/// The bound on the child's run.
const BOUND: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, ShmSafe)]
#[repr(C)]
struct Tally {
    total: u64,
    by_parent: u64,
    by_child: u64,
}

fn add(cell: &ShmCell<Tally>, child: bool) -> Result<(), String> {
    for _ in 0..ROUNDS {
        let mut t = cell.lock().map_err(|e| e.without_guard().to_string())?;
        t.total += 1;
        if child {
            t.by_child += 1;
        } else {
            t.by_parent += 1;
        }
    }
    Ok(())
}

fn child(fd: &str) -> Result<(), String> {
    let n: i32 = fd
        .parse()
        .map_err(|_| format!("bad descriptor number {fd:?}"))?;
    // SAFETY: the parent made descriptor `n` inheritable for this program
    // and passed its number; nothing else here owns it.
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(n) });
    let cell = ShmCell::<Tally>::receive_from(&sock).map_err(|e| e.to_string())?;
    println!(
        "child {}: received {} ({:?}), adding {ROUNDS}",
        std::process::id(),
        cell.name(),
        cell.backing()
    );
    add(&cell, true)
}

fn parent() -> Result<(), String> {
    let cell = ShmCell::<Tally>::create_anonymous(Tally {
        total: 0,
        by_parent: 0,
        by_child: 0,
    })
    .map_err(|e| e.to_string())?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let theirs = shmsync::inheritable_fd(theirs.as_fd()).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg(theirs.as_raw_fd().to_string())
        .env(ROLE, "child")
        .spawn()
        .map_err(|e| e.to_string())?;
    // The child has its copy; ours would keep the socket open.
    drop(theirs);
    println!(
        "parent {}: created {}, sending it to child {}",
        std::process::id(),
        cell.name(),
        child.id()
    );
    let sent = cell.send_to(&ours).map_err(|e| e.to_string());
    let added = sent.and_then(|()| add(&cell, false));
    let deadline = Instant::now() + BOUND;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the child did not finish in time".into());
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    added?;
    if !status.success() {
        return Err(format!("the child failed: {status}"));
    }
    let t = *cell.lock().map_err(|e| e.without_guard().to_string())?;
    println!(
        "parent: total {} = {} by the parent + {} by the child",
        t.total, t.by_parent, t.by_child
    );
    if t.total != 2 * ROUNDS || t.by_parent != ROUNDS || t.by_child != ROUNDS {
        return Err(format!("lost updates: {t:?}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = match std::env::var(ROLE).as_deref() {
        Ok("child") => match std::env::args().nth(1) {
            Some(fd) => child(&fd),
            None => Err("the child needs its descriptor number".into()),
        },
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memfd_pass: {e}");
            ExitCode::FAILURE
        }
    }
}
