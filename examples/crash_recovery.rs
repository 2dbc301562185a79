//! A process dies holding the lock; the next one repairs the value.
//!
//! ```text
//! cargo run --example crash_recovery
//! ```
//!
//! The program re-executes itself as a child that locks a two-field account,
//! moves money out of `checking`, and is `SIGKILL`ed before it can put it into
//! `savings`. The parent then locks, is told the owner died, repairs the
//! account from its journal field, marks it consistent and carries on.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

use shmsync::{LockError, ShmCell, ShmSafe};

#[derive(Clone, Copy, Debug, ShmSafe)]
#[repr(C)]
struct Account {
    checking: u64,
    savings: u64,
    /// The amount of the transfer in progress (0 when none): the journal the
    /// repair reads.
    in_flight: u64,
}

const TOTAL: u64 = 1_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("--child") => child(&args[2]),
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash_recovery: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The victim: takes the lock, starts a transfer, says so, and waits to die.
fn child(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let cell = ShmCell::<Account>::open(name)?;
    let mut acct = cell.lock().map_err(LockError::without_guard)?;
    acct.in_flight = 300;
    acct.checking -= 300; // the first half of the transfer...
    println!("debited"); // ...and the parent kills us before the second half
    loop {
        std::thread::park();
    }
}

fn parent() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("/shmsync-crash-recovery-{}", std::process::id());
    let cell = ShmCell::<Account>::create(
        &name,
        Account {
            checking: TOTAL,
            savings: 0,
            in_flight: 0,
        },
    )?;
    // Remove the name whatever happens below.
    struct Unlink<'a>(&'a str);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            let _ = ShmCell::<Account>::unlink(self.0);
        }
    }
    let _unlink = Unlink(&name);
    println!("created {name}: checking {TOTAL}, savings 0");

    let mut victim = Command::new(std::env::current_exe()?)
        .args(["--child", &name])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(victim.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    if line.trim() != "debited" {
        let _ = victim.kill();
        let _ = victim.wait();
        return Err(format!("child said {line:?} instead of \"debited\"").into());
    }
    println!(
        "child {} holds the lock and has debited 300 from checking",
        victim.id()
    );
    victim.kill()?; // SIGKILL
    let status = victim.wait()?;
    println!(
        "child {} killed ({status}) before crediting savings",
        victim.id()
    );

    let mut acct = match cell.lock() {
        Ok(_) => return Err("expected the lock to report the dead owner".into()),
        Err(LockError::OwnerDied(mut acct)) => {
            println!(
                "lock: previous owner died mid-update: checking {}, savings {}, in flight {}",
                acct.checking, acct.savings, acct.in_flight
            );
            // Repair: roll the interrupted transfer back.
            acct.checking += acct.in_flight;
            acct.in_flight = 0;
            acct.make_consistent();
            println!(
                "repaired: checking {}, savings {} (made consistent)",
                acct.checking, acct.savings
            );
            acct
        }
        Err(other) => return Err(other.without_guard().into()),
    };
    // Carry on: do the transfer properly this time.
    acct.checking -= 300;
    acct.savings += 300;
    assert_eq!(acct.checking + acct.savings, TOTAL);
    println!(
        "transfer redone: checking {}, savings {}",
        acct.checking, acct.savings
    );
    drop(acct);
    let again = cell.try_lock().map_err(LockError::without_guard)?;
    println!(
        "the lock is healthy again: checking {}, savings {}",
        again.checking, again.savings
    );
    Ok(())
}
