//! Shared by several test binaries (each includes it with `mod support;`).
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shmsync::testing::TestName;

/// Runs `cmd` to its end (stdin closed, stdout and stderr read on threads,
/// so a chatty program never blocks on a full pipe), bounded by `bound`:
/// past it the program is killed, reaped and the test fails.
pub fn output_bounded(cmd: &mut Command, bound: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill(); // not reaped yet: cannot hit another process
            let _ = child.wait();
            panic!("{cmd:?} did not end within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// A [`TestName`] that also makes the check the old fork-per-test runner
/// made after each test: once the name is dropped (its own cleanup has
/// run), nothing in `/dev/shm` may still start with it — an object its
/// cleanup does not cover, or one re-created behind it, fails the test (and
/// is removed).
pub struct Name(Option<TestName>);

impl Name {
    pub fn new(tag: &str) -> Name {
        Name(Some(TestName::new(tag)))
    }
}

impl std::ops::Deref for Name {
    type Target = TestName;

    fn deref(&self) -> &TestName {
        self.0.as_ref().expect("a live name")
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let Some(name) = self.0.take() else { return };
        let base = name.as_str()[1..].to_string();
        drop(name);
        let sem = format!("sem.{base}");
        let left: Vec<String> = std::fs::read_dir("/dev/shm")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(&base) || f.starts_with(&sem))
            .collect();
        for f in &left {
            let _ = std::fs::remove_file(format!("/dev/shm/{f}"));
        }
        if !left.is_empty() && !std::thread::panicking() {
            panic!("objects left in /dev/shm after the test: {left:?}");
        }
    }
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T`, `Z`, …), `?` if
/// the process is gone.
pub fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name's closing parenthesis.
    let after = stat.rsplit_once(") ").map_or("", |(_, s)| s);
    after.chars().next().unwrap_or('?')
}

/// Waits (bounded, polling every millisecond) until `pid` shows state
/// `want`.
pub fn await_state(pid: u32, want: char, bound: Duration) {
    let t = Instant::now();
    while proc_state(pid) != want {
        assert!(t.elapsed() < bound, "pid {pid} never reached state {want}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
