//! The raw baselines: bare `libc` calls on objects in shared memory, as a
//! program without this crate would write them. Each wrapper is a thin
//! `#[inline]` call so that the baseline costs what the OS call costs.

use std::cell::UnsafeCell;
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::AtomicU32;

/// Which attributes a raw mutex gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MutexKind {
    /// `PTHREAD_PROCESS_SHARED` + `PTHREAD_MUTEX_ROBUST` +
    /// `PTHREAD_MUTEX_ERRORCHECK`: the same attributes as the crate's.
    Robust,
    /// `PTHREAD_PROCESS_SHARED` only (default type, not robust).
    Plain,
}

/// A `pthread_mutex_t` in shared memory.
#[repr(C, align(64))]
pub struct PMutex(UnsafeCell<libc::pthread_mutex_t>);

// SAFETY: a process-shared pthread mutex may be used from any thread.
unsafe impl Sync for PMutex {}

fn check(what: &str, r: libc::c_int) {
    assert_eq!(r, 0, "{what}: {}", io::Error::from_raw_os_error(r));
}

impl PMutex {
    /// Initialises in place.
    ///
    /// # Safety
    ///
    /// `self` lives in memory that is not moved afterwards and no thread
    /// uses it during the call.
    pub unsafe fn init(&self, kind: MutexKind) {
        let mut a = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `a` is storage that init fills; each later call gets the
        // initialised attribute; `self.0` is valid for writes.
        unsafe {
            check(
                "mutexattr_init",
                libc::pthread_mutexattr_init(a.as_mut_ptr()),
            );
            check(
                "setpshared",
                libc::pthread_mutexattr_setpshared(a.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED),
            );
            if kind == MutexKind::Robust {
                check(
                    "setrobust",
                    libc::pthread_mutexattr_setrobust(a.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST),
                );
                check(
                    "settype",
                    libc::pthread_mutexattr_settype(a.as_mut_ptr(), libc::PTHREAD_MUTEX_ERRORCHECK),
                );
            }
            check(
                "mutex_init",
                libc::pthread_mutex_init(self.0.get(), a.as_ptr()),
            );
            libc::pthread_mutexattr_destroy(a.as_mut_ptr());
        }
    }

    #[inline]
    pub fn lock(&self) -> libc::c_int {
        // SAFETY: initialised by `init` (callers' order), mapped while `self`.
        unsafe { libc::pthread_mutex_lock(self.0.get()) }
    }

    #[inline]
    pub fn trylock(&self) -> libc::c_int {
        // SAFETY: as in `lock`.
        unsafe { libc::pthread_mutex_trylock(self.0.get()) }
    }

    /// `pthread_mutex_clocklock(CLOCK_MONOTONIC, 0 s)`: the crate's
    /// `try_lock`, bare.
    #[inline]
    pub fn clocklock_expired(&self) -> libc::c_int {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `lock`; `ts` is a valid timespec.
        unsafe { pthread_mutex_clocklock(self.0.get(), libc::CLOCK_MONOTONIC, &ts) }
    }

    #[inline]
    pub fn unlock(&self) -> libc::c_int {
        // SAFETY: as in `lock`; the caller holds it.
        unsafe { libc::pthread_mutex_unlock(self.0.get()) }
    }

    pub fn as_ptr(&self) -> *mut libc::pthread_mutex_t {
        self.0.get()
    }
}

extern "C" {
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clockid: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// A process-shared `pthread_rwlock_t` (glibc's default kind, readers
/// preferred). Not robust: a holder's death leaves it held for ever.
#[repr(C, align(64))]
pub struct PRwLock(UnsafeCell<libc::pthread_rwlock_t>);

// SAFETY: a process-shared pthread rwlock may be used from any thread.
unsafe impl Sync for PRwLock {}

impl PRwLock {
    /// Initialises in place, `PTHREAD_PROCESS_SHARED`.
    ///
    /// # Safety
    ///
    /// As [`PMutex::init`].
    pub unsafe fn init(&self) {
        let mut a = MaybeUninit::<libc::pthread_rwlockattr_t>::uninit();
        // SAFETY: as in `PMutex::init`.
        unsafe {
            check(
                "rwlockattr_init",
                libc::pthread_rwlockattr_init(a.as_mut_ptr()),
            );
            check(
                "rwlock setpshared",
                libc::pthread_rwlockattr_setpshared(a.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED),
            );
            check(
                "rwlock_init",
                libc::pthread_rwlock_init(self.0.get(), a.as_ptr()),
            );
            libc::pthread_rwlockattr_destroy(a.as_mut_ptr());
        }
    }

    #[inline]
    pub fn rdlock(&self) -> libc::c_int {
        // SAFETY: initialised by `init` (callers' order), mapped while `self`.
        unsafe { libc::pthread_rwlock_rdlock(self.0.get()) }
    }

    #[inline]
    pub fn unlock(&self) -> libc::c_int {
        // SAFETY: as in `rdlock`; the caller holds it.
        unsafe { libc::pthread_rwlock_unlock(self.0.get()) }
    }
}

/// A process-shared `pthread_cond_t`.
#[repr(C, align(64))]
pub struct PCond(UnsafeCell<libc::pthread_cond_t>);

// SAFETY: a process-shared condition variable may be used from any thread.
unsafe impl Sync for PCond {}

impl PCond {
    /// # Safety
    ///
    /// As [`PMutex::init`].
    pub unsafe fn init(&self) {
        let mut a = MaybeUninit::<libc::pthread_condattr_t>::uninit();
        // SAFETY: as in `PMutex::init`.
        unsafe {
            check("condattr_init", libc::pthread_condattr_init(a.as_mut_ptr()));
            check(
                "cond setpshared",
                libc::pthread_condattr_setpshared(a.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED),
            );
            check(
                "cond_init",
                libc::pthread_cond_init(self.0.get(), a.as_ptr()),
            );
            libc::pthread_condattr_destroy(a.as_mut_ptr());
        }
    }

    /// # Safety
    ///
    /// The caller holds `m`, a process-shared mutex.
    #[inline]
    pub unsafe fn wait(&self, m: &PMutex) -> libc::c_int {
        // SAFETY: both initialised; the caller holds `m`.
        unsafe { libc::pthread_cond_wait(self.0.get(), m.as_ptr()) }
    }

    #[inline]
    pub fn signal(&self) -> libc::c_int {
        // SAFETY: initialised by `init`.
        unsafe { libc::pthread_cond_signal(self.0.get()) }
    }
}

/// An unnamed process-shared semaphore (`sem_init(pshared = 1)`).
#[repr(C, align(64))]
pub struct PSem(UnsafeCell<libc::sem_t>);

// SAFETY: a process-shared semaphore may be used from any thread.
unsafe impl Sync for PSem {}

impl PSem {
    /// # Safety
    ///
    /// As [`PMutex::init`].
    pub unsafe fn init(&self, value: u32) {
        // SAFETY: `self.0` is valid storage in shared memory.
        let r = unsafe { libc::sem_init(self.0.get(), 1, value) };
        assert_eq!(r, 0, "sem_init: {}", io::Error::last_os_error());
    }

    #[inline]
    pub fn wait(&self) {
        sem_wait(self.0.get());
    }

    #[inline]
    pub fn post(&self) {
        // SAFETY: initialised by `init`.
        unsafe { libc::sem_post(self.0.get()) };
    }
}

#[inline]
fn sem_wait(s: *mut libc::sem_t) {
    // SAFETY: `s` is an initialised semaphore (callers' invariant).
    while unsafe { libc::sem_wait(s) } != 0 {
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EINTR));
    }
}

/// A named semaphore (`sem_open(O_CREAT|O_EXCL)`, value 1), closed and
/// unlinked on drop.
pub struct NamedSem {
    sem: *mut libc::sem_t,
    name: CString,
    owner: u32,
}

impl NamedSem {
    pub fn create(name: &str) -> NamedSem {
        let name = CString::new(name).expect("no NUL");
        // SAFETY: `name` is a valid C string; variadic mode and value are
        // passed as the C ABI expects (promoted to unsigned int).
        let sem = unsafe {
            libc::sem_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL,
                0o600 as libc::c_uint,
                1 as libc::c_uint,
            )
        };
        assert!(
            sem != libc::SEM_FAILED,
            "sem_open: {}",
            io::Error::last_os_error()
        );
        NamedSem {
            sem,
            name,
            owner: std::process::id(),
        }
    }

    #[inline]
    pub fn wait(&self) {
        sem_wait(self.sem);
    }

    #[inline]
    pub fn post(&self) {
        // SAFETY: opened by `create`, closed only on drop.
        unsafe { libc::sem_post(self.sem) };
    }
}

impl Drop for NamedSem {
    fn drop(&mut self) {
        // SAFETY: opened by `create` and not used after drop.
        unsafe { libc::sem_close(self.sem) };
        if std::process::id() == self.owner {
            // SAFETY: `name` is a valid C string.
            unsafe { libc::sem_unlink(self.name.as_ptr()) };
        }
    }
}

/// `flock` on a file under `/dev/shm`, opened by each process itself (a
/// forked child shares its parent's open file description, and with it the
/// lock: it must open its own).
pub struct FlockFile {
    file: std::fs::File,
}

impl FlockFile {
    /// Opens (creating) `/dev/shm/<name>`.
    pub fn open(name: &str) -> FlockFile {
        let path = format!("/dev/shm{name}");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        FlockFile { file }
    }

    pub fn remove(name: &str) {
        let _ = std::fs::remove_file(format!("/dev/shm{name}"));
    }

    #[inline]
    fn flock(&self, op: libc::c_int) {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the life of `self`.
        while unsafe { libc::flock(self.file.as_raw_fd(), op) } != 0 {
            assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EINTR));
        }
    }

    #[inline]
    pub fn lock(&self) {
        self.flock(libc::LOCK_EX);
    }

    #[inline]
    pub fn unlock(&self) {
        self.flock(libc::LOCK_UN);
    }
}

/// Non-private `FUTEX_WAIT` while `*word == val`.
#[inline]
pub fn futex_wait(word: &AtomicU32, val: u32) {
    // SAFETY: `word` is a valid aligned u32 for the call; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            val,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// Non-private `FUTEX_WAKE` of one waiter.
#[inline]
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// A pipe pair end to end: one byte each way.
#[inline]
pub fn write_byte(fd: libc::c_int) {
    let b = [1u8];
    // SAFETY: `b` is valid for 1 byte; `fd` is an open pipe end.
    while unsafe { libc::write(fd, b.as_ptr().cast(), 1) } != 1 {
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EINTR));
    }
}

#[inline]
pub fn read_byte(fd: libc::c_int) {
    let mut b = [0u8];
    // SAFETY: `b` is valid for 1 byte; `fd` is an open pipe end.
    while unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } != 1 {
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EINTR));
    }
}

/// `shm_open(O_RDWR)` + `fstat` + `mmap` of an existing object: the bare
/// cost of attaching. Returns what `detach` undoes.
pub fn attach(name: &CString) -> (libc::c_int, *mut libc::c_void, usize) {
    // SAFETY: `name` is a valid C string; `st` is a valid out-pointer; the
    // mapping is fresh and sized from fstat.
    unsafe {
        let fd = libc::shm_open(name.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0);
        assert!(fd >= 0, "shm_open: {}", io::Error::last_os_error());
        let mut st = MaybeUninit::<libc::stat>::uninit();
        assert_eq!(libc::fstat(fd, st.as_mut_ptr()), 0);
        let len = st.assume_init().st_size as usize;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert!(p != libc::MAP_FAILED);
        (fd, p, len)
    }
}

pub fn detach((fd, p, len): (libc::c_int, *mut libc::c_void, usize)) {
    // SAFETY: undoes `attach` once; nothing uses the mapping afterwards.
    unsafe {
        libc::munmap(p, len);
        libc::close(fd);
    }
}
