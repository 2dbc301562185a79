//! `RobustRwLock`: a reader-writer lock for a [`ShmCell`](crate::ShmCell)
//! whose readers and writers may be killed at any instruction.
//!
//! # Shape
//!
//! * **Writers** serialise on a [`RobustMutex`] in the segment; its owner
//!   death is a writer's death. A writer then *announces* itself in the
//!   `writer` word (so that new readers wait: no writer starvation), waits
//!   for the reader slots to drain, and marks the value as being written.
//! * **Readers** count themselves in a *reader slot* of the segment: a
//!   fixed table of [`READER_SLOTS`] words, one per handle that reads. A
//!   slot word is `token << 16 | count`: the handle's liveness token
//!   ([`LivenessToken`], an open-file-description lock the kernel drops
//!   when the process dies) and the number of read guards the handle holds
//!   (a handle is `Sync`, so several threads may read through it). The read
//!   path adds one to the slot, makes a full fence (`SeqCst`) and *then*
//!   reads the `writer` word; it backs out and waits if a writer is
//!   announced. No system call when there is no writer.
//! * **Dead readers** are found by the writer that waits for them: a slot
//!   still counting after a wait slice has its token probed
//!   (`F_OFD_GETLK`); a token that nobody holds belongs to a dead handle,
//!   and the writer clears the slot with one compare-and-swap of the whole
//!   word. A reader cannot have damaged the value: the writer gets `Ok`.
//! * **Dead writers** are found by the readers that wait for them, the same
//!   way: the `writer` word holds the writer's token. A writer *thread*
//!   that dies while its process lives is seen through the mutex's
//!   lock word (the kernel's `FUTEX_OWNER_DIED` mark).
//! * **Waiting** is on two futex sequence words, in bounded slices: the
//!   announced writer sleeps on `wseq`, which a reader dropping its count
//!   bumps (only while a writer is announced); readers sleep on `rseq`,
//!   which the writer bumps when it releases or gives up. Probes are due
//!   after slices of 1 ms growing to [`MAX_SLICE`] (on the clock, so that
//!   wake-ups by others never postpone them): the death of the party
//!   waited for is noticed within about that bound.
//!
//! # The `writer` word (`u64`)
//!
//! | value | meaning | a reader | a writer (holding the mutex) |
//! |---|---|---|---|
//! | `0` | no writer | reads | announces |
//! | `token << 2 \| WAITING` | a writer waits for readers; the value is intact | waits; if the writer is dead, clears the word and reads | reports `OwnerDied` (its mutex says so) |
//! | `token << 2 \| WRITING` | a writer holds the write guard (or waits for readers after an owner death): the value may be mid-update | waits; if the writer is dead, marks `DAMAGED` | reports `OwnerDied` |
//! | `token << 2 \| DAMAGED` | a writer died mid-update and nobody repaired the value yet | [`ReadError::WriterDied`] | reports `OwnerDied` |
//! | `u64::MAX` | an owner-died write guard was dropped unrepaired | [`ReadError::NotRecoverable`] | `NotRecoverable` |
//!
//! The pthread mutex itself is made consistent as soon as an acquire sees
//! `EOWNERDEAD`, *after* `DAMAGED` is stored: the word above, not glibc's
//! state, says whether the value needs repair, so that a writer that times
//! out waiting for readers after an owner death can unlock without making
//! the lock not recoverable.
//!
//! # Fairness
//!
//! Writers are preferred: once a writer is announced no new read guard is
//! handed out, so a stream of readers cannot starve writers; the writer
//! waits only for the read guards already out. Writers among themselves are
//! served in the order of the robust mutex (the kernel's futex queue, not
//! strictly FIFO). Readers that waited for a writer all go after it
//! releases (unless another writer got the mutex and announced first:
//! back-to-back writers can delay readers).
//!
//! # Limits
//!
//! * [`READER_SLOTS`] handles may read at the same time (handles that read
//!   and whose process lives); more gets [`ReadError::NoReaderSlot`].
//! * A thread that holds a read guard and calls `lock()` through the same
//!   handle waits for itself (as with std's `RwLock`): use `lock_timeout`
//!   if it can happen. A thread holding the write guard that calls `read()`
//!   gets [`ReadError::Deadlock`].
//! * A read guard taken while a writer waits blocks (writer preference), so
//!   a thread must not take a second read guard while holding one if a
//!   writer may come in between.
//! * The exclusive side is a robust pthread mutex and inherits its limits
//!   (thread ids are pid-namespace local).

pub(crate) mod backend;
mod inspect;
mod local;
mod waiting;

pub use local::RwLocal;
use local::NO_SLOT;
use waiting::{Pace, WaitWord};

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{Acquire, Acquired, RobustMutex};
use crate::error::{RawLockError, ReadError};
use crate::segment::liveness::{self, LivenessToken};
use crate::sys;
use crate::sys::time::Monotonic;

/// The lock backend of `ShmCell<T, RobustRwLock>`: a robust reader-writer
/// lock. Exclusive side: [`ShmCell::lock`](crate::ShmCell::lock),
/// [`try_lock`](crate::ShmCell::try_lock),
/// [`lock_timeout`](crate::ShmCell::lock_timeout), with the usual guard and
/// [`OwnerDied`](crate::LockError::OwnerDied). Shared side:
/// [`ShmCell::read`](crate::ShmCell::read),
/// [`try_read`](crate::ShmCell::try_read),
/// [`read_timeout`](crate::ShmCell::read_timeout), returning a
/// [`ShmReadGuard`](crate::ShmReadGuard).
///
/// * A reader killed holding (or waiting for) a read guard never blocks a
///   writer for longer than a short bound, and a writer that finds it dead
///   gets `Ok` (a reader cannot have damaged the value). The proof of death
///   comes from the kernel: each reading handle holds an
///   open-file-description lock on a byte of the segment (its token), which
///   the kernel drops when the process dies, whatever pid reuse, zombies or
///   namespaces do.
/// * A writer killed holding the lock gives the next writer `OwnerDied`;
///   until it repairs the value, `read()` answers
///   [`ReadError::WriterDied`] rather than a value that may be torn, and
///   readers waiting for the dead writer notice its death.
/// * Writers are preferred: a stream of readers cannot starve them.
/// * No system call on an uncontended read.
/// * The exclusive side is a robust pthread mutex and has its limits: the
///   futex word holds namespace-local thread ids, so a cell must not be
///   shared by processes of different pid namespaces (see
///   [`RobustMutex`](crate::RobustMutex)).
///
/// It is a marker type: the lock lives in the segment of a
/// [`ShmCell`](crate::ShmCell) (its readers' liveness locks need the
/// segment's file), there is no standalone `RobustRwLock` value.
#[derive(Debug)]
pub enum RobustRwLock {}

/// The header's `suspect` word: the value was left half-updated by a
/// writer that panicked (or whose owner-died error was converted away);
/// any other non-zero value: not recoverable.
const SUSPECT_WRITER_DIED: u32 = 1;

/// How many handles may hold read guards at the same time.
pub const READER_SLOTS: usize = 64;

/// The longest wait slice between two liveness probes.
pub(crate) const MAX_SLICE: Duration = Duration::from_millis(50);
const FIRST_SLICE: Duration = Duration::from_millis(1);

/// Phases of the `writer` word (low two bits).
pub(crate) mod word {
    /// A writer waits for readers; the value is intact.
    pub(crate) const WAITING: u64 = 1;
    /// A writer holds (or is about to hold) the write guard.
    pub(crate) const WRITING: u64 = 2;
    /// A writer died mid-update; nobody repaired the value yet.
    pub(crate) const DAMAGED: u64 = 3;
    /// The phase bits.
    pub(crate) const PHASE: u64 = 3;
    /// An owner-died guard was dropped unrepaired: for ever.
    pub(crate) const NOT_RECOVERABLE: u64 = u64::MAX;
    /// Slot word: the count bits (the token is above them).
    pub(crate) const COUNT_MASK: u64 = 0xffff;
    /// Slot word: bits the token is shifted by.
    pub(crate) const TOKEN_SHIFT: u32 = 16;
}
use word::*;

/// One cache line, so that readers of two processes never share one.
#[repr(C, align(64))]
pub(crate) struct Line<T>(pub(crate) T);

/// The lock's state in the segment (zeroed, then the mutex initialised).
///
/// # Invariants
///
/// * `writer` is changed only by the holder of `mutex` — except that a
///   process that proved the writer's token dead may move `WAITING → 0` and
///   `WRITING → DAMAGED` with a compare-and-swap of the whole word.
/// * A slot word is claimed (`0 → token << 16`) and counted up and down
///   only by the live holder of that token; anybody who proved the token
///   dead may clear it (compare-and-swap of the whole word, so a slot
///   claimed anew in between is never touched).
/// * `wseq` is bumped after a count drops while a writer is announced;
///   `rseq` after every change of the `writer` word other than a live
///   writer's announcement (a waiter re-reads the word after its sleep).
#[repr(C)]
pub struct RwShared {
    mutex: RobustMutex,
    /// Futex word readers sleep on while a writer is announced: bumped when
    /// the `writer` word is released or changed by a reader.
    rseq: WaitWord,
    /// Futex word the announced writer sleeps on: bumped by a reader that
    /// drops its count while a writer is announced.
    wseq: WaitWord,
    /// One past the highest slot ever claimed (writers scan only that far).
    high: AtomicU32,
    writer: Line<AtomicU64>,
    slots: [Line<AtomicU64>; READER_SLOTS],
}

/// Where [`RwShared`]'s words lie, for the inspector (`pread`).
pub(crate) mod layout {
    use super::RwShared;
    pub(crate) const RSEQ: usize = std::mem::offset_of!(RwShared, rseq);
    pub(crate) const WSEQ: usize = std::mem::offset_of!(RwShared, wseq);
    /// Offset of the waiter count within a wait word.
    pub(crate) const WAITERS_IN_WORD: usize = 4;
    pub(crate) const HIGH: usize = std::mem::offset_of!(RwShared, high);
    pub(crate) const WRITER: usize = std::mem::offset_of!(RwShared, writer);
    pub(crate) const SLOTS: usize = std::mem::offset_of!(RwShared, slots);
    pub(crate) const SLOT_STRIDE: usize = 64;
    pub(crate) const SIZE: usize = std::mem::size_of::<RwShared>();
}

/// Whether a token is held by a live handle, probed through `fd`. An error
/// of the probe counts as alive (never clear what cannot be proven dead).
fn token_alive(fd: BorrowedFd<'_>, token: u64) -> bool {
    liveness::is_held(fd, token).unwrap_or(true)
}

impl RwShared {
    /// Initialises the mutex of a zeroed state.
    ///
    /// # Safety
    ///
    /// As [`RobustMutex::init`]: `p` valid, aligned, zeroed, unused.
    pub(crate) unsafe fn init(p: std::ptr::NonNull<RwShared>) -> io::Result<()> {
        // SAFETY: the mutex is the first field of a valid RwShared.
        unsafe { RobustMutex::init(p.cast()) }
    }

    #[inline]
    fn token_of(&self, local: &RwLocal, fd: BorrowedFd<'_>) -> io::Result<u64> {
        let h = local.handle();
        if let Some(t) = h.token.get() {
            return Ok(t.token());
        }
        let _g = h.claiming.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = h.token.get() {
            return Ok(t.token());
        }
        let t = LivenessToken::claim(fd)?;
        Ok(h.token.get_or_init(|| t).token())
    }

    // ----- the shared side -------------------------------------------------

    /// This handle's slot, claimed on first use.
    #[inline]
    fn slot_of(&self, local: &RwLocal, fd: BorrowedFd<'_>) -> Result<&AtomicU64, ReadError> {
        let i = local.handle().slot.load(Ordering::Acquire);
        if i != NO_SLOT {
            return Ok(&self.slots[i as usize].0);
        }
        self.claim_slot(local, fd)
    }

    #[cold]
    fn claim_slot(&self, local: &RwLocal, fd: BorrowedFd<'_>) -> Result<&AtomicU64, ReadError> {
        let token = self.token_of(local, fd).map_err(ReadError::Os)?;
        let h = local.handle();
        let _g = h.claiming.lock().unwrap_or_else(|e| e.into_inner());
        let i = h.slot.load(Ordering::Acquire);
        if i != NO_SLOT {
            return Ok(&self.slots[i as usize].0);
        }
        let mine = token << TOKEN_SHIFT;
        let take = |i: usize, from: u64| {
            let won = self.slots[i]
                .0
                .compare_exchange(from, mine, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if won {
                self.high.fetch_max(i as u32 + 1, Ordering::SeqCst);
                h.slot.store(i as u32, Ordering::Release);
            }
            won
        };
        // A free slot first; then one whose handle is gone (probing costs a
        // system call per slot).
        for i in 0..READER_SLOTS {
            if self.slots[i].0.load(Ordering::SeqCst) == 0 && take(i, 0) {
                return Ok(&self.slots[i].0);
            }
        }
        for i in 0..READER_SLOTS {
            let w = self.slots[i].0.load(Ordering::SeqCst);
            // A writer may clear a dead slot under us: then take it free.
            if (w == 0 || !token_alive(fd, w >> TOKEN_SHIFT)) && (take(i, w) || take(i, 0)) {
                return Ok(&self.slots[i].0);
            }
        }
        Err(ReadError::NoReaderSlot)
    }

    /// Takes a read guard's place in this handle's slot (the guard must
    /// then call [`read_release`](Self::read_release) with the slot).
    #[inline]
    pub(crate) fn read_acquire<'s>(
        &'s self,
        local: &RwLocal,
        fd: BorrowedFd<'_>,
        suspect: &AtomicU32,
        how: Acquire,
    ) -> Result<&'s AtomicU64, ReadError> {
        let slot = self.slot_of(local, fd)?;
        loop {
            let prev = slot.fetch_add(1, Ordering::SeqCst);
            let w = self.writer.0.load(Ordering::SeqCst);
            if w == 0 && prev & COUNT_MASK < COUNT_MASK - 1 {
                // The header's `suspect` word (a writer that panicked, or
                // whose owner-died error was converted away unrepaired)
                // is written before that writer's release, which the load
                // above saw: a relaxed load suffices.
                match suspect.load(Ordering::Relaxed) {
                    0 => return Ok(slot),
                    s => {
                        self.read_release(slot);
                        return Err(if s == SUSPECT_WRITER_DIED {
                            ReadError::WriterDied
                        } else {
                            ReadError::NotRecoverable
                        });
                    }
                }
            }
            // Back out: a writer may be waiting for this very count.
            self.read_release(slot);
            if prev & COUNT_MASK >= COUNT_MASK - 1 {
                return Err(ReadError::Os(io::Error::other(
                    "too many read guards on one handle",
                )));
            }
            self.wait_writer(fd, how)?;
        }
    }

    /// Gives back a read guard's place.
    #[inline]
    pub(crate) fn read_release(&self, slot: &AtomicU64) {
        slot.fetch_sub(1, Ordering::SeqCst);
        if self.writer.0.load(Ordering::SeqCst) != 0 {
            self.wseq.wake();
        }
    }

    /// A reader waits until no writer is announced (`Ok`: try again), or
    /// reports why it cannot read.
    #[cold]
    fn wait_writer(&self, fd: BorrowedFd<'_>, how: Acquire) -> Result<(), ReadError> {
        let mut pace = Pace::new();
        let mut probe = matches!(how, Acquire::Try);
        let reg = self.rseq.register();
        loop {
            let seen = self.rseq.seen();
            let w = self.writer.0.load(Ordering::SeqCst);
            if w == 0 {
                return Ok(());
            }
            if w == NOT_RECOVERABLE {
                return Err(ReadError::NotRecoverable);
            }
            let (token, phase) = (w >> 2, w & PHASE);
            if phase == DAMAGED {
                return Err(ReadError::WriterDied);
            }
            if probe {
                probe = false;
                if self.is_own_write() {
                    return Err(ReadError::Deadlock);
                }
                // Its process is gone (token), or its thread is (the
                // kernel marked the mutex: a thread that exited or
                // `exec`ed holding it).
                if !token_alive(fd, token) || self.mutex.owner_died_unclaimed() {
                    // The announced writer is dead: the value is intact if
                    // it was still waiting for readers, else maybe torn.
                    let next = if phase == WAITING {
                        0
                    } else {
                        w & !PHASE | DAMAGED
                    };
                    if self
                        .writer
                        .0
                        .compare_exchange(w, next, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        self.rseq.wake();
                    }
                    continue;
                }
            }
            match how {
                Acquire::Try => return Err(ReadError::WouldBlock),
                Acquire::Until(deadline) if Monotonic::now() >= deadline => {
                    return Err(ReadError::TimedOut)
                }
                _ => {}
            }
            self.rseq
                .sleep(&reg, seen, &pace, how)
                .map_err(ReadError::Os)?;
            probe = pace.due();
        }
    }

    /// Whether this thread holds the writers' mutex (through any handle):
    /// then waiting for the writer would never end.
    fn is_own_write(&self) -> bool {
        self.mutex.owner_tid() == sys::proc::gettid()
    }

    // ----- the exclusive side ----------------------------------------------

    /// Locks the mutex, announces, waits for readers. See the module docs.
    pub(crate) fn write_acquire(
        &self,
        local: &RwLocal,
        fd: BorrowedFd<'_>,
        how: Acquire,
    ) -> Result<Acquired, RawLockError> {
        // The token first: failing after the mutex would need an unlock.
        let token = self.token_of(local, fd).map_err(RawLockError::Os)?;
        let mut died = match self.mutex.acquire(how)? {
            Acquired::Clean => false,
            Acquired::OwnerDied => {
                // Record the damage before glibc forgets it (see the module
                // docs); a death between the two repeats EOWNERDEAD.
                let w = self.writer.0.load(Ordering::SeqCst);
                if w != NOT_RECOVERABLE && w & PHASE != DAMAGED {
                    self.writer.0.store(w & !PHASE | DAMAGED, Ordering::SeqCst);
                }
                // SAFETY: we hold the mutex, acquired with EOWNERDEAD.
                unsafe { self.mutex.consistent() };
                true
            }
        };
        let before = self.writer.0.load(Ordering::SeqCst);
        if before == NOT_RECOVERABLE {
            // SAFETY: we hold the mutex.
            unsafe { self.mutex.release() };
            return Err(RawLockError::NotRecoverable);
        }
        // Holding the mutex, any word left is a dead writer's.
        died |= before != 0;
        let restore = if died { before | DAMAGED } else { 0 };
        let announce = (token << 2) | if died { WRITING } else { WAITING };
        self.writer.0.store(announce, Ordering::SeqCst);
        if let Err(e) = self.wait_readers(fd, how) {
            self.writer.0.store(restore, Ordering::SeqCst);
            self.rseq.wake();
            // SAFETY: we hold the mutex.
            unsafe { self.mutex.release() };
            return Err(e);
        }
        if !died {
            self.writer
                .0
                .store((token << 2) | WRITING, Ordering::SeqCst);
        }
        Ok(if died {
            Acquired::OwnerDied
        } else {
            Acquired::Clean
        })
    }

    /// Whether a live handle may count a reader: scans the claimed slots;
    /// with `probe`, clears the slots of dead handles on the way.
    fn readers_busy(&self, fd: BorrowedFd<'_>, probe: bool) -> bool {
        let high = (self.high.load(Ordering::SeqCst) as usize).min(READER_SLOTS);
        let mut busy = false;
        for s in &self.slots[..high] {
            let w = s.0.load(Ordering::SeqCst);
            if w & COUNT_MASK == 0 {
                continue;
            }
            // A dead handle's readers are gone for good: clear them (a
            // compare-and-swap of the whole word, so a slot claimed anew
            // meanwhile is left alone).
            if probe
                && !token_alive(fd, w >> TOKEN_SHIFT)
                && s.0
                    .compare_exchange(w, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                continue;
            }
            busy = true;
            if !probe {
                break;
            }
        }
        busy
    }

    /// Waits until no live handle counts a reader. The common case (no
    /// reader) is one scan: no registration, no clock.
    #[inline]
    fn wait_readers(&self, fd: BorrowedFd<'_>, how: Acquire) -> Result<(), RawLockError> {
        if !self.readers_busy(fd, false) {
            return Ok(());
        }
        self.wait_readers_slow(fd, how)
    }

    #[cold]
    fn wait_readers_slow(&self, fd: BorrowedFd<'_>, how: Acquire) -> Result<(), RawLockError> {
        let mut pace = Pace::new();
        let mut probe = matches!(how, Acquire::Try);
        let reg = self.wseq.register();
        loop {
            let seen = self.wseq.seen();
            if !self.readers_busy(fd, probe) {
                return Ok(());
            }
            if matches!(how, Acquire::Try) {
                return Err(RawLockError::WouldBlock);
            }
            if let Acquire::Until(deadline) = how {
                if Monotonic::now() >= deadline {
                    return Err(RawLockError::TimedOut);
                }
            }
            self.wseq
                .sleep(&reg, seen, &pace, how)
                .map_err(RawLockError::Os)?;
            probe = pace.due();
        }
    }

    /// Releases the write side; `consistent == false` (an owner-died guard
    /// dropped unrepaired) leaves it not recoverable.
    ///
    /// # Safety
    ///
    /// The calling thread holds the mutex through a write guard.
    pub(crate) unsafe fn write_release(&self, consistent: bool) {
        let next = if consistent { 0 } else { NOT_RECOVERABLE };
        self.writer.0.store(next, Ordering::SeqCst);
        self.rseq.wake();
        // SAFETY: forwarded from the caller.
        unsafe { self.mutex.release() };
    }

    /// Releases this handle's slot if no guard of it is out (a handle
    /// being dropped). A slot left behind is reclaimed once its token dies.
    pub(crate) fn detach(&self, local: &RwLocal) {
        let h = local.handle();
        let i = h.slot.load(Ordering::Acquire);
        if let (Some(t), true) = (h.token.get(), i != NO_SLOT) {
            let _ = self.slots[i as usize].0.compare_exchange(
                t.token() << TOKEN_SHIFT,
                0,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }
}
