//! Per kind of backing (where the value lives: a named POSIX object, a
//! sealed memfd, a file, a System V segment): lock + increment + unlock,
//! and attaching to an existing cell, in the same run. The lock path does
//! not look at the backing, so its cost must not depend on it; attaching
//! differs by design (a memfd receiver checks seals and reopens, a file is
//! on a filesystem, a System V segment is read through a read-only
//! `shmat` before its read-write one).
//!
//! Registered by two calls, [`register_rows`] and [`register_targets`]
//! (rows and targets each in table order), so that the rows stay
//! self-contained.

use std::path::PathBuf;

use crate::harness::{key, Bench, Better, Check, Params, Section};
use crate::measure::{err, expect_count, fail, time_attach, time_loop, CellName};
use shmsync::{Error, ShmCell, SysvKey};

static KIND_LOCK: Section = Section {
    id: "kind-lock",
    title: "Lock + increment + unlock by backing, one process (RobustMutex)",
    unit: "ns/op",
    better: Better::Lower,
};
static KIND_ATTACH: Section = Section {
    id: "kind-attach",
    title: "Attach to an existing cell by backing (handle kept, closed untimed)",
    unit: "us/open",
    better: Better::Lower,
};

const NAMED: &str = "named (shm_open)";
const MEMFD: &str = "memfd (sealed)";
const FILE: &str = "file";
const SYSV: &str = "System V (shmget)";

/// A cell of one backing, removed on drop (in the parent only).
enum Made {
    Named(CellName, ShmCell<u64>),
    Memfd(ShmCell<u64>),
    File(PathBuf, ShmCell<u64>, u32),
    SysV(SysvKey, ShmCell<u64>, u32),
}

impl Made {
    fn new(kind: &str) -> Result<Made, String> {
        let pid = std::process::id();
        Ok(match kind {
            NAMED => {
                let name = CellName::new();
                let cell = ShmCell::<u64>::create(&name.name, 0).map_err(err)?;
                Made::Named(name, cell)
            }
            MEMFD => Made::Memfd(ShmCell::<u64>::create_anonymous(0).map_err(err)?),
            FILE => {
                let path = std::env::temp_dir().join(format!(
                    "{}.cell",
                    crate::procs::fresh_name().trim_start_matches('/')
                ));
                let cell = ShmCell::<u64>::create_file(&path, 0).map_err(err)?;
                Made::File(path, cell, pid)
            }
            _ => {
                // A key of this run: the pid, and a counter.
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x7f;
                loop {
                    let raw = 0x2000_0000 | ((pid & 0x3f_ffff) << 7) | n;
                    let k = SysvKey::new(raw as i32).map_err(err)?;
                    match ShmCell::<u64>::create_sysv(k, 0) {
                        Ok(cell) => break Made::SysV(k, cell, pid),
                        // Left by an earlier run of a recycled pid.
                        Err(Error::AlreadyExists { .. }) => {
                            ShmCell::<u64>::remove_sysv(k).map_err(err)?
                        }
                        Err(e) => return Err(err(e)),
                    }
                }
            }
        })
    }

    fn cell(&self) -> &ShmCell<u64> {
        match self {
            Made::Named(_, c) | Made::Memfd(c) | Made::File(_, c, _) | Made::SysV(_, c, _) => c,
        }
    }

    /// A new handle to the same cell, as another process would get it.
    fn attach(&self) -> Result<ShmCell<u64>, String> {
        match self {
            Made::Named(n, _) => ShmCell::open(&n.name),
            Made::Memfd(c) => ShmCell::from_fd(c.inheritable_fd().map_err(err)?),
            Made::File(p, _, _) => ShmCell::open_file(p),
            Made::SysV(k, _, _) => ShmCell::open_sysv(*k),
        }
        .map_err(err)
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        match self {
            Made::File(p, _, pid) if *pid == std::process::id() => {
                let _ = std::fs::remove_file(p);
            }
            Made::SysV(k, _, pid) if *pid == std::process::id() => {
                let _ = ShmCell::<u64>::remove_sysv(*k);
            }
            _ => {}
        }
    }
}

fn lock(p: &Params, kind: &str) -> Result<f64, String> {
    let made = Made::new(kind)?;
    let cell = made.cell();
    let t = time_loop(p.iters(2_000_000), || match cell.lock() {
        Ok(mut g) => *g += 1,
        Err(e) => fail("lock", e),
    });
    expect_count(*cell.lock().map_err(err)?, t.calls)?;
    Ok(t.ns)
}

fn attach(p: &Params, kind: &str) -> Result<f64, String> {
    let made = Made::new(kind)?;
    time_attach(p, || made.attach(), drop)
}

/// The per-kind rows.
pub fn register_rows(b: &mut Bench<'_>) {
    for kind in [NAMED, MEMFD, FILE, SYSV] {
        b.row(&KIND_LOCK, kind, Some(NAMED), "yes", move |p| lock(p, kind));
    }
    for kind in [NAMED, MEMFD, FILE, SYSV] {
        b.row(&KIND_ATTACH, kind, Some(NAMED), "yes", move |p| {
            attach(p, kind)
        });
    }
}

/// The per-kind targets.
pub fn register_targets(b: &mut Bench<'_>) {
    for (kind, text) in [
        (MEMFD, "lock cost flat in the backing: memfd / named <= 1.1"),
        (FILE, "lock cost flat in the backing: file / named <= 1.1"),
        (
            SYSV,
            "lock cost flat in the backing: System V / named <= 1.1",
        ),
    ] {
        b.target(
            text,
            Check::Ratio {
                num: key(&KIND_LOCK, kind),
                den: key(&KIND_LOCK, NAMED),
                min: None,
                max: Some(1.1),
            },
        );
    }
}
