//! Shared by several test binaries (each includes it with `mod support;`).
#![allow(dead_code)]

use shmsync::testing::TestName;

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
