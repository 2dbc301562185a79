//! The semaphore backend read from outside: its holder record and state
//! word with `pread`.

use super::backend::layout as sem;
use super::identity::decode_identity;
use crate::lock::describe::{u32_at, Holder, LockArea, LockInfo, LockState, LockWord};
use crate::segment::LockKind;
use crate::sys;

/// Reads the semaphore backend's holder record (the holder word *is* the
/// lock: pid and process start time) and its state word.
pub(crate) fn describe(area: &LockArea<'_>) -> LockInfo {
    let foreign_ns = area.foreign_ns;
    let mut out = LockInfo::unknown(Some(LockKind::NamedSemaphore));
    let Some(b) = area.bytes::<{ sem::SIZE }>() else {
        return out;
    };
    let identity = u64::from_ne_bytes(b[sem::HOLDER..sem::HOLDER + 8].try_into().expect("8"));
    let state = u32_at(&b, sem::STATE);
    let tid = u32_at(&b, sem::HOLDER_TID);
    out.words = vec![
        LockWord {
            name: "sem_holder",
            value: identity,
            meaning: "holder identity: pid (low 22 bits) | process start time << 22; 0 free",
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
            name: "sem_holder_tid",
            value: tid.into(),
            meaning: "thread of the holder (0: free or not yet written)",
        },
    ];
    let holder = (identity != 0).then(|| {
        let (pid, start) = decode_identity(identity);
        Holder {
            tid: (tid != 0).then_some(tid),
            pid: Some(pid),
            alive: if foreign_ns {
                None
            } else {
                process_alive(pid, start)
            },
        }
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

/// Whether the process `pid` that started at `start` (clock ticks, 0 =
/// unknown) still runs: `None` when `/proc` cannot be read.
///
/// The same judgement as the lock backends' (`sys::proc::is_alive`): a
/// zombie leader with live threads is alive, and a process `/proc` hides
/// (`hidepid`) is judged by `kill(pid, 0)`.
fn process_alive(pid: u32, start: u64) -> Option<bool> {
    Some(sys::proc::is_alive(pid, start))
}
