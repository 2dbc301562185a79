//! Naming a System V segment: a [`SysvKey`] (a number or `ftok`), and the
//! name used for it in errors and listings.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::Error;
use crate::sys;

/// A System V IPC key (not `IPC_PRIVATE`): a number agreed between the
/// programs, or one derived from a path with [`SysvKey::ftok`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysvKey(i32);

impl SysvKey {
    /// The key `key`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for 0 (`IPC_PRIVATE`: use
    /// [`ShmCell::create_private_sysv`](crate::ShmCell::create_private_sysv)).
    pub fn new(key: i32) -> Result<SysvKey, Error> {
        if key == sys::sysv::IPC_PRIVATE {
            return Err(Error::InvalidName {
                name: "0".into(),
                reason: "key 0 is IPC_PRIVATE, not a key (use create_private_sysv)",
            });
        }
        Ok(SysvKey(key))
    }

    /// `ftok(path, proj)`: a key from an existing file (its inode and
    /// device) and a non-zero project byte. Two programs that agree on a
    /// path get the same key — as long as the file is not replaced (a new
    /// inode is a new key).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] (no such path), [`Error::InvalidName`] (a NUL
    /// byte, `proj == 0`, or a key that comes out as 0), [`Error::Io`].
    pub fn ftok(path: impl AsRef<Path>, proj: u8) -> Result<SysvKey, Error> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::InvalidName {
            name: name.clone(),
            reason: "contains a NUL byte",
        })?;
        if proj == 0 {
            return Err(Error::InvalidName {
                name,
                reason: "ftok's project id must not be 0",
            });
        }
        let key = sys::sysv::ftok(&c, proj).map_err(|e| Error::from_io("ftok", &name, e))?;
        SysvKey::new(key)
    }

    /// The number.
    pub fn raw(self) -> i32 {
        self.0
    }
}

impl std::fmt::Display for SysvKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#010x}", self.0 as u32)
    }
}

/// What a System V cell is called in errors and [`Segment::name`].
pub(crate) fn sysv_name(key: i32, id: Option<i32>) -> String {
    match (key, id) {
        (0, Some(id)) => format!("sysv:id={id}"),
        (key, _) => format!("sysv:key={:#010x}", key as u32),
    }
}
