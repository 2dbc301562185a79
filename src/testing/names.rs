//! [`TestName`]: a unique object name that removes everything made from it
//! when it is dropped.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::sys;

/// The prefix of every name [`TestName`] makes (after the leading `/`).
pub const NAME_PREFIX: &str = "shmsync-t-";

/// The longest name [`TestName`] makes, in bytes after the leading `/`.
///
/// Below the 255 of `NAME_MAX`, so that a named semaphore's `sem.NAME`
/// (four bytes more) and a companion object's suffix still fit.
pub const MAX_TEST_NAME: usize = 240;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name for a test's shared objects, valid for every object kind
/// the crate makes, that **removes every object made from it when
/// dropped** — also when the test panics and unwinds.
///
/// The name is `/shmsync-t-PID-START-N-TAG`:
///
/// * `PID` and `START` (the process's start time in clock ticks, from
///   `/proc/self/stat`) make it unique among processes, also after the pid
///   is reused;
/// * `N`, a process-wide atomic counter, makes it unique among the threads
///   of the default parallel `cargo test`;
/// * `TAG` is yours, for reading `/dev/shm` (characters other than
///   `[A-Za-z0-9._-]` become `_`; it is shortened so that the whole name
///   stays within [`MAX_TEST_NAME`] bytes).
///
/// It dereferences to `&str`, so `ShmCell::create(&name, …)` works.
///
/// # Cleanup
///
/// On drop, [`ShmCell::<u8>::unlink`](crate::ShmCell::unlink) removes the
/// segment and every companion object its header names (whatever the lock
/// kind); then whatever is still in `/dev/shm` under the name is removed
/// directly: `NAME`, `sem.NAME`, and `NAME.*`, `NAME-*`, `sem.NAME.*`,
/// `sem.NAME-*` (companions, and objects half-made by a killed creator).
/// Errors are ignored: a drop never panics.
///
/// Nothing runs if the process is killed or aborts (`panic = "abort"`):
/// that is what the name's `PID` is for — a runner can sweep
/// `/dev/shm/shmsync-t-PID-*` after a test process ended.
///
/// # Panics
///
/// [`TestName::new`] panics in a child process started by
/// [`child!`](crate::testing::child) before that child's code runs: names
/// are made by the parent and passed to the child as arguments (see the
/// [module docs](crate::testing#what-a-child-re-runs)).
///
/// ```
/// use shmsync::testing::TestName;
/// use shmsync::ShmCell;
///
/// let name = TestName::new("doc");
/// let cell = ShmCell::<u64>::create(&name, 7).unwrap();
/// assert_eq!(*cell.lock().unwrap(), 7);
/// drop(cell);
/// let path = name.path();
/// drop(name);
/// assert!(!std::path::Path::new(&path).exists());
/// ```
pub struct TestName {
    name: String,
}

impl TestName {
    /// A fresh unique name whose last part is `tag`.
    ///
    /// # Panics
    ///
    /// In a child process before the child's code runs (see above).
    pub fn new(tag: &str) -> TestName {
        super::child::refuse_before_child_body("TestName::new");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let head = format!(
            "/{NAME_PREFIX}{}-{:x}-{n}-",
            sys::proc::getpid(),
            start_ticks()
        );
        let room = (MAX_TEST_NAME + 1).saturating_sub(head.len());
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(room)
            .collect();
        let tag = if tag.is_empty() { "x".to_string() } else { tag };
        TestName { name: head + &tag }
    }

    /// The name, with its leading `/`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The path of the segment in `/dev/shm`.
    pub fn path(&self) -> String {
        format!("/dev/shm{}", self.name)
    }

    /// The objects in `/dev/shm` that belong to this name now (see
    /// [Cleanup](TestName#cleanup)), as file names.
    pub fn leftovers(&self) -> Vec<String> {
        objects_of(&self.name[1..])
    }
}

/// The objects in `/dev/shm` that belong to the name `name` (with its
/// leading `/`), as [`TestName::leftovers`] lists them — usable after the
/// [`TestName`] was dropped, to check that nothing (a child still running,
/// say) made them again.
///
/// ```
/// use shmsync::testing::{leftovers, TestName};
///
/// let name = TestName::new("gone");
/// let s = name.to_string();
/// drop(shmsync::ShmCell::<u8>::create(&name, 0).unwrap());
/// assert_eq!(leftovers(&s).len(), 1);
/// drop(name);
/// assert!(leftovers(&s).is_empty());
/// ```
pub fn leftovers(name: &str) -> Vec<String> {
    objects_of(name.strip_prefix('/').unwrap_or(name))
}

/// File names in `/dev/shm` that belong to the object name `base` (no
/// leading `/`).
fn objects_of(base: &str) -> Vec<String> {
    let sem = format!("sem.{base}");
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| {
            [base, sem.as_str()].iter().any(|b| {
                f == b
                    || f.strip_prefix(b)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
            })
        })
        .collect()
}

/// This process's start time in clock ticks (0 if `/proc` is unreadable).
fn start_ticks() -> u64 {
    static START: OnceLock<(u32, u64)> = OnceLock::new();
    let pid = sys::proc::getpid();
    let &(cached_pid, ticks) = START.get_or_init(|| (pid, own_start(pid)));
    if cached_pid == pid {
        ticks
    } else {
        // A forked child: its own start time.
        own_start(pid)
    }
}

fn own_start(pid: u32) -> u64 {
    match sys::proc::stat_state_and_start(pid) {
        Ok(Some((_, start))) => start,
        _ => 0,
    }
}

impl Drop for TestName {
    fn drop(&mut self) {
        let _ = crate::ShmCell::<u8>::unlink(&self.name);
        for f in objects_of(&self.name[1..]) {
            let _ = std::fs::remove_file(format!("/dev/shm/{f}"));
        }
    }
}

impl Deref for TestName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl AsRef<str> for TestName {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for TestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for TestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TestName").field(&self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_for_every_kind_and_bounded() {
        let long = TestName::new(&"é/x".repeat(200));
        let rest = &long.as_str()[1..];
        assert!(rest.len() <= MAX_TEST_NAME, "{}", rest.len());
        assert!(rest.len() + "sem.".len() <= 251);
        assert!(rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert!(crate::segment::name::validate(long.as_str(), 251).is_ok());
        let empty = TestName::new("");
        assert!(empty.as_str().ends_with("-x"));
    }

    #[test]
    fn drop_removes_segment_and_strays() {
        let name = TestName::new("strays");
        let cell = crate::ShmCell::<u32>::create(&name, 1).unwrap();
        let stray = format!("/dev/shm/sem.{}", &name[1..]);
        let companion = format!("{}.lock", name.path());
        std::fs::write(&stray, b"").unwrap();
        std::fs::write(&companion, b"").unwrap();
        assert_eq!(name.leftovers().len(), 3);
        drop(cell);
        let path = name.path();
        drop(name);
        for p in [path, stray, companion] {
            assert!(!std::path::Path::new(&p).exists(), "{p}");
        }
    }
}
