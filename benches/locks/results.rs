//! The results file: the rows' figures with the run's circumstances
//! (date, CPUs, kernel, glibc, load), written where `scripts/bench_chart.py`
//! looks for them.

use std::time::Instant;

use crate::harness::{Bench, Params};
use crate::measure::err;

/// Writes the results with the run's circumstances to
/// `target/shmsync-bench/locks.json` (`locks-smoke.json` in smoke mode,
/// `locks-partial.json` when filtered).
pub fn write(
    b: &Bench<'_>,
    params: &Params,
    filters: &[String],
    load_before: String,
    t0: Instant,
) -> Result<(), String> {
    let load_after = loadavg();
    let meta = [
        (
            "date_unix",
            format!(
                "{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ),
        ),
        ("smoke", params.smoke.to_string()),
        ("rounds", params.rounds.to_string()),
        ("cpus", format!("{:?}", params.cpus)),
        ("cpu_model", cpu_model()),
        (
            "kernel",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        ("glibc", glibc_version()),
        ("loadavg_before", load_before),
        ("loadavg_after", load_after),
        ("seconds", format!("{:.1}", t0.elapsed().as_secs_f64())),
    ];
    // A smoke or filtered run never overwrites the full results.
    let path = results_path(if params.smoke {
        "locks-smoke.json"
    } else if !filters.is_empty() {
        "locks-partial.json"
    } else {
        "locks.json"
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(&path, b.json(&meta)).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default()
}

fn glibc_version() -> String {
    extern "C" {
        fn gnu_get_libc_version() -> *const libc::c_char;
    }
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }
        .to_string_lossy()
        .into_owned()
}

/// `$CARGO_TARGET_DIR`, else the `target/` this binary was built in
/// (`target/release/deps/locks-HASH`), then `shmsync-bench/FILE`.
fn results_path(file: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.ancestors().nth(3).map(|p| p.to_path_buf()))
        })
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target"))
        });
    target.join("shmsync-bench").join(file)
}
