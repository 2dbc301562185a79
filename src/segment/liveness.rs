//! Liveness proven by the kernel: a process shows that it is alive by
//! holding an open-file-description read lock on one byte of the segment's
//! file, its *token* byte, and anybody can ask the kernel whether that byte
//! is still locked (`F_OFD_GETLK`).
//!
//! The kernel drops the lock when the last descriptor of the holder's open
//! file description closes — when the holder dies, whatever the pid and
//! time namespaces, pid reuse or zombies (a zombie has closed its files). It
//! is the shape of SQLite's WAL-index read marks and LMDB's reader table,
//! with one difference: the byte is not a slot of a fixed table but a
//! random 48-bit token above [`TOKEN_BASE`] (byte-range locks may lie far
//! beyond the end of a file, and lock nothing real there). So there is no
//! table to fill up and no slot to reuse: a token names one holder for as
//! long as it lives.
//!
//! # Rules for users of a token
//!
//! * A token is held through an open file description of its own (a
//!   reopen of `/proc/self/fd/N`), registered with [`sys::fork`] so that a
//!   child forked without `exec` drops its reference to it: a child must
//!   never keep a dead parent's token alive. A child that needs a token
//!   claims its own (wrap the token in a
//!   [`PerProcess`](crate::lock::per_process::PerProcess)).
//! * A record that names a token (a holder word, a reader slot) is only
//!   written by the live holder of that token, so a token that [`is_held`]
//!   answers `false` for names a holder that is gone for good.
//! * Probing is a system call: do it on slow paths only (a waiter that
//!   found the lock taken).

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;
use crate::sys::fd_lock::OfdLock;

/// Where token bytes start (far above any segment's length: a token byte
/// never overlaps the attach byte or anything else locked in the file).
pub(crate) const TOKEN_BASE: u64 = 1 << 62;
/// Tokens are 48-bit (never 0): collisions between the live tokens of one
/// segment are checked at claim time anyway.
const TOKEN_MASK: u64 = (1 << 48) - 1;

/// A held token: the lock lives as long as this value (or until a fork's
/// child drops its copy of the description).
#[derive(Debug)]
pub(crate) struct LivenessToken {
    fd: OwnedFd,
    token: u64,
}

impl LivenessToken {
    /// Claims a fresh token on the file open as `seg_fd`: a new open file
    /// description of that file, a random token nobody holds, and a read
    /// lock on its byte.
    pub(crate) fn claim(seg_fd: BorrowedFd<'_>) -> io::Result<LivenessToken> {
        let fd = sys::fd::reopen(seg_fd)?;
        for _ in 0..64 {
            let token = random_token();
            if is_held(fd.as_fd(), token)? {
                continue; // somebody else's (a 2^-48 chance): draw again
            }
            if sys::fd_lock::ofd_try_set(fd.as_fd(), OfdLock::Read, TOKEN_BASE + token, 1)? {
                // Best effort: without a registry slot, a forked child keeps
                // the description (documented limit of 1024 per process).
                sys::fork::register(fd.as_raw_fd());
                return Ok(LivenessToken { fd, token });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free liveness token after 64 draws",
        ))
    }

    /// The token (never 0), to record where others can read it.
    #[inline]
    pub(crate) fn token(&self) -> u64 {
        self.token
    }
}

impl Drop for LivenessToken {
    fn drop(&mut self) {
        // Unregister before the number can be reused by a close.
        sys::fork::unregister(self.fd.as_raw_fd());
    }
}

/// Whether some open file description holds the token `token` on the file
/// open as `fd` (descriptions other than `fd`'s own: the kernel does not
/// report a description's own locks). `token == 0` is never held.
pub(crate) fn is_held(fd: BorrowedFd<'_>, token: u64) -> io::Result<bool> {
    if token == 0 || token > TOKEN_MASK {
        return Ok(false);
    }
    Ok(sys::fd_lock::ofd_conflicting(fd, OfdLock::Write, TOKEN_BASE + token, 1)?.is_some())
}

/// A random non-zero 48-bit number: std's per-process random hash keys
/// mixed with a counter, the pid and the clock (no dependency needed for
/// numbers that only have to differ, not to be secret).
fn random_token() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(sys::proc::getpid());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() & TOKEN_MASK).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file() -> (std::fs::File, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "shmsync-liveness-{}-{}",
            std::process::id(),
            random_token()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        (f, path)
    }

    #[test]
    fn a_claimed_token_is_held_until_dropped() {
        let (f, path) = temp_file();
        let probe = sys::fd::reopen(f.as_fd()).unwrap();
        let t = LivenessToken::claim(f.as_fd()).unwrap();
        assert_ne!(t.token(), 0);
        assert!(is_held(probe.as_fd(), t.token()).unwrap());
        assert!(
            is_held(f.as_fd(), t.token()).unwrap(),
            "from the segment's own fd"
        );
        let other = LivenessToken::claim(f.as_fd()).unwrap();
        assert_ne!(other.token(), t.token());
        let token = t.token();
        drop(t);
        assert!(!is_held(probe.as_fd(), token).unwrap());
        assert!(is_held(probe.as_fd(), other.token()).unwrap());
        assert!(!is_held(probe.as_fd(), 0).unwrap());
        std::fs::remove_file(path).unwrap();
    }
}
