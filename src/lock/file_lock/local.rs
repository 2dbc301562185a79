//! What a `flock` handle keeps per process: the open file description it
//! locks through, and the process-local lock that queues this process's
//! own threads in front of `flock`.
//!
//! # Why a process-local lock
//!
//! `flock` belongs to the open file description, not to a thread: a second
//! `flock(LOCK_EX)` through the same description *succeeds* (it converts the
//! lock it already holds). Threads that share one handle therefore exclude
//! each other only through a lock of ours, taken before `flock` and released
//! after `LOCK_UN`. It is a `std::sync::Mutex` + `Condvar`, which park with
//! private futexes: fine here, because it only ever queues threads of this
//! process. Waiting across processes is always the kernel's `flock`.
//!
//! # Why per process
//!
//! A forked child shares its parent's open file descriptions. A lock taken
//! through the inherited descriptor would not conflict with the parent's, and
//! `LOCK_UN` there would release the parent's lock. So a handle keeps its
//! state in a [`PerProcess`] slot stamped with the fork generation: the first
//! use in a child opens a *new* description of the same file and starts
//! fresh local state (the parent's copy may have been locked by one of the
//! parent's threads at the moment of the fork; it is never touched again).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::error::RawLockError;
use crate::lock::Acquire;
use crate::sys;

pub(crate) use crate::lock::per_process::{PerProcess, SwapFd};

/// An identity of the calling thread that costs no system call and is
/// never given to another thread of this process: a number from a global
/// counter, assigned on first use and kept in a thread-local (0 is never
/// assigned: it means "nobody").
///
/// Not the address of a thread-local, which glibc recycles: a new thread
/// gets the stack (and TLS block) of a joined one, so a thread that exited
/// holding the lock would make a new thread look like its holder (a false
/// `Deadlock`). A forked child inherits the parent thread's number, but the
/// per-process state it is compared with is rebuilt in the child.
#[inline]
pub(crate) fn thread_key() -> u64 {
    use std::cell::Cell;
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: Cell<u64> = const { Cell::new(0) };
    }
    KEY.with(|k| match k.get() {
        0 => {
            let key = NEXT.fetch_add(1, Ordering::Relaxed);
            k.set(key);
            key
        }
        key => key,
    })
}

fn lock_state<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    // Nothing panics while holding these mutexes; a poisoned one is still
    // consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv` as `how` allows. `Err` when the caller must give up
/// (`Try` → `WouldBlock`, a passed deadline → `TimedOut`).
fn wait<'a, S>(
    cv: &Condvar,
    st: MutexGuard<'a, S>,
    how: Acquire,
) -> Result<MutexGuard<'a, S>, (MutexGuard<'a, S>, RawLockError)> {
    match how {
        Acquire::Try => Err((st, RawLockError::WouldBlock)),
        Acquire::Block => Ok(cv.wait(st).unwrap_or_else(PoisonError::into_inner)),
        Acquire::Until(deadline) => {
            let left = deadline.remaining();
            if left.is_zero() {
                return Err((st, RawLockError::TimedOut));
            }
            Ok(cv
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0)
        }
    }
}

/// The process-local exclusive lock of a `ShmCell<T, FileLock>` handle.
/// Holding it is the *token*: only its holder calls `flock` on the handle's
/// descriptor.
///
/// A three-state futex mutex (`0` free, `1` held, `2` held with possible
/// sleepers): locking is one compare-and-swap and unlocking one swap when
/// nobody waits, so the lock path stays within a few nanoseconds of the two
/// `flock` calls it guards. Sleepers use `sys::futex` on the state word;
/// the word lives in this process's memory, so only this process's threads
/// ever sleep on it.
#[derive(Default)]
pub(crate) struct LocalMutex {
    state: AtomicU32,
    /// [`thread_key`] of the holder, 0 when free. Written only by the
    /// holder (after taking, before releasing): reading our own key here
    /// means we hold the lock.
    owner: AtomicU64,
}

impl LocalMutex {
    /// Takes the local lock; `Deadlock` if the calling thread holds it.
    #[inline]
    pub(crate) fn lock(&self, how: Acquire) -> Result<(), RawLockError> {
        let me = thread_key();
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow(me, how)?;
        }
        self.owner.store(me, Ordering::Relaxed);
        Ok(())
    }

    #[cold]
    fn lock_slow(&self, me: u64, how: Acquire) -> Result<(), RawLockError> {
        if self.owner.load(Ordering::Relaxed) == me {
            return Err(RawLockError::Deadlock);
        }
        if let Acquire::Try = how {
            // Before marking sleepers: a failed try costs the holder nothing.
            return Err(RawLockError::WouldBlock);
        }
        loop {
            // Mark "held, maybe sleepers": whoever unlocks will wake one.
            if self.state.swap(2, Ordering::Acquire) == 0 {
                return Ok(());
            }
            let timeout = match how {
                Acquire::Try | Acquire::Block => None,
                Acquire::Until(deadline) => {
                    let left = deadline.remaining();
                    if left.is_zero() {
                        return Err(RawLockError::TimedOut);
                    }
                    Some(left)
                }
            };
            // Returns on a wake, a changed word, a signal or the timeout;
            // the loop re-checks in every case.
            sys::futex::wait(&self.state, 2, timeout).map_err(RawLockError::Os)?;
        }
    }

    /// Releases the local lock (after the caller's `LOCK_UN`).
    #[inline]
    pub(crate) fn unlock(&self) {
        self.owner.store(0, Ordering::Relaxed);
        if self.state.swap(0, Ordering::Release) == 2 {
            let _ = sys::futex::wake(&self.state, 1);
        }
    }
}

/// Which lock a thread wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Shared,
    Exclusive,
}

/// The process-local shared/exclusive lock of a standalone `FileLock`.
///
/// States: `Free` → (one thread takes the token) `Acquiring` → `Shared`
/// (threads join without a system call) or `Exclusive` → `Free` after the
/// last holder's `LOCK_UN`. Only the token holder (`Acquiring`), the
/// exclusive holder, or the last shared holder (under the mutex) touches
/// the descriptor.
#[derive(Default)]
pub(crate) struct LocalRw {
    state: Mutex<RwState>,
    cv: Condvar,
}

#[derive(Default)]
struct RwState {
    phase: Phase,
    /// The exclusive holder, or the thread acquiring.
    writer: u64,
    /// Threads holding shared, with how many guards each.
    readers: Vec<(u64, u32)>,
    writers_waiting: u32,
    waiters: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Free,
    Acquiring,
    Shared,
    Exclusive,
}

/// What [`LocalRw::begin`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Begin {
    /// A shared lock is held already by this process: joined, nothing to do.
    Joined,
    /// The caller holds the token and must call `flock`, then
    /// [`LocalRw::finish`].
    MustLock,
}

impl RwState {
    fn reader_count(&self, me: u64) -> u32 {
        self.readers
            .iter()
            .find(|(t, _)| *t == me)
            .map_or(0, |(_, n)| *n)
    }
}

impl LocalRw {
    /// The process-local half of an acquire.
    pub(crate) fn begin(&self, mode: Mode, how: Acquire) -> Result<Begin, RawLockError> {
        let me = thread_key();
        let mut st = lock_state(&self.state);
        loop {
            // A thread asking again for what it holds (or for an exclusive
            // lock while it holds a shared one: flock has no atomic
            // upgrade) would wait for itself.
            let mine = st.reader_count(me);
            if (st.phase == Phase::Exclusive && st.writer == me)
                || (mode == Mode::Exclusive && mine > 0)
            {
                return Err(RawLockError::Deadlock);
            }
            match (mode, st.phase) {
                (_, Phase::Free) => {
                    st.phase = Phase::Acquiring;
                    st.writer = me;
                    return Ok(Begin::MustLock);
                }
                // Join a shared lock, unless a writer of this process waits
                // (so readers cannot starve it) — recursion and `try` join
                // anyway.
                (Mode::Shared, Phase::Shared)
                    if st.writers_waiting == 0 || mine > 0 || matches!(how, Acquire::Try) =>
                {
                    match st.readers.iter_mut().find(|(t, _)| *t == me) {
                        Some((_, n)) => *n += 1,
                        None => st.readers.push((me, 1)),
                    }
                    return Ok(Begin::Joined);
                }
                _ => {}
            }
            let writer = mode == Mode::Exclusive;
            st.waiters += 1;
            st.writers_waiting += u32::from(writer);
            let r = wait(&self.cv, st, how);
            let (mut s, err) = match r {
                Ok(s) => (s, None),
                Err((s, e)) => (s, Some(e)),
            };
            s.waiters -= 1;
            s.writers_waiting -= u32::from(writer);
            if let Some(e) = err {
                // Readers held back for a writer that gives up may go on.
                if writer && s.waiters > 0 {
                    self.cv.notify_all();
                }
                return Err(e);
            }
            st = s;
        }
    }

    /// Ends the acquire the token holder began: `locked` tells whether its
    /// `flock` succeeded.
    pub(crate) fn finish(&self, mode: Mode, locked: bool) {
        let me = thread_key();
        let mut st = lock_state(&self.state);
        debug_assert!(st.phase == Phase::Acquiring && st.writer == me);
        match (locked, mode) {
            (false, _) => {
                st.phase = Phase::Free;
                st.writer = 0;
            }
            (true, Mode::Exclusive) => st.phase = Phase::Exclusive,
            (true, Mode::Shared) => {
                st.phase = Phase::Shared;
                st.writer = 0;
                st.readers.push((me, 1));
            }
        }
        if st.waiters > 0 {
            self.cv.notify_all();
        }
    }

    /// Releases the calling thread's hold; `unlock_fd` (the `LOCK_UN`) runs
    /// under the local mutex when this was the process's last hold.
    pub(crate) fn release(&self, mode: Mode, unlock_fd: impl FnOnce()) {
        let me = thread_key();
        let mut st = lock_state(&self.state);
        let last = match mode {
            Mode::Exclusive => {
                debug_assert!(st.phase == Phase::Exclusive && st.writer == me);
                true
            }
            Mode::Shared => {
                if let Some(i) = st.readers.iter().position(|(t, _)| *t == me) {
                    st.readers[i].1 -= 1;
                    if st.readers[i].1 == 0 {
                        st.readers.swap_remove(i);
                    }
                }
                st.readers.is_empty()
            }
        };
        if last {
            unlock_fd();
            st.phase = Phase::Free;
            st.writer = 0;
            if st.waiters > 0 {
                self.cv.notify_all();
            }
        }
    }
}
