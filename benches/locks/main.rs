//! `cargo bench --bench locks`: shmsync's primitives against the raw OS
//! calls and the peer crates, in one run of interleaved rounds.
//!
//! * `cargo bench --bench locks`: the full run (15 rounds and a warm-up,
//!   about two minutes on 2 cores: 8 s a round). `SHMSYNC_BENCH_SMOKE=1` or `-- --smoke`: tiny counts,
//!   about a second (CI). `-- --rounds N`. `-- WORD…` keeps the rows whose
//!   `SECTION/NAME` contains a word (`uncontended`, `raw_sync`,
//!   `uncontended/ShmCell`).
//! * Prints the table and writes `target/shmsync-bench/locks.json`
//!   (`locks-smoke.json` in smoke mode, `locks-partial.json` when
//!   filtered); `scripts/bench_chart.py` turns it into the chart and the
//!   table of `BENCHMARKS.md`.
//!
//! Cross-process rows fork their children from this single-threaded
//! process (`harness = false`), pin them with `sched_setaffinity`, bound
//! every wait and always reap (see `procs.rs`).
//!
//! **Adding a row** is one call in `registry.rs`: `b.row(SECTION, name,
//! baseline, robust, closure)`, the closure usually one of the generic
//! measuring functions of the row's module (`uncontended::cell_lock::<L>`,
//! `contend::cell`, `handoff.rs`'s `handoff`); a target is one call in
//! `targets.rs`. Files: `sections.rs` (sections, shared row names, counts),
//! `measure.rs` (timed loop, counter check, cell names), one module per
//! kind of row (`uncontended`, `contend`, `contended_span`, `rwlock`,
//! `handoff`, `attach`, `value_size`, `kinds`), `harness.rs` (rounds,
//! medians, table, JSON), `procs.rs` (forked teams), `raw.rs` (the raw OS
//! baselines), `results.rs` (the results file).

mod attach;
mod contend;
mod contended_span;
mod handoff;
mod harness;
mod kinds;
mod measure;
mod procs;
mod raw;
mod registry;
mod results;
mod rwlock;
mod sections;
mod targets;
mod uncontended;
mod value_size;

use std::time::Instant;

use harness::{key, Bench, Params};
use measure::CellName;

/// Parses the command line (`--smoke`, `--rounds N`, filter words; `--bench`
/// from cargo is ignored), runs, and sweeps what a failed row left.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke")
        || std::env::var("SHMSYNC_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut rounds = if smoke { 5 } else { 15 };
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(rounds)
                    .max(1)
            }
            "--smoke" | "--bench" => {}
            f if !f.starts_with('-') => filters.push(f.to_string()),
            _ => {}
        }
    }
    let cpus = procs::allowed_cpus();
    let params = Params {
        smoke,
        rounds,
        cpus,
    };
    let sweep = procs::Sweep::new();
    let code = match run(&params, &filters) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench failed: {e}");
            1
        }
    };
    let left = sweep.sweep();
    if left > 0 {
        eprintln!("bench: removed {left} objects a row left in /dev/shm");
    }
    drop(sweep);
    std::process::exit(code);
}

/// Registers, filters, runs and reports.
fn run(params: &Params, filters: &[String]) -> Result<(), String> {
    let big = CellName::new();
    let mut b = Bench::default();
    registry::register(&mut b, &big.name);
    targets::register(&mut b);
    b.validate()?;
    if !filters.is_empty() {
        for c in &mut b.cases {
            if !filters
                .iter()
                .any(|f| key(c.section, &c.name).contains(f.as_str()))
            {
                c.run = None;
                c.skipped = true;
            }
        }
    }
    if b.cases
        .iter()
        .any(|c| c.run.is_some() && c.name.contains("64 MiB"))
    {
        value_size::create_big(&big.name)?;
    }
    let load_before = results::loadavg();
    eprintln!(
        "shmsync bench: {} rounds (+1 warm-up){}, CPUs {:?}, load {load_before}",
        params.rounds,
        if params.smoke { ", SMOKE counts" } else { "" },
        params.cpus
    );
    let t0 = Instant::now();
    b.run(params)?;
    let table = b.table();
    println!("{table}");
    if params.smoke {
        println!("SMOKE counts: a check that the bench runs, not a measurement.");
    }
    results::write(&b, params, filters, load_before, t0)
}
