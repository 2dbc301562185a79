//! What happens in a forked child: one `pthread_atfork` child handler that
//! bumps a fork generation (so a guard can tell, with one relaxed load,
//! that it was copied into a child) and detaches the descriptors a child
//! must not keep (the registry behind the `flock` backend's fork safety).
//!
//! A `flock` belongs to the open file description, and a child forked
//! without `exec` shares every description of its parent. If the parent is
//! then killed holding a `flock`, the lock stays held for as long as the
//! child lives — the child never meant to hold it. Descriptors registered
//! here are *detached* in every forked child by the `pthread_atfork` child
//! handler: `dup3` puts a placeholder (`/dev/null`) under the same number,
//! which drops the child's reference to the description without freeing
//! the number (the child's handle still closes it later, safely).
//!
//! The handler runs in the child between `fork` and the return to user
//! code, where only async-signal-safe calls are allowed: it reads a fixed
//! array of atomics and calls `dup3`, nothing else.
//!
//! `pthread_atfork` and that `dup3` stay on libc: rustix has no atfork, and
//! its `dup3` replaces an `OwnedFd` of the caller's, where the handler has
//! only numbers from a table.

use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Once;

/// How many descriptors can be registered at once (one per `ShmCell`
/// handle with the `flock` backend). Past that, a handle is not detached in
/// children (the documented behaviour of a plain `flock`).
const SLOTS: usize = 1024;

static REGISTERED: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];
static PLACEHOLDER: AtomicI32 = AtomicI32::new(-1);
static INIT: Once = Once::new();

fn init() {
    INIT.call_once(|| {
        // Kept for the life of the process (never closed), close-on-exec.
        let fd = rustix::fs::open(
            c"/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_or(-1, IntoRawFd::into_raw_fd);
        PLACEHOLDER.store(fd, Ordering::SeqCst);
        register_fork_handler();
    });
}

/// Registers `fd` to be detached in forked children. Returns whether a
/// slot was free.
pub(crate) fn register(fd: RawFd) -> bool {
    init();
    if PLACEHOLDER.load(Ordering::SeqCst) < 0 {
        return false;
    }
    REGISTERED.iter().any(|slot| {
        slot.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    })
}

/// Unregisters `fd`; call *before* closing it, so that a fork in another
/// thread never acts on a number that may already be reused.
pub(crate) fn unregister(fd: RawFd) {
    for slot in &REGISTERED {
        if slot
            .compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

/// In a freshly forked child: puts the placeholder under every registered
/// number. Async-signal-safe (atomic loads and `dup3`).
fn detach_in_child() {
    let placeholder = PLACEHOLDER.load(Ordering::Relaxed);
    if placeholder < 0 {
        return;
    }
    for slot in &REGISTERED {
        let fd = slot.load(Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: both are open descriptors of this process (the
            // registered one stays open until unregistered); dup3 replaces
            // the number's description atomically.
            unsafe { libc::dup3(placeholder, fd, libc::O_CLOEXEC) };
        }
    }
}

static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn bump_fork_generation() {
    // Async-signal-safe: a single atomic add, then `dup3` calls.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    detach_in_child();
}

/// Registers (once per process) a `pthread_atfork` child handler that bumps
/// the fork generation. Inlined: it sits on the lock path, where after the
/// first call it is one load and a branch.
#[inline]
pub(crate) fn register_fork_handler() {
    ATFORK.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn()` that only does an
        // atomic add and `dup3` calls (forkfds), async-signal-safe and so
        // allowed in a freshly forked child.
        unsafe { libc::pthread_atfork(None, None, Some(bump_fork_generation)) };
    });
}

/// The number of `fork`s this process's ancestry went through since it
/// registered the handler: a guard taken in generation `g` belongs to
/// another process when the generation differs. One relaxed load.
#[inline(always)]
pub(crate) fn fork_generation() -> u32 {
    FORK_GENERATION.load(Ordering::Relaxed)
}
