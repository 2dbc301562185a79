//! Hand-off round trips between two processes pinned to one CPU or to two:
//! `ShmCell`'s `wait_while` + `notify_all` against a semaphore pair, a
//! pipe pair, a mutex + condition variable, and a bare futex.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::harness::Params;
use crate::measure::{err, fail, CellName};
use crate::procs::{self, SharedAnon};
use crate::raw::{self, MutexKind, PCond, PMutex, PSem};
use crate::sections::HANDOFFS;
use shmsync::ShmCell;

/// Two children, pinned to one CPU or to two: child 0 calls `ping(k)` and
/// child 1 `pong(k)` for k in 0..n; µs per round trip, from child 0's span.
fn handoff(
    p: &Params,
    two_cpus: bool,
    n_full: u64,
    ping: &mut dyn FnMut(u32),
    pong: &mut dyn FnMut(u32),
) -> Result<f64, String> {
    let cpus = [
        Some(p.cpu(0)),
        Some(if two_cpus { p.cpu(1) } else { p.cpu(0) }),
    ];
    let n = p.iters(if two_cpus { n_full / 2 } else { n_full });
    let spans = procs::team(&cpus, &mut |i, gate| {
        gate.start();
        for k in 0..n as u32 {
            if i == 0 {
                ping(k)
            } else {
                pong(k)
            }
        }
        Ok(())
    })?;
    Ok(spans.child_ns(0) as f64 / 1e3 / n as f64)
}

/// The wait/notify hand-off: the value is a turn counter; ping waits for
/// an even value and makes it odd, pong the reverse, each notifying after
/// its change. One iteration of ping is one full round trip.
pub fn cell_handoff(p: &Params, two: bool) -> Result<f64, String> {
    let name = CellName::new();
    let cell = ShmCell::<u32>::create(&name.name, 0).map_err(err)?;
    let wait_for = |until: u32| {
        let g = cell.lock().unwrap_or_else(|e| fail("lock", e));
        g.wait_while(|v| *v != until)
            .unwrap_or_else(|e| fail("wait", e))
    };
    let set = |mut g: shmsync::ShmGuard<'_, u32>, v: u32| {
        *g = v;
        drop(g);
        cell.notify_all();
    };
    handoff(
        p,
        two,
        HANDOFFS,
        &mut |k| {
            set(wait_for(2 * k), 2 * k + 1);
            drop(wait_for(2 * k + 2));
        },
        &mut |k| set(wait_for(2 * k + 1), 2 * k + 2),
    )
}

#[repr(C)]
struct SemPair {
    to_pong: PSem,
    to_ping: PSem,
}

pub fn sem_pair(p: &Params, two: bool) -> Result<f64, String> {
    // SAFETY: zeroed storage; both semaphores are initialised next.
    let a = unsafe { SharedAnon::<SemPair>::zeroed() };
    // SAFETY: fresh mapping, never moved, unused yet.
    unsafe {
        a.get().to_pong.init(0);
        a.get().to_ping.init(0);
    }
    let s = a.get();
    handoff(
        p,
        two,
        HANDOFFS,
        &mut |_| {
            s.to_pong.post();
            s.to_ping.wait();
        },
        &mut |_| {
            s.to_pong.wait();
            s.to_ping.post();
        },
    )
}

pub fn pipe_pair(p: &Params, two: bool) -> Result<f64, String> {
    let mut ab = [0; 2];
    let mut ba = [0; 2];
    // SAFETY: each array is valid for two ints.
    let ok = unsafe {
        libc::pipe2(ab.as_mut_ptr(), libc::O_CLOEXEC) == 0
            && libc::pipe2(ba.as_mut_ptr(), libc::O_CLOEXEC) == 0
    };
    if !ok {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    let r = handoff(
        p,
        two,
        HANDOFFS,
        &mut |_| {
            raw::write_byte(ab[1]);
            raw::read_byte(ba[0]);
        },
        &mut |_| {
            raw::read_byte(ab[0]);
            raw::write_byte(ba[1]);
        },
    );
    for fd in ab.into_iter().chain(ba) {
        // SAFETY: closing the four descriptors made above, once.
        unsafe { libc::close(fd) };
    }
    r
}

#[repr(C)]
struct CondPair {
    m: PMutex,
    c: PCond,
    turn: AtomicU32,
}

pub fn condvar_pair(p: &Params, two: bool) -> Result<f64, String> {
    // SAFETY: zeroed storage; the mutex and condvar are initialised next.
    let a = unsafe { SharedAnon::<CondPair>::zeroed() };
    // SAFETY: fresh mapping, never moved, unused yet.
    unsafe {
        a.get().m.init(MutexKind::Plain);
        a.get().c.init();
    }
    let s = a.get();
    handoff(
        p,
        two,
        HANDOFFS,
        &mut |_| {
            s.m.lock();
            s.turn.store(1, Ordering::Relaxed);
            s.c.signal();
            while s.turn.load(Ordering::Relaxed) != 0 {
                // SAFETY: we hold `s.m`.
                unsafe { s.c.wait(&s.m) };
            }
            s.m.unlock();
        },
        &mut |_| {
            s.m.lock();
            while s.turn.load(Ordering::Relaxed) != 1 {
                // SAFETY: we hold `s.m`.
                unsafe { s.c.wait(&s.m) };
            }
            s.turn.store(0, Ordering::Relaxed);
            s.c.signal();
            s.m.unlock();
        },
    )
}

pub fn futex_pair(p: &Params, two: bool) -> Result<f64, String> {
    // SAFETY: a zeroed atomic is valid.
    let a = unsafe { SharedAnon::<AtomicU32>::zeroed() };
    let w = a.get();
    let wait_for = |want: u32| loop {
        let v = w.load(Ordering::Acquire);
        if v == want {
            break;
        }
        raw::futex_wait(w, v);
    };
    handoff(
        p,
        two,
        HANDOFFS,
        &mut |k| {
            w.store(2 * k + 1, Ordering::Release);
            raw::futex_wake(w);
            wait_for(2 * k + 2);
        },
        &mut |k| {
            wait_for(2 * k + 1);
            w.store(2 * k + 2, Ordering::Release);
            raw::futex_wake(w);
        },
    )
}
