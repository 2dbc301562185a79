//! The semaphore backend read from outside: its holder record and state
//! word with `pread`, the holder's liveness from the kernel.

use super::backend::layout as sem;
use crate::lock::describe::{u32_at, Holder, LockArea, LockInfo, LockState, LockWord};
use crate::segment::liveness;
use crate::segment::LockKind;

/// Reads the semaphore backend's holder record (the holder word *is* the
/// lock: the holder's liveness token) and its state word, and asks the
/// kernel whether the token is still held (`F_OFD_GETLK`): the answer holds
/// whatever the pid and time namespaces of the holder and of this reader.
pub(crate) fn describe(area: &LockArea<'_>) -> LockInfo {
    let mut out = LockInfo::unknown(Some(LockKind::NamedSemaphore));
    let Some(b) = area.bytes::<{ sem::SIZE }>() else {
        return out;
    };
    let u64_at = |off: usize| u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"));
    let token = u64_at(sem::HOLDER);
    let state = u32_at(&b, sem::STATE);
    let tid = u32_at(&b, sem::HOLDER_TID);
    let pid = u32_at(&b, sem::HOLDER_PID);
    out.words = vec![
        LockWord {
            name: "sem_holder",
            value: token,
            meaning: "holder's liveness token (a kernel lock on byte 2^62 + token of the segment); 0 free",
        },
        LockWord {
            name: "sem_holder_thread",
            value: u64_at(sem::HOLDER_THREAD),
            meaning: "identity of the holding thread (never reused; for Deadlock)",
        },
        LockWord {
            name: "sem_state",
            value: state.into(),
            meaning: "0 consistent, 1 taken from a dead holder, 2 not recoverable",
        },
        LockWord {
            name: "sem_waiters",
            value: u32_at(&b, sem::WAITERS).into(),
            meaning: "threads sleeping on the semaphore sem.NAME",
        },
        LockWord {
            name: "sem_holder_pid",
            value: pid.into(),
            meaning: "pid of the holder in its pid namespace (0: free or not yet written)",
        },
        LockWord {
            name: "sem_holder_tid",
            value: tid.into(),
            meaning: "thread of the holder in its pid namespace (0: free or not yet written)",
        },
    ];
    let holder = (token != 0).then(|| Holder {
        tid: (tid != 0 && !area.foreign_ns).then_some(tid),
        pid: (pid != 0 && !area.foreign_ns).then_some(pid),
        alive: liveness::is_held(area.fd, token).ok(),
    });
    out.state = match (state, holder.and_then(|h| h.alive)) {
        (sem::NOT_RECOVERABLE, _) => LockState::NotRecoverable,
        // A dead holder is taken over by the next locker, with OwnerDied.
        (_, Some(false)) => LockState::OwnerDied,
        (sem::OWNER_DIED, _) if holder.is_some() => LockState::Recovering,
        _ if holder.is_some() => LockState::Held,
        _ => LockState::Free,
    };
    out.holder = holder;
    out
}
