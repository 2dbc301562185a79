//! Diagnostic reads of `/proc`: `/proc/TID/status` (which process a thread
//! belongs to, and whether it still runs) and `/proc/locks` (the file locks
//! held on an inode). Used by tools that inspect objects without touching
//! their locks; nothing here is on a lock path.

use std::io;

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
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
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

/// The family of a lock listed in `/proc/locks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockClass {
    /// `fcntl(F_SETLK)` (process-associated byte-range lock).
    Posix,
    /// `fcntl(F_OFD_SETLK)` (open-file-description byte-range lock).
    Ofd,
    /// `flock(2)`.
    Flock,
    /// Leases, delegations and anything newer.
    Other,
}

/// One granted lock from `/proc/locks` (waiters, the `->` lines, are left
/// out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LockRecord {
    pub(crate) class: LockClass,
    /// Write (exclusive) rather than read (shared).
    pub(crate) write: bool,
    /// The pid the kernel reports: the locker's for `flock`/POSIX, `-1` for
    /// OFD locks (they belong to no process), `0` if not visible here.
    pub(crate) pid: i32,
    /// First byte covered.
    pub(crate) start: u64,
    /// Last byte covered, `None` for "to end of file".
    pub(crate) end: Option<u64>,
}

/// The granted locks on the file `(dev, ino)` (as `fstat` reports them),
/// from `/proc/locks`.
pub(crate) fn locks_on(dev: u64, ino: u64) -> io::Result<Vec<LockRecord>> {
    let text = std::fs::read_to_string("/proc/locks")?;
    Ok(parse_locks(&text, libc::major(dev), libc::minor(dev), ino))
}

/// Parses `/proc/locks` lines such as
/// `3: OFDLCK ADVISORY  READ  -1 00:1a:12345 0 0` (device numbers in hex,
/// inode in decimal, `EOF` for an open end), keeping those on one inode.
fn parse_locks(text: &str, major: u32, minor: u32, ino: u64) -> Vec<LockRecord> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let _id = f.next();
        let mut class = f.next();
        if class == Some("->") {
            continue; // a waiter, not a holder
        }
        let class = match class.take() {
            Some("POSIX") => LockClass::Posix,
            Some("OFDLCK") => LockClass::Ofd,
            Some("FLOCK") => LockClass::Flock,
            Some(_) => LockClass::Other,
            None => continue,
        };
        let _advisory = f.next();
        let write = match f.next() {
            Some("WRITE") => true,
            Some("READ") => false,
            _ => continue,
        };
        let Some(pid) = f.next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Some(file) = f.next() else { continue };
        let mut parts = file.split(':');
        let (Some(ma), Some(mi), Some(no)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let same = u32::from_str_radix(ma, 16).ok() == Some(major)
            && u32::from_str_radix(mi, 16).ok() == Some(minor)
            && no.parse::<u64>().ok() == Some(ino);
        if !same {
            continue;
        }
        let Some(start) = f.next().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let end = match f.next() {
            Some("EOF") => None,
            Some(e) => match e.parse() {
                Ok(e) => Some(e),
                Err(_) => continue,
            },
            None => continue,
        };
        out.push(LockRecord {
            class,
            write,
            pid,
            start,
            end,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks() {
        let text = "\
1: OFDLCK ADVISORY  READ  -1 00:1a:77 0 0
1: -> OFDLCK ADVISORY  WRITE -1 00:1a:77 0 0
2: FLOCK  ADVISORY  WRITE 4242 00:1a:77 0 EOF
3: OFDLCK ADVISORY  READ  -1 00:1a:78 0 0
4: POSIX  ADVISORY  READ  17 fd:01:77 5 9
5: OFDLCK ADVISORY  READ  -1 00:1a:77 0 0
";
        let got = parse_locks(text, 0, 0x1a, 77);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].class, LockClass::Ofd);
        assert!(!got[0].write);
        assert_eq!((got[0].start, got[0].end), (0, Some(0)));
        assert_eq!(got[1].class, LockClass::Flock);
        assert!(got[1].write);
        assert_eq!(got[1].pid, 4242);
        assert_eq!(got[1].end, None);
        assert_eq!(got[2].class, LockClass::Ofd);
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
