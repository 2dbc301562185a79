//! Names of shared objects, validated by the crate (not left to glibc).

use std::ffi::CString;

use crate::error::Error;

/// The longest name component after the leading `/` for a shared-memory
/// object (`NAME_MAX`).
pub const MAX_SHM_NAME: usize = 255;

/// A validated object name: a leading `/`, then 1 to `max` bytes with no
/// `/` and no NUL, and not `.` or `..`.
pub(crate) fn validate(name: &str, max: usize) -> Result<CString, Error> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.into(),
            reason,
        })
    };
    let Some(rest) = name.strip_prefix('/') else {
        return bad("must start with '/'");
    };
    if rest.is_empty() {
        return bad("must have at least one character after '/'");
    }
    if rest.len() > max {
        return bad("too long");
    }
    if rest.contains('/') {
        return bad("must not contain '/' after the first character");
    }
    if rest == "." || rest == ".." {
        return bad("must not be '.' or '..'");
    }
    if rest.contains('\0') {
        return bad("must not contain a NUL byte");
    }
    CString::new(name).or_else(|_| bad("must not contain a NUL byte"))
}

/// The directory glibc keeps shared-memory objects in.
pub(crate) fn shm_dir() -> CString {
    CString::new("/dev/shm").expect("no NUL")
}

/// The path under which glibc keeps a shared-memory object.
pub(crate) fn shm_path(name: &str) -> CString {
    CString::new(format!("/dev/shm{name}")).expect("validated names hold no NUL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        assert!(validate("/a", MAX_SHM_NAME).is_ok());
        assert!(validate(&format!("/{}", "x".repeat(255)), MAX_SHM_NAME).is_ok());
    }

    #[test]
    fn refuses_bad_names() {
        for n in ["", "a", "/", "/a/b", "/.", "/..", "/a\0b", "//"] {
            assert!(
                matches!(validate(n, MAX_SHM_NAME), Err(Error::InvalidName { .. })),
                "{n:?}"
            );
        }
        let long = format!("/{}", "x".repeat(256));
        assert!(matches!(
            validate(&long, MAX_SHM_NAME),
            Err(Error::InvalidName { .. })
        ));
    }
}
