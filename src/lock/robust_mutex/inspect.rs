//! The robust mutex read from outside: glibc's `__lock` and `__owner`
//! words with `pread`, the holder thread mapped to its process through
//! `/proc/TID/status`.

use super::word;
use crate::lock::describe::{u32_at, Holder, LockArea, LockInfo, LockState, LockWord};
use crate::segment::LockKind;
use crate::sys;

/// Reads glibc's `__lock` and `__owner` words of the robust mutex.
pub(crate) fn describe(area: &LockArea<'_>) -> LockInfo {
    match area.bytes::<{ LOCK_BYTES }>() {
        Some(b) => describe_bytes(&b, area.foreign_ns),
        None => LockInfo::unknown(Some(LockKind::RobustMutex)),
    }
}

/// How many bytes of the lock area [`describe_bytes`] reads.
pub(crate) const LOCK_BYTES: usize = word::OWNER_OFFSET + 4;

/// The same, from the first [`LOCK_BYTES`] bytes of the lock area copied
/// by the caller (a System V segment has no descriptor to `pread`).
pub(crate) fn describe_bytes(b: &[u8; LOCK_BYTES], foreign_ns: bool) -> LockInfo {
    let mut out = LockInfo::unknown(Some(LockKind::RobustMutex));
    let lock = u32_at(b, word::LOCK_OFFSET);
    let owner = u32_at(b, word::OWNER_OFFSET);
    out.words = vec![
        LockWord {
            name: "lock_word",
            value: lock.into(),
            meaning: "glibc __lock: owner tid | OWNER_DIED 0x40000000 | WAITERS 0x80000000",
        },
        LockWord {
            name: "owner_word",
            value: owner.into(),
            meaning: "glibc __owner: tid, 0x7fffffff inconsistent, 0x7ffffffe not recoverable",
        },
    ];
    let tid = lock & word::TID_MASK;
    let holder = |tid: u32| (tid != 0).then(|| thread_holder(tid, foreign_ns));
    (out.state, out.holder) = if owner == word::NOT_RECOVERABLE {
        // glibc leaves no tid behind; a tid in `__lock` is a locker that is
        // being refused (or wedged by an old trylock).
        (LockState::NotRecoverable, holder(tid))
    } else if tid != 0 && owner == word::INCONSISTENT {
        (LockState::Recovering, holder(tid))
    } else if tid != 0 {
        (LockState::Held, holder(tid))
    } else if lock & word::OWNER_DIED != 0 {
        // The kernel cleared the tid; glibc's `__owner` still names the
        // thread that died.
        let dead = (owner & word::TID_MASK != 0 && owner != word::INCONSISTENT).then_some(Holder {
            tid: Some(owner),
            pid: None,
            alive: Some(false),
        });
        (LockState::OwnerDied, dead)
    } else {
        (LockState::Free, None)
    };
    out
}

/// The holder of a robust mutex: a thread, mapped to its process through
/// `/proc/TID/status`.
fn thread_holder(tid: u32, foreign_ns: bool) -> Holder {
    let (pid, alive) = if foreign_ns {
        (None, None)
    } else {
        match sys::procfs::thread_status(tid) {
            Ok(Some(st)) => (Some(st.tgid), Some(!st.is_dead())),
            Ok(None) => (None, Some(false)),
            Err(_) => (None, None),
        }
    };
    Holder {
        tid: Some(tid),
        pid,
        alive,
    }
}
