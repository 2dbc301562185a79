//! Passing one descriptor over a Unix stream socket (`sendmsg` /
//! `recvmsg` with an `SCM_RIGHTS` control message).

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt, errno, retry_eintr};

/// Control-message space for up to this many descriptors (any beyond the
/// first are closed: a sender that passes more is not ours).
const MAX_FDS: usize = 4;

/// Buffer for one control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends `payload` (at least one byte) with `fd` attached.
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, payload: &[u8]) -> io::Result<()> {
    assert!(!payload.is_empty(), "a descriptor travels with data");
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at a control buffer of `space ≤ 64` bytes, so
    // CMSG_FIRSTHDR is non-null and its data holds one RawFd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
    }
    let n = retry_eintr(|| {
        // SAFETY: `msg` and everything it points at live across the call.
        cvt(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } as i64)
    })?;
    if (n as usize) < payload.len() {
        // The descriptor went with the first byte; a short write of the
        // rest would leave the receiver waiting.
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and the descriptor sent with them
/// (`MSG_CMSG_CLOEXEC`). `Ok((0, None))` at end of stream; a message
/// without a descriptor gives `None`.
pub(crate) fn recv_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
    debug_assert!(space <= cbuf.0.len());
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = retry_eintr(|| {
        // SAFETY: `msg` and its buffers live across the call.
        cvt(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } as i64)
    })?;
    let mut first = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of well-formed
    // control messages; CMSG_FIRSTHDR/NXTHDR stay inside them, and each
    // SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4` descriptors
    // this process now owns.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..bytes / size_of::<RawFd>() {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if first.is_none() {
                        first = Some(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Descriptors were lost: the sender sent more than one.
        return Err(io::Error::from_raw_os_error(errno::EMSGSIZE));
    }
    Ok((n as usize, first))
}
