//! `cargo bench --bench snapshot`: what snapshots cost and save, one
//! process, `RobustMutex` cells (the default backend).
//!
//! * Reading: `snapshot()` of a 64-byte (and a 4 KiB) value against
//!   lock + copy + unlock of the same value (target for 64 B: ≤ 0.5×).
//! * Writing: lock + write + unlock on a cell with snapshots against one
//!   without, for 64 B and 4 KiB values — "write" is one word (the cost
//!   added to the smallest write) and the whole value.
//!
//! Rows run interleaved, 15 rounds of each, timed in this thread's CPU
//! time (the machine this was written on is shared and loaded); the
//! table shows the median ns/op and the ratios of medians. `-- --smoke` (or
//! `SHMSYNC_BENCH_SMOKE=1`): tiny counts, for CI. Self-contained on
//! purpose (the `locks` bench is reworked elsewhere).

use std::hint::black_box;

use shmsync::{CreateOptions, ShmCell, ShmSafe};

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct V64 {
    words: [u64; 8],
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct V4k {
    words: [u64; 512],
}

/// Removes the benchmark's objects however it ends.
struct Names(Vec<String>);

impl Names {
    fn fresh(&mut self, tag: &str) -> String {
        let n = format!(
            "/shmsync-bench-snapshot-{}-{}-{tag}",
            std::process::id(),
            self.0.len()
        );
        let _ = ShmCell::<u8>::unlink(&n);
        self.0.push(n.clone());
        n
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ShmCell::<u8>::unlink(n);
        }
    }
}

type Row<'a> = (&'static str, Box<dyn FnMut(u64) + 'a>);

/// This thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`): on a loaded
/// machine wall-clock time mostly measures the other processes.
fn cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// CPU ns per operation of `f(iters)` doing `iters` operations.
fn time(f: &mut dyn FnMut(u64), iters: u64) -> f64 {
    let t = cpu_ns();
    f(iters);
    (cpu_ns() - t) as f64 / iters as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke")
        || std::env::var_os("SHMSYNC_BENCH_SMOKE").is_some();
    let (rounds, iters_small, iters_big) = if smoke {
        (3, 2_000, 200)
    } else {
        (15, 200_000, 20_000)
    };
    let mut names = Names(Vec::new());
    let snap = CreateOptions::new().snapshots(true);
    let plain = CreateOptions::new();
    let v64 = V64 { words: [1; 8] };
    let v4k = V4k { words: [1; 512] };
    let s64 = ShmCell::<V64>::create_with(&names.fresh("s64"), v64, &snap).unwrap();
    let p64 = ShmCell::<V64>::create_with(&names.fresh("p64"), v64, &plain).unwrap();
    let s4k = ShmCell::<V4k>::create_with(&names.fresh("s4k"), v4k, &snap).unwrap();
    let p4k = ShmCell::<V4k>::create_with(&names.fresh("p4k"), v4k, &plain).unwrap();

    let mut rows: Vec<(Row<'_>, u64)> = vec![
        (
            (
                "read 64 B: snapshot()",
                Box::new(|n| {
                    for _ in 0..n {
                        black_box(s64.snapshot().unwrap());
                    }
                }),
            ),
            iters_small,
        ),
        (
            (
                "read 64 B: lock + copy + unlock",
                Box::new(|n| {
                    for _ in 0..n {
                        black_box(*p64.lock().unwrap());
                    }
                }),
            ),
            iters_small,
        ),
        (
            (
                "read 4 KiB: snapshot()",
                Box::new(|n| {
                    for _ in 0..n {
                        black_box(s4k.snapshot().unwrap());
                    }
                }),
            ),
            iters_big,
        ),
        (
            (
                "read 4 KiB: lock + copy + unlock",
                Box::new(|n| {
                    for _ in 0..n {
                        black_box(*p4k.lock().unwrap());
                    }
                }),
            ),
            iters_big,
        ),
    ];
    let writes: [(&'static str, &ShmCell<V64>, bool); 4] = [
        ("write 64 B, one word: no snapshots", &p64, false),
        ("write 64 B, one word: snapshots", &s64, false),
        ("write 64 B, whole: no snapshots", &p64, true),
        ("write 64 B, whole: snapshots", &s64, true),
    ];
    for (label, cell, whole) in writes {
        rows.push((
            (
                label,
                Box::new(move |n| {
                    for i in 0..n {
                        let mut g = cell.lock().unwrap();
                        if whole {
                            g.words = [i; 8];
                        } else {
                            g.words[0] = i;
                        }
                        black_box(&*g);
                    }
                }),
            ),
            iters_small,
        ));
    }
    let writes: [(&'static str, &ShmCell<V4k>, bool); 4] = [
        ("write 4 KiB, one word: no snapshots", &p4k, false),
        ("write 4 KiB, one word: snapshots", &s4k, false),
        ("write 4 KiB, whole: no snapshots", &p4k, true),
        ("write 4 KiB, whole: snapshots", &s4k, true),
    ];
    for (label, cell, whole) in writes {
        rows.push((
            (
                label,
                Box::new(move |n| {
                    for i in 0..n {
                        let mut g = cell.lock().unwrap();
                        if whole {
                            g.words = [i; 512];
                        } else {
                            g.words[0] = i;
                        }
                        black_box(&*g);
                    }
                }),
            ),
            iters_big,
        ));
    }

    // `-- WORD…`: only the rows whose label contains a word (for `perf
    // stat` of one row); ratios are printed for the full run only.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let filtered = !words.is_empty();
    if filtered {
        rows.retain(|((label, _), _)| words.iter().any(|w| label.contains(w.as_str())));
    }
    // Warm up, then interleaved rounds.
    for ((_, f), iters) in rows.iter_mut() {
        time(f.as_mut(), (*iters / 10).max(1));
    }
    let mut samples = vec![Vec::with_capacity(rounds); rows.len()];
    for _ in 0..rounds {
        for (i, ((_, f), iters)) in rows.iter_mut().enumerate() {
            samples[i].push(time(f.as_mut(), *iters));
        }
    }
    let med: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    println!(
        "snapshot bench: {rounds} interleaved rounds, median thread-CPU ns/op{}",
        if smoke { " (smoke: tiny counts)" } else { "" }
    );
    for (i, ((label, _), _)) in rows.iter().enumerate() {
        println!("  {label:<40} {:>10.1}", med[i]);
    }
    if filtered {
        return;
    }
    let ratio = |a: usize, b: usize| med[a] / med[b];
    println!("ratios (of medians):");
    println!(
        "  snapshot / (lock + copy + unlock), 64 B   {:>6.2}x  (target <= 0.5x)",
        ratio(0, 1)
    );
    println!(
        "  snapshot / (lock + copy + unlock), 4 KiB  {:>6.2}x",
        ratio(2, 3)
    );
    for (base, label) in [
        (4, "64 B, one word"),
        (6, "64 B, whole"),
        (8, "4 KiB, one word"),
        (10, "4 KiB, whole"),
    ] {
        println!(
            "  write path with / without snapshots, {label:<15} {:>6.2}x  (+{:.1} ns)",
            ratio(base + 1, base),
            med[base + 1] - med[base]
        );
    }
}
