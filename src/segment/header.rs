//! The segment header: format, identity checks and the state word.
//!
//! Every segment starts with one [`RawHeader`] (256 bytes, `repr(C)`). It
//! is written by the creator while it holds the initialisation lock, and is
//! read by openers with `pread` *before* anything is mapped, so a short,
//! foreign or damaged object is refused without ever touching a mapping that
//! could raise `SIGBUS`.
//!
//! # Layout (format version 3)
//!
//! | offset | field | meaning |
//! |---|---|---|
//! | 0 | `magic` | `b"SHMSYNC\0"` |
//! | 8 | `format_version` | 3 (2 put the value right after the lock, in its cache line) |
//! | 12 | `header_size` | 256 |
//! | 16 | `arch` | target architecture, NUL-padded (`x86_64`) |
//! | 32 | `libc` | C library (`gnu`, `musl`) |
//! | 40 | `pointer_width`, `mutex_size`, `mutex_align`, `lock_kind` | ABI tag and lock backend |
//! | 56 | `value_size`, `value_align`, `type_tag` | identity of `T` |
//! | 80 | `type_version`, `creator_pid` | |
//! | 88 | `pid_namespace`, `created_unix` | where and when it was made |
//! | 104 | `lock_offset`, `lock_size`, `value_offset`, `total_size` | offsets from the start, never pointers |
//! | 136 | `checksum` | FNV-1a 64 of bytes 0..136 |
//! | 144 | `state` | `0` Uninit → `1` Initialising → `2` Ready (Release/Acquire) |
//! | 148 | `notify_seq`, `notify_waiters` | futex words of wait/notify |
//! | 156 | `suspect` | `0` none; `1` the value was left half-updated by a holder that panicked or whose owner-died error was converted away unrepaired: the next locker gets `OwnerDied`; `2` such a guard was dropped unrepaired: `NotRecoverable` (written only under the lock) |
//! | 160 | `handles` | handles attached and not yet dropped normally (a killed process never decrements it: non-zero with nobody attached means a crash; see [below](#the-handles-word)) |
//! | 164 | reserved, zero | |
//! | 168 | `attach_pid_ns` | pid namespace of the processes attached now (re-recorded when the first attaches to an unattached segment; on a System V segment bit 63 marks a record being changed) |
//! | 176 | `boot_id` | `/proc/sys/kernel/random/boot_id` of the boot the lock state belongs to (file-backed segments) |
//! | 192 | `snapshot_offset` | `0`: no snapshots; else the offset of the snapshot area after the value (sequence word, two published copies of the value; see [`SNAPSHOT_ALIGN`]). Written once before Ready; cross-checked with `total_size` |
//! | 200..256 | reserved, zero | |
//!
//! Bytes 0..144 never change after initialisation and are covered by the
//! checksum; bytes 144.. are live words changed by every process, except
//! `snapshot_offset`, written once before Ready and validated against the
//! checksummed `total_size` instead.
//!
//! # The `handles` word
//!
//! It tells a cell whose last users were killed from one whose users all
//! left normally, which the attach lock alone cannot (both leave nobody
//! attached). Every handle — a [`ShmCell`](crate::ShmCell) or a standalone
//! [`Segment`](crate::Segment), which count alike — adds one when it attaches
//! (a creator stores `1` before it publishes Ready; an opener adds one
//! once it holds its attach lock and has mapped the segment) and takes one
//! away when it is dropped, *before* it lets go of its attach lock, or when
//! its process exits normally without dropping it (an `atexit` handler
//! uncounts a handle in a `static` or alive at `process::exit`). Only the
//! process that added one takes it away (a copy of a handle in a forked
//! child is not counted: the child shares the parent's attach lock). A
//! handle whose process is killed (any signal that ends it, `SIGTERM`
//! included, unless the program handles it and exits), `exec`s, or that
//! was leaked with its lock held, never takes its one away.
//!
//! Invariants:
//!
//! * `handles` is never below the number of counted handles attached now
//!   (it may be above: the handles that were never dropped).
//! * A handle that finds itself alone (`F_OFD_GETLK`: no other open file
//!   description holds the attach lock) resets the word with a
//!   compare-and-swap from the value it read: to `1` when it attaches, to
//!   `0` when it is dropped. The count left over by a crash is so forgotten
//!   as soon as the cell is used and left normally again — a cell that
//!   crashed, was reopened and then closed normally reads `0`. (If another
//!   handle attaches between the read and the swap, the swap fails and
//!   the handle adds or subtracts one instead, which can only over-count.)
//! * Read with nobody attached (a cleaner holding the exclusive attach
//!   lock sees it stable): `0` means every user detached normally (a
//!   service that is simply not running: `shmsync clean` keeps it unless
//!   asked); non-zero means the last users crashed
//!   ([`inspect`](crate::inspect): `crashed`).
//!
//! # State machine
//!
//! ```text
//!  (created empty) ──ftruncate+header──▶ Initialising ──value written──▶ Ready
//!        │                                    │
//!        └──────── creator dies ──────────────┴──▶ AbandonedInit (open_or_create re-initialises)
//! ```
//!
//! The creator holds an exclusive open-file-description lock on byte 0 for
//! the whole initialisation and converts it atomically into a shared lock
//! once it has stored `Ready` (Release). An opener takes the shared lock
//! (so it waits for a live creator), then loads `state` (Acquire).
//! A System V segment has no descriptor to lock: its creator claims it with
//! a compare-and-swap of `state` from Uninit to Initialising and stays
//! attached, and the kernel's `shm_nattch` tells a live creator from a dead
//! one (see `segment/sysv.rs`).

use std::sync::atomic::{AtomicU32, AtomicU64};

pub(crate) use super::check::{check_identity, check_prefix, judge_header};
pub(crate) use super::layout::Layout;
pub use super::layout::SegmentSpec;
pub use super::layout::SNAPSHOT_ALIGN;

/// `b"SHMSYNC\0"`: the first eight bytes of every segment this crate makes.
pub const MAGIC: [u8; 8] = *b"SHMSYNC\0";
/// The header format this build reads and writes.
pub const FORMAT_VERSION: u32 = 3;
/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 256;
/// Bytes covered by the checksum (everything before `checksum`).
const CHECKSUMMED: usize = 136;

/// State word: nothing written yet.
pub const STATE_UNINIT: u32 = 0;
/// State word: the creator is writing the lock and the value.
pub const STATE_INITIALISING: u32 = 1;
/// State word: the segment is fully initialised.
pub const STATE_READY: u32 = 2;

/// The header as it lies in shared memory.
///
/// # Invariants
///
/// * Bytes `0..144` are written once, before `state` becomes
///   [`STATE_READY`], and are never written again.
/// * `state` only moves forward (Uninit → Initialising → Ready), except that
///   a process that takes over an abandoned initialisation (holding the
///   exclusive initialisation lock, with no attacher) starts it again.
/// * Offsets are from the start of the mapping; `lock_offset` and
///   `value_offset` are aligned for what lies there, and the value starts
///   on a cache line of its own (`value_offset` a multiple of 64); `total_size` is the
///   length every attacher maps.
#[repr(C)]
pub struct RawHeader {
    pub(crate) magic: [u8; 8],
    pub(crate) format_version: u32,
    pub(crate) header_size: u32,
    pub(crate) arch: [u8; 16],
    pub(crate) libc: [u8; 8],
    pub(crate) pointer_width: u32,
    pub(crate) mutex_size: u32,
    pub(crate) mutex_align: u32,
    pub(crate) lock_kind: u32,
    pub(crate) value_size: u64,
    pub(crate) value_align: u64,
    pub(crate) type_tag: u64,
    pub(crate) type_version: u32,
    pub(crate) creator_pid: u32,
    pub(crate) pid_namespace: u64,
    pub(crate) created_unix: u64,
    pub(crate) lock_offset: u64,
    pub(crate) lock_size: u64,
    pub(crate) value_offset: u64,
    pub(crate) total_size: u64,
    pub(crate) checksum: u64,
    pub(crate) state: AtomicU32,
    pub(crate) notify_seq: AtomicU32,
    pub(crate) notify_waiters: AtomicU32,
    pub(crate) suspect: AtomicU32,
    pub(crate) handles: AtomicU32,
    pub(crate) reserved_word: u32,
    pub(crate) attach_pid_ns: AtomicU64,
    pub(crate) boot_id: [u8; 16],
    pub(crate) snapshot_offset: AtomicU64,
    pub(crate) reserved: [u8; 56],
}

/// `suspect`: nothing to report.
pub(crate) const SUSPECT_NONE: u32 = 0;
/// `suspect`: the next locker gets `OwnerDied`.
pub(crate) const SUSPECT: u32 = 1;
/// `suspect`: not recoverable (an owner-died guard of a suspect value was
/// dropped without `make_consistent`).
pub(crate) const SUSPECT_NOT_RECOVERABLE: u32 = 2;

const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_SIZE);
const _: () = assert!(std::mem::offset_of!(RawHeader, checksum) == CHECKSUMMED);
const _: () = assert!(std::mem::offset_of!(RawHeader, state) == 144);
const _: () = assert!(std::mem::offset_of!(RawHeader, suspect) == 156);
const _: () = assert!(std::mem::offset_of!(RawHeader, handles) == 160);
const _: () = assert!(std::mem::offset_of!(RawHeader, attach_pid_ns) == 168);
const _: () = assert!(std::mem::offset_of!(RawHeader, boot_id) == 176);
const _: () = assert!(std::mem::offset_of!(RawHeader, snapshot_offset) == 192);

/// The offset of a field of [`RawHeader`]: the one definition of the
/// layout, used by `build`, `decode` and every reader of live words.
macro_rules! at {
    ($field:ident) => {
        std::mem::offset_of!($crate::segment::header::RawHeader, $field)
    };
}
pub(crate) use at;

/// Who creates a segment, recorded in its header (the caller reads the
/// process and the clock: this module only formats).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Creator {
    /// `getpid()` of the creator.
    pub(crate) pid: u32,
    /// Inode of the creator's pid namespace (0 if unknown).
    pub(crate) pid_namespace: u64,
    /// Creation time, seconds since the Unix epoch.
    pub(crate) created_unix: u64,
}

/// The lock backend a segment was made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockKind {
    /// A process-shared robust `pthread_mutex_t` in the segment.
    RobustMutex,
    /// `flock` on the segment's file descriptor, with a holder record.
    FileLock,
    /// A named POSIX semaphore `sem.NAME`, with a holder record.
    NamedSemaphore,
    /// A robust reader-writer lock: a robust mutex for writers and reader
    /// slots proven live by open-file-description locks.
    RobustRwLock,
    /// No lock managed by shmsync: the lock area belongs to the user of a
    /// standalone [`Segment`](crate::Segment) (a `ShmCell` refuses it).
    External,
}

impl LockKind {
    /// The number stored in the header.
    pub fn code(self) -> u32 {
        match self {
            LockKind::RobustMutex => 1,
            LockKind::FileLock => 2,
            LockKind::NamedSemaphore => 3,
            LockKind::External => 4,
            LockKind::RobustRwLock => 5,
        }
    }

    /// The kind stored as `code`, if known.
    pub fn from_code(code: u32) -> Option<LockKind> {
        match code {
            1 => Some(LockKind::RobustMutex),
            2 => Some(LockKind::FileLock),
            3 => Some(LockKind::NamedSemaphore),
            4 => Some(LockKind::External),
            5 => Some(LockKind::RobustRwLock),
            _ => None,
        }
    }

    /// A short lower-case name (`robust-mutex`, `flock`, `semaphore`,
    /// `robust-rwlock`).
    pub fn name(self) -> &'static str {
        match self {
            LockKind::RobustMutex => "robust-mutex",
            LockKind::FileLock => "flock",
            LockKind::NamedSemaphore => "semaphore",
            LockKind::External => "external",
            LockKind::RobustRwLock => "robust-rwlock",
        }
    }
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

pub(crate) fn unpadded(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// This build's ABI tag: architecture, C library, pointer width and the
/// size and alignment of `pthread_mutex_t` (opaque, so a segment made by
/// another libc or architecture must be refused).
pub(crate) struct Abi {
    pub(crate) arch: [u8; 16],
    pub(crate) libc: [u8; 8],
    pub(crate) pointer_width: u32,
    pub(crate) mutex_size: u32,
    pub(crate) mutex_align: u32,
}

pub(crate) fn this_abi() -> Abi {
    let libc_name = if cfg!(target_env = "gnu") {
        "gnu"
    } else if cfg!(target_env = "musl") {
        "musl"
    } else {
        "other"
    };
    Abi {
        arch: padded(std::env::consts::ARCH),
        libc: padded(libc_name),
        pointer_width: usize::BITS,
        mutex_size: std::mem::size_of::<crate::sys::pthread::RawMutex>() as u32,
        mutex_align: std::mem::align_of::<crate::sys::pthread::RawMutex>() as u32,
    }
}

/// FNV-1a, 64 bits: small, dependency-free, and enough to catch damage
/// (this is an integrity check, not authentication).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Builds the immutable part of a header for `spec` (state Initialising,
/// checksum filled in).
pub(crate) fn build(spec: &SegmentSpec, layout: &Layout, creator: Creator) -> [u8; HEADER_SIZE] {
    let abi = this_abi();
    let mut b = [0u8; HEADER_SIZE];
    let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
    put(at!(magic), &MAGIC);
    put(at!(format_version), &FORMAT_VERSION.to_ne_bytes());
    put(at!(header_size), &(HEADER_SIZE as u32).to_ne_bytes());
    put(at!(arch), &abi.arch);
    put(at!(libc), &abi.libc);
    put(at!(pointer_width), &abi.pointer_width.to_ne_bytes());
    put(at!(mutex_size), &abi.mutex_size.to_ne_bytes());
    put(at!(mutex_align), &abi.mutex_align.to_ne_bytes());
    put(at!(lock_kind), &spec.lock_kind.code().to_ne_bytes());
    put(at!(value_size), &spec.value_size.to_ne_bytes());
    put(at!(value_align), &spec.value_align.to_ne_bytes());
    put(at!(type_tag), &spec.type_tag.to_ne_bytes());
    put(at!(type_version), &spec.type_version.to_ne_bytes());
    put(at!(creator_pid), &creator.pid.to_ne_bytes());
    put(at!(pid_namespace), &creator.pid_namespace.to_ne_bytes());
    put(at!(created_unix), &creator.created_unix.to_ne_bytes());
    put(at!(lock_offset), &layout.lock_offset.to_ne_bytes());
    put(at!(lock_size), &spec.lock_size.to_ne_bytes());
    put(at!(value_offset), &layout.value_offset.to_ne_bytes());
    put(at!(total_size), &layout.total_size.to_ne_bytes());
    put(at!(snapshot_offset), &layout.snapshot_offset.to_ne_bytes());
    let sum = fnv1a(&b[..CHECKSUMMED]);
    b[at!(checksum)..at!(checksum) + 8].copy_from_slice(&sum.to_ne_bytes());
    b[at!(state)..at!(state) + 4].copy_from_slice(&STATE_INITIALISING.to_ne_bytes());
    b
}

/// A header decoded from bytes: every field, as plain values.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeaderInfo {
    /// Header format version.
    pub format_version: u32,
    /// Target architecture of the creator.
    pub arch: String,
    /// C library of the creator.
    pub libc: String,
    /// Pointer width of the creator, in bits.
    pub pointer_width: u32,
    /// `size_of::<pthread_mutex_t>()` of the creator.
    pub mutex_size: u32,
    /// `align_of::<pthread_mutex_t>()` of the creator.
    pub mutex_align: u32,
    /// The lock backend code (see [`LockKind::from_code`]).
    pub lock_kind_code: u32,
    /// Size of the value type.
    pub value_size: u64,
    /// Alignment of the value type.
    pub value_align: u64,
    /// The user's type tag.
    pub type_tag: u64,
    /// The user's type version.
    pub type_version: u32,
    /// Pid of the creator (in its pid namespace).
    pub creator_pid: u32,
    /// Inode of the creator's pid namespace (0 if unknown).
    pub pid_namespace: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Offset of the lock state.
    pub lock_offset: u64,
    /// Size of the lock state.
    pub lock_size: u64,
    /// Offset of the value.
    pub value_offset: u64,
    /// Total size of the segment.
    pub total_size: u64,
    /// Stored checksum.
    pub checksum: u64,
    /// Whether the stored checksum matches the immutable fields.
    pub checksum_ok: bool,
    /// The state word at the time of reading.
    pub state: u32,
    /// The notify sequence word.
    pub notify_seq: u32,
    /// The number of waiters (threads, in any process) sleeping on the
    /// notify sequence.
    pub notify_waiters: u32,
    /// The live `handles` word: handles attached and not yet dropped
    /// normally. Non-zero while nobody is attached means the last users
    /// crashed (see [the `handles` word](crate::segment::header#the-handles-word)).
    pub handles: u32,
    /// Offset of the snapshot area, `0` if the cell was created without
    /// snapshots ([`CreateOptions::snapshots`](crate::CreateOptions::snapshots)).
    pub snapshot_offset: u64,
}

impl HeaderInfo {
    /// The lock backend, if the code is known.
    pub fn lock_kind(&self) -> Option<LockKind> {
        LockKind::from_code(self.lock_kind_code)
    }
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Decodes a full header without judging it: opening a segment checks the
/// integrity, ABI and identity fields afterwards.
pub fn decode(b: &[u8; HEADER_SIZE]) -> HeaderInfo {
    HeaderInfo {
        format_version: u32_at(b, at!(format_version)),
        arch: unpadded(&b[at!(arch)..at!(libc)]),
        libc: unpadded(&b[at!(libc)..at!(pointer_width)]),
        pointer_width: u32_at(b, at!(pointer_width)),
        mutex_size: u32_at(b, at!(mutex_size)),
        mutex_align: u32_at(b, at!(mutex_align)),
        lock_kind_code: u32_at(b, at!(lock_kind)),
        value_size: u64_at(b, at!(value_size)),
        value_align: u64_at(b, at!(value_align)),
        type_tag: u64_at(b, at!(type_tag)),
        type_version: u32_at(b, at!(type_version)),
        creator_pid: u32_at(b, at!(creator_pid)),
        pid_namespace: u64_at(b, at!(pid_namespace)),
        created_unix: u64_at(b, at!(created_unix)),
        lock_offset: u64_at(b, at!(lock_offset)),
        lock_size: u64_at(b, at!(lock_size)),
        value_offset: u64_at(b, at!(value_offset)),
        total_size: u64_at(b, at!(total_size)),
        checksum: u64_at(b, at!(checksum)),
        checksum_ok: fnv1a(&b[..CHECKSUMMED]) == u64_at(b, at!(checksum)),
        state: u32_at(b, at!(state)),
        notify_seq: u32_at(b, at!(notify_seq)),
        notify_waiters: u32_at(b, at!(notify_waiters)),
        handles: u32_at(b, at!(handles)),
        snapshot_offset: u64_at(b, at!(snapshot_offset)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn spec(value_size: u64, value_align: u64) -> SegmentSpec {
        SegmentSpec {
            value_size,
            value_align,
            type_tag: 0,
            type_version: 0,
            lock_kind: LockKind::External,
            lock_size: 40,
            lock_align: 8,
        }
    }

    #[test]
    fn impossible_layouts_are_unsupported() {
        for (size, align) in [
            (8, 8192),
            (8, 3),
            (8, 0),
            (u64::MAX - 100, 8),
            (isize::MAX as u64, 8),
        ] {
            assert!(
                matches!(spec(size, align).layout(), Err(Error::Unsupported { .. })),
                "size {size} align {align}"
            );
        }
    }

    #[test]
    fn snapshot_area_follows_the_value_aligned_and_sized_for_two_copies() {
        for size in [0u64, 1, 7, 8, 9, 64, 100, 4096] {
            let plain = spec(size, 1).layout().unwrap();
            let l = spec(size, 1).layout_with(true).unwrap();
            assert_eq!(plain.snapshot_offset, 0);
            assert_eq!(
                (l.lock_offset, l.value_offset),
                (plain.lock_offset, plain.value_offset)
            );
            assert_eq!(l.snapshot_offset % SNAPSHOT_ALIGN, 0);
            assert!(l.snapshot_offset >= l.value_offset + size);
            assert!(l.snapshot_offset < l.value_offset + size + SNAPSHOT_ALIGN);
            let copy = size.div_ceil(8) * 8;
            assert_eq!(l.total_size, l.snapshot_offset + SNAPSHOT_ALIGN + 2 * copy);
            assert!(spec(size, 1).could_be_sized(l.total_size));
            assert!(spec(size, 1).could_be_sized(plain.total_size));
        }
    }

    #[test]
    fn layout_aligns_lock_and_value_after_the_header() {
        let l = spec(100, 64).layout().unwrap();
        assert_eq!(l.lock_offset, HEADER_SIZE as u64);
        assert_eq!(l.value_offset % 64, 0);
        assert!(l.value_offset >= l.lock_offset + 40);
        assert_eq!(l.total_size, l.value_offset + 100);
    }

    /// Whatever its alignment, the value never shares the lock word's cache
    /// line (see `layout.rs`).
    #[test]
    fn the_value_starts_on_a_cache_line_of_its_own() {
        for align in [1u64, 2, 4, 8, 16, 64, 128] {
            let l = spec(8, align).layout().unwrap();
            assert_eq!(l.value_offset % 64, 0, "align {align}");
            assert_eq!(l.value_offset % align, 0, "align {align}");
            assert!(l.value_offset >= l.lock_offset + 64, "align {align}");
        }
    }
}
