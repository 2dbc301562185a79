//! Reading one open object: `fstat`, `pread` of the header and the lock
//! words, `fcntl(F_OFD_GETLK)`, `/proc`. Never a mapping, never a lock.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use super::ATTACH_BYTE;
use super::{fill_stat, Attached, Holder, Inspection, LockInfo, LockState, LockWord, State};
use crate::error::Error;
use crate::lock::file_lock::backend::layout as flk;
use crate::lock::named_semaphore::{self, layout as sem};
use crate::lock::robust_mutex::word;
use crate::segment::header::{self, HeaderInfo, LockKind, HEADER_SIZE, MAGIC};
use crate::segment::header::{STATE_INITIALISING, STATE_READY, STATE_UNINIT};
use crate::sys;
use crate::sys::ofd::OfdLock;

/// Reads and judges the object open on `fd`.
pub(super) fn examine(name: &str, fd: BorrowedFd<'_>) -> Inspection {
    let st = match sys::fd::fstat(fd) {
        Ok(st) => st,
        Err(e) => return Inspection::bare(name.into(), State::Unreadable, format!("fstat: {e}")),
    };
    let mut i = Inspection::bare(name.into(), State::Unreadable, "");
    i.reason = None;
    fill_stat(&mut i, &st);
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        i.state = State::Foreign;
        i.reason = Some("not a regular file".into());
        return i;
    }

    let mut bytes = [0u8; HEADER_SIZE];
    let n = match sys::fd::pread_full(fd, &mut bytes, 0) {
        Ok(n) => n,
        Err(e) => {
            i.reason = Some(format!("pread: {e}"));
            return i;
        }
    };
    let foreign = |i: &mut Inspection, why: String| {
        i.state = State::Foreign;
        i.reason = Some(why);
    };
    if n == 0 {
        // Also what a shmsync creator killed right after its exclusive
        // create leaves: not provably ours, so never cleaned.
        foreign(&mut i, "empty: no shmsync header".into());
        return i;
    }
    if n < MAGIC.len() {
        foreign(&mut i, format!("{n} bytes: too short for a shmsync header"));
        return i;
    }
    if bytes[..MAGIC.len()] != MAGIC {
        let why = if bytes[..MAGIC.len()] == [0; 8] {
            "no shmsync magic (starts with zeros)".into()
        } else {
            "no shmsync magic".into()
        };
        foreign(&mut i, why);
        return i;
    }
    // Ours from here on: judged by the header code.
    i.attached = attachment(fd);
    if let Err(e) = header::check_prefix(&bytes[..n]) {
        i.state = State::Incompatible;
        i.reason = Some(e.to_string());
        return i;
    }
    if n < HEADER_SIZE {
        i.state = State::Damaged;
        i.reason = Some(
            Error::TooSmall {
                size: st.st_size as u64,
                needed: HEADER_SIZE as u64,
            }
            .to_string(),
        );
        return i;
    }
    let info = header::decode(&bytes);
    i.age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|now| Duration::from_secs(now.as_secs().saturating_sub(info.created_unix)));
    i.lock = LockInfo::unknown(info.lock_kind());
    let state_word = info.state;
    i.header = Some(info);
    let info = i.header.as_ref().expect("just set");

    match state_word {
        STATE_READY => {}
        STATE_UNINIT | STATE_INITIALISING => {
            i.state = match i.attached {
                Attached::Creator => State::Initialising,
                _ => State::AbandonedInit,
            };
            i.stale = i.state == State::AbandonedInit && i.attached == Attached::None;
            return i;
        }
        other => {
            i.state = State::Damaged;
            i.reason = Some(format!("unknown state word {other}"));
            return i;
        }
    }
    if let Err(e) = header::check_identity(info, None) {
        i.state = match e {
            Error::Incompatible { .. } => State::Incompatible,
            _ => State::Damaged,
        };
        i.reason = Some(e.to_string());
        return i;
    }
    if (st.st_size as u64) < info.total_size {
        i.state = State::Damaged;
        i.reason = Some(
            Error::TooSmall {
                size: st.st_size as u64,
                needed: info.total_size,
            }
            .to_string(),
        );
        return i;
    }
    i.lock = read_lock(fd, info, &st);
    let holder_alive = i.lock.holder.and_then(|h| h.alive);
    i.state = match i.lock.state {
        LockState::OwnerDied => State::OwnerDied,
        LockState::Recovering => State::Recovering,
        LockState::NotRecoverable => State::NotRecoverable,
        LockState::Held if holder_alive == Some(false) => State::HolderDead,
        _ => State::Ready,
    };
    if i.attached == Attached::Creator {
        // Ready is published, the write lock not yet converted: a creator
        // finishing right now.
        i.state = State::Initialising;
    }
    // A live (or unknowable) lock holder keeps the object, whatever the
    // attach lock says.
    let holder_may_live = i.lock.state != LockState::NotRecoverable
        && i.lock.holder.is_some()
        && holder_alive != Some(false);
    i.stale = i.attached == Attached::None && !holder_may_live;
    i
}

/// Who holds the attach lock (`fcntl(F_OFD_GETLK)` for a write lock: the
/// kernel reports one conflicting lock, a read lock of an attached handle or
/// the write lock of a creator).
fn attachment(fd: BorrowedFd<'_>) -> Attached {
    match sys::ofd::conflicting(fd, OfdLock::Write, ATTACH_BYTE, 1) {
        Ok(None) => Attached::None,
        Ok(Some(OfdLock::Read)) => Attached::Live,
        Ok(Some(_)) => Attached::Creator,
        Err(_) => Attached::Unknown,
    }
}

/// The cell's lock, read without taking it. One arm per backend.
fn read_lock(fd: BorrowedFd<'_>, info: &HeaderInfo, st: &libc::stat) -> LockInfo {
    let kind = info.lock_kind();
    let foreign_ns = info.pid_namespace != 0 && info.pid_namespace != sys::proc::pid_namespace();
    match kind {
        Some(LockKind::RobustMutex) => read_robust_mutex(fd, info, foreign_ns),
        Some(LockKind::NamedSemaphore) => read_semaphore(fd, info, foreign_ns),
        Some(LockKind::FileLock) => read_flock(fd, info, foreign_ns, st),
        // `External`: a bare `Segment` whose lock is its user's business.
        _ => LockInfo::unknown(kind),
    }
}

/// `pread` of `N` bytes of the lock area, if the header says they exist.
fn lock_bytes<const N: usize>(fd: BorrowedFd<'_>, info: &HeaderInfo) -> Option<[u8; N]> {
    if info.lock_size < N as u64 {
        return None;
    }
    let mut b = [0u8; N];
    match sys::fd::pread_full(fd, &mut b, info.lock_offset) {
        Ok(n) if n == N => Some(b),
        _ => None,
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Reads glibc's `__lock` and `__owner` words of the robust mutex.
fn read_robust_mutex(fd: BorrowedFd<'_>, info: &HeaderInfo, foreign_ns: bool) -> LockInfo {
    let mut out = LockInfo::unknown(Some(LockKind::RobustMutex));
    let Some(b) = lock_bytes::<{ word::OWNER_OFFSET + 4 }>(fd, info) else {
        return out;
    };
    let lock = u32_at(&b, word::LOCK_OFFSET);
    let owner = u32_at(&b, word::OWNER_OFFSET);
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

/// Reads the semaphore backend's holder record (the holder word *is* the
/// lock: pid and process start time) and its state word.
fn read_semaphore(fd: BorrowedFd<'_>, info: &HeaderInfo, foreign_ns: bool) -> LockInfo {
    let mut out = LockInfo::unknown(Some(LockKind::NamedSemaphore));
    let Some(b) = lock_bytes::<{ sem::SIZE }>(fd, info) else {
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
        let (pid, start) = named_semaphore::decode_identity(identity);
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

/// Reads the flock backend's held marker and last holder, and asks
/// `/proc/PID/fdinfo` whether that holder still holds the `flock` on this
/// inode (the kernel drops it when the holder dies).
fn read_flock(
    fd: BorrowedFd<'_>,
    info: &HeaderInfo,
    foreign_ns: bool,
    st: &libc::stat,
) -> LockInfo {
    let mut out = LockInfo::unknown(Some(LockKind::FileLock));
    let Some(b) = lock_bytes::<{ flk::SIZE }>(fd, info) else {
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
        match sys::procfs::holds_flock(pid, st.st_dev, st.st_ino) {
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
