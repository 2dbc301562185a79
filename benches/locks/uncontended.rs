//! The one-process rows: lock + increment + unlock on an uncontended lock,
//! for the crate's backends, the raw OS calls and the peer crates, each
//! timed by [`time_loop`] and checked by the counter.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::harness::Params;
use crate::measure::{bump, err, expect_count, fail, time_loop, Arena, CellName};
use crate::procs::{fresh_name, SharedAnon};
use crate::raw::{self, MutexKind, PMutex};
use shmsync::{LockBackend, RobustMutex, ShmCell};

pub fn cell_lock<L: LockBackend>(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<u64, L>::create(&name.name, 0).map_err(err)?;
    let n = p.iters(2_000_000);
    let t = time_loop(n, || match cell.lock() {
        Ok(mut g) => *g += 1,
        Err(e) => fail("lock", e),
    });
    expect_count(*cell.lock().map_err(err)?, t.calls)?;
    Ok(t.ns)
}

pub fn cell_try_lock<L: LockBackend>(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<u64, L>::create(&name.name, 0).map_err(err)?;
    let n = p.iters(1_000_000);
    let t = time_loop(n, || match cell.try_lock() {
        Ok(mut g) => *g += 1,
        Err(e) => fail("try_lock", e),
    });
    expect_count(*cell.lock().map_err(err)?, t.calls)?;
    Ok(t.ns)
}

pub fn robust_mutex_lock(p: &Params) -> Result<f64, String> {
    // SAFETY: zeroed bytes are a valid (then re-initialised) mutex and counter.
    let a = unsafe { SharedAnon::<Arena<RobustMutex>>::zeroed() };
    // SAFETY: the mapping is fresh, aligned, and never moved.
    unsafe { RobustMutex::init(std::ptr::NonNull::from(&a.get().lock)) }.map_err(err)?;
    let (m, c) = (&a.get().lock, &a.get().counter);
    let n = p.iters(2_000_000);
    let t = time_loop(n, || match m.lock() {
        Ok(_g) => bump(c),
        Err(e) => fail("lock", e),
    });
    expect_count(c.load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

#[derive(Clone, Copy)]
pub enum Raw {
    Lock,
    Try,
    ClockExpired,
}

fn raw_arena(kind: MutexKind) -> SharedAnon<Arena<PMutex>> {
    // SAFETY: zeroed bytes are valid storage; the mutex is initialised next.
    let a = unsafe { SharedAnon::<Arena<PMutex>>::zeroed() };
    // SAFETY: fresh mapping, never moved, nobody uses it yet.
    unsafe { a.get().lock.init(kind) };
    a
}

pub fn raw_lock(kind: MutexKind, how: Raw) -> impl FnMut(&Params) -> Result<f64, String> {
    move |p| {
        let a = raw_arena(kind);
        let (m, c) = (&a.get().lock, &a.get().counter);
        let n = p.iters(2_000_000);
        let t = match how {
            Raw::Lock => time_loop(n, || {
                if m.lock() != 0 {
                    fail("lock", "error")
                }
                bump(c);
                m.unlock();
            }),
            Raw::Try => time_loop(n, || {
                if m.trylock() != 0 {
                    fail("trylock", "error")
                }
                bump(c);
                m.unlock();
            }),
            Raw::ClockExpired => time_loop(n, || {
                if m.clocklock_expired() != 0 {
                    fail("clocklock", "error")
                }
                bump(c);
                m.unlock();
            }),
        };
        expect_count(c.load(Ordering::Relaxed), t.calls)?;
        Ok(t.ns)
    }
}

/// raw_sync's lock lives in memory we provide: 64 bytes aligned, then the
/// data (a u64) it hands out as `*mut u8`.
#[repr(C, align(64))]
pub struct PeerArena {
    lock: [u8; 64],
    pub counter: AtomicU64,
}

pub fn raw_sync_new(
    a: &SharedAnon<PeerArena>,
) -> Result<Box<dyn raw_sync::locks::LockImpl>, String> {
    use raw_sync::locks::{LockInit, Mutex};
    let base = a.as_ptr().cast::<u8>();
    // SAFETY: 64 bytes at `base` are shared, aligned storage for the
    // pthread_mutex_t (40 bytes); the data pointer is the counter after it.
    let (m, _) = unsafe { Mutex::new(base, a.get().counter.as_ptr().cast()) }.map_err(err)?;
    Ok(m)
}

pub fn raw_sync_lock(p: &Params) -> Result<f64, String> {
    // SAFETY: zeroed bytes are valid storage; raw_sync initialises the lock.
    let a = unsafe { SharedAnon::<PeerArena>::zeroed() };
    let m = raw_sync_new(&a)?;
    let n = p.iters(2_000_000);
    let t = time_loop(n, || {
        let g = m.lock().expect("raw_sync lock");
        let v = *g as *mut u64;
        // SAFETY: `v` is the counter, guarded by the lock we hold.
        unsafe { *v += 1 };
    });
    expect_count(a.get().counter.load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

pub fn process_sync_lock(p: &Params) -> Result<f64, String> {
    let mut m = process_sync::SharedMutex::new().map_err(err)?;
    // SAFETY: a zeroed atomic is valid.
    let c = unsafe { SharedAnon::<AtomicU64>::zeroed() };
    let n = p.iters(2_000_000);
    let t = time_loop(n, || {
        m.lock().expect("process-sync lock");
        bump(c.get());
        m.unlock().expect("process-sync unlock");
    });
    expect_count(c.get().load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

pub fn raw_flock_lock(p: &Params) -> Result<f64, String> {
    let name = fresh_name();
    let f = raw::FlockFile::open(&name);
    let c = AtomicU64::new(0);
    let n = p.iters(50_000);
    let t = time_loop(n, || {
        f.lock();
        bump(&c);
        f.unlock();
    });
    raw::FlockFile::remove(&name);
    expect_count(c.load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}

pub fn raw_sem_lock(p: &Params) -> Result<f64, String> {
    let s = raw::NamedSem::create(&fresh_name());
    let c = AtomicU64::new(0);
    let n = p.iters(2_000_000);
    let t = time_loop(n, || {
        s.wait();
        bump(&c);
        s.post();
    });
    expect_count(c.load(Ordering::Relaxed), t.calls)?;
    Ok(t.ns)
}
