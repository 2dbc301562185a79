//! Diagnostic reads of `/proc/TID/status`: which process a thread belongs
//! to, and whether it still runs. Used by tools that inspect objects without
//! touching their locks; nothing here is on a lock path.

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

#[cfg(test)]
mod tests {
    use super::*;

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
