//! Named POSIX semaphores: `sem_open(3)` (with and without
//! `O_CREAT|O_EXCL`), `sem_post(3)`, `sem_wait(3)`, `sem_trywait(3)`,
//! `sem_clockwait(3)` on `CLOCK_MONOTONIC`, `sem_getvalue(3)`,
//! `sem_close(3)`, `sem_unlink(3)`.
//!
//! All of them follow the `-1`-and-`errno` convention. glibc keeps a named
//! semaphore `/NAME` as the file `/dev/shm/sem.NAME` and maps it; `sem_open`
//! of a name this process has open already returns the same mapping with a
//! reference count, which `sem_close` decrements.

use std::ffi::CStr;
use std::io;
use std::ptr::NonNull;

use super::{cvt, retry_eintr};

extern "C" {
    // glibc ≥ 2.30 (symbol version GLIBC_2.34 on current releases); not
    // declared by the `libc` crate.
    fn sem_clockwait(
        sem: *mut libc::sem_t,
        clockid: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// `sizeof(sem_t)`: the size glibc maps (and so the least a semaphore's
/// file must have: a shorter one raises `SIGBUS` on the first access).
pub(crate) const SEM_SIZE: usize = std::mem::size_of::<libc::sem_t>();

/// Bytes of `sem_t` glibc's own state (`struct new_sem`) occupies; the
/// rest of the `sem_t` is padding that glibc zeroes when it creates a
/// semaphore and never reads or writes afterwards. (`struct new_sem` is a
/// 64-bit word and two ints on 64-bit targets, four ints on 32-bit ones.)
pub(crate) const SEM_STATE_SIZE: usize = 16;

/// The bytes of a new process-shared semaphore of value `value`, as
/// `sem_init(pshared = 1)` makes it in zeroed memory: the same image
/// `sem_open(O_CREAT)` writes into a new semaphore file (glibc builds both
/// with the value and `FUTEX_SHARED`, and zeroes the rest), so a file
/// holding it is a semaphore `sem_open` can open.
pub(crate) fn shared_image(value: u32) -> io::Result<[u8; SEM_SIZE]> {
    let mut sem = std::mem::MaybeUninit::<libc::sem_t>::zeroed();
    // SAFETY: `sem` is valid, aligned, writable memory for a `sem_t`.
    cvt(unsafe { libc::sem_init(sem.as_mut_ptr(), 1, value) })?;
    // SAFETY: `sem_t` is plain bytes (zeroed, then written by sem_init),
    // and the array has its size; a process-shared semaphore holds no
    // address, so its bytes mean the same anywhere.
    Ok(unsafe { std::mem::transmute_copy::<libc::sem_t, [u8; SEM_SIZE]>(sem.assume_init_ref()) })
}

/// An open named semaphore: the mapping `sem_open` returned. Closed
/// (`sem_close`) on drop; never unlinks the name.
#[derive(Debug)]
pub(crate) struct SemHandle(NonNull<libc::sem_t>);

// SAFETY: a `sem_t` from `sem_open` is process-shared by design and every
// operation on it is thread-safe; the handle has no thread affinity.
unsafe impl Send for SemHandle {}
// SAFETY: as above; all operations take the semaphore by shared pointer.
unsafe impl Sync for SemHandle {}

impl SemHandle {
    fn raw(&self) -> *mut libc::sem_t {
        self.0.as_ptr()
    }
}

impl Drop for SemHandle {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful sem_open and is closed
        // exactly once, here.
        unsafe { libc::sem_close(self.raw()) };
    }
}

fn from_sem_open(p: *mut libc::sem_t) -> io::Result<SemHandle> {
    if p == libc::SEM_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p)
        .map(SemHandle)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `sem_open(name, 0)`: opens an existing semaphore, never creates one.
pub(crate) fn sem_open_existing(name: &CStr) -> io::Result<SemHandle> {
    // SAFETY: `name` is NUL-terminated; without O_CREAT no variadic
    // arguments are read.
    from_sem_open(unsafe { libc::sem_open(name.as_ptr(), 0) })
}

/// `sem_open(name, O_CREAT|O_EXCL, mode, value)`: creates a new semaphore
/// (`EEXIST` if the name is taken). The mode is filtered by the umask; see
/// [`sem_chmod`].
pub(crate) fn sem_create_excl(name: &CStr, mode: u32, value: u32) -> io::Result<SemHandle> {
    // SAFETY: `name` is NUL-terminated; with O_CREAT, sem_open reads a
    // mode_t (promoted to unsigned int) and an unsigned int value.
    from_sem_open(unsafe {
        libc::sem_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL,
            mode as libc::c_uint,
            value as libc::c_uint,
        )
    })
}

/// `sem_post(3)`. `EOVERFLOW` when the value would exceed `SEM_VALUE_MAX`.
pub(crate) fn sem_post(sem: &SemHandle) -> io::Result<()> {
    // SAFETY: the handle holds an open semaphore.
    cvt(unsafe { libc::sem_post(sem.raw()) })?;
    Ok(())
}

/// `sem_wait(3)`, retried on `EINTR`.
pub(crate) fn sem_wait(sem: &SemHandle) -> io::Result<()> {
    // SAFETY: the handle holds an open semaphore.
    retry_eintr(|| cvt(unsafe { libc::sem_wait(sem.raw()) }))?;
    Ok(())
}

/// `sem_trywait(3)`: `Ok(false)` when the value is zero (`EAGAIN`).
pub(crate) fn sem_trywait(sem: &SemHandle) -> io::Result<bool> {
    // SAFETY: the handle holds an open semaphore.
    match retry_eintr(|| cvt(unsafe { libc::sem_trywait(sem.raw()) })) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `sem_clockwait(sem, CLOCK_MONOTONIC, abstime)`: `Ok(false)` once the
/// absolute deadline has passed (`ETIMEDOUT`). `EINTR` is retried with the
/// same absolute deadline, so a signal neither ends the wait early nor
/// extends it.
pub(crate) fn sem_clockwait_monotonic(
    sem: &SemHandle,
    abstime: &libc::timespec,
) -> io::Result<bool> {
    // SAFETY: the handle holds an open semaphore; `abstime` is a valid,
    // normalised timespec for the call.
    match retry_eintr(|| cvt(unsafe { sem_clockwait(sem.raw(), libc::CLOCK_MONOTONIC, abstime) })) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `sem_getvalue(3)`: the current value (never negative on Linux).
pub(crate) fn sem_getvalue(sem: &SemHandle) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the handle holds an open semaphore; `v` is a valid out-pointer.
    cvt(unsafe { libc::sem_getvalue(sem.raw(), &mut v) })?;
    Ok(v.max(0) as u32)
}

/// `sem_unlink(3)`: removes the name; handles open elsewhere keep working.
pub(crate) fn sem_unlink(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::sem_unlink(name.as_ptr()) })?;
    Ok(())
}
