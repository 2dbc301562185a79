//! `cargo bench --bench callgrind -- KIND N`: N uncontended
//! lock + increment + unlock calls, one process, for `valgrind
//! --tool=callgrind` to count instructions (`scripts/callgrind_guard.py`
//! runs it twice per kind and takes the difference, which cancels start-up
//! and teardown: instructions per call = (total(N2) − total(N1)) / (N2 − N1)).
//!
//! KIND is `cell` (`ShmCell<u64>`, the default robust mutex), `raw` (a
//! bare robust process-shared `pthread_mutex_t` in a shared mapping, the
//! same attributes) or `plain` (the same without robust and error-checking:
//! for comparison, not guarded). Without arguments (as `cargo bench` runs every bench)
//! it does a few calls of each and prints nothing else.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

#[allow(dead_code)] // the `locks` bench's raw baselines; only the mutex is used here
#[path = "locks/raw.rs"]
mod raw;

/// The robust mutex and a counter beside it, as `ShmCell`'s value.
#[repr(C)]
struct Beside {
    lock: raw::PMutex,
    counter: AtomicU64,
}

fn cell(n: u64) -> u64 {
    let name = format!("/shmsync-cg-{}", std::process::id());
    let cell = shmsync::ShmCell::<u64>::create(&name, 0).expect("create");
    for _ in 0..black_box(n) {
        match cell.lock() {
            Ok(mut g) => *g += 1,
            Err(e) => panic!("lock: {e}"),
        }
    }
    let v = *cell.lock().expect("lock");
    drop(cell);
    shmsync::ShmCell::<u64>::unlink(&name).expect("unlink");
    v
}

fn raw(n: u64, kind: raw::MutexKind) -> u64 {
    let len = std::mem::size_of::<Beside>();
    // SAFETY: a fresh anonymous shared mapping; nothing else is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap");
    // SAFETY: the mapping is page-aligned, zero-filled (a valid counter and
    // mutex storage) and lives until the munmap below.
    let a = unsafe { &*p.cast::<Beside>() };
    // SAFETY: fresh mapping, never moved, unused yet.
    unsafe { a.lock.init(kind) };
    for _ in 0..black_box(n) {
        assert_eq!(a.lock.lock(), 0, "pthread_mutex_lock");
        let c = &a.counter;
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        a.lock.unlock();
    }
    let v = a.counter.load(Ordering::Relaxed);
    // SAFETY: `a` is not used after this.
    unsafe { libc::munmap(p, len) };
    v
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |kind: &str, n: u64| {
        let got = match kind {
            "cell" => cell(n),
            "raw" => raw(n, raw::MutexKind::Robust),
            "plain" => raw(n, raw::MutexKind::Plain),
            k => {
                eprintln!("unknown kind {k:?}: cell, raw or plain");
                std::process::exit(2)
            }
        };
        assert_eq!(got, n, "counter");
    };
    match args.as_slice() {
        [] => {
            run("cell", 1000);
            run("raw", 1000);
        }
        [kind, n] => run(kind, n.parse().expect("N: a count")),
        _ => {
            eprintln!("usage: callgrind [cell|raw|plain N]");
            std::process::exit(2)
        }
    }
}
