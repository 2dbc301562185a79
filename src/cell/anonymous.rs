//! memfd cells: `ShmCell`s in an anonymous sealed memory file, shared by
//! inheritance or by passing the descriptor over a Unix socket (see
//! [`ShmCell::create_anonymous`]).

use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;

use super::ShmCell;
use crate::error::Error;
use crate::lock::LockBackend;
use crate::segment::{Backing, CreateOptions, Init, LockKind, Segment};
use crate::shm_safe::ShmSafe;
use crate::sys;

/// The bytes that travel with a cell's descriptor.
const TAG: &[u8] = b"shmsync-memfd";

impl<T: ShmSafe, L: LockBackend> ShmCell<T, L> {
    /// Creates an anonymous cell holding `value`, in a memory file
    /// (`memfd_create`) sealed against shrinking and growing
    /// (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): no other process can
    /// ever make this one take `SIGBUS`. It has no name — nothing to leak
    /// or clean: the memory is freed when the last descriptor and mapping
    /// are gone. Share it with [`send_to`](Self::send_to) /
    /// [`receive_from`](Self::receive_from) over a Unix socket, with
    /// `fork` (the handle is inherited like any other), or with `exec`
    /// ([`inheritable_fd`](Self::inheritable_fd), then
    /// [`from_fd`](Self::from_fd) in the new program).
    ///
    /// Every process locks through an open file description of its own, so
    /// a holder that dies is seen dead by the others as for a named cell.
    /// [`NamedSemaphore`](crate::NamedSemaphore) needs a name and is
    /// refused ([`Error::Unsupported`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] (lock kind), [`Error::Io`].
    pub fn create_anonymous(value: T) -> Result<Self, Error> {
        Self::create_anonymous_with(value, &CreateOptions::default())
    }

    /// Like [`create_anonymous`](Self::create_anonymous), with options. The
    /// mode decides which users may attach a descriptor they receive
    /// (attaching opens `/proc/self/fd/N`, which checks it).
    ///
    /// # Errors
    ///
    /// As [`create_anonymous`](Self::create_anonymous).
    pub fn create_anonymous_with(value: T, options: &CreateOptions) -> Result<Self, Error> {
        let value = ManuallyDrop::new(value);
        let mut write = Self::value_init(&value);
        Self::create_memfd_inner(options, &mut write)
    }

    /// An anonymous cell holding an all-zero `T`, never built on the stack
    /// (see [`create_zeroed`](Self::create_zeroed)).
    ///
    /// # Errors
    ///
    /// As [`create_anonymous`](Self::create_anonymous).
    pub fn create_anonymous_zeroed() -> Result<Self, Error> {
        Self::create_memfd_inner(&CreateOptions::default(), &mut |_| {})
    }

    /// An anonymous cell whose all-zero value `init` fills in place (see
    /// [`create_in_place`](Self::create_in_place)).
    ///
    /// # Errors
    ///
    /// As [`create_anonymous`](Self::create_anonymous).
    pub fn create_anonymous_in_place(
        options: &CreateOptions,
        init: impl FnOnce(&mut T),
    ) -> Result<Self, Error> {
        let mut init = Some(init);
        Self::create_memfd_inner(options, &mut |p| {
            if let Some(f) = init.take() {
                // SAFETY: `p` is the value area of the segment being
                // initialised under our initialisation lock.
                f(unsafe { Self::in_place(p) })
            }
        })
    }

    fn create_memfd_inner(
        options: &CreateOptions,
        value: &mut dyn FnMut(NonNull<u8>),
    ) -> Result<Self, Error> {
        Self::check_backing(Backing::Memfd)?;
        Self::check_snapshot_options(options)?;
        let mut lock = Self::lock_init();
        let seg = Segment::create_memfd(
            &Self::spec(),
            options,
            Init {
                lock: &mut lock,
                value,
            },
        )?;
        Self::from_segment(seg)
    }

    /// Attaches to the memfd cell `fd` (inherited across `exec`, or
    /// received by other means than [`receive_from`](Self::receive_from)).
    /// The descriptor must be a memfd ([`Error::NotMemfd`]) carrying the
    /// seals ([`Error::NotSealed`]); its header is then validated as
    /// [`open`](Self::open) does, before anything is mapped. `fd` is
    /// closed: the handle opens a description of its own.
    ///
    /// # Errors
    ///
    /// [`Error::NotMemfd`], [`Error::NotSealed`],
    /// [`Error::PermissionDenied`] (the creator's mode does not let this
    /// user open it), [`Error::Incompatible`], [`Error::TooSmall`],
    /// [`Error::Corrupted`], [`Error::AbandonedInit`],
    /// [`Error::Unsupported`] (lock kind), [`Error::Io`].
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        Self::check_backing(Backing::Memfd)?;
        Self::from_segment(Segment::from_memfd(fd, &Self::spec())?)
    }

    /// Sends this memfd cell's descriptor over `socket` (`SCM_RIGHTS`), for
    /// the peer's [`receive_from`](Self::receive_from).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a cell that is not a memfd cell,
    /// [`Error::Io`].
    pub fn send_to(&self, socket: &UnixStream) -> Result<(), Error> {
        self.check_memfd("send_to")?;
        sys::scm::send_fd(socket.as_fd(), self.seg.fd(), TAG)
            .map_err(|e| Error::io("sendmsg(SCM_RIGHTS)", e))
    }

    /// Receives a memfd cell's descriptor from `socket` (sent by
    /// [`send_to`](Self::send_to)) and attaches to it as
    /// [`from_fd`](Self::from_fd) does. Blocks until a message arrives.
    ///
    /// # Errors
    ///
    /// As [`from_fd`](Self::from_fd); [`Error::Io`] with
    /// `UnexpectedEof` if the peer closed the socket, `InvalidData` if the
    /// message carried no descriptor.
    pub fn receive_from(socket: &UnixStream) -> Result<Self, Error> {
        let mut buf = [0u8; 64];
        let (n, fd) =
            sys::scm::recv_fd(socket.as_fd(), &mut buf).map_err(|e| Error::io("recvmsg", e))?;
        match fd {
            Some(fd) => Self::from_fd(fd),
            None if n == 0 => Err(Error::io(
                "recvmsg",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed"),
            )),
            None => Err(Error::io(
                "recvmsg",
                std::io::Error::new(std::io::ErrorKind::InvalidData, "no descriptor came"),
            )),
        }
    }

    /// A duplicate of this memfd cell's descriptor *without* close-on-exec,
    /// for a program this process `exec`s: pass its number (for example
    /// as an argument), and let the program call
    /// [`from_fd`](Self::from_fd). Drop it once the child is started.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a cell that is not a memfd cell,
    /// [`Error::Io`].
    pub fn inheritable_fd(&self) -> Result<OwnedFd, Error> {
        self.check_memfd("inheritable_fd")?;
        sys::memfd::dup_inheritable(self.seg.fd()).map_err(|e| Error::io("fcntl(F_DUPFD)", e))
    }

    /// Where the cell's bytes live.
    pub fn backing(&self) -> Backing {
        self.seg.backing()
    }

    fn check_memfd(&self, op: &str) -> Result<(), Error> {
        if self.seg.backing() == Backing::Memfd {
            Ok(())
        } else {
            Err(Error::Unsupported {
                what: format!("{op} on a {:?} cell (only memfd cells)", self.seg.backing()),
            })
        }
    }

    /// Refuses a lock kind that cannot serve a segment of this backing
    /// (the semaphore's companion is named after a named segment).
    pub(crate) fn check_backing(backing: Backing) -> Result<(), Error> {
        if L::KIND == LockKind::NamedSemaphore && backing != Backing::Named {
            return Err(Error::Unsupported {
                what: format!(
                    "a NamedSemaphore lock on a {backing:?} cell (its semaphore is named after the cell's shm name); use RobustMutex or FileLock"
                ),
            });
        }
        Ok(())
    }
}

/// A duplicate of `fd` without close-on-exec (`fcntl(F_DUPFD)`), for a
/// program this process is about to `exec` — for instance the child's end
/// of a `UnixStream::pair()` that a memfd cell is then sent over.
///
/// # Errors
///
/// The `fcntl` error.
pub fn inheritable_fd(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    sys::memfd::dup_inheritable(fd)
}
