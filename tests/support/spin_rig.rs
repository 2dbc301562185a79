//! The rig of `tests/robust_spin.rs` (included there with `#[path]`): the
//! shared counter value every adversary process increments, its checks and
//! its repair, words shared outside the cell, and small process tools.
//!
//! # The value: [`Tally`]
//!
//! An increment is a critical section of six steps, each one store in
//! program order (`SeqCst` atomics: the compiler neither merges nor
//! reorders them, so a process SIGKILLed anywhere leaves a prefix of them):
//!
//! 1. `holder = token` (the holder's pid and the number of its critical
//!    section), 2. `busy = id + 1`,
//! 3. `count = c + 1` — `c` read before a spin: a second holder in the
//!    section would lose an increment, and its own `holder` store would be
//!    seen by the first one's checks during the spin,
//! 4. `done[id] += 1`, 5. `busy = 0`, 6. `holder = 0`.
//!
//! (A test can make the holder die after any step: see
//! [`Tally::increment_steps`].)
//!
//! So, with the lock free and consistent: `busy == 0`, `holder == 0`,
//! `count == Σ done`. A clean acquire that finds anything else got the lock
//! of a holder that died mid-increment without being told (a lost owner
//! death). An `OwnerDied` acquire finds `count - Σ done ∈ {0, 1}` (1 only
//! with `busy` set), logs the death (`found[reports] = holder`), and rolls
//! the increment back.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use shmsync::{LockError, ShmCell, ShmGuard, ShmSafe};

/// Worker incarnations (ids) a test may use, and owner-death reports it
/// may log.
pub const IDS: usize = 256;

/// The counter the adversaries share (see the module docs).
#[derive(ShmSafe)]
#[repr(C)]
pub struct Tally {
    pub count: AtomicU64,
    /// `id + 1` of a holder between steps 2 and 5, else 0.
    pub busy: AtomicU64,
    /// The token of a holder between steps 1 and 6, else 0.
    pub holder: AtomicU64,
    /// Set by the test: workers end at their next lock.
    pub stop: AtomicU64,
    /// Owner deaths reported (`OwnerDied` acquires), by every process.
    pub reports: AtomicU64,
    /// Panics begun while holding, counted by the panicking holder.
    pub panics: AtomicU64,
    /// Completed increments per worker id.
    pub done: [AtomicU64; IDS],
    /// Per report, the `holder` it found (0: died outside steps 1–6).
    pub found: [AtomicU64; IDS],
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            count: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            holder: AtomicU64::new(0),
            stop: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            done: std::array::from_fn(|_| AtomicU64::new(0)),
            found: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub fn done_sum(&self) -> u64 {
        self.done.iter().map(|d| d.load(SeqCst)).sum()
    }

    /// One increment by worker `id` (steps 1–6), spinning `inside` times
    /// between reading and writing the count, checking all along that no
    /// other process wrote `holder`.
    pub fn increment(&self, id: usize, token: u64, inside: u32) {
        self.increment_steps(id, token, inside, |_| {});
    }

    /// [`increment`](Self::increment), calling `after(k)` once `k` of its
    /// six steps are done (`k` = 0 ..= 6): where a test makes it die.
    pub fn increment_steps(&self, id: usize, token: u64, inside: u32, mut after: impl FnMut(u32)) {
        after(0);
        self.holder.store(token, SeqCst);
        after(1);
        self.busy.store(id as u64 + 1, SeqCst);
        after(2);
        let c = self.count.load(SeqCst);
        for i in 0..inside {
            std::hint::spin_loop();
            if i % 8 == 0 {
                self.assert_holder(token);
            }
        }
        self.count.store(c + 1, SeqCst);
        after(3);
        self.assert_holder(token);
        self.done[id].store(self.done[id].load(SeqCst) + 1, SeqCst);
        after(4);
        self.busy.store(0, SeqCst);
        after(5);
        self.holder.store(0, SeqCst);
        after(6);
    }

    fn assert_holder(&self, token: u64) {
        let h = self.holder.load(SeqCst);
        assert_eq!(h, token, "two holders at once: {token:#x} and {h:#x}");
    }

    /// What a clean acquire must find.
    pub fn check_clean(&self, who: &str) -> Result<(), String> {
        let (busy, holder) = (self.busy.load(SeqCst), self.holder.load(SeqCst));
        if busy != 0 || holder != 0 {
            return Err(format!(
                "{who}: a clean lock found holder {holder:#x} mid-increment (busy {busy}): \
                 an owner death was not reported"
            ));
        }
        let (count, sum) = (self.count.load(SeqCst), self.done_sum());
        if count != sum {
            return Err(format!(
                "{who}: count {count} != {sum} completed increments"
            ));
        }
        Ok(())
    }

    /// What an `OwnerDied` acquire does: checks what the dead holder left,
    /// logs the report and rolls a half-done increment back. Returns the
    /// holder it found.
    pub fn repair(&self, who: &str) -> Result<u64, String> {
        let (count, sum) = (self.count.load(SeqCst), self.done_sum());
        let (busy, holder) = (self.busy.load(SeqCst), self.holder.load(SeqCst));
        if !(count == sum || (count == sum + 1 && busy != 0)) || (busy != 0 && holder == 0) {
            return Err(format!(
                "{who}: after an owner death: count {count}, completed {sum}, busy {busy}, \
                 holder {holder:#x}"
            ));
        }
        let n = self.reports.load(SeqCst) as usize;
        if n >= IDS {
            return Err(format!("{who}: more owner deaths than the log holds"));
        }
        if holder != 0 && (0..n).any(|i| self.found[i].load(SeqCst) == holder) {
            return Err(format!(
                "{who}: the death of {holder:#x} was reported twice"
            ));
        }
        self.found[n].store(holder, SeqCst);
        self.reports.store(n as u64 + 1, SeqCst);
        self.count.store(sum, SeqCst);
        self.busy.store(0, SeqCst);
        self.holder.store(0, SeqCst);
        Ok(holder)
    }
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::new()
    }
}

/// A lock answer turned into a guard: clean (checked) or owner-died
/// (repaired and made consistent); any other answer is an error.
pub fn checked<'a>(
    who: &str,
    r: Result<ShmGuard<'a, Tally>, LockError<ShmGuard<'a, Tally>>>,
) -> Result<ShmGuard<'a, Tally>, String> {
    match r {
        Ok(g) => g.check_clean(who).map(|()| g),
        Err(LockError::OwnerDied(g)) => {
            g.repair(who)?;
            g.make_consistent();
            Ok(g)
        }
        Err(e) => Err(format!("{who}: lock answered {e:?}")),
    }
}

/// `u64` words shared by the test and its children outside the cell, in
/// `/dev/shm/NAME.words` (a [`TestName`](shmsync::testing::TestName)
/// removes `NAME.*` on drop).
pub struct SharedWords {
    ptr: *mut AtomicU64,
}

/// Words in a [`SharedWords`].
pub const WORDS: usize = 1024;

impl SharedWords {
    pub fn create(name: &str) -> SharedWords {
        SharedWords::map(name, true)
    }

    pub fn open(name: &str) -> SharedWords {
        SharedWords::map(name, false)
    }

    fn map(name: &str, create: bool) -> SharedWords {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .open(format!("/dev/shm{name}.words"))
            .expect("the shared words' file");
        if create {
            f.set_len((WORDS * 8) as u64).unwrap();
        }
        // SAFETY: a new shared mapping of the whole file (WORDS * 8 bytes,
        // zero-filled), not aliased by any Rust reference.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                WORDS * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap the shared words");
        SharedWords { ptr: p.cast() }
    }

    pub fn get(&self, i: usize) -> &AtomicU64 {
        assert!(i < WORDS);
        // SAFETY: the page-aligned mapping holds WORDS AtomicU64s, every
        // bit pattern valid, and lives as long as `self`.
        unsafe { &*self.ptr.add(i) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), WORDS * 8) };
    }
}

/// glibc's robust lock word: owner tid bits and `FUTEX_OWNER_DIED`.
pub const TID_MASK: u32 = 0x3fff_ffff;
pub const OWNER_DIED: u32 = 0x4000_0000;

/// The lock word of the `RobustMutex` cell `path` (`/dev/shm/NAME`), read
/// with `pread` (never through a mapping, never by locking).
pub struct LockWord {
    file: File,
    offset: u64,
}

impl LockWord {
    pub fn new<T: ShmSafe>(cell: &ShmCell<T>, path: &str) -> LockWord {
        LockWord {
            file: File::open(path).expect("open the segment to read its lock word"),
            offset: cell.info().lock_offset,
        }
    }

    pub fn read(&self) -> u32 {
        let mut b = [0u8; 4];
        self.file.read_exact_at(&mut b, self.offset).unwrap();
        u32::from_ne_bytes(b)
    }
}

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u32 }
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: signals a child of this test that is not reaped yet (its
    // `Running` handle is alive), so the pid is not reused.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0, "kill");
}

/// Pins the calling thread to CPU 0 (only in a child: process-wide state
/// of the test binary must not change).
pub fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity get pointers to it, valid for the calls.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
