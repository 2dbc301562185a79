//! Reading one open object: `fstat`, `pread` of the header and the lock
//! words, `fcntl(F_OFD_GETLK)`, `/proc`. Never a mapping, never a lock.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use super::{fill_stat, Attached, Inspection, Leftover, LockInfo, LockState, State};
use crate::error::Error;
use crate::lock::describe::LockArea;
use crate::segment::header::{self, HeaderInfo, HEADER_SIZE, MAGIC};
use crate::segment::header::{STATE_INITIALISING, STATE_READY, STATE_UNINIT};
use crate::segment::ATTACH_BYTE;
use crate::sys;
use crate::sys::fd::{FileKind, FileStat};
use crate::sys::fd_lock::OfdLock;

/// Reads and judges the object open on `fd`.
pub(super) fn examine(name: &str, fd: BorrowedFd<'_>) -> Inspection {
    let st = match sys::fd::fstat(fd) {
        Ok(st) => st,
        Err(e) => return Inspection::bare(name.into(), State::Unreadable, format!("fstat: {e}")),
    };
    let mut i = Inspection::bare(name.into(), State::Unreadable, "");
    i.reason = None;
    fill_stat(&mut i, &st);
    if st.kind() != FileKind::Regular {
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
        // Also what a creator killed after naming its object and before
        // sizing it leaves (or an older-style creator right after its
        // exclusive create): not provably ours, so never cleaned.
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
                size: st.size(),
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
            if i.state == State::AbandonedInit && i.attached == Attached::None {
                i.leftover = Some(Leftover::Crashed);
                i.stale = true;
            }
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
    if (st.size()) < info.total_size {
        i.state = State::Damaged;
        i.reason = Some(
            Error::TooSmall {
                size: st.size(),
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
    // The header's `suspect` word (a holder that panicked, an owner-died
    // error converted away, a lock held at power-off): the next locker is
    // told, whatever the lock word says.
    let suspect = header::u32_at(&bytes, header::at!(suspect));
    if i.state == State::Ready && suspect != header::SUSPECT_NONE {
        if suspect == header::SUSPECT_NOT_RECOVERABLE {
            i.state = State::NotRecoverable;
            i.reason = Some("the suspect word says not recoverable".into());
        } else {
            i.state = State::OwnerDied;
            i.reason = Some("the suspect word is set: the value was left half-updated".into());
        }
    }
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
    if i.attached == Attached::None && !holder_may_live {
        // Nobody can be using it: how its users left decides. A lock whose
        // holder died says "crashed" whatever the count; otherwise the
        // `handles` word does (non-zero: handles that were never dropped).
        let handles = i.header.as_ref().map_or(0, |h| h.handles);
        let left = if i.state == State::Ready && handles == 0 {
            Leftover::Detached
        } else {
            Leftover::Crashed
        };
        i.leftover = Some(left);
        i.stale = left == Leftover::Crashed;
    }
    i
}

/// Who holds the attach lock (`fcntl(F_OFD_GETLK)` for a write lock: the
/// kernel reports one conflicting lock, a read lock of an attached handle or
/// the write lock of a creator).
fn attachment(fd: BorrowedFd<'_>) -> Attached {
    match sys::fd_lock::ofd_conflicting(fd, OfdLock::Write, ATTACH_BYTE, 1) {
        Ok(None) => Attached::None,
        Ok(Some(OfdLock::Read)) => Attached::Live,
        Ok(Some(_)) => Attached::Creator,
        Err(_) => Attached::Unknown,
    }
}

/// The cell's lock, read without taking it, by its backend.
fn read_lock(fd: BorrowedFd<'_>, info: &HeaderInfo, st: &FileStat) -> LockInfo {
    // The namespace of the processes attached now (recorded anew by the
    // first to attach), else the creator's.
    let mut word = [0u8; 8];
    let attached_ns = match sys::fd::pread_full(fd, &mut word, header::at!(attach_pid_ns) as u64) {
        Ok(8) => u64::from_ne_bytes(word),
        _ => 0,
    };
    let ns = if attached_ns != 0 {
        attached_ns
    } else {
        info.pid_namespace
    };
    let foreign_ns = ns != 0 && ns != sys::proc::pid_namespace();
    crate::lock::describe(&LockArea {
        fd,
        info,
        stat: st,
        foreign_ns,
    })
}
