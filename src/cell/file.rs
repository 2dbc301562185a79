//! File-backed cells: `ShmCell`s in a regular file on a local filesystem,
//! whose value survives a reboot (see [`ShmCell::create_file`]).

use std::mem::ManuallyDrop;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::ShmCell;
use crate::error::Error;
use crate::lock::describe::{LockArea, LockState};
use crate::lock::LockBackend;
use crate::segment::{Backing, CreateOptions, Init, Segment};
use crate::shm_safe::ShmSafe;
use crate::sys;

impl<T: ShmSafe, L: LockBackend> ShmCell<T, L> {
    /// Creates the file `path` (exclusively, mode `0600`) holding `value`:
    /// a cell whose value survives a reboot, with the same header,
    /// validation and initialisation handshake as a named cell. The path
    /// must be on a local filesystem (a network filesystem is refused with
    /// [`Error::Unsupported`]); a symbolic link is refused. The file and
    /// its directory entry are `fsync`ed before this returns.
    ///
    /// **After a reboot**, a lock held when the machine went down does not
    /// hang anybody: the header records the boot id
    /// (`/proc/sys/kernel/random/boot_id`), and the first open of a new
    /// boot re-initialises the lock state (no process of this boot can be
    /// attached: it holds the exclusive initialisation lock); if the lock
    /// was held, the next locker gets [`LockError::OwnerDied`] to judge the
    /// value.
    ///
    /// Durability: see [`flush`](Self::flush). A file cannot be sealed:
    /// whoever may write it can truncate it under attached processes, which
    /// then take `SIGBUS` — keep its mode and directory private.
    /// [`NamedSemaphore`](crate::NamedSemaphore) is refused
    /// ([`Error::Unsupported`]): its semaphore is named after a shm name.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::NotFound`] (no such directory),
    /// [`Error::PermissionDenied`], [`Error::InvalidName`] (a NUL byte),
    /// [`Error::Unsupported`], [`Error::Io`].
    ///
    /// [`LockError::OwnerDied`]: crate::LockError::OwnerDied
    pub fn create_file(path: impl AsRef<Path>, value: T) -> Result<Self, Error> {
        let value = ManuallyDrop::new(value);
        let mut write = Self::value_init(&value);
        Self::create_file_inner(path.as_ref(), &CreateOptions::default(), &mut write)
    }

    /// Like [`create_file`](Self::create_file), with an all-zero value that
    /// is never built on the stack.
    ///
    /// # Errors
    ///
    /// As [`create_file`](Self::create_file).
    pub fn create_file_zeroed(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::create_file_inner(path.as_ref(), &CreateOptions::default(), &mut |_| {})
    }

    /// Like [`create_file`](Self::create_file), with options (the file's
    /// mode), the all-zero value filled in place by `init` (see
    /// [`create_in_place`](Self::create_in_place)).
    ///
    /// # Errors
    ///
    /// As [`create_file`](Self::create_file).
    pub fn create_file_in_place(
        path: impl AsRef<Path>,
        options: &CreateOptions,
        init: impl FnOnce(&mut T),
    ) -> Result<Self, Error> {
        let mut init = Some(init);
        Self::create_file_inner(path.as_ref(), options, &mut |p| {
            if let Some(f) = init.take() {
                // SAFETY: `p` is the value area of the segment being
                // initialised under our initialisation lock.
                f(unsafe { Self::in_place(p) })
            }
        })
    }

    fn create_file_inner(
        path: &Path,
        options: &CreateOptions,
        value: &mut dyn FnMut(NonNull<u8>),
    ) -> Result<Self, Error> {
        Self::check_backing(Backing::File)?;
        let mut lock = Self::lock_init();
        let seg = Segment::create_file(
            path,
            &Self::spec(),
            options,
            Init {
                lock: &mut lock,
                value,
            },
        )?;
        Self::from_segment(seg)
    }

    /// Opens the file cell `path`, made for the same `T` and `L` (validated
    /// as [`open`](Self::open) does). The first open after a reboot resets
    /// a lock left held (see [`create_file`](Self::create_file)).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), plus [`Error::Unsupported`] (network
    /// filesystem, lock kind).
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::check_backing(Backing::File)?;
        let mut relock = Self::relock_after_boot();
        Self::from_segment(Segment::open_file(
            path.as_ref(),
            &Self::spec(),
            &mut relock,
        )?)
    }

    /// Opens the file cell `path` if it exists, else creates it holding
    /// `value` (as [`open_or_create`](Self::open_or_create) does for
    /// names: of racing processes exactly one initialises; a file whose
    /// creator died before finishing is taken over).
    ///
    /// # Errors
    ///
    /// As [`open_file`](Self::open_file) and
    /// [`create_file`](Self::create_file), except `NotFound` for the file,
    /// `AlreadyExists` and `AbandonedInit`.
    pub fn open_or_create_file(path: impl AsRef<Path>, value: T) -> Result<Self, Error> {
        let value = ManuallyDrop::new(value);
        let mut write = Self::value_init(&value);
        Self::open_or_create_file_inner(path.as_ref(), &CreateOptions::default(), &mut write)
    }

    /// Like [`open_or_create_file`](Self::open_or_create_file), with an
    /// all-zero value if it creates.
    ///
    /// # Errors
    ///
    /// As [`open_or_create_file`](Self::open_or_create_file).
    pub fn open_or_create_file_zeroed(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_or_create_file_inner(path.as_ref(), &CreateOptions::default(), &mut |_| {})
    }

    /// Like [`open_or_create_file`](Self::open_or_create_file), with
    /// options, initialising in place if it creates (see
    /// [`open_or_create_in_place`](Self::open_or_create_in_place)).
    ///
    /// # Errors
    ///
    /// As [`open_or_create_file`](Self::open_or_create_file).
    pub fn open_or_create_file_in_place(
        path: impl AsRef<Path>,
        options: &CreateOptions,
        mut init: impl FnMut(&mut T),
    ) -> Result<Self, Error> {
        Self::open_or_create_file_inner(path.as_ref(), options, &mut |p| {
            // SAFETY: `p` is the value area of the segment being
            // initialised under our initialisation lock.
            init(unsafe { Self::in_place(p) })
        })
    }

    fn open_or_create_file_inner(
        path: &Path,
        options: &CreateOptions,
        value: &mut dyn FnMut(NonNull<u8>),
    ) -> Result<Self, Error> {
        Self::check_backing(Backing::File)?;
        let spec = Self::spec();
        let mut relock = Self::relock_after_boot();
        Self::open_or_create_loop(
            &path.display().to_string(),
            value,
            &mut |init| Segment::create_file(path, &spec, options, init),
            &mut || Segment::open_file(path, &spec, &mut relock),
            &mut |init| Segment::take_over_abandoned_file(path, &spec, options, init),
        )
    }

    /// Removes the file cell `path`. A file that is not a cell (another
    /// magic) is refused, not removed. Attached processes keep their
    /// mappings (and the file's blocks, until they let go).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`],
    /// [`Error::Incompatible`] (a foreign or non-regular file),
    /// [`Error::Io`].
    pub fn remove_file(path: impl AsRef<Path>) -> Result<(), Error> {
        Segment::remove_file(path.as_ref())
    }

    /// Writes the cell's changed pages back to its file and waits until
    /// the device has them (`msync(MS_SYNC)`); for a named or memfd cell
    /// (memory only) it does nothing useful.
    ///
    /// **What survives a power cut**: the file's contents as of the last
    /// `flush` that returned — plus whatever pages the kernel wrote back on
    /// its own since (it does so every few seconds), in no particular order
    /// and page by page. So a value that spans pages can come back *torn*
    /// (some pages newer than others) unless nothing changed it since the
    /// last flush. Call `flush` while holding the guard (`cell.flush()`
    /// with the guard alive) to put a consistent value on disk; keep a
    /// version or checksum in `T` if torn values must be detected. The lock
    /// itself never survives: after the reboot, the first open resets it
    /// and reports `OwnerDied` if it was held.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (`EIO` when the device failed: the data may be lost).
    pub fn flush(&self) -> Result<(), Error> {
        self.seg.flush()
    }

    /// Resets the lock state of a file cell on the first open of a boot:
    /// nothing of the previous boot's lock (thread ids, `flock`s, robust
    /// list) means anything now. A lock that was held, or whose holder
    /// died, leaves the value `suspect` (the next locker gets `OwnerDied`);
    /// a not-recoverable lock stays so.
    fn relock_after_boot() -> impl FnMut(&Segment) -> std::io::Result<()> {
        |seg: &Segment| {
            let st = sys::fd::fstat(seg.fd())?;
            let area = LockArea {
                fd: seg.fd(),
                info: seg.info(),
                stat: &st,
                foreign_ns: false,
            };
            match L::describe(&area).state {
                LockState::NotRecoverable => return Ok(()),
                LockState::Free => {}
                _ => seg
                    .header()
                    .suspect
                    .store(crate::segment::header::SUSPECT, Ordering::Release),
            }
            let p = seg.lock_ptr();
            // SAFETY: the lock area (`lock_size` bytes, validated) is ours
            // alone: this process holds the exclusive initialisation lock,
            // so nobody is attached; zeroed, it is what `init_shared`
            // expects.
            unsafe {
                std::ptr::write_bytes(p.as_ptr(), 0, seg.info().lock_size as usize);
                L::init_shared(p.cast(), seg)
            }
        }
    }
}
