//! Process-shared robust error-checking mutexes: `pthread_mutex_init` with
//! `PTHREAD_PROCESS_SHARED`, `PTHREAD_MUTEX_ROBUST` and
//! `PTHREAD_MUTEX_ERRORCHECK`; lock, `pthread_mutex_clocklock`, unlock,
//! `pthread_mutex_consistent`.
//!
//! Every function returns the pthread error number as an `io::Error`
//! (`raw_os_error()`): the typed layer maps `EOWNERDEAD`, `ENOTRECOVERABLE`,
//! `ETIMEDOUT`, `EDEADLK` in one place.

use std::io;
use std::mem::MaybeUninit;

use super::cvt_pthread;
use super::time::Monotonic;

/// The C type of a pthread mutex, for the one type that embeds it.
pub(crate) type RawMutex = libc::pthread_mutex_t;

extern "C" {
    // glibc ≥ 2.30 (symbol version GLIBC_2.34 on current releases); not
    // declared by the `libc` crate.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clockid: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// Initialises the mutex at `m` as process-shared, robust and
/// error-checking.
///
/// # Safety
///
/// `m` must be valid for writes of a `pthread_mutex_t`, suitably aligned,
/// and no thread of any process may be using a mutex at that address.
pub(crate) unsafe fn mutex_init_robust_shared(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: `attr` is valid storage; init fills it in before any other use.
    cvt_pthread(unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) })?;
    let attr_ptr = attr.as_mut_ptr();
    let result = (|| {
        // SAFETY: `attr_ptr` was initialised by pthread_mutexattr_init.
        cvt_pthread(unsafe {
            libc::pthread_mutexattr_setpshared(attr_ptr, libc::PTHREAD_PROCESS_SHARED)
        })?;
        // SAFETY: as above.
        cvt_pthread(unsafe {
            libc::pthread_mutexattr_setrobust(attr_ptr, libc::PTHREAD_MUTEX_ROBUST)
        })?;
        // SAFETY: as above.
        cvt_pthread(unsafe {
            libc::pthread_mutexattr_settype(attr_ptr, libc::PTHREAD_MUTEX_ERRORCHECK)
        })?;
        // SAFETY: `m` is valid and unused (caller's contract); the attribute
        // object is initialised.
        cvt_pthread(unsafe { libc::pthread_mutex_init(m, attr_ptr) })
    })();
    // SAFETY: `attr_ptr` was initialised and is destroyed exactly once.
    unsafe { libc::pthread_mutexattr_destroy(attr_ptr) };
    result
}

/// A deadline that has always passed. glibc's robust clocklock still tries
/// the lock word and reports `EOWNERDEAD` / `ENOTRECOVERABLE` / `EDEADLK`,
/// but answers `ETIMEDOUT` for a held lock *without* entering the kernel
/// when `tv_sec < 0` (a deadline of "now" made the kernel arm a timer: about
/// 80 µs per failed try, measured).
const EXPIRED: libc::timespec = libc::timespec {
    tv_sec: -1,
    tv_nsec: 0,
};

/// `pthread_mutex_clocklock(CLOCK_MONOTONIC, deadline)`; `None` is a
/// deadline that has always passed ([`EXPIRED`]): a try that never enters
/// the kernel for a held lock. A deadline in the past goes the same way:
/// asking the kernel to wait until a past time costs a timer interrupt for
/// nothing.
///
/// # Safety
///
/// `m` must point to an initialised mutex that stays mapped for the call.
#[inline]
pub(crate) unsafe fn mutex_clocklock_monotonic(
    m: *mut libc::pthread_mutex_t,
    deadline: Option<Monotonic>,
) -> libc::c_int {
    let ts = match deadline {
        Some(d) if d > Monotonic::now() => d.to_timespec(),
        _ => EXPIRED,
    };
    // SAFETY: guaranteed by the caller; `ts` is a valid timespec.
    unsafe { pthread_mutex_clocklock(m, libc::CLOCK_MONOTONIC, &ts) }
}

/// `pthread_mutex_trylock`, for the unit test that shows why the crate
/// never uses it: on a robust mutex that is not recoverable, glibc 2.36
/// answers `ENOTRECOVERABLE` but leaves the caller's tid in the lock word
/// (`RobustMutex::try_now`).
///
/// # Safety
///
/// `m` must point to an initialised mutex that stays mapped for the call.
#[cfg(test)]
pub(crate) unsafe fn mutex_trylock(m: *mut libc::pthread_mutex_t) -> libc::c_int {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::pthread_mutex_trylock(m) }
}

/// `pthread_mutex_unlock`.
///
/// # Safety
///
/// `m` must point to an initialised mutex held by the calling thread.
#[inline]
pub(crate) unsafe fn mutex_unlock(m: *mut libc::pthread_mutex_t) -> libc::c_int {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::pthread_mutex_unlock(m) }
}

/// `pthread_mutex_consistent`.
///
/// # Safety
///
/// `m` must point to an initialised robust mutex the calling thread acquired
/// with `EOWNERDEAD`.
pub(crate) unsafe fn mutex_consistent(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: guaranteed by the caller.
    cvt_pthread(unsafe { libc::pthread_mutex_consistent(m) })
}
