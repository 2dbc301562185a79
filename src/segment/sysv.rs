//! System V segments (`shmget`/`shmat`/`shmdt`/`shmctl`) with the same
//! header, validation and recovery semantics as the other backings.
//!
//! A System V segment has no descriptor: no open-file-description locks,
//! no `pread`, no `O_TMPFILE`. What stands in for them:
//!
//! * **Validation before a read-write mapping**: `shmctl(IPC_STAT)` gives
//!   the size (`shm_segsz`), owner and mode; the header is read through a
//!   *read-only* `shmat` (a System V segment cannot shrink, so no mapping
//!   of it can ever fault, and a foreign segment is never mapped
//!   writable), and only once it is valid is the segment attached
//!   read-write — whose immutable header bytes must then equal those
//!   validated (the id could have been reused in between).
//! * **Attach tracking**: the kernel's `shm_nattch`, the number of
//!   attached mappings (a forked child that inherits a handle counts; the
//!   kernel decrements it on `shmdt` and on exit, however the process
//!   died). No lock games: `nattch == 0` proves nobody is attached.
//! * **The initialisation handshake** (the design choice, against a
//!   System V semaphore with `SEM_UNDO`, recorded in the README): an
//!   exclusive create (`IPC_CREAT|IPC_EXCL`, the kernel zeroes the pages),
//!   then the creator attaches read-write and *claims* the segment with a
//!   compare-and-swap of the header's state word from Uninit to
//!   Initialising; it stays attached for as long as it lives. So a
//!   segment that is not Ready while `nattch == 0` belongs to a creator
//!   that died ([`Error::AbandonedInit`], taken over by
//!   `open_or_create`); one with `nattch > 0` is being initialised (the
//!   opener waits, bounded). A taker-over attaches read-write and
//!   proceeds only if `shm_nattch` is then exactly 1 (itself) — of
//!   processes attached at the same time at most one can see that — and,
//!   on a never-claimed segment, only if it wins the same state-word
//!   compare-and-swap as a creator (which then gets
//!   [`Error::AlreadyExists`]). An all-zero segment nobody is attached to
//!   is given a grace period (its creator may be between `shmget` and
//!   `shmat`), as for named objects made the older way.
//!
//!   The semaphore design was not taken: it is a second kernel object per
//!   cell (another table, `ipcs -s`, another thing to leak and clean, and
//!   an id to share for `IPC_PRIVATE`), a forked child does not inherit
//!   `SEM_UNDO` adjustments (a fork would hold the segment without being
//!   counted), and `shm_nattch` already gives the one fact the handshake
//!   needs, from the kernel.
//! * **The pid-namespace record** (`attach_pid_ns`, which a robust mutex
//!   needs): without a lock that excludes new attachers, a process may
//!   rewrite it only while it is alone, proven twice: it sees
//!   `nattch == 1`, marks the word *changing* (compare-and-swap), checks
//!   `nattch == 1` again, and only then stores its namespace — else it
//!   puts the old record back and retries. Every attacher reads the
//!   record *after* its own attach, so a process that accepted the old
//!   record is counted by the second check.
//! * **Removal**: `IPC_RMID`; the segment goes when its last process
//!   detaches. An `IPC_PRIVATE` segment is marked at once after creation:
//!   nothing to leak, and Linux still lets a process attach it by id while
//!   any process is attached.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::check::Judged;
use super::handshake::creator;
use super::header::{self, HeaderInfo, LockKind, SegmentSpec, HEADER_SIZE};
use super::header::{STATE_INITIALISING, STATE_READY, STATE_UNINIT};
pub(crate) use super::sysv_key::sysv_name;
pub use super::sysv_key::SysvKey;
use super::{
    init_step, Backing, Backoff, CreateOptions, Init, InitStep, Mapping, Segment, INIT_WAIT,
};
use crate::error::Error;
use crate::sys;
use crate::sys::errno;
use crate::sys::sysv::ShmStat;
use crate::sys::time::Monotonic;

/// How long an all-zero segment nobody is attached to is given to become
/// a creator's (between its `shmget` and its `shmat`).
const EMPTY_GRACE: Duration = Duration::from_millis(100);
/// As for named segments: how long an opener retries before
/// [`Error::ForeignPidNamespace`].
const FOREIGN_NS_GRACE: Duration = Duration::from_millis(200);
/// The bit of `attach_pid_ns` that marks a record being changed.
pub(crate) const NS_CHANGING: u64 = 1 << 63;

/// A segment found by its key or by its id.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SysvTarget {
    Key(i32),
    Id(i32),
}

impl SysvTarget {
    fn name(self) -> String {
        match self {
            SysvTarget::Key(k) => sysv_name(k, None),
            SysvTarget::Id(id) => sysv_name(0, Some(id)),
        }
    }

    /// The segment's id (`shmget(key, 0, 0)` for a key).
    fn id(self) -> Result<i32, Error> {
        match self {
            SysvTarget::Id(id) => Ok(id),
            SysvTarget::Key(k) => {
                sys::sysv::shmget(k, 0, 0).map_err(|e| Error::from_io("shmget", &self.name(), e))
            }
        }
    }
}

/// `IPC_STAT` of `id`; a segment removed meanwhile is `NotFound`.
fn stat(id: i32, name: &str) -> Result<ShmStat, Error> {
    sys::sysv::stat(id).map_err(|e| match e.raw_os_error() {
        Some(errno::EINVAL | errno::EIDRM) => Error::NotFound { name: name.into() },
        _ => Error::from_io("shmctl(IPC_STAT)", name, e),
    })
}

fn attach(id: i32, read_only: bool, name: &str) -> Result<Mapping, Error> {
    let ptr = sys::sysv::shmat(id, read_only).map_err(|e| match e.raw_os_error() {
        Some(errno::EINVAL | errno::EIDRM) => Error::NotFound { name: name.into() },
        _ => Error::from_io("shmat", name, e),
    })?;
    Ok(Mapping {
        ptr,
        len: 0,
        sysv: true,
    })
}

/// The first `min(size, HEADER_SIZE)` bytes of the segment, through a
/// read-only attach that is gone when this returns.
fn read_prefix(id: i32, size: u64, name: &str) -> Result<([u8; HEADER_SIZE], usize), Error> {
    let ro = attach(id, true, name)?;
    let n = (size as usize).min(HEADER_SIZE);
    let mut bytes = [0u8; HEADER_SIZE];
    // SAFETY: the segment is at least `size ≥ n` bytes (IPC_STAT), attached
    // read-only; it cannot shrink while attached. Other processes may write
    // live words meanwhile: these are plain bytes copied for decoding.
    unsafe { std::ptr::copy_nonoverlapping(ro.ptr.as_ptr(), bytes.as_mut_ptr(), n) };
    Ok((bytes, n))
}

/// What the bytes of a segment say.
enum Seen {
    Ready(HeaderInfo),
    /// Not Ready: claimed (or being written) by a creator, `creator_pid`
    /// when the header names one.
    NotReady(u32),
    /// All zero at exactly our size: a creator between `shmget` and its
    /// claim, or one that died there.
    Empty,
}

/// Judges the first bytes of a segment of `size` bytes.
fn judge(
    bytes: &[u8; HEADER_SIZE],
    n: usize,
    size: u64,
    expected: Option<&SegmentSpec>,
) -> Result<Seen, Error> {
    let state = if n >= HEADER_SIZE {
        header::u32_at(bytes, header::at!(state))
    } else {
        u32::MAX
    };
    let our_size = expected
        .and_then(|spec| spec.layout().ok())
        .map(|l| l.total_size);
    let fixed_zero = bytes[..header::at!(state)].iter().all(|&b| b == 0);
    if n >= HEADER_SIZE && our_size == Some(size) && fixed_zero {
        if bytes.iter().all(|&b| b == 0) {
            return Ok(Seen::Empty);
        }
        if state == STATE_INITIALISING {
            // Claimed; the header is not written yet.
            return Ok(Seen::NotReady(0));
        }
    }
    Ok(match header::judge_header(bytes, n, size, expected)? {
        Judged::Ready(info) => Seen::Ready(info),
        Judged::NotReady(pid) => Seen::NotReady(pid),
    })
}

impl Segment {
    /// Creates a System V segment for `spec` under `key`
    /// (`IPC_CREAT|IPC_EXCL`; `IPC_PRIVATE` makes a new private one, marked
    /// for removal once Ready) and initialises it (see the module docs).
    pub(crate) fn create_sysv(
        key: i32,
        spec: &SegmentSpec,
        options: &CreateOptions,
        init: Init<'_>,
    ) -> Result<Segment, Error> {
        let layout = spec.layout()?;
        let mut name = sysv_name(key, None);
        let size = usize::try_from(layout.total_size).map_err(|_| Error::Unsupported {
            what: "value too large for a mapping".into(),
        })?;
        let id = sys::sysv::shmget(key, size, sys::sysv::create_flags(options.mode)).map_err(
            |e| match e.raw_os_error() {
                Some(errno::EINVAL) => Error::Unsupported {
                    what: format!(
                        "a System V segment of {size} bytes (over the kernel's shmmax, \
                         /proc/sys/kernel/shmmax)"
                    ),
                },
                _ => Error::from_io("shmget", &name, e),
            },
        )?;
        if key == sys::sysv::IPC_PRIVATE {
            name = sysv_name(key, Some(id));
        }
        init_step(InitStep::Opened);
        // From here on, a failure removes the segment again (IPC_RMID):
        // nobody else can have claimed it while we hold the claim.
        let fail = |e: Error| {
            let _ = sys::sysv::remove(id);
            e
        };
        let mut map = match attach(id, false, &name) {
            Ok(m) => m,
            Err(e) => return Err(fail(e)),
        };
        map.len = size;
        let seg = Segment {
            // System V: the kernel's shm_nattch is the count.
            counted_by: 0,
            map,
            fd: None,
            name: name.clone(),
            info: header::decode(&header::build(spec, &layout, creator())),
            backing: Backing::SysV { key, id },
        };
        // The claim: exactly one of a creator and a taker-over of a
        // never-claimed segment wins it.
        if seg
            .header()
            .state
            .compare_exchange(
                STATE_UNINIT,
                STATE_INITIALISING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(Error::AlreadyExists { name });
        }
        init_step(InitStep::Created);
        init_step(InitStep::Sized);
        let built = Self::fill_sysv(&seg, spec, init);
        if let Err(e) = built {
            drop(seg);
            return Err(fail(e));
        }
        if key == sys::sysv::IPC_PRIVATE {
            // Gone with the last detach: nothing to leak. Linux still lets
            // processes attach it by id while it exists.
            sys::sysv::remove(id).map_err(|e| Error::io("shmctl(IPC_RMID)", e))?;
        }
        Ok(seg)
    }

    /// Writes header, lock and value into a claimed segment (state
    /// Initialising, this process attached) and publishes Ready.
    fn fill_sysv(seg: &Segment, spec: &SegmentSpec, init: Init<'_>) -> Result<(), Error> {
        let layout = spec.layout()?;
        let bytes = header::build(spec, &layout, creator());
        Self::fill(seg, &bytes, init)
    }

    /// Opens the System V segment `target`, made for `spec`.
    pub(crate) fn open_sysv(target: SysvTarget, spec: &SegmentSpec) -> Result<Segment, Error> {
        let deadline = Monotonic::now().after(INIT_WAIT);
        let empty_deadline = Monotonic::now().after(EMPTY_GRACE);
        let ns_deadline = Monotonic::now().after(FOREIGN_NS_GRACE);
        let mut backoff = Backoff::new();
        loop {
            let id = target.id()?;
            let name = target.name();
            let st = stat(id, &name)?;
            let key = match target {
                SysvTarget::Key(k) => k,
                SysvTarget::Id(_) => st.key,
            };
            let (bytes, n) = read_prefix(id, st.size, &name)?;
            match judge(&bytes, n, st.size, Some(spec))? {
                Seen::Ready(info) => {
                    let seg = match Self::attach_ready(id, key, &name, &bytes, info)? {
                        Some(seg) => seg,
                        // Replaced between the two attaches: look again.
                        None => {
                            backoff.sleep();
                            continue;
                        }
                    };
                    match seg.settle_sysv_pid_namespace(id) {
                        Ok(()) => return Ok(seg),
                        Err(Error::ForeignPidNamespace { .. })
                            if Monotonic::now() < ns_deadline =>
                        {
                            drop(seg);
                            backoff.sleep();
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                seen => {
                    // Our read-only attach is gone: nattch counts the others.
                    let attached = stat(id, &name)?.nattch;
                    match seen {
                        Seen::Empty if attached == 0 && Monotonic::now() >= empty_deadline => {
                            return Err(Error::AbandonedInit {
                                name,
                                creator_pid: 0,
                            })
                        }
                        Seen::NotReady(pid) if attached == 0 => {
                            return Err(Error::AbandonedInit {
                                name,
                                creator_pid: pid,
                            })
                        }
                        _ if Monotonic::now() >= deadline => {
                            return Err(Error::InitTimedOut { name })
                        }
                        _ => {}
                    }
                }
            }
            backoff.sleep();
        }
    }

    /// Attaches read-write a segment whose header (`bytes`) was validated
    /// through a read-only attach; `None` if what is attached now is not
    /// the segment validated (the id was removed and reused meanwhile).
    fn attach_ready(
        id: i32,
        key: i32,
        name: &str,
        bytes: &[u8; HEADER_SIZE],
        info: HeaderInfo,
    ) -> Result<Option<Segment>, Error> {
        let mut map = attach(id, false, name)?;
        map.len = info.total_size as usize;
        let seg = Segment {
            // System V: the kernel's shm_nattch is the count.
            counted_by: 0,
            map,
            fd: None,
            name: name.into(),
            info,
            backing: Backing::SysV { key, id },
        };
        let fixed = header::at!(state);
        // SAFETY: the segment is at least total_size ≥ HEADER_SIZE bytes
        // (IPC_STAT, validated) and cannot shrink; bytes 0..144 are never
        // written after Ready.
        let now = unsafe { std::slice::from_raw_parts(seg.as_ptr().as_ptr(), fixed) };
        if now != &bytes[..fixed] {
            return Ok(None);
        }
        // Acquire pairs with the creator's Release store of Ready.
        let state = seg.header().state.load(Ordering::Acquire);
        if state != STATE_READY {
            return Err(Error::Corrupted {
                what: format!("state changed to {state} while attached"),
            });
        }
        Ok(Some(seg))
    }

    /// Records or checks the pid namespace of the attached processes (see
    /// the module docs); only a robust mutex cares.
    fn settle_sysv_pid_namespace(&self, id: i32) -> Result<(), Error> {
        if self.info.lock_kind() != Some(LockKind::RobustMutex) {
            return Ok(());
        }
        let ours = sys::proc::pid_namespace();
        let word = &self.header().attach_pid_ns;
        let seen = word.load(Ordering::SeqCst);
        if ours == 0 || seen == 0 || seen == ours {
            return Ok(());
        }
        let refuse = || Error::ForeignPidNamespace {
            name: self.name.clone(),
            backend: LockKind::RobustMutex.name(),
            use_instead: "a named cell with the NamedSemaphore or FileLock backend",
            ours,
            theirs: seen & !NS_CHANGING,
        };
        let alone = || stat(id, &self.name).map(|st| st.nattch == 1);
        if !alone()? {
            return Err(refuse());
        }
        let changing = ours | NS_CHANGING;
        if word
            .compare_exchange(seen, changing, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(refuse());
        }
        if alone()? {
            word.store(ours, Ordering::SeqCst);
            return Ok(());
        }
        // Somebody attached meanwhile and may have accepted the old record.
        let _ = word.compare_exchange(changing, seen, Ordering::SeqCst, Ordering::SeqCst);
        Err(refuse())
    }

    /// Re-initialises a System V segment whose creator died before Ready,
    /// if this process can take it over (see the module docs). `Ok(None)`
    /// when another process is attached or got there first.
    pub(crate) fn take_over_abandoned_sysv(
        key: i32,
        spec: &SegmentSpec,
        init: Init<'_>,
    ) -> Result<Option<Segment>, Error> {
        let name = sysv_name(key, None);
        let layout = spec.layout()?;
        let id = match sys::sysv::shmget(key, 0, 0) {
            Ok(id) => id,
            Err(e) if e.raw_os_error() == Some(errno::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::from_io("shmget", &name, e)),
        };
        let st = stat(id, &name)?;
        if st.nattch != 0 {
            return Ok(None);
        }
        // Only what this user owns is adopted (its owner could change its
        // mode or remove it at any time).
        if st.uid != sys::proc::geteuid() {
            return Err(Error::ForeignOwner { name, uid: st.uid });
        }
        if st.size != layout.total_size {
            return Err(Error::Incompatible {
                field: "size",
                expected: layout.total_size.to_string(),
                found: st.size.to_string(),
            });
        }
        // Judged read-only first: a foreign segment is never attached
        // read-write.
        let (bytes, n) = read_prefix(id, st.size, &name)?;
        let claimed_state = match judge(&bytes, n, st.size, Some(spec)) {
            Ok(Seen::Empty) => STATE_UNINIT,
            Ok(Seen::NotReady(_)) => header::u32_at(&bytes, header::at!(state)),
            Ok(Seen::Ready(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut map = attach(id, false, &name)?;
        map.len = layout.total_size as usize;
        let seg = Segment {
            // System V: the kernel's shm_nattch is the count.
            counted_by: 0,
            map,
            fd: None,
            name: name.clone(),
            info: header::decode(&header::build(spec, &layout, creator())),
            backing: Backing::SysV { key, id },
        };
        // Alone (1 = ourselves): no live claimant, and of processes attached
        // at the same time at most one sees this.
        if stat(id, &name)?.nattch != 1 {
            return Ok(None);
        }
        let state = &seg.header().state;
        if claimed_state == STATE_UNINIT {
            if state
                .compare_exchange(
                    STATE_UNINIT,
                    STATE_INITIALISING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                return Ok(None);
            }
        } else if state.load(Ordering::Acquire) != STATE_INITIALISING {
            return Ok(None);
        }
        // Every byte but the state word back to zero: what the dead
        // claimant left means nothing.
        let p = seg.as_ptr().as_ptr();
        let at = header::at!(state);
        // SAFETY: the mapping is total_size ≥ HEADER_SIZE bytes; this
        // process is the only one attached and holds the claim.
        unsafe {
            std::ptr::write_bytes(p, 0, at);
            std::ptr::write_bytes(p.add(at + 4), 0, layout.total_size as usize - at - 4);
        }
        Self::fill_sysv(&seg, spec, init)?;
        Ok(Some(seg))
    }

    /// Removes the System V segment `target` (`IPC_RMID`) if it is one of
    /// this crate's (its magic), or an unfinished creation for `spec` (all
    /// zeros at exactly its size, or claimed with the header not yet
    /// written); anything else is refused. Attached processes keep it until they
    /// detach.
    pub(crate) fn remove_sysv(target: SysvTarget, spec: Option<&SegmentSpec>) -> Result<(), Error> {
        let name = target.name();
        let id = target.id()?;
        let st = stat(id, &name)?;
        let (bytes, n) = read_prefix(id, st.size, &name)?;
        // A creation of ours that never finished (zeros at our size, or
        // claimed with the header not yet written) goes too.
        let unfinished = spec.is_some_and(|spec| {
            matches!(
                judge(&bytes, n, st.size, Some(spec)),
                Ok(Seen::Empty | Seen::NotReady(_))
            )
        });
        if !unfinished {
            header::check_prefix(&bytes[..n])?;
            if n < header::MAGIC.len() {
                return Err(Error::TooSmall {
                    size: st.size,
                    needed: HEADER_SIZE as u64,
                });
            }
        }
        sys::sysv::remove(id).map_err(|e| match e.raw_os_error() {
            Some(errno::EINVAL | errno::EIDRM) => Error::NotFound { name: name.clone() },
            _ => Error::from_io("shmctl(IPC_RMID)", &name, e),
        })
    }

    /// Marks this System V segment for removal (`IPC_RMID`): it goes when
    /// its last process detaches; its key is free at once.
    pub(crate) fn mark_sysv_removed(&self) -> Result<(), Error> {
        let Backing::SysV { id, .. } = self.backing else {
            return Err(Error::Unsupported {
                what: format!("IPC_RMID of a {:?} segment", self.backing),
            });
        };
        sys::sysv::remove(id).map_err(|e| Error::from_io("shmctl(IPC_RMID)", &self.name, e))
    }

    /// The kernel's view of this System V segment (`IPC_STAT`).
    pub(crate) fn sysv_stat(&self) -> Option<ShmStat> {
        match self.backing {
            Backing::SysV { id, .. } => sys::sysv::stat(id).ok(),
            _ => None,
        }
    }
}
