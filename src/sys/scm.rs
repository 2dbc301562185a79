//! Passing one descriptor over a Unix stream socket (`sendmsg` /
//! `recvmsg` with an `SCM_RIGHTS` control message), over rustix's safe
//! ancillary-data buffers.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::{errno, retry_eintr};

/// Control-message space for up to this many descriptors (any beyond the
/// first are closed: a sender that passes more is not ours).
const MAX_FDS: usize = 4;

/// Sends `payload` (at least one byte) with `fd` attached.
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, payload: &[u8]) -> io::Result<()> {
    assert!(!payload.is_empty(), "a descriptor travels with data");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    let pushed = control.push(SendAncillaryMessage::ScmRights(&fds));
    debug_assert!(pushed, "the buffer is sized for one descriptor");
    let iov = [IoSlice::new(payload)];
    let n = retry_eintr(|| {
        Ok(rustix::net::sendmsg(
            sock,
            &iov,
            &mut control,
            SendFlags::NOSIGNAL,
        )?)
    })?;
    if n < payload.len() {
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
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = retry_eintr(|| {
        Ok(rustix::net::recvmsg(
            sock,
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?)
    })?;
    // Every descriptor received is owned here: the first is kept, the
    // others are closed as they are dropped (so are any left undrained
    // when `control` is dropped).
    let mut first = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for fd in fds {
                if first.is_none() {
                    first = Some(fd);
                }
            }
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Descriptors were lost: the sender sent more than one.
        return Err(io::Error::from_raw_os_error(errno::EMSGSIZE));
    }
    Ok((msg.bytes, first))
}
