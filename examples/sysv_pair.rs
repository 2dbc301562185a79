//! The System V producer/consumer of the classic write-ups, as a
//! `ShmCell` in a `shmget` segment.
//!
//! ```text
//! cargo run --example sysv_pair                      # a built-in script
//! printf 'hello\nworld\n' | cargo run --example sysv_pair
//! ```
//!
//! The parent (the producer) makes a key with `ftok` (this program's path
//! and a project byte), creates the System V cell `{written, text}` under
//! it (`ShmCell::create_sysv`: `shmget(IPC_CREAT|IPC_EXCL)`, the header
//! validated by every opener) and re-executes itself as the consumer,
//! which opens it by the same key (`ShmCell::open_sysv`). The producer
//! writes one line at a time and sets `written`; the consumer waits for
//! `written`, prints the text and clears it; the line `end` stops both.
//! Lines come from stdin when it is not a terminal, else from a built-in
//! script. At exit the segment is removed (`IPC_RMID`, also on an error
//! path): `ipcs -m` shows nothing left. Exit status 0 on success.
//!
//! While it runs, `ipcs -m` lists the segment under its key with two
//! attachments, and `shmsync sysv list` shows its header and lock.

use std::io::{BufRead, IsTerminal};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use shmsync::{Error, ShmCell, ShmSafe, SysvKey};

/// The role of the re-executed copy.
const ROLE: &str = "SHMSYNC_SYSV_PAIR_ROLE";
/// How long either side waits for the other before giving up.
const BOUND: Duration = Duration::from_secs(20);
const TEXT: usize = 256;
const SCRIPT: &[&str] = &[
    "System V shared memory: shmget, shmat, shmdt, shmctl",
    "the kernel counts attachments (shm_nattch)",
    "and the segment outlives its processes until IPC_RMID",
    "end",
];

#[derive(Clone, Copy)]
#[repr(C)]
struct Mailbox {
    /// 1 while `text` holds a line the consumer has not read.
    written: u32,
    len: u32,
    text: [u8; TEXT],
}
// SAFETY: integers and bytes only, repr(C), every bit pattern is valid.
unsafe impl ShmSafe for Mailbox {
    const TYPE_TAG: u64 = 0x7379_7376_5f70_6169; // "sysv_pai"
}

type Cell = ShmCell<Mailbox>;

fn text_of(m: &Mailbox) -> String {
    let n = (m.len as usize).min(TEXT);
    String::from_utf8_lossy(&m.text[..n]).into_owned()
}

/// Removes the segment when the producer leaves, however it leaves.
struct RemoveOnDrop(SysvKey);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        match Cell::remove_sysv(self.0) {
            Ok(()) => println!("producer: removed the segment (IPC_RMID)"),
            Err(e) => eprintln!("sysv_pair: removing the segment: {e}"),
        }
    }
}

fn consumer(key: SysvKey) -> Result<(), String> {
    let cell = Cell::open_sysv(key).map_err(|e| e.to_string())?;
    println!(
        "consumer {}: attached {} ({} processes attached)",
        std::process::id(),
        cell.name(),
        cell.sysv_attached().unwrap_or(0)
    );
    loop {
        let g = cell.lock().map_err(|e| e.without_guard().to_string())?;
        let (mut g, waited) = g
            .wait_while_timeout(|m| m.written == 0, BOUND)
            .map_err(|e| e.without_guard().to_string())?;
        if waited.timed_out() {
            return Err("the producer wrote nothing in time".into());
        }
        let text = text_of(&g);
        println!("consumer: read {text:?}");
        g.written = 0;
        drop(g);
        cell.notify_all();
        if text == "end" {
            return Ok(());
        }
    }
}

fn produce(cell: &Cell, line: &str) -> Result<(), String> {
    let g = cell.lock().map_err(|e| e.without_guard().to_string())?;
    let (mut g, waited) = g
        .wait_while_timeout(|m| m.written != 0, BOUND)
        .map_err(|e| e.without_guard().to_string())?;
    if waited.timed_out() {
        return Err("the consumer read nothing in time".into());
    }
    // Cut at a character boundary that fits.
    let mut n = line.len().min(TEXT);
    while !line.is_char_boundary(n) {
        n -= 1;
    }
    g.text[..n].copy_from_slice(&line.as_bytes()[..n]);
    g.len = n as u32;
    g.written = 1;
    drop(g);
    cell.notify_all();
    println!("producer: wrote {:?}", &line[..n]);
    Ok(())
}

/// A key of our own: `ftok` of this program's path, with the first
/// project byte whose key is free (another run may be using one).
fn create() -> Result<(SysvKey, Cell), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    for proj in 1..=u8::MAX {
        let key = SysvKey::ftok(&exe, proj).map_err(|e| e.to_string())?;
        match Cell::create_sysv_zeroed(key) {
            Ok(cell) => return Ok((key, cell)),
            Err(Error::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("every ftok key of this program is taken".into())
}

fn producer() -> Result<(), String> {
    let lines: Vec<String> = if std::io::stdin().is_terminal() {
        SCRIPT.iter().map(|s| s.to_string()).collect()
    } else {
        let mut v: Vec<String> = std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if v.last().map(String::as_str) != Some("end") {
            v.push("end".into());
        }
        v
    };
    let (key, cell) = create()?;
    let _remove = RemoveOnDrop(key);
    println!(
        "producer {}: created {} (id {})",
        std::process::id(),
        cell.name(),
        cell.sysv_id().unwrap_or(-1)
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg(key.raw().to_string())
        .env(ROLE, "consumer")
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut produced = Ok(());
    for line in &lines {
        produced = produce(&cell, line);
        if produced.is_err() || line == "end" {
            break;
        }
    }
    let deadline = Instant::now() + BOUND;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the consumer did not finish in time".into());
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    produced?;
    if !status.success() {
        return Err(format!("the consumer failed: {status}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = match std::env::var(ROLE).as_deref() {
        Ok("consumer") => match std::env::args().nth(1).map(|k| k.parse::<i32>()) {
            Some(Ok(k)) => SysvKey::new(k)
                .map_err(|e| e.to_string())
                .and_then(consumer),
            _ => Err("the consumer needs the key".into()),
        },
        _ => producer(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sysv_pair: {e}");
            ExitCode::FAILURE
        }
    }
}
