//! The error numbers the layers above `sys` tell apart, by name (like
//! rustix's `Errno` constants), so that no code outside `sys` names `libc`.
//!
//! Compare with `io::Error::raw_os_error()`: `e.raw_os_error() ==
//! Some(errno::ENOENT)`.

#[allow(unused_imports)] // the set is the vocabulary, not every name is used yet
pub(crate) use libc::{
    EACCES, EAGAIN, EBADF, EBUSY, EDEADLK, EEXIST, EIDRM, EINTR, EINVAL, ELOOP, EMFILE, EMSGSIZE,
    ENAMETOOLONG, ENOENT, ENOSPC, ENOTRECOVERABLE, ENOTSOCK, EOVERFLOW, EOWNERDEAD, EPERM, ESRCH,
    ETIMEDOUT, EWOULDBLOCK,
};

/// `io::Error` for the error number `code`.
pub(crate) fn error(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}
