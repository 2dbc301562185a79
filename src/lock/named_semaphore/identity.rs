//! Who holds the semaphore backend's lock, as the holder records it.
//!
//! Liveness is *not* judged from these: the holder word is a
//! [`LivenessToken`](crate::segment::liveness::LivenessToken) and the
//! kernel says whether it is still held. What is here:
//!
//! * [`own_thread`]: an identity of the calling thread that no other thread
//!   ever has — not a later thread of this process (a counter, never
//!   reused, unlike kernel thread ids, which are recycled as soon as a
//!   thread exits), not a thread of another process or of a forked child (a
//!   random per-process nonce, drawn again in each fork generation). It
//!   makes `Deadlock` mean "this very thread holds the lock".
//! * [`own_pid`] and the kernel tid in [`own_thread`]: diagnostics only
//!   (`holder_pid()`, `inspect`), numbered in the holder's pid namespace.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys;

/// This process's pid and the fork generation + 1 it was read in.
static OWN_PID: AtomicU64 = AtomicU64::new(0);

/// This process's pid (`getpid` is a system call: cached per fork
/// generation, one relaxed load on the fast path).
#[inline]
pub(crate) fn own_pid() -> u32 {
    let gen = sys::fork::fork_generation().wrapping_add(1);
    let v = OWN_PID.load(Ordering::Relaxed);
    if (v >> 32) as u32 == gen {
        return v as u32;
    }
    own_pid_slow(gen)
}

#[cold]
fn own_pid_slow(gen: u32) -> u32 {
    let pid = sys::proc::getpid();
    OWN_PID.store(((gen as u64) << 32) | pid as u64, Ordering::Relaxed);
    pid
}

/// The random part of this process's thread identities, with the fork
/// generation + 1 it was drawn in (a forked child draws its own).
static NONCE: AtomicU64 = AtomicU64::new(0);
static NONCE_GEN: AtomicU32 = AtomicU32::new(0);
/// Threads of this process given an identity so far.
static THREADS: AtomicU64 = AtomicU64::new(0);

/// The calling thread: `id` unique among all threads of all processes
/// (never 0), `tid` its kernel thread id (diagnostic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadIdentity {
    pub(crate) id: u64,
    pub(crate) tid: u32,
}

thread_local! {
    /// `(fork generation + 1, identity)` of this thread.
    static OWN_THREAD: Cell<(u32, ThreadIdentity)> =
        const { Cell::new((0, ThreadIdentity { id: 0, tid: 0 })) };
}

/// This thread's identity, made once per thread and fork generation.
#[inline]
pub(crate) fn own_thread() -> ThreadIdentity {
    let gen = sys::fork::fork_generation().wrapping_add(1);
    OWN_THREAD.with(|c| {
        let (g, me) = c.get();
        if g == gen {
            return me;
        }
        let me = new_thread_identity(gen);
        c.set((gen, me));
        me
    })
}

#[cold]
fn new_thread_identity(gen: u32) -> ThreadIdentity {
    let nonce = process_nonce(gen);
    let n = THREADS.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nonce);
    h.write_u64(n);
    ThreadIdentity {
        id: h.finish().max(1),
        tid: sys::proc::gettid(),
    }
}

/// A random number per process and fork generation. Two threads of a
/// freshly forked child may race to draw it: the first store wins and both
/// read it back.
fn process_nonce(gen: u32) -> u64 {
    if NONCE_GEN.load(Ordering::Acquire) != gen {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(sys::proc::getpid());
        h.write_u32(gen);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        NONCE.store(h.finish(), Ordering::Relaxed);
        NONCE_GEN.store(gen, Ordering::Release);
    }
    NONCE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_getpid() {
        assert_eq!(own_pid(), std::process::id());
        assert_eq!(own_pid(), std::process::id(), "cached");
    }

    #[test]
    fn thread_identities_are_never_reused() {
        let me = own_thread();
        assert_ne!(me.id, 0);
        assert_eq!(own_thread(), me, "cached");
        assert_eq!(me.tid, sys::proc::gettid());
        // Threads run one after the other: the kernel may give them the
        // same tid, never the same identity.
        let mut ids = vec![me.id];
        for _ in 0..20 {
            ids.push(std::thread::spawn(|| own_thread().id).join().unwrap());
        }
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "identities repeat: {ids:?}");
    }
}
