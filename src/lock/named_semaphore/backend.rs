//! The lock backend `ShmCell<T, NamedSemaphore>`: the holder record in the
//! segment is the lock; the cell's semaphore `sem.NAME` only carries
//! wake-ups. Its design is documented on [`NamedSemaphore`], its shared
//! state on [`SemLockState`].

use std::io;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::identity::{own_pid, own_thread};
use super::{create_companion, NamedSemaphore, MAX_SEM_NAME, SLICE};
use crate::error::{Error, RawLockError};
use crate::lock::describe::{LockArea, LockInfo};
use crate::lock::per_process::PerProcess;
use crate::lock::sealed::Backend;
use crate::lock::spin::{self, Budget};
use crate::lock::{Acquire, Acquired, LockBackend};
use crate::segment::liveness::{self, LivenessToken};
use crate::segment::{LockKind, Segment};
use crate::sys;
use crate::sys::errno;
use crate::sys::sem::SemHandle;
use crate::sys::time::Monotonic;

const CONSISTENT: u32 = 0;
const OWNER_DIED: u32 = 1;
const NOT_RECOVERABLE: u32 = 2;

/// The semaphore backend's state in the segment. All-zero is "free and
/// consistent".
///
/// | word | values |
/// |---|---|
/// | `holder` (u64) | `0` free; else the holder handle's liveness token (see [`liveness`]): the kernel says whether it is still held, whatever the pid and time namespaces, pid reuse or zombies |
/// | `holder_thread` (u64) | identity of the holding thread (for `Deadlock`; never reused, unlike thread ids), `0` while free or not yet written |
/// | `state` (u32) | `0` consistent; `1` owner died (the holder took the lock from a dead one and has not made it consistent); `2` not recoverable (final) |
/// | `waiters` (u32) | threads sleeping on the semaphore |
/// | `holder_pid` (u32) | pid of the holder, in its own pid namespace (diagnostic only) |
/// | `holder_tid` (u32) | thread id of the holder, in its own pid namespace (diagnostic only) |
///
/// Only the holder writes `state`, `holder_thread`, `holder_pid` and
/// `holder_tid`. `holder` moves `0 → me` (acquire), `dead → me`
/// (take-over, once the kernel says the token is not held), `me → 0`
/// (release).
/// The releaser's SeqCst store of `holder` followed by a SeqCst load of
/// `waiters`, against the waiter's SeqCst increment of `waiters` followed
/// by a SeqCst load of `holder`, guarantees that a release is never missed
/// by a waiter about to sleep. A dead holder's writes are all visible to
/// whoever finds it dead: its exit went through the kernel.
#[repr(C, align(8))]
#[derive(Debug)]
pub struct SemLockState {
    holder: AtomicU64,
    holder_thread: AtomicU64,
    state: AtomicU32,
    waiters: AtomicU32,
    holder_pid: AtomicU32,
    holder_tid: AtomicU32,
}

/// Where [`SemLockState`]'s words lie, for the inspector
/// ([`inspect`](crate::inspect)), which reads them with
/// `pread` and never through a mapping.
pub(crate) mod layout {
    use super::SemLockState;

    /// Offset of the `holder` token word (u64).
    pub(crate) const HOLDER: usize = std::mem::offset_of!(SemLockState, holder);
    /// Offset of the `holder_thread` word (u64).
    pub(crate) const HOLDER_THREAD: usize = std::mem::offset_of!(SemLockState, holder_thread);
    /// Offset of the `holder_pid` word (u32).
    pub(crate) const HOLDER_PID: usize = std::mem::offset_of!(SemLockState, holder_pid);
    /// Offset of the `state` word (u32).
    pub(crate) const STATE: usize = std::mem::offset_of!(SemLockState, state);
    /// Offset of the `waiters` word (u32).
    pub(crate) const WAITERS: usize = std::mem::offset_of!(SemLockState, waiters);
    /// Offset of the `holder_tid` word (u32).
    pub(crate) const HOLDER_TID: usize = std::mem::offset_of!(SemLockState, holder_tid);
    /// Bytes the inspector reads.
    pub(crate) const SIZE: usize = std::mem::size_of::<SemLockState>();
    /// `state`: taken from a dead holder, not made consistent yet.
    pub(crate) const OWNER_DIED: u32 = super::OWNER_DIED;
    /// `state`: not recoverable.
    pub(crate) const NOT_RECOVERABLE: u32 = super::NOT_RECOVERABLE;
}

/// The per-handle state: the open semaphore waiters sleep on, and this
/// process's liveness token (a forked child claims its own on first use).
pub struct SemLocal {
    sem: SemHandle,
    /// Dropped with the handle, unless `keep_token` (a forgotten guard
    /// holds the lock: the token, which proves the holder alive, then lives
    /// as long as the process).
    token: ManuallyDrop<PerProcess<LivenessToken>>,
    keep_token: AtomicBool,
}

impl Drop for SemLocal {
    fn drop(&mut self) {
        if !self.keep_token.load(Ordering::Relaxed) {
            // SAFETY: dropped once, here; never used after.
            unsafe { ManuallyDrop::drop(&mut self.token) }
        }
    }
}

impl std::fmt::Debug for SemLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemLocal")
            .field("sem", &self.sem)
            .finish_non_exhaustive()
    }
}

impl SemLocal {
    /// This process's token for this handle: one relaxed load and a compare
    /// on the fast path; claimed anew in a forked child (the inherited
    /// description was detached there by the fork handler).
    #[inline]
    fn token(&self, seg: &Segment) -> io::Result<u64> {
        self.token
            .get(|_| LivenessToken::claim(seg.fd()), |_| {})
            .map(LivenessToken::token)
    }
}

impl SemLockState {
    /// The lock is ours (holder word set): finish according to `state`.
    #[inline]
    fn won(&self, sem: &SemHandle, me: u64, took_over: bool) -> Result<Acquired, RawLockError> {
        crate::steps::step("sem:holder-set");
        let acquired = match self.state.load(Ordering::Acquire) {
            NOT_RECOVERABLE => {
                // Never hold a not-recoverable lock: give it back.
                self.give_back(sem, me, false);
                return Err(RawLockError::NotRecoverable);
            }
            OWNER_DIED => Acquired::OwnerDied,
            _ if took_over => {
                self.state.store(OWNER_DIED, Ordering::Relaxed);
                crate::steps::step("sem:owner-died-recorded");
                Acquired::OwnerDied
            }
            _ => Acquired::Clean,
        };
        let me = own_thread();
        self.holder_thread.store(me.id, Ordering::Relaxed);
        self.holder_tid.store(me.tid, Ordering::Relaxed);
        self.holder_pid.store(own_pid(), Ordering::Relaxed);
        crate::steps::step("sem:holder-recorded");
        Ok(acquired)
    }

    /// Clears the holder word and wakes a sleeper if there is one (all of
    /// them when the lock just became not recoverable).
    #[inline]
    fn give_back(&self, sem: &SemHandle, me: u64, all: bool) {
        self.holder_thread.store(0, Ordering::Relaxed);
        self.holder_tid.store(0, Ordering::Relaxed);
        self.holder_pid.store(0, Ordering::Relaxed);
        crate::steps::step("sem:record-cleared");
        // Only our own record is cleared: if another process took the lock
        // over (it found our token dropped: a handle dropped under a
        // forgotten guard), its lock is not ours to free.
        // SeqCst exchange, then SeqCst load of `waiters`: paired with the
        // waiter's SeqCst increment and re-load of `holder`, at least one
        // of the two sees the other (no lost wake-up).
        if self
            .holder
            .compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        crate::steps::step("sem:holder-cleared");
        let waiters = self.waiters.load(Ordering::SeqCst);
        if waiters > 0 {
            wake(sem, if all { waiters.min(1024) } else { 1 });
        }
    }

    /// The contended acquire. A lock that reads free is tried; one that is
    /// held is first spun on ([`spin_then_try`](Self::spin_then_try): reads
    /// only, tries whenever it reads free), and only once that spin is
    /// spent is the kernel asked whether the holder lives (a system call)
    /// and, if it does, the semaphore slept on for at most a [`SLICE`];
    /// after each sleep the same again. A try that loses a race goes back to
    /// the spin, never to sleep, while the spin is not spent.
    #[cold]
    fn acquire_slow(
        &self,
        local: &SemLocal,
        seg: &Segment,
        me: u64,
        how: Acquire,
    ) -> Result<Acquired, RawLockError> {
        // `try_lock` never spins: it asks the kernel at once.
        let mut may_spin = !matches!(how, Acquire::Try);
        loop {
            if self.state.load(Ordering::Acquire) == NOT_RECOVERABLE {
                return Err(RawLockError::NotRecoverable);
            }
            let cur = self.holder.load(Ordering::Relaxed);
            if cur == 0 {
                if self
                    .holder
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return self.won(&local.sem, me, false);
                }
                continue;
            }
            // Only this thread ever writes its identity there, and it
            // clears it before it releases: equal means this very thread
            // holds the lock (through this handle or another one).
            if self.holder_thread.load(Ordering::Relaxed) == own_thread().id {
                return Err(RawLockError::Deadlock);
            }
            if may_spin {
                may_spin = false;
                let limit = match how {
                    Acquire::Until(deadline) => Some(deadline.remaining()),
                    _ => None,
                };
                if limit != Some(Duration::ZERO) {
                    if let Some(answer) = self.spin_then_try(&local.sem, me, limit) {
                        return answer;
                    }
                }
                // Spent: the holder is slow, or dead (a dead holder's
                // token stays in the word; only the kernel can tell).
                continue;
            }
            if cur != me {
                // (cur == me: another thread of this process through this
                // handle, alive by definition.)
                // The kernel's answer: the token's lock goes with the
                // holder's last descriptor of it, when it dies or execs.
                if !liveness::is_held(seg.fd(), cur).map_err(RawLockError::Os)? {
                    if self
                        .holder
                        .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return self.won(&local.sem, me, true);
                    }
                    continue;
                }
            }
            // Taken by a live holder.
            let slice_end = match how {
                Acquire::Try => return Err(RawLockError::WouldBlock),
                Acquire::Until(deadline) => {
                    if Monotonic::now() >= deadline {
                        return Err(RawLockError::TimedOut);
                    }
                    deadline.min(Monotonic::now().after(SLICE))
                }
                Acquire::Block => Monotonic::now().after(SLICE),
            };
            self.sleep(&local.sem, slice_end)?;
            may_spin = true;
        }
    }

    /// Spins on the holder word within this thread's adaptive budget (at
    /// most `limit`), reading only, and tries to take the lock whenever it
    /// reads free ([`spin::spin_then_try`]). `None`: the budget is spent.
    ///
    /// Owner death ends no spin by itself: a dead holder's token stays in
    /// the word, so a spin on it is spent (at most [`spin::MAX_NS`], less
    /// once the CPUs are found oversubscribed) before the caller asks the
    /// kernel. Not-recoverable is reported by the try ([`won`](Self::won)).
    #[cold]
    #[inline(never)]
    fn spin_then_try(
        &self,
        sem: &SemHandle,
        me: u64,
        limit: Option<Duration>,
    ) -> Option<Result<Acquired, RawLockError>> {
        spin::spin_then_try(
            Budget::SemLock,
            limit,
            || self.holder.load(Ordering::Relaxed) == 0,
            || {
                self.holder
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                    .then(|| self.won(sem, me, false))
            },
        )
    }

    /// Sleeps on the semaphore until a post or `until`, unless the lock was
    /// released after we announced ourselves.
    fn sleep(&self, sem: &SemHandle, until: Monotonic) -> Result<(), RawLockError> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let result = if self.holder.load(Ordering::SeqCst) == 0
            || self.state.load(Ordering::Acquire) == NOT_RECOVERABLE
        {
            Ok(())
        } else {
            sys::sem::sem_clockwait_monotonic(sem, &until.to_timespec()).map(drop)
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result.map_err(RawLockError::Os)
    }
}

/// Posts `n` wake-ups, but only if no token is pending already (a token
/// left by a waiter that did not sleep after all would otherwise pile up).
fn wake(sem: &SemHandle, n: u32) {
    let pending = sys::sem::sem_getvalue(sem).unwrap_or(0);
    for _ in pending..n {
        let _ = sys::sem::sem_post(sem);
    }
}

/// Makes the semaphore of the Ready cell `name` (segment `seg_st`) again
/// when it is missing, and opens it. It carries only wake-ups (the lock
/// state is in the segment), so a new one loses nothing: without this, a
/// process killed in `unlink` or `clean` after removing the semaphore and
/// before removing the name would leave a cell that no process can open
/// (and `open_or_create` refuses) until someone unlinks it by hand.
///
/// Only the segment's owner remakes it, and only while the name still
/// refers to this segment: a cell whose name is gone was being removed, and
/// a semaphore made for it would be an orphan (`NotFound`, as for an open
/// that lost the race with `unlink`).
fn remake_missing(name: &str, seg_st: &sys::fd::FileStat) -> Result<SemHandle, Error> {
    let missing = || Error::Corrupted {
        what: format!("the cell's semaphore sem.{} is missing", &name[1..]),
    };
    if sys::proc::geteuid() != seg_st.uid() {
        return Err(missing());
    }
    match sys::fd::lstat(&crate::segment::name::shm_path(name)) {
        Ok(p) if p.same_file(seg_st) => {}
        Ok(_) => return Err(Error::NotFound { name: name.into() }),
        Err(e) if e.raw_os_error() == Some(errno::ENOENT) => {
            return Err(Error::NotFound { name: name.into() })
        }
        Err(e) => return Err(Error::io("lstat", e)),
    }
    NamedSemaphore::validate(name)?;
    match create_companion(name, seg_st.ino(), seg_st.mode() & 0o777) {
        Ok(()) => {}
        // Another opener made it first.
        Err(e) if e.raw_os_error() == Some(errno::EEXIST) => {}
        Err(e) => return Err(Error::from_io("create sem.NAME", name, e)),
    }
    super::open_checked(name, Some(seg_st.uid())).map_err(|e| match e {
        Error::NotFound { .. } => missing(),
        e => e,
    })
}

/// Removes the semaphore of the cell `name` (`sem_unlink`); an absent one
/// is fine.
pub(crate) fn unlink_cell_semaphore(name: &str) -> Result<(), Error> {
    let cname = NamedSemaphore::validate(name)?;
    match sys::sem::sem_unlink(&cname) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::from_io("sem_unlink", name, e)),
    }
}

#[allow(private_interfaces)] // sealed trait, see lock/mod.rs
impl Backend for NamedSemaphore {
    const KIND: LockKind = LockKind::NamedSemaphore;
    // The holder record names a token, not a mapping: unmapping a
    // forgotten guard's view changes nothing for other processes (the
    // token itself is kept: `keep_alive_while_held`).
    const KEEP_MAPPING_WHILE_HELD: bool = false;
    const MAX_NAME: usize = MAX_SEM_NAME;
    type Shared = SemLockState;
    type Local = SemLocal;

    unsafe fn init_shared(_p: NonNull<SemLockState>, seg: &Segment) -> io::Result<()> {
        // The zeroed state is "free, consistent, no waiters". What remains
        // is the semaphore, which must exist before the segment is Ready.
        let name = seg.name();
        let cname =
            NamedSemaphore::validate(name).map_err(|_| errno::error(errno::ENAMETOOLONG))?;
        let st = sys::fd::fstat(seg.fd())?;
        // A semaphore of that name is removed only if it is provably a
        // cell's leftover: marked by a cell of this user. The name refers
        // to this segment (we hold its exclusive lock, it is not Ready), so
        // a mark with this segment's inode is a dead creator's, and one
        // with another inode an orphan whose segment's name is gone (a
        // `Segment::unlink`, or an opener that made the semaphore again
        // while an unlinker removed the name): nobody can reach it by
        // name any more, and the processes still attached to that old cell
        // keep their open semaphore. Anything else (a standalone semaphore
        // in use, another user's) stays, and the create fails with EEXIST
        // (AlreadyExists).
        if super::companion_of(name).is_some() {
            match sys::sem::sem_unlink(&cname) {
                Err(e) if e.raw_os_error() != Some(errno::ENOENT) => return Err(e),
                _ => {}
            }
        }
        // Made whole and marked, then linked (see `create_companion`);
        // each handle opens its own in `attach`.
        match create_companion(name, st.ino(), st.mode() & 0o777) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(errno::EEXIST) => {
                return Err(io::Error::other(Error::AlreadyExists {
                    name: format!("/sem.{}", &name[1..]),
                }))
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn attach(seg: &Segment) -> Result<SemLocal, Error> {
        // Liveness is proven by a kernel lock, not by pids or start times:
        // processes in other pid and time namespaces are fine.
        sys::fork::register_fork_handler();
        let token = LivenessToken::claim(seg.fd())
            .map_err(|e| Error::io("liveness token (fcntl(F_OFD_SETLK))", e))?;
        let name = seg.name();
        // The header (checked already) says the creator made the semaphore
        // before publishing Ready: it is opened, never created by name
        // (a missing one is remade whole and linked, see `remake_missing`).
        // The file is checked before glibc maps it (size, type) and must
        // belong to the segment's owner (a planted one is refused).
        let st = sys::fd::fstat(seg.fd()).map_err(|e| Error::io("fstat", e))?;
        let sem = match super::open_checked(name, Some(st.uid())) {
            // The segment is Ready, so its semaphore was made: a process
            // died in `unlink` or `clean` between removing it and removing
            // the name (or someone removed it).
            Err(Error::NotFound { .. }) => remake_missing(name, &st)?,
            other => other?,
        };
        Ok(SemLocal {
            sem,
            token: ManuallyDrop::new(PerProcess::new(token)),
            keep_token: AtomicBool::new(false),
        })
    }

    #[inline]
    fn acquire(
        shared: &SemLockState,
        local: &SemLocal,
        seg: &Segment,
        how: Acquire,
    ) -> Result<Acquired, RawLockError> {
        let me = local.token(seg).map_err(RawLockError::Os)?;
        if shared
            .holder
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return shared.won(&local.sem, me, false);
        }
        shared.acquire_slow(local, seg, me, how)
    }

    #[inline]
    unsafe fn release(shared: &SemLockState, local: &SemLocal, seg: &Segment, consistent: bool) {
        let nr = !consistent;
        if nr {
            // An owner death nobody repaired: the value cannot be trusted
            // again, by anyone.
            shared.state.store(NOT_RECOVERABLE, Ordering::Relaxed);
        }
        // The token acquire used (same process: no claim, no failure).
        let Ok(me) = local.token(seg) else { return };
        shared.give_back(&local.sem, me, nr);
    }

    unsafe fn make_consistent(shared: &SemLockState, _: &SemLocal, _: &Segment) {
        shared.state.store(CONSISTENT, Ordering::Relaxed);
    }

    fn keep_alive_while_held(local: &SemLocal) {
        local.keep_token.store(true, Ordering::Relaxed);
    }

    fn describe(area: &LockArea<'_>) -> LockInfo {
        super::inspect::describe(area)
    }

    fn unlink_companions(name: &str) -> Result<(), Error> {
        unlink_cell_semaphore(name)
    }
}

impl LockBackend for NamedSemaphore {}

impl SemLockState {
    /// The pid of the process holding the lock now, if any (a snapshot,
    /// read without locking; the holder may be dead and not yet taken
    /// over).
    ///
    /// The pid is numbered in the holder's pid namespace, and is written
    /// right after the lock is taken (`None` for that moment too).
    pub(crate) fn holder_pid(&self) -> Option<u32> {
        match self.holder.load(Ordering::Relaxed) {
            0 => None,
            _ => Some(self.holder_pid.load(Ordering::Relaxed)).filter(|&p| p != 0),
        }
    }

    /// How many threads sleep on the cell's semaphore now (a snapshot).
    pub(crate) fn sleeping_waiters(&self) -> u32 {
        self.waiters.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image `create_companion` writes is byte for byte what
    /// `sem_open(O_CREAT)` writes into a new semaphore file.
    #[test]
    fn shared_image_is_what_sem_open_writes() {
        for value in [0, 3] {
            let name = format!("/shmsync-unit-image-{}-{value}", sys::proc::getpid());
            let cname = NamedSemaphore::validate(&name).unwrap();
            let sem = sys::sem::sem_create_excl(&cname, 0o600, value).unwrap();
            let path = format!("/dev/shm/sem.{}", &name[1..]);
            let bytes = std::fs::read(&path).unwrap();
            sys::sem::sem_unlink(&cname).unwrap();
            drop(sem);
            let image = sys::sem::shared_image(value).unwrap();
            assert_eq!(&bytes[..], &image[..], "value {value}");
        }
    }

    #[test]
    fn state_is_32_bytes_aligned_8() {
        assert_eq!(std::mem::size_of::<SemLockState>(), 32);
        assert_eq!(std::mem::align_of::<SemLockState>(), 8);
    }
}
