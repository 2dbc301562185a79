//! Judging a decoded header: the magic and format version of any prefix,
//! then integrity, ABI, layout and identity of a full header.

use super::header::*;
use super::layout::{snapshot_layout, SegmentSpec, PAGE};
use crate::error::Error;

fn incompatible(field: &'static str, expected: impl ToString, found: impl ToString) -> Error {
    Error::Incompatible {
        field,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// Checks the bytes an object starts with (`prefix`, possibly shorter than
/// a header) for the magic and the format version. Used on objects of any
/// length, before anything else.
pub(crate) fn check_prefix(prefix: &[u8]) -> Result<(), Error> {
    if prefix.len() >= 8 && prefix[..8] != MAGIC {
        return Err(incompatible(
            "magic",
            "SHMSYNC",
            prefix[..8].escape_ascii().to_string(),
        ));
    }
    if prefix.len() >= 12 {
        let v = u32_at(prefix, 8);
        if v != FORMAT_VERSION {
            return Err(incompatible("format_version", FORMAT_VERSION, v));
        }
    }
    Ok(())
}

/// Checks a Ready header: integrity, ABI, layout consistency and, when
/// `expected` is given, the value type and lock kind. Does not look at the
/// state word.
pub(crate) fn check_identity(h: &HeaderInfo, expected: Option<&SegmentSpec>) -> Result<(), Error> {
    if !h.checksum_ok {
        return Err(Error::Corrupted {
            what: format!("header checksum mismatch (stored {:#018x})", h.checksum),
        });
    }
    let abi = this_abi();
    let arch = unpadded(&abi.arch);
    let libc_name = unpadded(&abi.libc);
    if h.arch != arch {
        return Err(incompatible("arch", arch, &h.arch));
    }
    if h.libc != libc_name {
        return Err(incompatible("libc", libc_name, &h.libc));
    }
    if h.pointer_width != abi.pointer_width {
        return Err(incompatible(
            "pointer_width",
            abi.pointer_width,
            h.pointer_width,
        ));
    }
    if h.mutex_size != abi.mutex_size {
        return Err(incompatible("mutex_size", abi.mutex_size, h.mutex_size));
    }
    if h.mutex_align != abi.mutex_align {
        return Err(incompatible("mutex_align", abi.mutex_align, h.mutex_align));
    }
    let Some(kind) = h.lock_kind() else {
        return Err(Error::Corrupted {
            what: format!("unknown lock kind {}", h.lock_kind_code),
        });
    };
    // The layout must be exactly what this build would compute from the
    // header's own fields: offsets can then be trusted.
    let own = SegmentSpec {
        value_size: h.value_size,
        value_align: h.value_align,
        type_tag: h.type_tag,
        type_version: h.type_version,
        lock_kind: kind,
        lock_size: h.lock_size,
        lock_align: 1,
    };
    let sane = h.value_align.is_power_of_two()
        && h.value_align <= PAGE
        && h.lock_offset >= HEADER_SIZE as u64
        && h.lock_offset % 8 == 0
        && h.lock_offset
            .checked_add(h.lock_size)
            .is_some_and(|e| e <= h.value_offset)
        && h.value_offset % h.value_align == 0
        && h.value_offset.checked_add(h.value_size).and_then(|end| {
            if h.snapshot_offset == 0 {
                Some(end)
            } else {
                snapshot_layout(end, h.value_size)
                    .filter(|&(offset, _)| offset == h.snapshot_offset)
                    .map(|(_, total)| total)
            }
        }) == Some(h.total_size)
        && own.value_size == h.value_size;
    if !sane {
        return Err(Error::Corrupted {
            what: "inconsistent offsets in header".into(),
        });
    }
    if let Some(want) = expected {
        if kind != want.lock_kind {
            return Err(incompatible(
                "lock_kind",
                want.lock_kind.name(),
                kind.name(),
            ));
        }
        if h.value_size != want.value_size {
            return Err(incompatible("value_size", want.value_size, h.value_size));
        }
        if h.value_align != want.value_align {
            return Err(incompatible("value_align", want.value_align, h.value_align));
        }
        if h.type_tag != want.type_tag {
            return Err(incompatible(
                "type_tag",
                format!("{:#x}", want.type_tag),
                format!("{:#x}", h.type_tag),
            ));
        }
        if h.type_version != want.type_version {
            return Err(incompatible(
                "type_version",
                want.type_version,
                h.type_version,
            ));
        }
        let layout = want.layout()?;
        if layout.lock_offset != h.lock_offset
            || layout.value_offset != h.value_offset
            || want.lock_size != h.lock_size
        {
            return Err(incompatible(
                "layout",
                format!("lock@{} value@{}", layout.lock_offset, layout.value_offset),
                format!("lock@{} value@{}", h.lock_offset, h.value_offset),
            ));
        }
    }
    Ok(())
}

/// What a header read from an object says once its bytes are judged ours.
pub(crate) enum Judged {
    /// Ready, and of the expected identity and size.
    Ready(HeaderInfo),
    /// Not Ready yet: a creator's (alive or dead), `creator_pid` as the
    /// header names it.
    NotReady(u32),
}

/// Judges the first `n` bytes (`bytes`) of an object `size` bytes long,
/// the same way for every kind of segment: our magic and format version,
/// a whole header, the state word, the identity against `expected`, and an
/// object long enough for the layout the header describes.
pub(crate) fn judge_header(
    bytes: &[u8; HEADER_SIZE],
    n: usize,
    size: u64,
    expected: Option<&SegmentSpec>,
) -> Result<Judged, Error> {
    check_prefix(&bytes[..n.min(size as usize)])?;
    if n < HEADER_SIZE {
        return Err(Error::TooSmall {
            size,
            needed: HEADER_SIZE as u64,
        });
    }
    let info = decode(bytes);
    match info.state {
        STATE_READY => {}
        STATE_UNINIT | STATE_INITIALISING => return Ok(Judged::NotReady(info.creator_pid)),
        other => {
            return Err(Error::Corrupted {
                what: format!("unknown state word {other}"),
            })
        }
    }
    check_identity(&info, expected)?;
    if size < info.total_size {
        return Err(Error::TooSmall {
            size,
            needed: info.total_size,
        });
    }
    Ok(Judged::Ready(info))
}
