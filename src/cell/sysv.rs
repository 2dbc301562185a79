//! System V cells: `ShmCell`s in a `shmget` segment (see
//! [`ShmCell::create_sysv`]).

use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use super::ShmCell;
use crate::error::Error;
use crate::lock::LockBackend;
use crate::segment::sysv::{sysv_name, SysvTarget};
use crate::segment::{Backing, CreateOptions, Init, LockKind, Segment, SysvKey};
use crate::shm_safe::ShmSafe;
use crate::sys;

impl<T: ShmSafe, L: LockBackend> ShmCell<T, L> {
    /// Creates the System V segment `key` (`shmget(key, size,
    /// IPC_CREAT|IPC_EXCL|0600)`) holding `value`: the same header,
    /// validation and owner-death semantics as a named cell; `ipcs -m`
    /// lists it and `ipcrm` removes it. It lives until
    /// [`remove_sysv`](Self::remove_sysv) (or `ipcrm`) and the last detach,
    /// or a reboot.
    ///
    /// A System V segment has no descriptor: only
    /// [`RobustMutex`](crate::RobustMutex) can guard it
    /// ([`Error::LockUnsupported`] for `FileLock`, `NamedSemaphore` and
    /// `RobustRwLock`). How initialisation is
    /// made safe without descriptor locks (`shm_nattch` and a claim on the
    /// header's state word) is in the README ("System V segments").
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::PermissionDenied`],
    /// [`Error::LockUnsupported`], [`Error::Unsupported`] (a value over the
    /// kernel's `shmmax`), [`Error::Io`] (`ENOSPC`: `shmmni` or `shmall`
    /// reached). Nothing is left under the key on error.
    pub fn create_sysv(key: SysvKey, value: T) -> Result<Self, Error> {
        Self::create_sysv_with(key, value, &CreateOptions::default())
    }

    /// Like [`create_sysv`](Self::create_sysv), with options: the mode is
    /// the segment's `shm_perm.mode` (the umask does not apply to System V
    /// objects).
    ///
    /// # Errors
    ///
    /// As [`create_sysv`](Self::create_sysv).
    pub fn create_sysv_with(
        key: SysvKey,
        value: T,
        options: &CreateOptions,
    ) -> Result<Self, Error> {
        let value = ManuallyDrop::new(value);
        let mut write = Self::value_init(&value);
        Self::create_sysv_inner(key.raw(), options, &mut write)
    }

    /// Like [`create_sysv`](Self::create_sysv), with an all-zero value
    /// that is never built on the stack.
    ///
    /// # Errors
    ///
    /// As [`create_sysv`](Self::create_sysv).
    pub fn create_sysv_zeroed(key: SysvKey) -> Result<Self, Error> {
        Self::create_sysv_inner(key.raw(), &CreateOptions::default(), &mut |_| {})
    }

    /// Like [`create_sysv`](Self::create_sysv), with options, the
    /// all-zero value filled in place by `init` in the segment before any
    /// other process can use it (see
    /// [`create_in_place`](Self::create_in_place)).
    ///
    /// # Errors
    ///
    /// As [`create_sysv`](Self::create_sysv).
    pub fn create_sysv_in_place(
        key: SysvKey,
        options: &CreateOptions,
        init: impl FnOnce(&mut T),
    ) -> Result<Self, Error> {
        let mut init = Some(init);
        Self::create_sysv_inner(key.raw(), options, &mut |p| {
            if let Some(f) = init.take() {
                // SAFETY: `p` is the value area of the segment being
                // initialised under our claim.
                f(unsafe { Self::in_place(p) })
            }
        })
    }

    /// Creates an `IPC_PRIVATE` System V segment holding `value`. It is
    /// marked for removal (`IPC_RMID`) as soon as it is Ready, so it goes
    /// when the last process detaches — nothing can leak. Other processes
    /// reach it by inheritance (`fork`) or by its id
    /// ([`sysv_id`](Self::sysv_id), then [`open_sysv_id`](Self::open_sysv_id)),
    /// which Linux allows only while some process is still attached: keep
    /// this handle until the others have attached.
    ///
    /// # Errors
    ///
    /// As [`create_sysv`](Self::create_sysv) (never `AlreadyExists`).
    pub fn create_private_sysv(value: T) -> Result<Self, Error> {
        let value = ManuallyDrop::new(value);
        let mut write = Self::value_init(&value);
        Self::create_sysv_inner(
            sys::sysv::IPC_PRIVATE,
            &CreateOptions::default(),
            &mut write,
        )
    }

    fn create_sysv_inner(
        key: i32,
        options: &CreateOptions,
        value: &mut dyn FnMut(NonNull<u8>),
    ) -> Result<Self, Error> {
        Self::check_sysv_lock()?;
        let mut lock = Self::lock_init();
        let seg = Segment::create_sysv(
            key,
            &Self::spec(),
            options,
            Init {
                lock: &mut lock,
                value,
            },
        )?;
        Self::from_sysv_segment(seg, true)
    }

    /// Opens the System V cell `key`, made for the same `T` and `L`. The
    /// segment's size and owner are read with `shmctl(IPC_STAT)` and its
    /// header through a read-only `shmat` before it is attached
    /// read-write: a segment of another program is refused
    /// ([`Error::Incompatible`], [`Error::TooSmall`]) and never mapped
    /// writable.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`] (its mode),
    /// [`Error::Incompatible`], [`Error::TooSmall`], [`Error::Corrupted`],
    /// [`Error::AbandonedInit`], [`Error::InitTimedOut`],
    /// [`Error::ForeignPidNamespace`], [`Error::LockUnsupported`].
    pub fn open_sysv(key: SysvKey) -> Result<Self, Error> {
        Self::check_sysv_lock()?;
        let seg = Segment::open_sysv(SysvTarget::Key(key.raw()), &Self::spec())?;
        Self::from_sysv_segment(seg, false)
    }

    /// Opens the System V cell whose kernel id is `id` (an `IPC_PRIVATE`
    /// cell, or one whose key was removed while processes are attached).
    ///
    /// # Errors
    ///
    /// As [`open_sysv`](Self::open_sysv).
    pub fn open_sysv_id(id: i32) -> Result<Self, Error> {
        Self::check_sysv_lock()?;
        let seg = Segment::open_sysv(SysvTarget::Id(id), &Self::spec())?;
        Self::from_sysv_segment(seg, false)
    }

    /// Opens the System V cell `key` if it exists, else creates it holding
    /// `value` (of racing processes exactly one initialises; a segment
    /// whose creator died before finishing is taken over — only if this
    /// user owns it).
    ///
    /// # Errors
    ///
    /// As [`open_sysv`](Self::open_sysv) and
    /// [`create_sysv`](Self::create_sysv), except `NotFound`,
    /// `AlreadyExists` and `AbandonedInit`; [`Error::ForeignOwner`].
    pub fn open_or_create_sysv(key: SysvKey, value: T) -> Result<Self, Error> {
        Self::open_or_create_sysv_with(key, value, &CreateOptions::default())
    }

    /// Like [`open_or_create_sysv`](Self::open_or_create_sysv), with
    /// options used if it creates.
    ///
    /// # Errors
    ///
    /// As [`open_or_create_sysv`](Self::open_or_create_sysv).
    pub fn open_or_create_sysv_with(
        key: SysvKey,
        value: T,
        options: &CreateOptions,
    ) -> Result<Self, Error> {
        let value = ManuallyDrop::new(value);
        let mut write = Self::value_init(&value);
        Self::open_or_create_sysv_inner(key, options, &mut write)
    }

    /// Like [`open_or_create_sysv`](Self::open_or_create_sysv), with an
    /// all-zero value if it creates (never built on the stack).
    ///
    /// # Errors
    ///
    /// As [`open_or_create_sysv`](Self::open_or_create_sysv).
    pub fn open_or_create_sysv_zeroed(key: SysvKey) -> Result<Self, Error> {
        Self::open_or_create_sysv_inner(key, &CreateOptions::default(), &mut |_| {})
    }

    /// Like [`open_or_create_sysv`](Self::open_or_create_sysv), with
    /// options, initialising in place if this process creates it or takes
    /// an abandoned creation over (see
    /// [`open_or_create_in_place`](Self::open_or_create_in_place)).
    ///
    /// # Errors
    ///
    /// As [`open_or_create_sysv`](Self::open_or_create_sysv).
    pub fn open_or_create_sysv_in_place(
        key: SysvKey,
        options: &CreateOptions,
        mut init: impl FnMut(&mut T),
    ) -> Result<Self, Error> {
        Self::open_or_create_sysv_inner(key, options, &mut |p| {
            // SAFETY: `p` is the value area of the segment being
            // initialised under our claim.
            init(unsafe { Self::in_place(p) })
        })
    }

    fn open_or_create_sysv_inner(
        key: SysvKey,
        options: &CreateOptions,
        value: &mut dyn FnMut(NonNull<u8>),
    ) -> Result<Self, Error> {
        Self::check_sysv_lock()?;
        let spec = Self::spec();
        let key = key.raw();
        Self::open_or_create_loop(
            &sysv_name(key, None),
            value,
            &mut |init| Segment::create_sysv(key, &spec, options, init),
            &mut || Segment::open_sysv(SysvTarget::Key(key), &spec),
            &mut |init| Segment::take_over_abandoned_sysv(key, &spec, init),
        )
    }

    /// Removes the System V cell `key` (`IPC_RMID`): the segment goes when
    /// its last process detaches, and the key is free at once. A segment
    /// that is not a cell (another magic) is refused, not removed (`ipcrm`
    /// removes anything).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`] (only its owner,
    /// creator or root may), [`Error::Incompatible`] or
    /// [`Error::TooSmall`] (not a cell), [`Error::Io`].
    pub fn remove_sysv(key: SysvKey) -> Result<(), Error> {
        Segment::remove_sysv(SysvTarget::Key(key.raw()), Some(&Self::spec()))
    }

    /// Marks this handle's System V segment for removal (`IPC_RMID`): the
    /// processes attached keep it until they detach (and new ones may
    /// still attach it by id, on Linux); the key is free at once.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a cell that is not a System V cell,
    /// [`Error::PermissionDenied`], [`Error::Io`].
    pub fn mark_sysv_removed(&self) -> Result<(), Error> {
        self.seg.mark_sysv_removed()
    }

    /// The kernel's id of this System V cell's segment (`None` for other
    /// backings).
    pub fn sysv_id(&self) -> Option<i32> {
        match self.seg.backing() {
            Backing::SysV { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The number of processes attached to this System V cell's segment
    /// (`shm_nattch`, read now; forked children count), `None` for other
    /// backings or if it cannot be read.
    pub fn sysv_attached(&self) -> Option<u64> {
        self.seg.sysv_stat().map(|st| st.nattch)
    }

    fn from_sysv_segment(seg: Segment, new: bool) -> Result<Self, Error> {
        if new {
            Self::from_new_segment(seg)
        } else {
            Self::from_segment(seg)
        }
    }

    /// Refuses a lock backend that needs a descriptor: only the robust
    /// mutex lives entirely in the segment.
    fn check_sysv_lock() -> Result<(), Error> {
        let reason = match L::KIND {
            LockKind::RobustMutex => return Ok(()),
            LockKind::FileLock => "flock needs a file descriptor, and a System V segment has none",
            LockKind::NamedSemaphore => {
                "its holder's liveness is an open-file-description lock on the segment's \
                 descriptor, and a System V segment has none"
            }
            LockKind::RobustRwLock => {
                "its readers' liveness tokens are open-file-description locks on the \
                 segment's descriptor, and a System V segment has none"
            }
            _ => "it needs the segment's descriptor, and a System V segment has none",
        };
        Err(Error::LockUnsupported {
            backend: L::KIND.name(),
            backing: "System V",
            reason,
        })
    }
}
