//! # shmsync — cross-process synchronization for Linux that survives `kill -9`
//!
//! Processes on one host share a named memory segment; inside it lives a
//! typed value, [`ShmCell<T>`], guarded by a lock every process can take.
//! When a process dies holding the lock, the next locker is **told** —
//! [`LockError::OwnerDied`] carries the guard, like std's poisoning — and
//! recovery is one line: repair the value, call
//! [`make_consistent`](ShmGuard::make_consistent) — or let
//! [`lock_or_repair`](ShmCell::lock_or_repair) do both.
//!
//! ```no_run
//! use shmsync::{LockError, ShmCell, ShmSafe};
//!
//! #[derive(Clone, Copy, ShmSafe)]
//! #[repr(C)]
//! struct Account { balance: u64, version: u64 }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cell = ShmCell::<Account>::open_or_create("/bank", Account { balance: 100, version: 0 })?;
//! let mut acct = match cell.lock() {
//!     Ok(acct) => acct,
//!     Err(LockError::OwnerDied(mut acct)) => {
//!         // the previous holder died mid-update: repair, then declare consistent
//!         acct.version += 1;
//!         acct.make_consistent();
//!         acct
//!     }
//!     Err(other) => return Err(other.without_guard().into()),
//! };
//! acct.balance += 1;
//! drop(acct);
//! // The same in one line: the closure runs only after an owner death.
//! let mut acct = cell.lock_or_repair(|acct| acct.version += 1)?;
//! acct.balance += 1;
//! drop(acct);
//! ShmCell::<Account>::unlink("/bank")?;
//! # Ok(()) }
//! ```
//!
//! ## The recovery story
//!
//! * A holder that dies (`SIGKILL`, a crash, a thread that exits holding the
//!   lock, even an `exec`) is detected by the kernel's robust-futex list;
//!   every acquire path — `lock`, `try_lock`, `lock_timeout` — reports it as
//!   [`LockError::OwnerDied`] with a guard.
//! * **A panic is an owner death**: a guard dropped while its thread
//!   unwinds marks the value suspect, and the next locker, in any process,
//!   gets [`LockError::OwnerDied`] with the value as the panic left it.
//! * Converting an `OwnerDied` error for `?`
//!   ([`without_guard`](LockError::without_guard)) marks the value suspect
//!   and unlocks: the next locker is told again. An explicit drop of an
//!   unrepaired guard leaves the lock
//!   [`NotRecoverable`](LockError::NotRecoverable) for every process, as
//!   POSIX prescribes: the data cannot silently be trusted again. That is
//!   final for the object; unlink it and create a new cell (attached
//!   processes find out with [`ShmCell::is_unlinked`]).
//! * A creator that dies half-way through initialising a segment leaves it
//!   `Initialising`; [`ShmCell::open`] reports [`Error::AbandonedInit`] and
//!   [`ShmCell::open_or_create`] takes it over safely.
//! * Waiting for the value to change ([`ShmGuard::wait_while`], woken by
//!   [`ShmCell::notify_all`]) sleeps on a futex, not in a loop. **A waiter is
//!   not woken when the process that would notify it dies** — the robust
//!   list only marks the lock — so when the other side may die, wait with
//!   [`ShmGuard::wait_while_timeout`] and check on it at each timeout.
//! * Short, foreign, damaged or other-type objects are refused with a
//!   distinct [`Error`] *before* anything is mapped, so opening one never
//!   raises `SIGBUS`. (A process with write access that later *shrinks* a
//!   segment under its attachers can still make their accesses fault: POSIX
//!   shared memory cannot be sealed against that.)
//!
//! ## Layers
//!
//! Dependencies point down only:
//!
//! ```text
//! bin/shmsync (feature `cli`)        the command                       (bin/)
//! testing (feature `testing`)        users' crash tests                (testing/)
//! inspect                            list / inspect / clean from outside,
//!                                    each backend describing itself    (inspect/)
//! ShmCell<T, L>, ShmGuard, wait      typed value, guard, recovery      (cell/)
//! RobustMutex, FileLock,             lock backends, each a standalone
//!   NamedSemaphore, RobustRwLock     primitive (<kind>/mod.rs) plus its
//!                                    ShmCell backend (<kind>/backend.rs) (lock/)
//! Segment, header                    named mapping, validated header,
//!                                    init/attach handshake             (segment/)
//! sys                                one function per OS call, by OS
//!                                    family; the only code naming
//!                                    rustix or libc                    (sys/)
//! #[derive(ShmSafe)] (feature `derive`,   checked ShmSafe impls, a proc-macro
//!   on by default)                   crate of the workspace           (shmsync-derive/)
//! ```
//!
//! Each type that lives in shared memory documents its invariants
//! ([`segment::header::RawHeader`], [`RobustMutex`], and the state the
//! `FileLock` and `NamedSemaphore` backends keep in a segment).
//!
//! ## Choosing a lock
//!
//! `ShmCell<T>` is guarded by a [`RobustMutex`] (fastest; owner death by
//! process death, thread exit or `exec`). `ShmCell<T, FileLock>` uses
//! `flock` on the segment (interoperates with other `flock` users),
//! `ShmCell<T, NamedSemaphore>` a holder record plus `sem.NAME` for
//! sleeping. `ShmCell<T, RobustRwLock>` adds a shared side
//! ([`ShmCell::read`]) for read-mostly values: many readers at once, a
//! killed reader reclaimed by the kernel-proven death of its handle, a dead
//! writer's damage reported to readers as [`ReadError::WriterDied`]. All
//! four give the same `OwnerDied` / `NotRecoverable` semantics on the
//! exclusive side; the README has a comparison table.
//!
//! ## Cargo features
//!
//! | feature | default | what it adds | dependencies it brings |
//! |---|---|---|---|
//! | `testing` | no | `shmsync::testing`: child processes, kill points, sweeps for your own crash tests | none |
//! | `cli` | no | the `shmsync` command (list, inspect, clean, unlink) | `clap`, `serde_json` (binary only) |
//!
//! ## Requirements
//!
//! Linux, glibc ≥ 2.34 (`pthread_mutex_clocklock`), kernel ≥ 3.15
//! (open-file-description locks).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("shmsync supports Linux only: it relies on robust futexes, /dev/shm and OFD locks");

mod cell;
mod error;
pub mod inspect;
pub mod lock;
pub mod segment;
mod shm_safe;
mod steps;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;

/// Installs a hook called half-way through each snapshot publication in
/// this process (crash tests point it at `testing::point`).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use cell::set_snapshot_hook;
pub use cell::{inheritable_fd, ShmCell, ShmGuard, ShmReadGuard, WaitTimeoutResult};
pub use error::{Error, LockError, LockGuard, ReadError, SnapshotError};
pub use lock::{
    FileLock, FileLockGuard, FileLockOptions, FileLockSharedGuard, LockBackend, NamedSemaphore,
    RobustMutex, RobustMutexGuard, RobustRwLock, SemaphoreError, SemaphoreOptions,
};
pub use segment::{Backing, CreateOptions, Segment, SysvKey};
pub use shm_safe::ShmSafe;
/// Derives [`ShmSafe`](trait@ShmSafe) for a `#[repr(C)]` struct of
/// `ShmSafe` fields, checked at compile time (feature `derive`; see the
/// trait's docs for what it refuses and computes).
#[cfg(feature = "derive")]
pub use shmsync_derive::ShmSafe;

/// Support for the code `#[derive(ShmSafe)]` generates. Not a public API:
/// it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::shm_safe::derive_support::{Field, TagHasher};
}
