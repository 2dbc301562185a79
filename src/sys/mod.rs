//! The only code that makes OS calls: one small function per call, each
//! returning `io::Result`, grouped by OS family (one file each): `fd`
//! (open, stat, chmod, fallocate, pread), `fd_lock` (flock and OFD byte
//! locks), `shm`, `memfd` (memfd_create, seals), `scm` (descriptors over
//! Unix sockets), `mman`, `sysv` (System V segments), `sem`, `pthread`, `futex`, `time`, `fork` (the
//! atfork handler and the descriptors a child must not keep), `proc`
//! (process identity and liveness) over `procfs` (every `/proc` parser),
//! `errno` (error numbers by name), and for `testing` `spawn`.
//!
//! Two libraries, and only here: rustix where it has a safe wrapper for the
//! call (file and descriptor calls, `flock`, memfd and seals, `futex`,
//! `clock_gettime`, pids and `kill`, `pidfd_open`, `prctl`, pipes, `poll`,
//! `SCM_RIGHTS`), converting its `Errno` with `io::Error::from`; libc where
//! rustix has nothing or does something else: pthread mutexes and
//! `pthread_mutex_clocklock`, named semaphores and `sem_clockwait`, glibc's
//! `shm_open` (rustix's `shm::open` keeps a leading slash and does not add
//! `O_NOFOLLOW`), open-file-description *byte-range* locks (rustix's
//! `fcntl_lock` locks the whole file), `pthread_atfork`,
//! `posix_fallocate` (glibc's falls back where `fallocate(2)` is not
//! supported), `mmap`/`munmap`/`msync` (unsafe in rustix too), `_exit`,
//! and the calls on bare descriptor numbers that may not be open (the
//! atfork handler's `dup3`, `testing`'s adoption probes). rustix types do
//! not leave this module.
//!
//! Two C error conventions live here and are kept apart: functions of the
//! `-1`-and-`errno` family (`shm_open`, `fcntl`, `sem_*`, …) go
//! through [`cvt`]; the `pthread_*` family returns the error number directly
//! and goes through [`cvt_pthread`].

pub(crate) mod errno;
pub(crate) mod fd;
pub(crate) mod fd_lock;
pub(crate) mod fork;
pub(crate) mod futex;
pub(crate) mod memfd;
pub(crate) mod mman;
pub(crate) mod proc;
pub(crate) mod procfs;
pub(crate) mod pthread;
pub(crate) mod scm;
pub(crate) mod sem;
pub(crate) mod shm;
#[cfg(feature = "testing")]
pub(crate) mod spawn;
pub(crate) mod sysv;
pub(crate) mod time;

use std::io;

/// `-1`-and-`errno` convention: a negative return becomes the `errno` error.
pub(crate) fn cvt<T: Into<i64> + Copy>(ret: T) -> io::Result<T> {
    if ret.into() < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `pthread_*` convention: `0` is success, anything else is the error number.
pub(crate) fn cvt_pthread(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// Runs `f` again while it fails with `EINTR`.
pub(crate) fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(errno::EINTR) => continue,
            other => return other,
        }
    }
}
