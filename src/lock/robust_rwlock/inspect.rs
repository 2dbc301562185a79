//! The robust rwlock read from outside: the writers' mutex as the robust
//! mutex backend reads it, then the `writer` word and the reader slots
//! (`pread`), each slot's token probed with `F_OFD_GETLK`.

use super::layout;
use super::word::{COUNT_MASK, DAMAGED, NOT_RECOVERABLE, PHASE, TOKEN_SHIFT, WAITING, WRITING};
use super::READER_SLOTS;
use crate::lock::describe::{u32_at, LockArea, LockInfo, LockState, LockWord};
use crate::segment::liveness;
use crate::segment::LockKind;

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Reads the mutex words, the `writer` word and the reader slots.
pub(crate) fn describe(area: &LockArea<'_>) -> LockInfo {
    let mut out = crate::lock::robust_mutex::inspect::describe(area);
    out.kind = Some(LockKind::RobustRwLock);
    let Some(b) = area.bytes::<{ layout::SIZE }>() else {
        return out;
    };
    let writer = u64_at(&b, layout::WRITER);
    let (mut readers, mut live_readers, mut slots) = (0u64, 0u64, 0u64);
    for i in 0..READER_SLOTS {
        let w = u64_at(&b, layout::SLOTS + i * layout::SLOT_STRIDE);
        if w == 0 {
            continue;
        }
        slots += 1;
        let count = w & COUNT_MASK;
        readers += count;
        if count != 0 && liveness::is_held(area.fd, w >> TOKEN_SHIFT).unwrap_or(true) {
            live_readers += count;
        }
    }
    out.words.extend([
        LockWord {
            name: "writer_word",
            value: writer,
            meaning: "0 none | token<<2 | 1 waiting for readers, 2 writing, 3 died mid-update (readers get WriterDied); all ones: not recoverable",
        },
        LockWord {
            name: "readers",
            value: readers,
            meaning: "read guards counted in the reader slots (dead handles' included)",
        },
        LockWord {
            name: "live_readers",
            value: live_readers,
            meaning: "read guards of handles whose liveness token is held",
        },
        LockWord {
            name: "reader_slots",
            value: slots,
            meaning: "reader slots claimed, of 64",
        },
        LockWord {
            name: "readers_waiting",
            value: u32_at(&b, layout::RSEQ + layout::WAITERS_IN_WORD).into(),
            meaning: "threads sleeping until the writer word changes (dead sleepers included)",
        },
        LockWord {
            name: "writer_waiting",
            value: u32_at(&b, layout::WSEQ + layout::WAITERS_IN_WORD).into(),
            meaning: "writers sleeping until readers leave (dead sleepers included)",
        },
        LockWord {
            name: "slots_high",
            value: u32_at(&b, layout::HIGH).into(),
            meaning: "one past the highest reader slot ever claimed",
        },
    ]);
    if writer == NOT_RECOVERABLE {
        out.state = LockState::NotRecoverable;
    } else if writer & PHASE == DAMAGED && out.state != LockState::Held {
        out.state = LockState::OwnerDied;
    } else if matches!(out.state, LockState::Free) && live_readers != 0 {
        out.state = LockState::Held;
    } else if out.state == LockState::Free && matches!(writer & PHASE, WAITING | WRITING) {
        // A writer's word with its mutex free: a dead writer (or one
        // between its last two stores).
        out.state = LockState::OwnerDied;
    }
    out
}
