//! Snapshots: a copy of the value as of the last completed write, read
//! without taking any lock ([`ShmCell::snapshot`]).
//!
//! # Protocol
//!
//! A cell created with [`CreateOptions::snapshots`](crate::CreateOptions::snapshots)
//! has, after its value, a sequence word `seq` and two copies of the value
//! (see [`SNAPSHOT_ALIGN`](crate::segment::header::SNAPSHOT_ALIGN)). With
//! `seq = 2k` or `2k + 1`, copy `k % 2` is the published one; an odd `seq`
//! says a writer is copying into the other one.
//!
//! * **Writer** (holding the cell's lock, at every release of a consistent
//!   guard): `odd = seq | 1`; store `odd` (Release); fence (Release); copy
//!   the value into copy `(odd / 2 + 1) % 2` — the one nobody reads — with
//!   relaxed 8-byte atomic stores; store `odd + 1` (Release): that copy is
//!   now published. A writer killed before the last store leaves `seq` odd
//!   and its copy torn but unpublished; the next writer writes the same
//!   copy again.
//! * **Reader**: `s1 = seq` (Acquire); copy `(s1 / 2) % 2` with relaxed
//!   8-byte atomic loads into a local buffer; fence (Acquire); `s2 = seq`
//!   (Relaxed). The copy is whole if `s2 ≤ (s1 | 1) + 1`: the first writer
//!   that can write into it stores `(s1 | 1) + 2` before its first store
//!   into it (then its Release fence), so a load that saw any of its
//!   stores is followed — through the reader's Acquire fence — by a `seq`
//!   load that sees at least that. One publication during a read is thus
//!   harmless; only a writer that gets half-way through a second one
//!   makes the reader try again, a bounded number of times
//!   ([`SnapshotError::Contended`]).
//!
//! Every shared access is atomic (no data race on non-atomic memory); the
//! value area itself is read only by the lock holder. Word copies read
//! every byte of the value, so `T` must have no padding
//! ([`ShmSafe::HAS_PADDING`] `false`): padding is uninitialised after a
//! typed write, and reading it as an integer is undefined behaviour. A
//! value whose size is not a multiple of 8 is copied with its last word
//! completed by zero bytes of the copy's own rounding.

use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::ShmCell;
use crate::error::{Error, SnapshotError};
use crate::lock::LockBackend;
use crate::segment::header::SNAPSHOT_ALIGN;
use crate::shm_safe::ShmSafe;

/// Attempts of [`ShmCell::snapshot`] before it answers
/// [`SnapshotError::Contended`]: the first ones back to back, the rest
/// after yielding the CPU (a writer that keeps getting half-way through a
/// second publication during one copy is running while we are not).
const ATTEMPTS: u32 = 64;
/// Attempts made without yielding.
const SPINS: u32 = 8;

/// The snapshot area of a mapped segment.
#[derive(Clone, Copy)]
struct Area {
    base: NonNull<u8>,
    /// Bytes of the value.
    size: usize,
    /// Bytes of one copy (`size` rounded up to 8).
    copy: usize,
}

impl Area {
    /// # Safety
    ///
    /// `base` is the snapshot area of a validated, mapped segment whose
    /// value is `size` bytes, and stays mapped while the `Area` is used.
    #[inline]
    unsafe fn new(base: NonNull<u8>, size: usize) -> Area {
        // As `snapshot_copy_size`, which the validated layout used.
        let copy = size.div_ceil(8) * 8;
        Area { base, size, copy }
    }

    #[inline]
    fn seq(&self) -> &AtomicU64 {
        // SAFETY: the area starts with the 8-byte-aligned (SNAPSHOT_ALIGN)
        // sequence word, mapped for the life of the area (`new`).
        unsafe { self.base.cast::<AtomicU64>().as_ref() }
    }

    /// The words of copy `which` (0 or 1).
    #[inline]
    fn words(&self, which: u64) -> &[AtomicU64] {
        let offset = SNAPSHOT_ALIGN as usize + which as usize * self.copy;
        // SAFETY: the layout reserves two copies of `copy` bytes (a
        // multiple of 8) after the first SNAPSHOT_ALIGN bytes of the
        // 64-byte-aligned area, inside the mapping; the memory is only
        // ever accessed atomically (or before the segment was Ready).
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(offset).cast::<AtomicU64>(),
                self.copy / 8,
            )
        }
    }

    /// Publishes the `size` bytes at `value` (see the module docs).
    ///
    /// # Safety
    ///
    /// The caller holds the cell's lock (so it is the only writer of the
    /// area and of the value), and the `size` bytes at `value` are
    /// initialised (a `T` without padding).
    #[inline]
    unsafe fn publish(&self, value: *const u8) {
        let seq = self.seq();
        // Relaxed: the lock orders us after the previous writer's stores.
        let odd = seq.load(Ordering::Relaxed) | 1;
        // Release: a reader that loads `odd` first also sees the copy the
        // previous even value published.
        seq.store(odd, Ordering::Release);
        // Orders the store above before every store into the copy: a reader
        // that sees one of them sees `seq ≥ odd` on its re-check.
        fence(Ordering::Release);
        let words = self.words((odd / 2 + 1) % 2);
        let full = self.size / 8;
        for (i, word) in words[..full].iter().enumerate() {
            // SAFETY: bytes `8 i .. 8 i + 8` lie within the `size`
            // initialised bytes at `value` (caller), which nobody else
            // writes while we hold the lock.
            let w = unsafe { value.add(i * 8).cast::<u64>().read_unaligned() };
            word.store(w, Ordering::Relaxed);
            #[cfg(feature = "testing")]
            if i == full / 2 {
                hook::call("shmsync: snapshot half-copied");
            }
        }
        if let Some(last) = words.get(full) {
            // The tail of a size that is not a multiple of 8, completed with
            // zero bytes of the copy's own rounding.
            let mut bytes = [0u8; 8];
            // SAFETY: as above, for the last `size - 8 full` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    value.add(full * 8),
                    bytes.as_mut_ptr(),
                    self.size - full * 8,
                )
            };
            last.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        seq.store(odd + 1, Ordering::Release);
    }

    /// Copies the published value into `out` (`size` bytes); `false` if a
    /// writer started writing into that copy meanwhile (`out` then holds
    /// garbage, which the caller must not use).
    ///
    /// # Safety
    ///
    /// `out` is valid for writes of `size` bytes.
    #[inline]
    unsafe fn try_read(&self, out: *mut u8) -> bool {
        let seq = self.seq();
        let s1 = seq.load(Ordering::Acquire);
        let words = self.words((s1 / 2) % 2);
        let full = self.size / 8;
        for (i, word) in words[..full].iter().enumerate() {
            // SAFETY: bytes `8 i .. 8 i + 8` lie within the `size` bytes of
            // `out` (caller).
            unsafe {
                out.add(i * 8)
                    .cast::<u64>()
                    .write_unaligned(word.load(Ordering::Relaxed))
            };
        }
        if let Some(last) = words.get(full) {
            let bytes = last.load(Ordering::Relaxed).to_ne_bytes();
            // SAFETY: the last `size - 8 full` bytes of `out` (caller).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    out.add(full * 8),
                    self.size - full * 8,
                )
            };
        }
        fence(Ordering::Acquire);
        let s2 = seq.load(Ordering::Relaxed);
        s2 <= (s1 | 1) + 1
    }
}

impl<T: ShmSafe, L: LockBackend> ShmCell<T, L> {
    #[inline]
    fn snapshot_area(&self) -> Option<Area> {
        let base = self.seg.snapshot_ptr()?;
        // SAFETY: the segment's own (validated) snapshot area for a value of
        // `size_of::<T>()` bytes (the opener checked the size); `self`
        // keeps it mapped while the area is used (borrowed from `self`).
        Some(unsafe { Area::new(base, std::mem::size_of::<T>()) })
    }

    /// Whether this cell keeps published copies of its value
    /// ([`CreateOptions::snapshots`](crate::CreateOptions::snapshots)).
    #[inline]
    pub fn has_snapshots(&self) -> bool {
        self.seg.snapshot_ptr().is_some()
    }

    /// A copy of the value as of the last completed write, taken without
    /// any lock: it never waits for a writer, and never returns a value a
    /// writer was in the middle of changing — also if that writer was
    /// killed or stopped at any instruction.
    ///
    /// "Completed" means released by a consistent guard: every drop of a
    /// guard (and every [`wait_while`](crate::ShmGuard::wait_while) that
    /// releases the lock) publishes the value, unless the guard came from
    /// an owner death and was not made consistent. So a snapshot may be
    /// older than the value a lock holder sees, never newer than the last
    /// release, and never half of one write.
    ///
    /// Only for types without padding; the cell must have been created
    /// with [`CreateOptions::snapshots`](crate::CreateOptions::snapshots).
    ///
    /// ```no_run
    /// # #[cfg(feature = "derive")] {
    /// use shmsync::{CreateOptions, ShmCell, ShmSafe};
    ///
    /// #[derive(Clone, Copy, ShmSafe)]
    /// #[repr(C)]
    /// struct Config { limit: u64, generation: u64 }
    ///
    /// let options = CreateOptions::new().snapshots(true);
    /// let initial = Config { limit: 10, generation: 0 };
    /// let cell = ShmCell::<Config>::open_or_create_with("/config", initial, &options).unwrap();
    /// let config = cell.snapshot().unwrap(); // no lock taken
    /// # let _ = config;
    /// # }
    /// ```
    ///
    /// A value type that may have padding is refused at compile time
    /// (`cargo build`; `cargo check` does not evaluate the assertion):
    ///
    /// ```compile_fail
    /// use shmsync::{ShmCell, ShmSafe};
    ///
    /// #[derive(Clone, Copy)]
    /// #[repr(C)]
    /// struct Padded { a: u8, b: u64 } // 7 bytes of padding after `a`
    /// // SAFETY: integers, repr(C), every bit pattern valid.
    /// unsafe impl ShmSafe for Padded {} // HAS_PADDING: true (the default)
    ///
    /// if let Ok(cell) = ShmCell::<Padded>::open("/padded") {
    ///     let _ = cell.snapshot();
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SnapshotError::NotEnabled`] for a cell created without snapshots;
    /// [`SnapshotError::Contended`] when writers kept rewriting the
    /// published copy during every one of its bounded attempts.
    ///
    /// A `T` with padding ([`ShmSafe::HAS_PADDING`]) does not compile.
    pub fn snapshot(&self) -> Result<T, SnapshotError>
    where
        T: Copy,
    {
        const {
            assert!(
                !T::HAS_PADDING,
                "ShmCell::snapshot needs a value type without padding (ShmSafe::HAS_PADDING == false)"
            )
        };
        let area = self.snapshot_area().ok_or(SnapshotError::NotEnabled)?;
        let mut out = MaybeUninit::<T>::uninit();
        for attempt in 0..ATTEMPTS {
            if attempt >= SPINS {
                std::thread::yield_now();
            } else if attempt > 0 {
                std::hint::spin_loop();
            }
            // SAFETY: `out` has room for a `T`, `size_of::<T>()` bytes.
            if unsafe { area.try_read(out.as_mut_ptr().cast()) } {
                // SAFETY: every byte of `out` was written (from integers), and
                // every bit pattern is a valid `T` (`ShmSafe`).
                return Ok(unsafe { out.assume_init() });
            }
        }
        Err(SnapshotError::Contended { attempts: ATTEMPTS })
    }

    /// Publishes the value for snapshots, if the cell keeps them and the
    /// guard being released is `consistent`: called on every release.
    ///
    /// # Safety
    ///
    /// The calling thread holds the lock through this handle.
    #[inline]
    pub(super) unsafe fn publish_snapshot(&self, consistent: bool) {
        // A value a panic or a reboot left suspect is not published either.
        if !consistent || self.suspect() {
            return;
        }
        if let Some(area) = self.snapshot_area() {
            // SAFETY: we hold the lock (caller); the value is initialised
            // and has no padding (`check_snapshot_type` refused such a `T`
            // when this handle was made).
            unsafe { area.publish(self.value_ptr().cast::<u8>()) }
        }
    }

    /// Refuses a segment with a snapshot area for a `T` with padding:
    /// publishing would read its uninitialised padding bytes.
    pub(super) fn check_snapshot_type(seg: &crate::segment::Segment) -> Result<(), Error> {
        if T::HAS_PADDING && seg.snapshot_ptr().is_some() {
            return Err(Error::SnapshotPadding {
                type_name: std::any::type_name::<T>(),
            });
        }
        Ok(())
    }

    /// Refuses snapshots for a `T` with padding before anything is created.
    pub(super) fn check_snapshot_options(
        options: &crate::segment::CreateOptions,
    ) -> Result<(), Error> {
        if T::HAS_PADDING && options.has_snapshots() {
            return Err(Error::SnapshotPadding {
                type_name: std::any::type_name::<T>(),
            });
        }
        Ok(())
    }
}

/// A hook called at a point inside publication, for crash tests (feature
/// `testing`): stop or kill a writer half-way through copying.
#[cfg(feature = "testing")]
pub(crate) mod hook {
    use std::sync::atomic::{AtomicPtr, Ordering};

    static HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

    /// Installs `hook`, called with the name of each publication point
    /// (`"shmsync: snapshot half-copied"`) in this process.
    pub fn set(hook: Option<fn(&str)>) {
        let p = hook.map_or(std::ptr::null_mut(), |f| f as *mut ());
        HOOK.store(p, Ordering::SeqCst);
    }

    pub(super) fn call(name: &str) {
        let p = HOOK.load(Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: the only non-null values stored are `fn(&str)`
            // pointers (see `set`).
            let f: fn(&str) = unsafe { std::mem::transmute::<*mut (), fn(&str)>(p) };
            f(name);
        }
    }
}
