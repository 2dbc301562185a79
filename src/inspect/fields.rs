//! `shmsync inspect`'s explained fields.

use super::Inspection;
use crate::segment::header::{STATE_INITIALISING, STATE_READY, STATE_UNINIT};

impl Inspection {
    /// Every field of the header and of the lock with a one-line
    /// explanation, for `shmsync inspect`.
    pub fn fields(&self) -> Vec<Field> {
        let mut out = Vec::new();
        let mut f = |name: &'static str, value: String, meaning: &'static str| {
            out.push(Field {
                name,
                value,
                meaning,
            })
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        f(
            "name",
            self.name.clone(),
            "the object's name; its file is /dev/shm/NAME",
        );
        f(
            "state",
            self.state.name().into(),
            "what the object is, all things considered",
        );
        if let Some(r) = &self.reason {
            f("reason", r.clone(), "why it is in that state");
        }
        f(
            "stale",
            self.stale.to_string(),
            "whether `shmsync clean` removes it (nobody attached, and it crashed)",
        );
        f(
            "leftover",
            opt(self.leftover.map(|l| l.name().into())),
            "nobody uses it: crashed (removed by clean) or detached normally (kept unless --include-detached)",
        );
        f(
            "size",
            opt(self.size.map(|s| s.to_string())),
            "bytes, from fstat",
        );
        f(
            "uid",
            opt(self.uid.map(|u| u.to_string())),
            "owner, from fstat",
        );
        f(
            "mode",
            opt(self.mode.map(|m| format!("{m:04o}"))),
            "permission bits, from fstat",
        );
        f(
            "attached",
            self.attached.name().into(),
            "who holds the attach lock (OFD lock on byte 0): live handles, a creator, nobody",
        );
        if let Some(h) = &self.header {
            f("magic", "SHMSYNC".into(), "bytes 0..8: made by shmsync");
            f(
                "format_version",
                h.format_version.to_string(),
                "header format (this build reads only its own, segment::header::FORMAT_VERSION)",
            );
            f(
                "arch",
                h.arch.clone(),
                "creator's CPU architecture; must match to open",
            );
            f(
                "libc",
                h.libc.clone(),
                "creator's C library; pthread_mutex_t is libc-specific",
            );
            f(
                "pointer_width",
                h.pointer_width.to_string(),
                "creator's pointer width in bits",
            );
            f(
                "mutex_size",
                h.mutex_size.to_string(),
                "size_of::<pthread_mutex_t>() of the creator",
            );
            f(
                "mutex_align",
                h.mutex_align.to_string(),
                "align_of::<pthread_mutex_t>() of the creator",
            );
            f(
                "lock_kind",
                opt(h.lock_kind().map(|k| k.name().into())),
                "the lock backend guarding the value",
            );
            f(
                "value_size",
                h.value_size.to_string(),
                "size_of::<T>() of the value type",
            );
            f(
                "value_align",
                h.value_align.to_string(),
                "align_of::<T>() of the value type",
            );
            f(
                "type_tag",
                format!("{:#x}", h.type_tag),
                "ShmSafe::TYPE_TAG of the value type",
            );
            f(
                "type_version",
                h.type_version.to_string(),
                "ShmSafe::TYPE_VERSION of the value type",
            );
            f(
                "creator_pid",
                h.creator_pid.to_string(),
                "pid of the process that created it",
            );
            f(
                "pid_namespace",
                h.pid_namespace.to_string(),
                "inode of the creator's pid namespace",
            );
            f(
                "created_unix",
                h.created_unix.to_string(),
                "creation time, seconds since 1970",
            );
            f(
                "age",
                opt(self.age.map(|a| format!("{}s", a.as_secs()))),
                "time since creation",
            );
            f(
                "lock_offset",
                h.lock_offset.to_string(),
                "offset of the lock state",
            );
            f("lock_size", h.lock_size.to_string(), "bytes of lock state");
            f(
                "value_offset",
                h.value_offset.to_string(),
                "offset of the value",
            );
            f(
                "total_size",
                h.total_size.to_string(),
                "bytes every attacher maps",
            );
            f(
                "checksum",
                format!(
                    "{:#018x} ({})",
                    h.checksum,
                    if h.checksum_ok { "ok" } else { "MISMATCH" }
                ),
                "FNV-1a of bytes 0..136",
            );
            f(
                "state_word",
                format!("{} ({})", h.state, state_word_name(h.state)),
                "0 uninit, 1 initialising, 2 ready",
            );
            f(
                "notify_seq",
                h.notify_seq.to_string(),
                "futex word bumped by notify",
            );
            f(
                "notify_waiters",
                h.notify_waiters.to_string(),
                "processes waiting for a notification",
            );
            f(
                "handles",
                h.handles.to_string(),
                "handles attached and not dropped normally; >0 with nobody attached: a crash",
            );
        }
        f(
            "lock_state",
            self.lock.state.name().into(),
            "the lock, read without taking it",
        );
        for w in &self.lock.words {
            f(w.name, format!("{:#x}", w.value), w.meaning);
        }
        let holder = self.lock.holder;
        f(
            "holder_tid",
            opt(holder.and_then(|h| h.tid).map(|t| t.to_string())),
            "thread holding the lock, or that died holding it",
        );
        f(
            "holder_pid",
            opt(holder.and_then(|h| h.pid).map(|p| p.to_string())),
            "its process (robust mutex: from /proc/TID/status)",
        );
        f(
            "holder_alive",
            opt(holder.and_then(|h| h.alive).map(|a| a.to_string())),
            "whether it still runs (flock: still holds the flock)",
        );
        out
    }
}

/// One line of [`Inspection::fields`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's stable name.
    pub name: &'static str,
    /// Its value, formatted.
    pub value: String,
    /// What it means.
    pub meaning: &'static str,
}

fn state_word_name(s: u32) -> &'static str {
    match s {
        STATE_UNINIT => "uninit",
        STATE_INITIALISING => "initialising",
        STATE_READY => "ready",
        _ => "unknown",
    }
}

/// A short, readable description of a cell's value type from its header:
/// the name of a built-in type whose tag and size match (`u64`,
/// `[u32; 4]`), else its size and the first 8 hex digits of its
/// `ShmSafe::TYPE_TAG` (`16 B, tag 1ed6e700`), or `untagged` when the type
/// gave none (tag 0: another type of the same size would open it).
pub fn describe_type(value_size: u64, type_tag: u64) -> String {
    use crate::ShmSafe;
    macro_rules! builtin {
        ($($t:ty),*) => {
            [$((stringify!($t), <$t as ShmSafe>::TYPE_TAG, std::mem::size_of::<$t>() as u64)),*]
        };
    }
    let known = builtin!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);
    for (name, tag, size) in known {
        if tag == type_tag && size == value_size {
            return name.to_string();
        }
        // An array of a built-in: `[T; N]`'s tag is derived from T's.
        let array_tag = tag.rotate_left(17) ^ crate::shm_safe::name_tag("[T; N]");
        if array_tag == type_tag && size != 0 && value_size % size == 0 {
            return format!("[{name}; {}]", value_size / size);
        }
    }
    match type_tag {
        0 => format!("{value_size} B, untagged"),
        t => format!("{value_size} B, tag {:08x}", t >> 32),
    }
}

#[cfg(test)]
mod type_tests {
    use super::describe_type;
    use crate::ShmSafe;

    #[test]
    fn built_in_types_are_named_and_others_described() {
        assert_eq!(describe_type(8, <u64 as ShmSafe>::TYPE_TAG), "u64");
        assert_eq!(describe_type(8, <f64 as ShmSafe>::TYPE_TAG), "f64");
        assert_eq!(
            describe_type(32, <[u64; 4] as ShmSafe>::TYPE_TAG),
            "[u64; 4]"
        );
        assert_eq!(describe_type(24, 0), "24 B, untagged");
        assert_eq!(
            describe_type(24, 0x1ed6_e700_0000_0042),
            "24 B, tag 1ed6e700"
        );
        // A size that does not match the named type's is not that type.
        assert_eq!(
            describe_type(4, <u64 as ShmSafe>::TYPE_TAG),
            format!("4 B, tag {:08x}", <u64 as ShmSafe>::TYPE_TAG >> 32)
        );
    }
}
