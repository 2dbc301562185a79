//! The per-handle state of the read-write lock: this process's liveness
//! token and reader slot (claimed on first use; a forked child claims its
//! own).

use crate::lock::per_process::PerProcess;
use crate::segment::liveness::LivenessToken;
use std::sync::atomic::AtomicU32;
use std::sync::{Mutex, OnceLock};

/// Per handle: this process's token and reader slot, rebuilt in a forked
/// child (which must prove its own liveness, never its parent's).
pub struct RwLocal {
    /// Dropped with the handle, unless `keep` (a forgotten write guard
    /// holds the lock: the writer's token, which proves it alive to
    /// readers, then lives as long as the process, like the mutex it holds).
    per_process: std::mem::ManuallyDrop<PerProcess<RwHandle>>,
    keep: std::sync::atomic::AtomicBool,
}

impl Drop for RwLocal {
    fn drop(&mut self) {
        if !self.keep.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: dropped once, here; never used after.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.per_process) }
        }
    }
}

impl std::fmt::Debug for RwLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RwLocal")
    }
}

pub(super) const NO_SLOT: u32 = u32::MAX;

#[derive(Default)]
pub(super) struct RwHandle {
    /// Claimed on the first read or write.
    pub(super) token: OnceLock<LivenessToken>,
    /// The slot this handle reads through, `NO_SLOT` before the first read.
    pub(super) slot: AtomicU32,
    /// Serialises the slow path of claiming.
    pub(super) claiming: Mutex<()>,
}

impl RwHandle {
    fn new() -> RwHandle {
        RwHandle {
            slot: AtomicU32::new(NO_SLOT),
            ..RwHandle::default()
        }
    }
}

impl RwLocal {
    /// Keeps this handle's token (and slot) for the life of the process.
    pub(crate) fn keep_alive(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn new() -> RwLocal {
        RwLocal {
            per_process: std::mem::ManuallyDrop::new(PerProcess::new(RwHandle::new())),
            keep: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[inline]
    pub(super) fn handle(&self) -> &RwHandle {
        // Rebinding builds an empty handle (nothing to fail); the inherited
        // token's description was detached in the child by the fork handler.
        match self.per_process.get(|_| Ok(RwHandle::new()), |_| {}) {
            Ok(h) => h,
            Err(_) => unreachable!("rebinding an RwHandle cannot fail"),
        }
    }
}
