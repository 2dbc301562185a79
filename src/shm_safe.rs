//! `ShmSafe`: the contract for values that may live in shared memory.

/// Types that may live in shared memory and be read by any process, even
/// after a process died half-way through writing them.
///
/// # Safety
///
/// Implement it only for types that are:
///
/// * **plain data**: no pointers, references, `Box`/`Vec`/`String`, file
///   descriptors or anything else whose meaning is private to one process;
/// * **of fixed layout**: `#[repr(C)]` (or `repr(transparent)` over a
///   `ShmSafe` type) so that every process — every build of your program —
///   agrees on it;
/// * **valid for every bit pattern** a process killed mid-write can leave:
///   no `bool`, `char`, enums, references or `NonZero*` (use integers and
///   check them), so that reading after an owner death is never undefined
///   behaviour;
/// * **without meaningful drop**: the crate never drops the shared value.
///
/// ```
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Account { balance: u64, version: u64 }
/// // SAFETY: plain integers, repr(C), every bit pattern valid, no pointers.
/// unsafe impl shmsync::ShmSafe for Account {}
/// ```
///
/// A segment records `size_of`, `align_of` and the two associated constants
/// below; opening it as a type that differs in any of them is
/// [`Error::Incompatible`](crate::Error::Incompatible). Built-in types
/// (integers, floats, arrays) carry distinct tags. **Your own types default
/// to tag 0**, so two of your structs with the same size and alignment can
/// open each other's segments: give each a distinct
/// [`TYPE_TAG`](ShmSafe::TYPE_TAG), and bump
/// [`TYPE_VERSION`](ShmSafe::TYPE_VERSION) when you change a type's meaning
/// without changing its size.
pub unsafe trait ShmSafe: Sized + 'static {
    /// A tag naming the type (any number you choose; default 0).
    const TYPE_TAG: u64 = 0;
    /// The version of the type's meaning (default 0).
    const TYPE_VERSION: u32 = 0;
}

/// FNV-1a of a type's name, at compile time: the tag of a built-in type.
pub(crate) const fn name_tag(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// Built-in types carry distinct tags, so that a segment made for `u64`
/// does not open as `i64` or `f64` (same size and alignment). An atomic
/// integer carries its integer's tag: one process may use `AtomicU64`
/// where another locks a `u64`, the bits mean the same.
macro_rules! shm_safe {
    ($($t:ty => $tag:literal),* $(,)?) => { $(
        // SAFETY: a primitive integer, float or atomic integer: fixed
        // layout, no pointers, every bit pattern valid.
        unsafe impl ShmSafe for $t {
            const TYPE_TAG: u64 = name_tag($tag);
        }
    )* };
}

shm_safe!(
    u8 => "u8",
    u16 => "u16",
    u32 => "u32",
    u64 => "u64",
    u128 => "u128",
    usize => "usize",
    i8 => "i8",
    i16 => "i16",
    i32 => "i32",
    i64 => "i64",
    i128 => "i128",
    isize => "isize",
    f32 => "f32",
    f64 => "f64",
    () => "()",
);
shm_safe!(
    std::sync::atomic::AtomicU8 => "u8",
    std::sync::atomic::AtomicU16 => "u16",
    std::sync::atomic::AtomicU32 => "u32",
    std::sync::atomic::AtomicU64 => "u64",
    std::sync::atomic::AtomicUsize => "usize",
    std::sync::atomic::AtomicI8 => "i8",
    std::sync::atomic::AtomicI16 => "i16",
    std::sync::atomic::AtomicI32 => "i32",
    std::sync::atomic::AtomicI64 => "i64",
    std::sync::atomic::AtomicIsize => "isize",
);

// SAFETY: an array of ShmSafe elements has a fixed layout, no pointers, and
// every bit pattern is valid if it is for each element.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {
    /// The element's tag, marked as an array (`[u64; 1]` is not `u64`; the
    /// length is checked through the size).
    const TYPE_TAG: u64 = T::TYPE_TAG.rotate_left(17) ^ name_tag("[T; N]");
    const TYPE_VERSION: u32 = T::TYPE_VERSION;
}

#[cfg(test)]
mod tests {
    use super::ShmSafe;

    #[test]
    fn same_layout_builtins_have_distinct_tags() {
        let tags = [
            <u64 as ShmSafe>::TYPE_TAG,
            <i64 as ShmSafe>::TYPE_TAG,
            <f64 as ShmSafe>::TYPE_TAG,
            <[u64; 1] as ShmSafe>::TYPE_TAG,
            <[i64; 1] as ShmSafe>::TYPE_TAG,
            <usize as ShmSafe>::TYPE_TAG,
            0, // the default of a user's type without a tag
        ];
        for (i, a) in tags.iter().enumerate() {
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            <std::sync::atomic::AtomicU64 as ShmSafe>::TYPE_TAG,
            <u64 as ShmSafe>::TYPE_TAG,
            "an atomic shares its integer's tag"
        );
    }
}
