//! Hand-off round trip between two processes: `ShmCell` wait/notify against
//! a pair of process-shared POSIX semaphores, measured in the same run.
//!
//! ```text
//! cargo run --release --example handoff                   # 7 rounds × 20,000 round trips
//! cargo run --release --example handoff -- --rounds 11 --trips 50000
//! ```
//!
//! A round trip: process A hands the turn to B and waits until B hands it
//! back. `ShmCell`: a `u32` turn, `wait_while` + `notify_one`. Semaphores:
//! `sem_post(s1)` / `sem_wait(s2)` against `sem_wait(s1)` / `sem_post(s2)`
//! (unnamed, `pshared = 1`, in a shared anonymous page). Each is measured
//! with both processes pinned to one CPU (`sched_setaffinity`: every
//! hand-off is a context switch) and pinned to two CPUs (a cross-CPU
//! wake-up). Rounds alternate the mechanisms so that both see the same
//! machine; the table shows medians and the ratio ShmCell / semaphores.
//! Only ratios taken in one run mean anything: absolute times differ
//! widely between machines and with load.

use std::process::ExitCode;
use std::time::Instant;

use shmsync::ShmCell;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mech {
    Semaphores,
    Cell,
}

fn main() -> ExitCode {
    let mut rounds = 7usize;
    let mut trips = 20_000u32;
    let mut only_cpus = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--rounds", Some(v)) if v > 0 => rounds = v as usize,
            ("--trips", Some(v)) if v > 0 => trips = v.min(u32::MAX as u64) as u32,
            ("--cpus", Some(v @ (1 | 2))) => only_cpus = Some(v as usize),
            _ => {
                eprintln!("usage: handoff [--rounds N] [--trips N] [--cpus 1|2]");
                return ExitCode::from(2);
            }
        }
    }
    let cpus = allowed_cpus();
    let mut layouts: Vec<(&str, usize, usize)> = match cpus.as_slice() {
        [] => {
            eprintln!("handoff: no CPU in this process's affinity mask");
            return ExitCode::FAILURE;
        }
        [a] => vec![("1 CPU", *a, *a)],
        [a, b, ..] => vec![("1 CPU", *a, *a), ("2 CPUs", *a, *b)],
    };
    if let Some(n) = only_cpus {
        layouts.retain(|&(_, a, b)| (a != b) == (n == 2));
    }
    println!(
        "hand-off round trip between two processes, median of {rounds} runs × {trips} round trips (ns)"
    );
    let mut failed = false;
    for (label, cpu_a, cpu_b) in layouts {
        let mut sem = Vec::new();
        let mut cell = Vec::new();
        for _ in 0..rounds {
            for mech in [Mech::Semaphores, Mech::Cell] {
                match run(mech, trips, cpu_a, cpu_b) {
                    Ok(ns) if mech == Mech::Semaphores => sem.push(ns),
                    Ok(ns) => cell.push(ns),
                    Err(e) => {
                        eprintln!("handoff: {label} {mech:?}: {e}");
                        failed = true;
                    }
                }
            }
        }
        if sem.is_empty() || cell.is_empty() {
            continue;
        }
        let (s, c) = (median(&mut sem), median(&mut cell));
        println!(
            "{label:>7} (cpu {cpu_a},{cpu_b}): semaphore pair {s:>7.0}   ShmCell wait/notify {c:>7.0}   ratio {:.2}   (min {:.0} / {:.0})",
            c / s,
            sem[0],
            cell[0],
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` is initialised and `c` is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling process to `cpu`.
fn pin(cpu: usize) -> Result<(), String> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` comes from the allowed set, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(format!(
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A shared anonymous page holding two process-shared semaphores (the
/// semaphore pair, and the start signal for both mechanisms).
struct SemPage {
    p: *mut libc::sem_t,
}

impl SemPage {
    fn new() -> Result<SemPage, String> {
        // SAFETY: a fresh anonymous shared mapping of one page.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let page = SemPage { p: p.cast() };
        for i in 0..2 {
            // SAFETY: two sem_t fit in the page, which is page-aligned; each
            // is initialised once, before any use.
            if unsafe { libc::sem_init(page.sem(i), 1, 0) } != 0 {
                return Err(format!("sem_init: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(page)
    }

    fn sem(&self, i: usize) -> *mut libc::sem_t {
        // SAFETY: i < 2, inside the mapped page.
        unsafe { self.p.add(i) }
    }

    fn post(&self, i: usize) {
        // SAFETY: an initialised process-shared semaphore in our mapping.
        unsafe { libc::sem_post(self.sem(i)) };
    }

    fn wait(&self, i: usize) {
        // SAFETY: as in `post`; retried on EINTR.
        while unsafe { libc::sem_wait(self.sem(i)) } != 0 {}
    }
}

impl Drop for SemPage {
    fn drop(&mut self) {
        for i in 0..2 {
            // SAFETY: initialised in `new`, no longer used by any process.
            unsafe { libc::sem_destroy(self.sem(i)) };
        }
        // SAFETY: our own mapping, no references outlive `self`.
        unsafe { libc::munmap(self.p.cast(), 4096) };
    }
}

/// One measurement: nanoseconds per round trip.
fn run(mech: Mech, trips: u32, cpu_a: usize, cpu_b: usize) -> Result<f64, String> {
    pin(cpu_a)?;
    let sems = SemPage::new()?;
    let name = format!("/shmsync-handoff-{}", std::process::id());
    let cell = match mech {
        Mech::Cell => Some(ShmCell::<u32>::create(&name, 0).map_err(|e| e.to_string())?),
        Mech::Semaphores => None,
    };
    // SAFETY: this program is single-threaded; the child only runs the
    // loop below and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let _ = ShmCell::<u32>::unlink(&name);
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let ok = pin(cpu_b).is_ok();
        match &cell {
            Some(cell) => {
                sems.post(0); // ready
                for _ in 0..trips {
                    let Ok(mut g) = cell.lock().and_then(|g| g.wait_while(|t| *t != 1)) else {
                        // SAFETY: leave the forked child at once.
                        unsafe { libc::_exit(1) };
                    };
                    *g = 0;
                    drop(g);
                    cell.notify_one();
                }
            }
            None => {
                sems.post(1); // ready
                for _ in 0..trips {
                    sems.wait(0);
                    sems.post(1);
                }
            }
        }
        // SAFETY: leave the forked child without running the parent's
        // destructors (the segment is the parent's to unlink).
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let started;
    match &cell {
        Some(cell) => {
            sems.wait(0);
            started = Instant::now();
            // The same steps as the child's, then one last wait for its
            // final hand-back.
            for _ in 0..trips {
                let mut g = cell
                    .lock()
                    .and_then(|g| g.wait_while(|t| *t != 0))
                    .map_err(|e| e.to_string())?;
                *g = 1;
                drop(g);
                cell.notify_one();
            }
            let g = cell
                .lock()
                .and_then(|g| g.wait_while(|t| *t != 0))
                .map_err(|e| e.to_string())?;
            drop(g);
        }
        None => {
            sems.wait(1);
            started = Instant::now();
            for _ in 0..trips {
                sems.post(0);
                sems.wait(1);
            }
        }
    }
    let elapsed = started.elapsed();
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if cell.is_some() {
        let _ = ShmCell::<u32>::unlink(&name);
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("child failed (wait status {status:#x})"));
    }
    Ok(elapsed.as_nanos() as f64 / f64::from(trips))
}
