//! The writer of the classic "written flag" pair: sends each line of stdin
//! to the reader through the shared message; `end` (or the end of input)
//! stops both.
//!
//! ```text
//! cargo run --example reader        # terminal 1
//! cargo run --example writer        # terminal 2: type lines, then `end`
//! printf 'one\ntwo\nend\n' | cargo run --example writer -- /shmsync-demo
//! ```
//!
//! A line longer than the buffer (256 bytes) is refused with a message, not
//! truncated. While the reader has not taken the previous line the writer
//! sleeps in `wait_while_timeout`, waking once a second (`--patience-ms`) to
//! check that the reader is still alive; if it is gone, the writer says so
//! and exits with status 1.

mod common;

use std::process::ExitCode;

fn main() -> ExitCode {
    match common::parse_args("writer", std::env::args().skip(1)) {
        Ok((name, _verbose, patience)) => common::run_writer(
            &common::WriterOptions {
                name,
                patience,
                hold_on: None,
            },
            std::io::stdin().lock(),
        ),
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}
