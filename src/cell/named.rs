//! Named cells (`/dev/shm/NAME`): create, open, open-or-create, unlink,
//! and the handle built from a segment — shared by every kind of cell.

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;

use crate::error::Error;
use crate::lock::LockBackend;
use crate::segment::{self, header, CreateOptions, Init, Segment, SegmentSpec};
use crate::shm_safe::ShmSafe;
use crate::sys;
use crate::sys::time::Monotonic;

use super::ShmCell;

impl<T: ShmSafe, L: LockBackend> ShmCell<T, L> {
    /// The segment spec for `T` and `L`.
    pub fn spec() -> SegmentSpec {
        SegmentSpec {
            value_size: std::mem::size_of::<T>() as u64,
            value_align: std::mem::align_of::<T>() as u64,
            type_tag: T::TYPE_TAG,
            type_version: T::TYPE_VERSION,
            lock_kind: L::KIND,
            lock_size: std::mem::size_of::<L::Shared>() as u64,
            lock_align: std::mem::align_of::<L::Shared>().max(8) as u64,
        }
    }

    /// Creates the segment `name` holding `value` (exclusive create, mode
    /// `0600`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::AlreadyExists`] (also for
    /// `/sem.NAME` in the way of a semaphore-locked cell),
    /// [`Error::PermissionDenied`], [`Error::Io`] (for example `ENOSPC` when
    /// tmpfs is full, `EMFILE`). Nothing is left under the name on error
    /// (a failure after Ready removes the object again unless another
    /// process attached meanwhile).
    pub fn create(name: &str, value: T) -> Result<Self, Error> {
        Self::create_with(name, value, &CreateOptions::default())
    }

    /// Like [`create`](Self::create), with options (permission bits).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub fn create_with(name: &str, value: T, options: &CreateOptions) -> Result<Self, Error> {
        let value = ManuallyDrop::new(value);
        let mut write = Self::value_init(&value);
        Self::create_inner(name, options, &mut write)
    }

    /// Creates the segment `name` holding an all-zero `T` (every
    /// [`ShmSafe`] value is valid all-zero), without ever building a `T`:
    /// the pages are zeroed by the kernel when the object is sized. For
    /// values bigger than a thread's stack (`ShmCell::<[u8; 64 << 20]>`).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub fn create_zeroed(name: &str) -> Result<Self, Error> {
        Self::create_inner(name, &CreateOptions::default(), &mut |_| {})
    }

    /// Creates the segment `name`, then calls `init` on its all-zero value
    /// in place, in the mapping, before any other process can see it (the
    /// creator holds the initialisation lock): a `T` is never built on the
    /// stack. If `init` panics, the object is left half-built: openers get
    /// [`Error::AbandonedInit`] and `open_or_create` takes it over.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub fn create_in_place(
        name: &str,
        options: &CreateOptions,
        init: impl FnOnce(&mut T),
    ) -> Result<Self, Error> {
        let mut init = Some(init);
        Self::create_inner(name, options, &mut |p| {
            if let Some(f) = init.take() {
                // SAFETY: see `in_place`.
                f(unsafe { Self::in_place(p) })
            }
        })
    }

    /// The zeroed value area of a segment being initialised, as `&mut T`.
    ///
    /// # Safety
    ///
    /// `p` is the value area of a segment whose initialisation lock this
    /// process holds (aligned and sized for `T`, zeroed, private).
    pub(super) unsafe fn in_place<'a>(p: NonNull<u8>) -> &'a mut T {
        // SAFETY: forwarded from the caller; all-zero is a valid `T`
        // (`ShmSafe`).
        unsafe { p.cast::<T>().as_mut() }
    }

    pub(super) fn create_inner(
        name: &str,
        options: &CreateOptions,
        value: &mut dyn FnMut(NonNull<u8>),
    ) -> Result<Self, Error> {
        Self::check_name(name)?;
        Self::check_snapshot_options(options)?;
        let mut lock = Self::lock_init();
        let seg = Segment::create_with(
            name,
            &Self::spec(),
            options,
            Init {
                lock: &mut lock,
                value,
            },
        )?;
        Self::from_new_segment(seg)
    }

    /// [`from_segment`](Self::from_segment) for a segment this process just
    /// created (or took over) and published: if attaching fails, the object
    /// is removed again unless another process attached meanwhile, so that
    /// a retry does not find a Ready object it cannot use.
    pub(super) fn from_new_segment(seg: Segment) -> Result<Self, Error> {
        sys::fork::register_fork_handler();
        if let Err(e) = Self::check_snapshot_type(&seg) {
            seg.discard_if_alone();
            return Err(e);
        }
        match L::attach(&seg) {
            Ok(local) => Ok(Self::with_local(seg, local)),
            Err(e) => {
                seg.discard_if_alone();
                Err(e)
            }
        }
    }

    pub(super) fn lock_init() -> impl FnMut(NonNull<u8>, &Segment) -> std::io::Result<()> {
        |p: NonNull<u8>, seg: &Segment| {
            // SAFETY: the segment layout aligns and sizes the lock area for
            // `L::Shared`; it is zeroed and private to the creator.
            unsafe { L::init_shared(p.cast(), seg) }
        }
    }

    /// Refuses a name the backend cannot serve (a named semaphore allows
    /// fewer bytes than a segment) before anything is created.
    pub(super) fn check_name(name: &str) -> Result<(), Error> {
        crate::segment::name::validate(name, L::MAX_NAME).map(drop)
    }

    /// Writes a bitwise copy of `value` each time it is called, so that an
    /// attempt that fails after writing (and a retry or take-over after it)
    /// still has the caller's value. The value is never dropped: the copy
    /// in shared memory is the value (`ShmSafe` types carry no resources).
    pub(super) fn value_init(value: &ManuallyDrop<T>) -> impl FnMut(NonNull<u8>) + '_ {
        move |p: NonNull<u8>| {
            // SAFETY: the value area is aligned and sized for `T` and
            // private to the creator; copying does not drop the (zeroed) old
            // contents, and `value` is never dropped, so no copy is dropped
            // twice.
            unsafe { std::ptr::copy_nonoverlapping::<T>(&**value, p.cast::<T>().as_ptr(), 1) };
        }
    }

    /// Opens the existing segment `name`, which must have been made for the
    /// same `T` (size, alignment, tag, version) and lock kind `L`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`],
    /// [`Error::InvalidName`], [`Error::Incompatible`], [`Error::TooSmall`],
    /// [`Error::Corrupted`], [`Error::AbandonedInit`] (its creator died
    /// before finishing), [`Error::InitTimedOut`],
    /// [`Error::ForeignPidNamespace`] (a [`RobustMutex`](crate::RobustMutex)
    /// cell in use by processes of another pid namespace).
    pub fn open(name: &str) -> Result<Self, Error> {
        Self::check_name(name)?;
        Self::from_segment(Segment::open(name, &Self::spec())?)
    }

    /// Opens `name` if it exists, else creates it holding `value`. A
    /// segment whose creator died before finishing is taken over and
    /// initialised with `value` — only if this process's effective user
    /// owns it; of several processes racing, exactly one initialises and
    /// the others open its segment. A live creator's segment is never taken
    /// over, however long it is descheduled (it holds the kernel lock from
    /// before its object has a name).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open) and [`create`](Self::create), except
    /// `NotFound` and `AbandonedInit`; [`Error::ForeignOwner`] for an empty
    /// or abandoned object of another user (never adopted: its owner could
    /// resize or rewrite it); [`Error::AlreadyExists`] only for an object
    /// the lock needs besides the segment (`/sem.NAME` of a
    /// [`NamedSemaphore`](crate::NamedSemaphore) cell, when it is not
    /// provably a cell's leftover: marked by a cell of this user).
    pub fn open_or_create(name: &str, value: T) -> Result<Self, Error> {
        Self::open_or_create_with(name, value, &CreateOptions::default())
    }

    /// Like [`open_or_create`](Self::open_or_create), with options used if
    /// it creates.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    pub fn open_or_create_with(
        name: &str,
        value: T,
        options: &CreateOptions,
    ) -> Result<Self, Error> {
        let value = ManuallyDrop::new(value);
        let mut write = Self::value_init(&value);
        Self::open_or_create_inner(name, options, &mut write)
    }

    /// Like [`open_or_create`](Self::open_or_create), with an all-zero
    /// value if it creates: a `T` is never built (see
    /// [`create_zeroed`](Self::create_zeroed)).
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    pub fn open_or_create_zeroed(name: &str) -> Result<Self, Error> {
        Self::open_or_create_inner(name, &CreateOptions::default(), &mut |_| {})
    }

    /// Like [`open_or_create`](Self::open_or_create), initialising the
    /// value in place if this process creates it (see
    /// [`create_in_place`](Self::create_in_place)). `init` gets the
    /// all-zero value each time this process initialises the object: once
    /// when it creates it — and once more for each abandoned attempt it
    /// takes over (the value area is zeroed again before each call).
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    pub fn open_or_create_in_place(
        name: &str,
        options: &CreateOptions,
        mut init: impl FnMut(&mut T),
    ) -> Result<Self, Error> {
        Self::open_or_create_inner(name, options, &mut |p| {
            // SAFETY: see `in_place`.
            init(unsafe { Self::in_place(p) })
        })
    }

    pub(super) fn open_or_create_inner(
        name: &str,
        options: &CreateOptions,
        value: &mut dyn FnMut(NonNull<u8>),
    ) -> Result<Self, Error> {
        Self::check_name(name)?;
        Self::check_snapshot_options(options)?;
        let spec = Self::spec();
        Self::open_or_create_loop(
            name,
            value,
            &mut |init| Segment::create_with(name, &spec, options, init),
            &mut || Segment::open(name, &spec),
            &mut |init| Segment::take_over_abandoned(name, &spec, options, init),
        )
    }

    /// Create, else open, else take over an abandoned initialisation, for
    /// any kind of segment (`name` labels a timeout).
    pub(super) fn open_or_create_loop(
        name: &str,
        value: &mut dyn FnMut(NonNull<u8>),
        create: &mut dyn FnMut(Init<'_>) -> Result<Segment, Error>,
        open: &mut dyn FnMut() -> Result<Segment, Error>,
        take_over: &mut dyn FnMut(Init<'_>) -> Result<Option<Segment>, Error>,
    ) -> Result<Self, Error> {
        let mut lock = Self::lock_init();
        // Bounded by time, with backoff, not by a count of attempts: a lock
        // on an abandoned object can linger for a moment after its opener
        // let go (a process forked meanwhile by another thread shares the
        // opener's open file description until it execs).
        let deadline = Monotonic::now().after(segment::INIT_WAIT);
        let mut backoff = segment::Backoff::new();
        let mut last = None;
        loop {
            match create(Init {
                lock: &mut lock,
                value: &mut *value,
            }) {
                // Another object the lock needs (a semaphore `sem.NAME` that
                // is not provably this cell's leftover) is in the way:
                // opening will not help.
                Err(Error::AlreadyExists { name: other }) if other != name => {
                    return Err(Error::AlreadyExists { name: other })
                }
                Err(Error::AlreadyExists { .. }) => {}
                other => return other.and_then(Self::from_new_segment),
            }
            match open() {
                Err(Error::NotFound { .. }) => {}
                Err(e @ Error::AbandonedInit { .. }) => {
                    if let Some(seg) = take_over(Init {
                        lock: &mut lock,
                        value: &mut *value,
                    })? {
                        return Self::from_new_segment(seg);
                    }
                    last = Some(e);
                }
                other => return other.and_then(Self::from_segment),
            }
            if Monotonic::now() >= deadline {
                return Err(last.unwrap_or(Error::InitTimedOut { name: name.into() }));
            }
            backoff.sleep();
        }
    }

    /// Removes the name `name` and every companion object the cell made
    /// (which depend on the lock kind recorded in its header, whatever `L`
    /// is). Processes attached keep their mappings.
    ///
    /// An object that was not made by shmsync is refused, not removed; use
    /// [`Segment::unlink`] to remove any name unconditionally.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::NotFound`],
    /// [`Error::PermissionDenied`], [`Error::Incompatible`] (`magic`: a
    /// foreign object) or [`Error::TooSmall`] for an object that is not a
    /// cell, [`Error::Io`].
    pub fn unlink(name: &str) -> Result<(), Error> {
        let kind = match crate::segment::peek(name) {
            Ok((_, Some(info))) => info.lock_kind(),
            Ok((size, None)) if size > 0 => {
                // Shorter than a header and not empty: not a cell.
                return Err(Error::TooSmall {
                    size,
                    needed: header::HEADER_SIZE as u64,
                });
            }
            // Not made by shmsync: refuse to remove someone else's object
            // (`Segment::unlink` removes a name unconditionally).
            Err(
                e @ Error::Incompatible {
                    field: "magic" | "file type",
                    ..
                },
            ) => return Err(e),
            Err(e @ (Error::NotFound { .. } | Error::InvalidName { .. })) => return Err(e),
            // Empty (a creator that died at once), unreadable, or another
            // format version: remove the name.
            _ => None,
        };
        // Companions first: while the segment still exists nobody can
        // create a new cell of that name, so this never removes the
        // companion of a newer cell (an opener in between gets NotFound).
        if let Some(kind) = kind {
            crate::lock::unlink_companions(kind, name)?;
        }
        crate::steps::step("unlink:companions-removed");
        Segment::unlink(name)
    }

    pub(super) fn from_segment(seg: Segment) -> Result<Self, Error> {
        sys::fork::register_fork_handler();
        Self::check_snapshot_type(&seg)?;
        let local = L::attach(&seg)?;
        Ok(Self::with_local(seg, local))
    }

    pub(super) fn with_local(seg: Segment, local: L::Local) -> Self {
        ShmCell {
            lock_at: seg.lock_ptr().cast(),
            value_at: seg.value_ptr().cast(),
            seg: ManuallyDrop::new(seg),
            local,
            held: AtomicBool::new(false),
            _value: PhantomData,
        }
    }
}
