//! Reads of `/proc`, each parsed in one place: `/proc/PID/stat` (state and
//! start time), `/proc/PID/task/*/stat`, `/proc/TID/status` (which process
//! a thread belongs to, and whether it still runs) and `/proc/PID/fdinfo`
//! (whether a process holds a `flock` on a file), and
//! `/proc/sys/kernel/random/boot_id` (which boot this is). Nothing here is
//! on a lock's fast path.

use std::io;

/// This boot's id, `/proc/sys/kernel/random/boot_id` (a UUID, random at
/// each boot), as its 16 bytes.
pub(crate) fn boot_id() -> io::Result<[u8; 16]> {
    parse_uuid(&std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed boot_id"))
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (surrounding space allowed).
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.trim().bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The state letter and start time (clock ticks since boot) of `pid`, read
/// from `/proc/PID/stat`. `Ok(None)` when the process does not exist.
pub(crate) fn stat_state_and_start(pid: u32) -> io::Result<Option<(u8, u64)>> {
    read_stat(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// State letter and start time from a `stat` file of `/proc` (a process's
/// or one of its tasks'); `Ok(None)` when it does not exist.
fn read_stat(path: &std::path::Path) -> io::Result<Option<(u8, u64)>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(super::errno::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: parse from the last ')'.
    let close = text.iter().rposition(|&b| b == b')').ok_or_else(bad_stat)?;
    let rest = std::str::from_utf8(&text[close + 1..]).map_err(|_| bad_stat())?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next().ok_or_else(bad_stat)?.as_bytes()[0];
    // After the state (field 3), start time is field 22: 19 fields further.
    let start = fields
        .nth(18)
        .ok_or_else(bad_stat)?
        .parse()
        .map_err(|_| bad_stat())?;
    Ok(Some((state, start)))
}

fn bad_stat() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/PID/stat")
}

/// Whether any task (thread) of `pid` is neither a zombie nor dead, from
/// `/proc/PID/task/*/stat`.
pub(crate) fn any_live_task(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        matches!(read_stat(&t.path().join("stat")), Ok(Some((state, _))) if state != b'Z' && state != b'X')
    })
}

/// What `/proc/TID/status` says about a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadStatus {
    /// The process (thread group) the thread belongs to.
    pub(crate) tgid: u32,
    /// The state letter (`R`, `S`, `D`, `Z`, `X`, …).
    pub(crate) state: u8,
}

impl ThreadStatus {
    /// A zombie (`Z`) or dead (`X`) thread no longer runs: a process killed
    /// and not yet reaped still has its `/proc` entry.
    pub(crate) fn is_dead(&self) -> bool {
        self.state == b'Z' || self.state == b'X'
    }
}

/// Reads `/proc/TID/status` (a thread id works as well as a process id,
/// though only the latter is listed in `/proc`). `Ok(None)` when no such
/// thread exists; an error when `/proc` cannot be read (e.g. `hidepid`).
pub(crate) fn thread_status(tid: u32) -> io::Result<Option<ThreadStatus>> {
    if tid == 0 {
        return Ok(None);
    }
    let text = match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(super::errno::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut tgid = None;
    let mut state = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Tgid:") {
            tgid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("State:") {
            state = v.trim().bytes().next();
        }
    }
    match (tgid, state) {
        (Some(tgid), Some(state)) => Ok(Some(ThreadStatus { tgid, state })),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unparsable /proc/TID/status",
        )),
    }
}

/// Whether process `pid` holds a `flock` on the file `(major:minor, ino)`
/// (as [`FileStat`](super::fd::FileStat) reports it) through one of its descriptors: the `lock:` lines of
/// `/proc/PID/fdinfo/*` list the locks each open file description owns.
/// `Ok(None)` when the process does not exist; an error when its
/// descriptors cannot be read (another user's process, `hidepid`).
pub(crate) fn holds_flock(
    pid: u32,
    (major, minor): (u32, u32),
    ino: u64,
) -> io::Result<Option<bool>> {
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let file = format!("{:02x}:{:02x}:{ino}", major, minor);
    for entry in dir {
        let Ok(entry) = entry else { continue };
        // A descriptor closed meanwhile is simply not there any more.
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if text.lines().any(|l| is_flock_on(l, &file)) {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}

/// Whether an fdinfo line is `lock:\tN: FLOCK ADVISORY WRITE|READ PID
/// MAJ:MIN:INO …` for `file`.
fn is_flock_on(line: &str, file: &str) -> bool {
    let Some(rest) = line.strip_prefix("lock:") else {
        return false;
    };
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // [id:, FLOCK, ADVISORY, WRITE, pid, maj:min:ino, start, end]
    f.len() >= 6 && f[1] == "FLOCK" && f[5] == file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_a_uuid() {
        assert_eq!(
            parse_uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n"),
            Some([
                0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2,
                0xe1, 0xf0
            ])
        );
        assert_eq!(parse_uuid("0f1e2d3c"), None);
        assert_eq!(parse_uuid("zz1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), None);
        let a = boot_id().unwrap();
        assert_ne!(a, [0; 16]);
        assert_eq!(boot_id().unwrap(), a);
    }

    #[test]
    fn fdinfo_flock_lines() {
        let file = "00:1b:77";
        assert!(is_flock_on(
            "lock:\t1: FLOCK  ADVISORY  WRITE 4242 00:1b:77 0 EOF",
            file
        ));
        assert!(!is_flock_on(
            "lock:\t1: OFDLCK ADVISORY  READ -1 00:1b:77 0 0",
            file
        ));
        assert!(!is_flock_on(
            "lock:\t1: FLOCK  ADVISORY  WRITE 4242 00:1b:78 0 EOF",
            file
        ));
        assert!(!is_flock_on("flags:\t0100002", file));
    }

    #[test]
    fn own_process_status() {
        let me = super::super::proc::getpid();
        let st = thread_status(me).expect("read /proc").expect("exists");
        assert_eq!(st.tgid, me);
        assert!(!st.is_dead());
        let tid = super::super::proc::gettid();
        assert_eq!(thread_status(tid).expect("read").expect("exists").tgid, me);
        assert_eq!(thread_status(0).expect("no io"), None);
    }
}
