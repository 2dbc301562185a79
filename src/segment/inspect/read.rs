//! Reading one open object: `fstat`, `pread` of the header and the lock
//! words, `fcntl(F_OFD_GETLK)`, `/proc`. Never a mapping, never a lock.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use super::{fill_stat, Attached, Holder, Inspection, LockInfo, LockState, State, ATTACH_BYTE};
use crate::error::Error;
use crate::lock::robust_mutex::word;
use crate::segment::header::{self, HeaderInfo, LockKind, HEADER_SIZE, MAGIC};
use crate::segment::header::{STATE_INITIALISING, STATE_READY, STATE_UNINIT};
use crate::sys;
use crate::sys::ofd::OfdLock;
use crate::sys::procfs::LockClass;

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
    (i.attached, i.attached_handles) = attachment(fd, &st);
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
    i.lock = read_lock(fd, info);
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

/// Who holds the attach lock, and how many handles do.
fn attachment(fd: BorrowedFd<'_>, st: &libc::stat) -> (Attached, Option<u32>) {
    let attached = match sys::ofd::conflicting(fd, OfdLock::Write, ATTACH_BYTE, 1) {
        Ok(None) => Attached::None,
        Ok(Some(OfdLock::Read)) => Attached::Live,
        Ok(Some(_)) => Attached::Creator,
        Err(_) => Attached::Unknown,
    };
    let handles = sys::procfs::locks_on(st.st_dev, st.st_ino)
        .ok()
        .map(|locks| {
            locks
                .iter()
                .filter(|l| l.class == LockClass::Ofd && !l.write && l.start == ATTACH_BYTE)
                .count() as u32
        });
    (attached, handles)
}

/// The cell's lock, read without taking it. One arm per backend.
fn read_lock(fd: BorrowedFd<'_>, info: &HeaderInfo) -> LockInfo {
    let kind = info.lock_kind();
    match kind {
        Some(LockKind::RobustMutex) => read_robust_mutex(fd, info),
        // TODO(flock backend): decode where the FileLock backend keeps its
        // holder (e.g. the FLOCK records of `sys::procfs::locks_on` on the
        // inode it locks, or a holder record in its `Shared` area) once that
        // backend lands.
        // TODO(semaphore backend): read the holder record (pid + start time)
        // of the NamedSemaphore backend's `Shared` area once it lands.
        _ => LockInfo::unknown(kind),
    }
}

/// Reads glibc's `__lock` and `__owner` words of the robust mutex at the
/// header's lock offset with `pread`.
fn read_robust_mutex(fd: BorrowedFd<'_>, info: &HeaderInfo) -> LockInfo {
    let mut out = LockInfo::unknown(Some(LockKind::RobustMutex));
    if info.lock_size < (word::OWNER_OFFSET + 4) as u64 {
        return out;
    }
    let mut b = [0u8; word::OWNER_OFFSET + 4];
    match sys::fd::pread_full(fd, &mut b, info.lock_offset) {
        Ok(n) if n == b.len() => {}
        _ => return out,
    }
    let at = |off: usize| u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"));
    let lock = at(word::LOCK_OFFSET);
    let owner = at(word::OWNER_OFFSET);
    out.lock_word = Some(lock);
    out.owner_word = Some(owner);
    let tid = lock & word::TID_MASK;
    let foreign_ns = info.pid_namespace != 0 && info.pid_namespace != sys::proc::pid_namespace();
    let holder = |tid: u32| (tid != 0).then(|| holder_of(tid, foreign_ns));
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
            tid: owner,
            pid: None,
            alive: Some(false),
        });
        (LockState::OwnerDied, dead)
    } else {
        (LockState::Free, None)
    };
    out
}

fn holder_of(tid: u32, foreign_ns: bool) -> Holder {
    if foreign_ns {
        return Holder {
            tid,
            pid: None,
            alive: None,
        };
    }
    match sys::procfs::thread_status(tid) {
        Ok(Some(st)) => Holder {
            tid,
            pid: Some(st.tgid),
            alive: Some(!st.is_dead()),
        },
        Ok(None) => Holder {
            tid,
            pid: None,
            alive: Some(false),
        },
        Err(_) => Holder {
            tid,
            pid: None,
            alive: None,
        },
    }
}
