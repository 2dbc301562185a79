//! Value-size rows: lock + write one byte + unlock on a 4 KiB and a
//! 64 MiB value (the lock path must not depend on the size), and the
//! one-time creation of the big cell.

use std::hint::black_box;

use crate::harness::Params;
use crate::measure::{err, fail, time_loop, CellName};
use crate::procs;
use crate::sections::{Big, BIG};
use shmsync::ShmCell;

pub fn cell_4k_lock(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<[u8; 4096]>::create(&name.name, [0; 4096]).map_err(err)?;
    let n = p.iters(2_000_000);
    Ok(time_loop(n, || match cell.lock() {
        Ok(mut g) => g[0] = g[0].wrapping_add(1),
        Err(e) => fail("lock", e),
    })
    .ns)
}

pub fn big_lock(p: &Params, big: &str) -> Result<f64, String> {
    let cell = ShmCell::<Big>::open(big).map_err(err)?;
    let n = p.iters(2_000_000);
    Ok(time_loop(n, || match cell.lock() {
        Ok(mut g) => g[0] = g[0].wrapping_add(1),
        Err(e) => fail("lock", e),
    })
    .ns)
}

/// Creates the 64 MiB cell once. `create` takes the value by value, so a
/// forked helper does it on a thread with a large stack (the bench process
/// itself stays single-threaded for its forks).
pub fn create_big(name: &str) -> Result<(), String> {
    procs::in_child(|| {
        let name = name.to_string();
        std::thread::Builder::new()
            .stack_size(4 * BIG + (16 << 20))
            .spawn(move || {
                let v: Big = [0; BIG];
                ShmCell::<Big>::create(&name, black_box(v))
                    .map(drop)
                    .map_err(err)
            })
            .map_err(err)?
            .join()
            .map_err(|_| "create thread panicked".to_string())?
    })
}
