//! The reader of the classic "written flag" pair: creates the shared message,
//! prints every line a writer sends, and removes the segment on `end`.
//!
//! ```text
//! cargo run --example reader                 # terminal 1 (name /shmsync-demo)
//! cargo run --example writer                 # terminal 2: type lines, then `end`
//! cargo run --example reader -- -v /my-name  # another name; -v: hand-off latency
//! ```
//!
//! It sleeps in `wait_while_timeout` (no CPU while idle) and wakes once a
//! second (`--patience-ms`) to see whether the writer it last heard from is
//! still alive. A writer killed while holding the lock is reported by the
//! lock (`OwnerDied`): the reader discards the unfinished line, makes the
//! value consistent and waits for the next writer.

mod common;

use std::process::ExitCode;

fn main() -> ExitCode {
    match common::parse_args("reader", std::env::args().skip(1)) {
        Ok((name, verbose, patience)) => common::run_reader(&common::ReaderOptions {
            name,
            verbose,
            patience,
        }),
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}
