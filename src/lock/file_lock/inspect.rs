//! The `flock` backend read from outside: its held marker and last holder
//! with `pread`, and whether that holder still holds the `flock`, from
//! `/proc/PID/fdinfo`.

use super::backend::layout as flk;
use crate::lock::describe::{u32_at, Holder, LockArea, LockInfo, LockState, LockWord};
use crate::segment::LockKind;
use crate::sys;

/// Reads the flock backend's held marker and last holder, and asks
/// `/proc/PID/fdinfo` whether that holder still holds the `flock` on this
/// inode (the kernel drops it when the holder dies).
pub(crate) fn describe(area: &LockArea<'_>) -> LockInfo {
    let (foreign_ns, st) = (area.foreign_ns, area.stat);
    let mut out = LockInfo::unknown(Some(LockKind::FileLock));
    let Some(b) = area.bytes::<{ flk::SIZE }>() else {
        return out;
    };
    let state = u32_at(&b, flk::STATE);
    let pid = u32_at(&b, flk::HOLDER_PID);
    out.words = vec![
        LockWord {
            name: "flock_state",
            value: state.into(),
            meaning: "0 free, 1 held (or its holder died), 2 held inconsistent, 3 not recoverable",
        },
        LockWord {
            name: "flock_holder_pid",
            value: pid.into(),
            meaning: "last process that acquired the flock",
        },
    ];
    if !matches!(state, flk::HELD | flk::HELD_INCONSISTENT) {
        out.state = match state {
            flk::FREE => LockState::Free,
            flk::NOT_RECOVERABLE => LockState::NotRecoverable,
            _ => LockState::Unknown,
        };
        return out;
    }
    let holds = if foreign_ns || pid == 0 {
        None
    } else {
        match sys::procfs::holds_flock(pid, st.dev_major_minor(), st.ino()) {
            Ok(Some(holds)) => Some(holds),
            // No /proc entry (gone, or hidden by hidepid) or descriptors
            // not ours to read: only its death tells.
            Ok(None) | Err(_) => process_alive(pid, 0).and_then(|alive| (!alive).then_some(false)),
        }
    };
    out.holder = (pid != 0).then_some(Holder {
        tid: None,
        pid: Some(pid),
        alive: holds,
    });
    out.state = match (holds, state) {
        // Marked held but its holder's flock is gone: the next locker gets
        // OwnerDied.
        (Some(false), _) => LockState::OwnerDied,
        (_, flk::HELD_INCONSISTENT) => LockState::Recovering,
        _ => LockState::Held,
    };
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
