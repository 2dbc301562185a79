//! Named steps of the crate's own paths, where a crash test can kill a
//! process (Samba tdb's die-at-every-hook).
//!
//! [`step`]`("lock:…")` marks a place in the lock, unlock, wait, notify,
//! unlink and clean paths; [`init`] the steps of creating a segment
//! ([`InitStep`](crate::segment::InitStep)). Without feature `testing`
//! both are empty `#[inline(always)]` functions: nothing is compiled in,
//! the lock path is unchanged. With it, a step costs one relaxed load and
//! a branch unless a crash-test child enabled its group
//! ([`points_at_crate_steps`](crate::testing::points_at_crate_steps),
//! [`points_at_init_steps`](crate::testing::points_at_init_steps)); then
//! it is a [`testing::point`](crate::testing::point) of that name.
//!
//! The names and what each step means are listed in [`STEPS`] (shown in
//! the [`testing`](crate::testing#points-inside-shmsync) docs). A step
//! insertion stays a single line so that it reads as a marker, not as
//! code.

/// The group of the initialisation steps.
#[cfg(feature = "testing")]
pub(crate) const INIT: u8 = 1;
/// The group of every other step.
#[cfg(feature = "testing")]
pub(crate) const CRATE: u8 = 2;

/// Marks the step `name` of a lock, unlock, wait, notify, unlink or clean
/// path (see the module docs).
#[inline(always)]
pub(crate) fn step(name: &'static str) {
    #[cfg(feature = "testing")]
    reached(CRATE, name);
    #[cfg(not(feature = "testing"))]
    let _ = name;
}

/// Marks an initialisation step (kill point `init:…`, and the hook of
/// [`segment::set_init_hook`](crate::segment::set_init_hook)).
#[inline(always)]
pub(crate) fn init(step: crate::segment::InitStep) {
    #[cfg(feature = "testing")]
    init_reached(step);
    #[cfg(not(feature = "testing"))]
    let _ = step;
}

#[cfg(feature = "testing")]
static INIT_HOOK: std::sync::atomic::AtomicPtr<()> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Installs (or removes) the function called at each initialisation step.
#[cfg(feature = "testing")]
pub(crate) fn set_init_hook(hook: Option<fn(crate::segment::InitStep)>) {
    let p = hook.map_or(std::ptr::null_mut(), |f| f as *mut ());
    INIT_HOOK.store(p, std::sync::atomic::Ordering::SeqCst);
}

#[cfg(feature = "testing")]
fn init_reached(step: crate::segment::InitStep) {
    let p = INIT_HOOK.load(std::sync::atomic::Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: the only non-null values stored are `fn(InitStep)`
        // pointers (see `set_init_hook`).
        let f = unsafe { std::mem::transmute::<*mut (), fn(crate::segment::InitStep)>(p) };
        f(step);
    }
    reached(INIT, step.point());
}

#[cfg(feature = "testing")]
static ENABLED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

#[cfg(feature = "testing")]
#[inline(always)]
fn reached(group: u8, name: &'static str) {
    if ENABLED.load(std::sync::atomic::Ordering::Relaxed) & group != 0 {
        hit(name);
    }
}

#[cfg(feature = "testing")]
#[cold]
#[inline(never)]
fn hit(name: &'static str) {
    crate::testing::point(name);
}

/// Turns the steps of `group` into kill points in this process.
#[cfg(feature = "testing")]
pub(crate) fn enable(group: u8) {
    ENABLED.fetch_or(group, std::sync::atomic::Ordering::SeqCst);
}

/// Every step outside initialisation: its name and what has happened when
/// a process dies there. The order is the order of the paths, not of a
/// run.
#[cfg(feature = "testing")]
pub(crate) const STEPS: &[(&str, &str)] = &[
    (
        "sem:companion-written",
        "NamedSemaphore create (initialisation, or an open remaking a missing one): the marked semaphore written into an unnamed file, not yet linked as `sem.NAME`",
    ),
    (
        "mutex:locked",
        "RobustMutex: `pthread_mutex_*lock` returned (clean or `EOWNERDEAD`); no guard exists yet",
    ),
    (
        "mutex:try-not-recoverable",
        "RobustMutex try: glibc answered `ENOTRECOVERABLE` (the mutex became not recoverable after the check of `__owner`; glibc gave the word back); no sleeper woken yet",
    ),
    (
        "mutex:answered-not-recoverable",
        "RobustMutex: a lock call is about to answer `NotRecoverable`; the other sleepers not woken yet",
    ),
    (
        "mutex:released-unrepaired",
        "RobustMutex: an owner-died lock was unlocked unrepaired (now not recoverable; glibc woke one sleeper); the others not woken yet",
    ),
    (
        "flock:locked",
        "FileLock: `flock(LOCK_EX)` is held, the held marker not read yet",
    ),
    (
        "flock:holder-recorded",
        "FileLock: `holder_pid` written, the marker not yet set to held",
    ),
    (
        "flock:marked",
        "FileLock: the marker says held (or held-inconsistent after an owner death)",
    ),
    (
        "sem:holder-set",
        "NamedSemaphore: the holder word names this handle's token (compare-and-swap won), `state` not read",
    ),
    (
        "sem:owner-died-recorded",
        "NamedSemaphore: a dead holder was taken over and `state` set to owner-died",
    ),
    (
        "sem:holder-recorded",
        "NamedSemaphore: holder thread, tid and pid written; the acquire is complete",
    ),
    (
        "consistent:begin",
        "make_consistent: the header's `suspect` word is cleared, the backend not yet told",
    ),
    (
        "consistent:done",
        "make_consistent: the backend's state is consistent again (lock still held)",
    ),
    (
        "unlock:begin",
        "unlock: the handle no longer counts itself as holder; the backend release has not started",
    ),
    (
        "flock:marker-cleared",
        "FileLock unlock: the marker says free (or not recoverable), `flock` still held",
    ),
    (
        "flock:unlocked",
        "FileLock unlock: `LOCK_UN` done, the process-local lock still held",
    ),
    (
        "sem:record-cleared",
        "NamedSemaphore unlock: holder thread, tid and pid cleared, the holder word still set",
    ),
    (
        "sem:holder-cleared",
        "NamedSemaphore unlock: the holder word is 0, no sleeper posted yet",
    ),
    (
        "unlock:released",
        "unlock: the backend released the lock",
    ),
    (
        "wait:registered",
        "wait: counted in `notify_waiters`, the lock still held",
    ),
    (
        "wait:released",
        "wait: the lock released, not yet asleep on the sequence word",
    ),
    (
        "wait:woken",
        "wait: back from `FUTEX_WAIT`, still counted as a waiter",
    ),
    (
        "wait:relock",
        "wait: no longer counted, about to re-acquire the lock",
    ),
    (
        "notify:bumped",
        "notify: the sequence word bumped, waiters seen, `FUTEX_WAKE` not yet called",
    ),
    ("notify:woken", "notify: `FUTEX_WAKE` returned"),
    (
        "unlink:companions-removed",
        "ShmCell::unlink: the lock's companion objects (`sem.NAME`) are removed, the segment's name not yet",
    ),
    (
        "clean:judged",
        "clean: judged stale under the exclusive attach lock, nothing removed yet",
    ),
    (
        "clean:companions-removed",
        "clean: companion objects removed, the segment's name not yet",
    ),
];
