//! System V segments seen from outside: [`list_sysv`] walks the kernel's
//! table (`shmctl(SHM_INFO)` for its highest index, then `SHM_STAT` of
//! each index), [`inspect_sysv`] reads one by key or id, [`clean_sysv`]
//! removes the ones that provably crashed.
//!
//! A segment is read through `shmctl(IPC_STAT)` (size, owner, mode,
//! `shm_nattch`) and a **read-only** `shmat` of its first bytes (never a
//! read-write attach; a System V segment cannot shrink, so reading it
//! cannot fault). The read-only attach is itself counted in `shm_nattch`
//! while it lasts: the count reported is the one read before it.
//!
//! # Cleaning
//!
//! [`clean_sysv`] removes (`IPC_RMID`) a segment only when it carries this
//! crate's header, `shm_nattch` is 0 (nobody attached — the kernel's count,
//! which a killed process leaves as surely as one that detached) **and**
//! its header says it crashed: an initialisation that was never finished
//! (`abandoned-init`), a lock whose holder died (`owner-died`,
//! `holder-dead`, or the `suspect` word set), or a lock that can never be
//! taken again (`not-recoverable`). A Ready cell nobody is attached to is
//! kept: System V segments are meant to outlive their processes. The
//! count is read again right before `IPC_RMID`; a process that attaches
//! in the instant between keeps its mapping (the segment is only destroyed
//! once it detaches), but the key then finds nothing.
//!
//! Nothing is removed without an explicit scope ([`SysvScope`]).

use std::time::Duration;

use super::{Attached, CleanAction, LockInfo, LockState, State};
use crate::error::Error;
use crate::lock::robust_mutex::inspect::{describe_bytes, LOCK_BYTES};
use crate::segment::header::{self, HeaderInfo, LockKind, HEADER_SIZE, MAGIC};
use crate::segment::header::{STATE_INITIALISING, STATE_READY, STATE_UNINIT};
use crate::segment::sysv::NS_CHANGING;
use crate::sys;
use crate::sys::sysv::ShmStat;

/// A System V segment named by its key or its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SysvRef {
    /// `shmget(key, 0, 0)`.
    Key(i32),
    /// The kernel's id (what `ipcs -m` shows as `shmid`).
    Id(i32),
}

/// Which segments [`clean_sysv`] may remove: there is no default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SysvScope {
    /// Every segment in the table (each still judged on its own).
    All,
    /// The one segment.
    One(SysvRef),
}

/// Everything known about one System V segment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SysvInspection {
    /// Its key (0: `IPC_PRIVATE`, or removed).
    pub key: i32,
    /// Its id.
    pub id: i32,
    /// What it is, all things considered (as for named objects; `companion`
    /// never occurs).
    pub state: State,
    /// Why it is in that state.
    pub reason: Option<String>,
    /// Whether [`clean_sysv`] would remove it.
    pub stale: bool,
    /// `shm_segsz`.
    pub size: u64,
    /// Owner uid.
    pub uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// `shm_nattch`: attached mappings (forked children included).
    pub attached_count: u64,
    /// The same as the named objects' [`Attached`].
    pub attached: Attached,
    /// Marked for removal (`IPC_RMID`, `dest` in `ipcs -m`).
    pub removed: bool,
    /// Pid of the creator, as the kernel recorded it.
    pub creator_pid: u32,
    /// The decoded header, when it carries the magic and is a header long.
    pub header: Option<HeaderInfo>,
    /// The cell's lock.
    pub lock: LockInfo,
    /// Time since creation (from the header).
    pub age: Option<Duration>,
}

impl SysvInspection {
    /// The key as `ipcs` prints it (`0x…`).
    pub fn key_hex(&self) -> String {
        format!("{:#010x}", self.key as u32)
    }
}

/// Every System V segment this process may read (`IPC_STAT` needs read
/// permission; others are left out), sorted by id. Segments that are not
/// this crate's are listed as `foreign`.
///
/// # Errors
///
/// [`Error::Io`] when the table cannot be read (`SHM_INFO`).
pub fn list_sysv() -> Result<Vec<SysvInspection>, Error> {
    let max = sys::sysv::max_index().map_err(|e| Error::io("shmctl(SHM_INFO)", e))?;
    let mut out = Vec::new();
    for index in 0..=max {
        // EINVAL: an unused slot; EACCES: not ours to read.
        if let Ok((id, st)) = sys::sysv::stat_index(index) {
            out.push(examine(id, &st));
        }
    }
    out.sort_by_key(|i| i.id);
    Ok(out)
}

/// Inspects one segment.
///
/// # Errors
///
/// [`Error::NotFound`], [`Error::PermissionDenied`], [`Error::Io`].
pub fn inspect_sysv(target: SysvRef) -> Result<SysvInspection, Error> {
    let name = ref_name(target);
    let id = match target {
        SysvRef::Id(id) => id,
        SysvRef::Key(key) => {
            sys::sysv::shmget(key, 0, 0).map_err(|e| Error::from_io("shmget", &name, e))?
        }
    };
    let st = sys::sysv::stat(id).map_err(|e| match e.raw_os_error() {
        Some(sys::errno::EINVAL | sys::errno::EIDRM) => Error::NotFound { name: name.clone() },
        _ => Error::from_io("shmctl(IPC_STAT)", &name, e),
    })?;
    Ok(examine(id, &st))
}

fn ref_name(target: SysvRef) -> String {
    match target {
        SysvRef::Key(k) => format!("sysv:key={:#010x}", k as u32),
        SysvRef::Id(id) => format!("sysv:id={id}"),
    }
}

/// What [`clean_sysv`] did with one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SysvCleanOutcome {
    /// The segment's id.
    pub id: i32,
    /// Its key.
    pub key: i32,
    /// What was done.
    pub action: CleanAction,
    /// Why.
    pub reason: String,
}

/// Removes (`IPC_RMID`) the segments of `scope` that provably crashed;
/// `dry_run` only reports. A segment goes only when it carries this
/// crate's header, `shm_nattch` is 0 (the kernel's count: a killed process
/// leaves it as surely as one that detached) **and** its header says it
/// crashed: an unfinished initialisation (`abandoned-init`), a lock whose
/// holder died (`owner-died`, `holder-dead`, or the `suspect` word set) or
/// one that can never be taken again (`not-recoverable`). A Ready cell
/// nobody is attached to is kept (System V segments are meant to outlive
/// their processes). The count is read again right before `IPC_RMID`; a
/// process that attaches in the instant between keeps its mapping (the
/// kernel destroys the segment only once it detaches), but the key then
/// finds nothing. With [`SysvScope::All`], only this crate's segments are
/// reported.
///
/// # Errors
///
/// As [`list_sysv`] or [`inspect_sysv`].
pub fn clean_sysv(scope: SysvScope, dry_run: bool) -> Result<Vec<SysvCleanOutcome>, Error> {
    let candidates = match scope {
        SysvScope::All => list_sysv()?
            .into_iter()
            .filter(|i| i.state.is_shmsync())
            .collect(),
        SysvScope::One(r) => vec![inspect_sysv(r)?],
    };
    Ok(candidates.iter().map(|i| clean_one(i, dry_run)).collect())
}

fn clean_one(i: &SysvInspection, dry_run: bool) -> SysvCleanOutcome {
    let outcome = |action, reason: String| SysvCleanOutcome {
        id: i.id,
        key: i.key,
        action,
        reason,
    };
    if !i.stale {
        let why = match (i.state.is_shmsync(), i.attached_count) {
            (false, _) => format!(
                "{}: {}",
                i.state.name(),
                i.reason.clone().unwrap_or_default()
            ),
            (true, n) if n > 0 => format!("{}: {n} attached", i.state.name()),
            (true, _) => format!("{}: not crashed", i.state.name()),
        };
        return outcome(CleanAction::Skipped, why);
    }
    if dry_run {
        return outcome(CleanAction::WouldRemove, i.state.name().into());
    }
    // Judged again, as late as possible.
    let again = match sys::sysv::stat(i.id) {
        Ok(st) if st.same_segment(i) => examine(i.id, &st),
        Ok(_) => {
            return outcome(
                CleanAction::Skipped,
                "the id now names another segment".into(),
            )
        }
        Err(_) => return outcome(CleanAction::Skipped, "removed meanwhile".into()),
    };
    if !again.stale {
        return outcome(
            CleanAction::Skipped,
            format!("{}: changed meanwhile", again.state.name()),
        );
    }
    match sys::sysv::stat(i.id) {
        Ok(st) if st.nattch == 0 => {}
        _ => return outcome(CleanAction::Skipped, "a process attached meanwhile".into()),
    }
    match sys::sysv::remove(i.id) {
        Ok(()) => outcome(CleanAction::Removed, again.state.name().into()),
        Err(e) => outcome(CleanAction::Failed, format!("shmctl(IPC_RMID): {e}")),
    }
}

impl ShmStat {
    /// Whether this status is of the segment `i` was read from (same key,
    /// creator and size: an id is reused only after removal).
    fn same_segment(&self, i: &SysvInspection) -> bool {
        self.key == i.key && self.cpid == i.creator_pid && self.size == i.size
    }
}

/// Reads and judges segment `id` (status `st`, read before our read-only
/// attach).
fn examine(id: i32, st: &ShmStat) -> SysvInspection {
    let mut i = SysvInspection {
        key: st.key,
        id,
        state: State::Unreadable,
        reason: None,
        stale: false,
        size: st.size,
        uid: st.uid,
        mode: st.mode & 0o777,
        attached_count: st.nattch,
        attached: if st.nattch > 0 {
            Attached::Live
        } else {
            Attached::None
        },
        removed: st.removed(),
        creator_pid: st.cpid,
        header: None,
        lock: LockInfo::unknown(None),
        age: None,
    };
    let ro = match sys::sysv::shmat(id, true) {
        Ok(p) => p,
        Err(e) => {
            i.reason = Some(format!("shmat(SHM_RDONLY): {e}"));
            return i;
        }
    };
    let n = (st.size as usize).min(HEADER_SIZE);
    let mut bytes = [0u8; HEADER_SIZE];
    // SAFETY: the segment is `st.size ≥ n` bytes, attached read-only; it
    // cannot shrink.
    unsafe { std::ptr::copy_nonoverlapping(ro.as_ptr(), bytes.as_mut_ptr(), n) };
    let lock_bytes = lock_bytes(ro, st.size, &bytes, n);
    // SAFETY: attached just above, not used after.
    let _ = unsafe { sys::sysv::shmdt(ro) };
    judge(&mut i, &bytes, n, lock_bytes);
    i
}

/// The robust mutex's words, when the header places them inside the
/// segment.
fn lock_bytes(
    ro: std::ptr::NonNull<u8>,
    size: u64,
    bytes: &[u8; HEADER_SIZE],
    n: usize,
) -> Option<[u8; LOCK_BYTES]> {
    if n < HEADER_SIZE || bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let info = header::decode(bytes);
    let end = info.lock_offset.checked_add(LOCK_BYTES as u64)?;
    if info.lock_size < LOCK_BYTES as u64 || end > size {
        return None;
    }
    let mut b = [0u8; LOCK_BYTES];
    // SAFETY: lock_offset + LOCK_BYTES ≤ size: inside the read-only
    // attach.
    unsafe {
        std::ptr::copy_nonoverlapping(
            ro.as_ptr().add(info.lock_offset as usize),
            b.as_mut_ptr(),
            LOCK_BYTES,
        )
    };
    Some(b)
}

fn judge(
    i: &mut SysvInspection,
    bytes: &[u8; HEADER_SIZE],
    n: usize,
    lock: Option<[u8; LOCK_BYTES]>,
) {
    let foreign = |i: &mut SysvInspection, why: &str| {
        i.state = State::Foreign;
        i.reason = Some(why.into());
    };
    if n < MAGIC.len() {
        return foreign(i, "too short for a shmsync header");
    }
    if bytes[..MAGIC.len()] != MAGIC {
        // A creator killed between shmget and its header leaves zeros too,
        // which cannot be told from somebody else's segment.
        return foreign(
            i,
            if bytes[..n].iter().all(|&b| b == 0) {
                "no shmsync magic (all zeros)"
            } else {
                "no shmsync magic"
            },
        );
    }
    if let Err(e) = header::check_prefix(&bytes[..n]) {
        i.state = State::Incompatible;
        i.reason = Some(e.to_string());
        return;
    }
    if n < HEADER_SIZE {
        i.state = State::Damaged;
        i.reason = Some("shorter than a header".into());
        return;
    }
    let info = header::decode(bytes);
    i.age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|now| Duration::from_secs(now.as_secs().saturating_sub(info.created_unix)));
    i.lock = LockInfo::unknown(info.lock_kind());
    let suspect = header::u32_at(bytes, header::at!(suspect)) != 0;
    let attached_ns = u64::from_ne_bytes(
        bytes[header::at!(attach_pid_ns)..header::at!(attach_pid_ns) + 8]
            .try_into()
            .expect("8 bytes"),
    ) & !NS_CHANGING;
    let state_word = info.state;
    let total = info.total_size;
    let pid_namespace = info.pid_namespace;
    i.header = Some(info);
    let info = i.header.as_ref().expect("just set");
    match state_word {
        STATE_READY => {}
        STATE_UNINIT | STATE_INITIALISING => {
            // A claimant stays attached while it initialises.
            if i.attached_count > 0 {
                i.state = State::Initialising;
            } else {
                i.state = State::AbandonedInit;
                i.stale = true;
            }
            return;
        }
        other => {
            i.state = State::Damaged;
            i.reason = Some(format!("unknown state word {other}"));
            return;
        }
    }
    if let Err(e) = header::check_identity(info, None) {
        i.state = match e {
            Error::Incompatible { .. } => State::Incompatible,
            _ => State::Damaged,
        };
        i.reason = Some(e.to_string());
        return;
    }
    if i.size < total {
        i.state = State::Damaged;
        i.reason = Some(format!("{} bytes, the header says {total}", i.size));
        return;
    }
    if info.lock_kind() == Some(LockKind::RobustMutex) {
        if let Some(b) = lock {
            let ns = if attached_ns != 0 {
                attached_ns
            } else {
                pid_namespace
            };
            let foreign_ns = ns != 0 && ns != sys::proc::pid_namespace();
            i.lock = describe_bytes(&b, foreign_ns);
        }
    }
    let holder_alive = i.lock.holder.and_then(|h| h.alive);
    i.state = match i.lock.state {
        LockState::OwnerDied => State::OwnerDied,
        LockState::Recovering => State::Recovering,
        LockState::NotRecoverable => State::NotRecoverable,
        LockState::Held if holder_alive == Some(false) => State::HolderDead,
        LockState::Free if suspect => State::OwnerDied,
        _ => State::Ready,
    };
    if suspect && i.state == State::OwnerDied && i.lock.state == LockState::Free {
        i.reason = Some("the suspect word is set: the value was left half-updated".into());
    }
    let crashed = matches!(
        i.state,
        State::OwnerDied | State::NotRecoverable | State::HolderDead
    );
    i.stale = crashed && i.attached_count == 0;
}
