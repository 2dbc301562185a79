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

/// `pthread_mutex_lock`.
///
/// # Safety
///
/// `m` must point to an initialised mutex that stays mapped for the call.
#[inline]
pub(crate) unsafe fn mutex_lock(m: *mut libc::pthread_mutex_t) -> libc::c_int {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::pthread_mutex_lock(m) }
}

/// `pthread_mutex_clocklock(CLOCK_MONOTONIC, abstime)`.
///
/// # Safety
///
/// `m` must point to an initialised mutex that stays mapped for the call.
#[inline]
pub(crate) unsafe fn mutex_clocklock_monotonic(
    m: *mut libc::pthread_mutex_t,
    abstime: &libc::timespec,
) -> libc::c_int {
    // SAFETY: guaranteed by the caller; `abstime` is a valid timespec.
    unsafe { pthread_mutex_clocklock(m, libc::CLOCK_MONOTONIC, abstime) }
}

/// `pthread_mutex_clocklock(CLOCK_MONOTONIC, 0 s)`: a deadline that has
/// always passed, so a free mutex is taken and a held one answers
/// `ETIMEDOUT` without sleeping — `try_lock` without reading the clock.
///
/// # Safety
///
/// `m` must point to an initialised mutex that stays mapped for the call.
#[inline]
pub(crate) unsafe fn mutex_clocklock_expired(m: *mut libc::pthread_mutex_t) -> libc::c_int {
    const EXPIRED: libc::timespec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: guaranteed by the caller; `EXPIRED` is a valid timespec.
    unsafe { pthread_mutex_clocklock(m, libc::CLOCK_MONOTONIC, &EXPIRED) }
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
