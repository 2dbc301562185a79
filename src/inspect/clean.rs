//! Removing objects: [`clean`] (only what is provably dead) and [`unlink`]
//! (forced).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use super::{
    judge, name, not_a_file, open_failure, open_listed, Attached, Inspection, Leftover, State,
};
use super::{ATTACH_BYTE, MAX_SHM_NAME};
use crate::error::Error;
use crate::sys;
use crate::sys::errno;
use crate::sys::fd::oflag;
use crate::sys::fd_lock::OfdLock;

/// What [`clean_one`] did with an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CleanAction {
    /// It was stale and has been removed, with its companion objects.
    Removed,
    /// It is stale and would be removed (dry run).
    WouldRemove,
    /// It was left alone; the reason says why.
    Skipped,
    /// It was judged stale but removing it failed; the reason says why.
    Failed,
}

impl CleanAction {
    /// The stable name used in tables and JSON (`removed`, `would-remove`,
    /// `skipped`, `failed`).
    pub fn name(self) -> &'static str {
        match self {
            CleanAction::Removed => "removed",
            CleanAction::WouldRemove => "would-remove",
            CleanAction::Skipped => "skipped",
            CleanAction::Failed => "failed",
        }
    }
}

/// The result of cleaning one object.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanOutcome {
    /// The object's name.
    pub name: String,
    /// What was done.
    pub action: CleanAction,
    /// Why (the state that made it stale, or why it was kept).
    pub reason: String,
    /// The object as it was judged (under the lock, when it was locked).
    pub inspection: Option<Inspection>,
}

impl CleanOutcome {
    /// An object left alone for `reason`, with no inspection (for example
    /// a name that does not exist).
    pub fn skipped(name: &str, reason: &str) -> CleanOutcome {
        CleanOutcome {
            name: name.into(),
            action: CleanAction::Skipped,
            reason: reason.into(),
            inspection: None,
        }
    }
}

static CLEAN_HOOK: Mutex<Option<fn(&str)>> = Mutex::new(None);

/// Installs `hook`, called by [`clean_one`] with the object's name after it
/// took the exclusive attach lock and before it checks that the name still
/// refers to the locked inode. Tests use it to replace the name at that
/// point and see the object skipped.
#[doc(hidden)]
pub fn set_clean_hook(hook: Option<fn(&str)>) {
    *CLEAN_HOOK.lock().unwrap_or_else(|p| p.into_inner()) = hook;
}

fn clean_hook(name: &str) {
    let hook = *CLEAN_HOOK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(hook) = hook {
        hook(name);
    }
}

/// What [`clean`] and [`clean_one`] remove, and whether they only say so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanOptions {
    /// Only report what would be removed ([`CleanAction::WouldRemove`]).
    pub dry_run: bool,
    /// Also remove objects whose users all detached normally
    /// ([`Leftover::Detached`]: a service that is not running), not only
    /// those that [crashed](Leftover::Crashed).
    pub include_detached: bool,
}

impl CleanOptions {
    /// The default: remove what crashed, for real.
    pub fn new() -> CleanOptions {
        CleanOptions::default()
    }

    /// Sets [`dry_run`](Self::dry_run).
    pub fn dry_run(mut self, yes: bool) -> CleanOptions {
        self.dry_run = yes;
        self
    }

    /// Sets [`include_detached`](Self::include_detached).
    pub fn include_detached(mut self, yes: bool) -> CleanOptions {
        self.include_detached = yes;
        self
    }

    /// Whether an object judged so is to be removed.
    fn removes(&self, i: &Inspection) -> bool {
        match i.leftover {
            Some(Leftover::Crashed) => true,
            Some(Leftover::Detached) => self.include_detached,
            None => false,
        }
    }
}

/// Removes every object whose name `filter` accepts and that `options`
/// selects (see [`clean_one`]), in name order. Objects whose name is not
/// UTF-8 are never touched.
///
/// `filter` is the scope: one that accepts every name walks every
/// application's objects (the `shmsync` command refuses to run without a
/// scope for that reason).
///
/// # Errors
///
/// [`Error::Io`] when `/dev/shm` cannot be read. A failure on one object is
/// reported as [`CleanAction::Failed`] in its [`CleanOutcome`]; the others
/// are still cleaned.
pub fn clean(
    filter: impl Fn(&str) -> bool,
    options: &CleanOptions,
) -> Result<Vec<CleanOutcome>, Error> {
    let mut out = Vec::new();
    for name in super::names()? {
        if !filter(&name) || name::validate(&name, MAX_SHM_NAME).is_err() {
            continue;
        }
        match clean_one(&name, options) {
            Ok(o) => out.push(o),
            Err(Error::NotFound { .. }) => {}
            Err(e) => out.push(CleanOutcome {
                name,
                action: CleanAction::Failed,
                reason: error_line(&e),
                inspection: None,
            }),
        }
    }
    Ok(out)
}

/// Removes the object `name` if it is provably dead and `options` selects
/// it (it [crashed](Leftover::Crashed), or it was
/// [detached](Leftover::Detached) and `include_detached` is set):
/// `shm_open(O_RDWR)` (never following a symbolic link), judged, then —
/// unless `dry_run` — a non-blocking exclusive `fcntl(F_OFD_SETLK)` on the
/// attach byte, judged again under that lock, `fstat(fd)` and
/// `lstat(path)` agreeing on device and inode, and only then `shm_unlink`
/// and the cell's companion objects. A live, detached (by default),
/// foreign, damaged or replaced object is [`Skipped`](CleanAction::Skipped).
///
/// # Errors
///
/// [`Error::InvalidName`], [`Error::NotFound`]; [`Error::Io`] and the
/// other errors of `shm_unlink` or of removing a companion object.
pub fn clean_one(name: &str, options: &CleanOptions) -> Result<CleanOutcome, Error> {
    let cname = name::validate(name, MAX_SHM_NAME)?;
    let skipped = |reason: String, inspection: Option<Inspection>| {
        Ok(CleanOutcome {
            name: name.into(),
            action: CleanAction::Skipped,
            reason,
            inspection,
        })
    };
    if let Some(i) = not_a_file(name, &cname)? {
        let why = format!(
            "{}: {}",
            i.state.name(),
            i.reason.clone().unwrap_or_default()
        );
        return skipped(why, Some(i));
    }
    let fd: OwnedFd = match open_listed(&cname, oflag::O_RDWR) {
        Ok(fd) => fd,
        Err(e) => {
            let i = open_failure(name, e)?;
            let why = format!(
                "{}: {}",
                i.state.name(),
                i.reason.clone().unwrap_or_default()
            );
            return skipped(why, Some(i));
        }
    };
    let before = judge(name, fd.as_fd());
    if !options.removes(&before) {
        return skipped(keep_reason(&before), Some(before));
    }
    if options.dry_run {
        return Ok(CleanOutcome {
            name: name.into(),
            action: CleanAction::WouldRemove,
            reason: removal_reason(&before),
            inspection: Some(before),
        });
    }
    match sys::fd_lock::ofd_try_set(fd.as_fd(), OfdLock::Write, ATTACH_BYTE, 1) {
        Ok(true) => {}
        Ok(false) => return skipped("a process attached meanwhile".into(), Some(before)),
        Err(e) => return Err(Error::io("fcntl(F_OFD_SETLK)", e)),
    }
    // Under the exclusive lock nobody can attach, initialise or take it
    // over: judge again what we are about to remove.
    let locked = judge(name, fd.as_fd());
    if !options.removes(&locked) {
        return skipped(keep_reason(&locked), Some(locked));
    }
    clean_hook(name);
    crate::steps::step("clean:judged");
    let st = sys::fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat", e))?;
    let path = name::shm_path(name);
    match sys::fd::lstat(&path) {
        Ok(p) if p.same_file(&st) => {}
        Ok(_) => {
            return skipped(
                "the name was replaced by another object".into(),
                Some(locked),
            )
        }
        Err(e) if e.raw_os_error() == Some(errno::ENOENT) => {
            return skipped("the name was removed meanwhile".into(), Some(locked))
        }
        Err(e) => return Err(Error::io("lstat", e)),
    }
    // /dev/shm is sticky: only the owner (or root) may remove the name.
    // Checked first, because the companions go before the name.
    let euid = sys::proc::geteuid();
    if euid != 0 && euid != st.uid() {
        let why = format!("not permitted to remove it (owner uid {})", st.uid());
        return skipped(why, Some(locked));
    }
    // Companions first, while the segment is still named and we hold its
    // exclusive lock: nobody can create a new cell of this name (and with
    // it a new `sem.NAME`) until the name is gone, so this never removes a
    // newer cell's companion.
    if let Some(kind) = locked.lock.kind {
        crate::lock::unlink_companions(kind, name)?;
    }
    crate::steps::step("clean:companions-removed");
    match sys::shm::shm_unlink(&cname) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(errno::EPERM) | Some(errno::EACCES)) => {
            let why = format!("not permitted to remove it (owner uid {})", st.uid());
            return skipped(why, Some(locked));
        }
        Err(e) => return Err(Error::from_io("shm_unlink", name, e)),
    }
    drop(fd); // releases the exclusive lock, on an unlinked inode
    Ok(CleanOutcome {
        name: name.into(),
        action: CleanAction::Removed,
        reason: removal_reason(&locked),
        inspection: Some(locked),
    })
}

/// An error and its sources, on one line (a source whose text the message
/// already shows is not repeated).
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        src = s.source();
    }
    line
}

/// Why an object is removed, in one line: its state and how its users
/// left (`ready, crashed`, `owner-died, crashed`, `ready, detached`).
fn removal_reason(i: &Inspection) -> String {
    match i.leftover {
        Some(l) => format!("{}, {}", i.state.name(), l.name()),
        None => i.state.name().into(),
    }
}

/// Why an object is kept, in one line.
fn keep_reason(i: &Inspection) -> String {
    if i.leftover == Some(Leftover::Detached) {
        return format!(
            "{}, detached: every user detached normally (--include-detached removes it)",
            i.state.name()
        );
    }
    if !i.state.is_shmsync() || matches!(i.state, State::Damaged | State::Incompatible) {
        return format!(
            "{}: {}",
            i.state.name(),
            i.reason.as_deref().unwrap_or("not removable")
        );
    }
    match i.attached {
        Attached::Live => format!("{}: in use (attached)", i.state.name()),
        Attached::Creator => "initialising: its creator is alive".into(),
        Attached::Unknown => format!("{}: attach lock could not be queried", i.state.name()),
        Attached::None => format!("{}: its lock holder may be alive", i.state.name()),
    }
}

/// What [`unlink`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unlinked {
    /// The object as inspected just before removal (`unreadable` when it
    /// could not be opened).
    pub inspection: Inspection,
}

/// Removes the name `name` unconditionally (`shm_unlink`), with the
/// companion objects of its lock kind when it is a shmsync object. Processes
/// still attached keep their mappings (the returned inspection's
/// [`attached`](Inspection::attached) tells; the command warns).
///
/// # Errors
///
/// [`Error::InvalidName`], [`Error::NotFound`], [`Error::PermissionDenied`],
/// [`Error::Io`].
pub fn unlink(name: &str) -> Result<Unlinked, Error> {
    let inspection = super::inspect(name)?;
    let cname = name::validate(name, MAX_SHM_NAME)?;
    // Companions first (as `ShmCell::unlink`): once the name is gone a new
    // cell of that name may create its own companions.
    if inspection.state.is_shmsync() {
        if let Some(kind) = inspection.lock.kind {
            crate::lock::unlink_companions(kind, name)?;
        }
    }
    sys::shm::shm_unlink(&cname).map_err(|e| Error::from_io("shm_unlink", name, e))?;
    Ok(Unlinked { inspection })
}
