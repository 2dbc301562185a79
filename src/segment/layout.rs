//! Where things lie in a segment: the header, the lock, the value and the
//! snapshot area, from a [`SegmentSpec`].

use super::header::{LockKind, HEADER_SIZE};
use crate::error::Error;

/// What a process expects of a segment: the identity of the value type and
/// the lock backend, and the space the lock needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpec {
    /// `size_of::<T>()`.
    pub value_size: u64,
    /// `align_of::<T>()`.
    pub value_align: u64,
    /// The user's type tag (see [`ShmSafe::TYPE_TAG`](crate::ShmSafe::TYPE_TAG)).
    pub type_tag: u64,
    /// The user's type version (see [`ShmSafe::TYPE_VERSION`](crate::ShmSafe::TYPE_VERSION)).
    pub type_version: u32,
    /// The lock backend.
    pub lock_kind: LockKind,
    /// Bytes of lock state kept in the segment.
    pub lock_size: u64,
    /// Alignment of that lock state.
    pub lock_align: u64,
}

/// The value never shares the lock word's cache line: it starts at a
/// multiple of this. Lockers that spin read the lock word while the holder
/// writes the value; in one line, every such read takes the line the
/// holder is writing from it (false sharing). Measured with
/// `cargo bench --bench locks -- contended scaling` on 2 CPUs: with the
/// counter in the lock's line, two contending processes ran at 1.26–1.39×
/// the raw robust mutex; with it on the next line, 1.60–1.90×. The cost is
/// at most 63 bytes of padding per segment.
pub(crate) const VALUE_LINE: u64 = 64;

/// The offsets a [`SegmentSpec`] lays out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) lock_offset: u64,
    pub(crate) value_offset: u64,
    /// `0` without snapshots.
    pub(crate) snapshot_offset: u64,
    pub(crate) total_size: u64,
}

/// Alignment of the snapshot area (a cache line: the sequence word and the
/// copies do not share a line with the value, which the lock holder
/// writes).
///
/// # Snapshot area
///
/// | offset in the area | what |
/// |---|---|
/// | 0 | sequence word (`u64`): the copy published last is copy `seq % 2` |
/// | 64 | copy 0: `value_size` bytes, rounded up to 8 |
/// | 64 + rounded size | copy 1 |
pub const SNAPSHOT_ALIGN: u64 = 64;

/// Bytes of one published copy of a value of `value_size` bytes (whole
/// 8-byte words: copies are made word by word).
fn snapshot_copy_size(value_size: u64) -> Option<u64> {
    align_up(value_size, 8)
}

/// Bytes of the snapshot area for a value of `value_size` bytes.
fn snapshot_area_size(value_size: u64) -> Option<u64> {
    snapshot_copy_size(value_size)?
        .checked_mul(2)?
        .checked_add(SNAPSHOT_ALIGN)
}

/// Where the snapshot area of a value ending at `value_end` lies, and where
/// the segment ends.
pub(crate) fn snapshot_layout(value_end: u64, value_size: u64) -> Option<(u64, u64)> {
    let offset = align_up(value_end, SNAPSHOT_ALIGN)?;
    Some((offset, offset.checked_add(snapshot_area_size(value_size)?)?))
}

pub(crate) const PAGE: u64 = 4096;

fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v / align * align)
}

impl SegmentSpec {
    /// The layout without a snapshot area.
    pub(crate) fn layout(&self) -> Result<Layout, Error> {
        self.layout_with(false)
    }

    /// Whether a creator of this spec gives its object `size` bytes (with or
    /// without snapshots).
    pub(crate) fn could_be_sized(&self, size: u64) -> bool {
        [false, true]
            .into_iter()
            .any(|s| self.layout_with(s).is_ok_and(|l| l.total_size == size))
    }

    /// The layout, with a snapshot area after the value if `snapshots`.
    pub(crate) fn layout_with(&self, snapshots: bool) -> Result<Layout, Error> {
        for (what, align) in [("value", self.value_align), ("lock", self.lock_align)] {
            if align == 0 || !align.is_power_of_two() || align > PAGE {
                return Err(Error::Unsupported {
                    what: format!("{what} alignment {align} (must be a power of two ≤ {PAGE})"),
                });
            }
        }
        let too_big = || Error::Unsupported {
            what: "value too large for a mapping".into(),
        };
        let lock_offset = align_up(HEADER_SIZE as u64, self.lock_align).ok_or_else(too_big)?;
        let lock_end = lock_offset
            .checked_add(self.lock_size)
            .ok_or_else(too_big)?;
        // The value starts on a cache line of its own (`VALUE_LINE`).
        let value_offset =
            align_up(lock_end, self.value_align.max(VALUE_LINE)).ok_or_else(too_big)?;
        let value_end = value_offset
            .checked_add(self.value_size)
            .ok_or_else(too_big)?;
        let (snapshot_offset, total) = if snapshots {
            snapshot_layout(value_end, self.value_size).ok_or_else(too_big)?
        } else {
            (0, value_end)
        };
        if total > isize::MAX as u64 {
            return Err(too_big());
        }
        Ok(Layout {
            lock_offset,
            value_offset,
            snapshot_offset,
            total_size: total,
        })
    }
}
