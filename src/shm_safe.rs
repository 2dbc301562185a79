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
/// If you override [`HAS_PADDING`](ShmSafe::HAS_PADDING) with `false`, the
/// type must also have no padding bytes (no byte of it is uninitialised
/// after a typed write).
///
/// # Deriving it (feature `derive`)
///
/// With the `derive` feature, `#[derive(ShmSafe)]` checks these rules at
/// compile time and implements the trait without `unsafe` in your code:
///
/// ```
/// # #[cfg(feature = "derive")] {
/// use shmsync::ShmSafe;
///
/// #[derive(Clone, Copy, ShmSafe)]
/// #[repr(C)]
/// struct Account { balance: u64, version: u32, flags: [u8; 4] }
///
/// #[derive(Clone, Copy, ShmSafe)]
/// #[repr(C)]
/// #[shm(version = 2)] // bump when the meaning changes but not the layout
/// struct Ledger { accounts: [Account; 8], count: u64 }
///
/// assert_ne!(Account::TYPE_TAG, Ledger::TYPE_TAG);
/// assert_eq!(Ledger::TYPE_VERSION, 2);
/// assert!(!Account::HAS_PADDING);
/// # }
/// ```
///
/// The derive **refuses**, each with an error pointing at the culprit:
///
/// * a struct without `#[repr(C)]` or `#[repr(transparent)]`;
/// * `#[repr(packed)]` (`repr(C, packed)`, `packed(N)`): its fields may be
///   unaligned, so references to them — and atomics in them — cannot be
///   used; write explicit padding fields instead (`repr(C, align(N))` is
///   accepted);
/// * enums (a killed writer can leave a discriminant that names no variant)
///   and unions (nothing can check which field is meant);
/// * any field whose type is not `ShmSafe`: `bool`, `char`, references, raw
///   pointers and function pointers are named in the message; others
///   (`Option<T>`, `String`, `Vec<T>`, `NonZeroU32`, a struct of yours
///   without the trait, an alias of `bool`, ...) through the trait bound:
///   "field `x` has type `T`, which cannot live in shared memory", at the
///   field's type (a tuple struct's fields are called `_0`, `_1`, ...);
/// * lifetime parameters (a value in shared memory outlives any borrow);
/// * a `Drop` impl on the type (for a generic type, only where code that
///   makes or opens a cell of it is compiled to machine code: `cargo build`
///   reports it, `cargo check` does not).
///
/// Type parameters are **given** a `ShmSafe` bound (as serde's derives do):
/// `Pair<T>` is `ShmSafe` when `T` is, and `Pair<u32>` and `Pair<i32>` get
/// different tags.
///
/// The derive computes:
///
/// * [`TYPE_TAG`](ShmSafe::TYPE_TAG): an FNV-1a hash, at compile time, of
///   the type's name (not its module path: moving a type between modules
///   keeps its segments), and for each field its name, offset, size, and
///   its type's own `TYPE_TAG` and `TYPE_VERSION`, and the type's size and
///   alignment. Two structs of the same size and alignment but different
///   names or fields no longer open each other's segments.
///   `#[shm(tag = N)]` sets the tag yourself (for example to keep the tag
///   of a type that was implemented by hand).
/// * [`TYPE_VERSION`](ShmSafe::TYPE_VERSION): 0, or `#[shm(version = N)]`.
/// * [`HAS_PADDING`](ShmSafe::HAS_PADDING): `false` exactly when the
///   fields' sizes add up to the type's size and no field has padding.
///
/// `#[shm(crate = "path")]` names the `shmsync` crate when it is not
/// `::shmsync` (a re-export).
///
/// Without the feature, implement the trait yourself:
///
/// ```
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Account { balance: u64, version: u64 }
/// // SAFETY: plain integers, repr(C), every bit pattern valid, no pointers.
/// unsafe impl shmsync::ShmSafe for Account {
///     const TYPE_TAG: u64 = 0x4163_636f_756e_7401; // any number unique to this type
/// }
/// ```
///
/// A segment records `size_of`, `align_of` and the tag and version
/// constants; opening it as a type that differs in any of them is
/// [`Error::Incompatible`](crate::Error::Incompatible). Built-in types
/// (integers, floats, arrays) carry distinct tags. **A hand-written impl
/// defaults to tag 0**, so two such structs with the same size and
/// alignment can open each other's segments: give each a distinct
/// [`TYPE_TAG`](ShmSafe::TYPE_TAG) (or derive it), and bump
/// [`TYPE_VERSION`](ShmSafe::TYPE_VERSION) when you change a type's meaning
/// without changing its size.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot live in shared memory: it does not implement `ShmSafe`",
    label = "not `ShmSafe`",
    note = "values in shared memory must be plain data of fixed layout, valid for every bit pattern: integers, floats, atomic integers, arrays of them, and `#[derive(ShmSafe)]` `#[repr(C)]` structs of them"
)]
pub unsafe trait ShmSafe: Sized + 'static {
    /// A tag naming the type (any number you choose; default 0; derived
    /// from the name and layout by `#[derive(ShmSafe)]`).
    const TYPE_TAG: u64 = 0;
    /// The version of the type's meaning (default 0).
    const TYPE_VERSION: u32 = 0;
    /// Whether the type may contain padding bytes (uninitialised after a
    /// typed write, so never to be read as data, e.g. copied word by word).
    ///
    /// Defaults to `true`, the conservative answer, for hand-written impls;
    /// `false` for integers, floats, atomic integers and arrays of types
    /// without padding; computed by `#[derive(ShmSafe)]`.
    const HAS_PADDING: bool = true;
}

/// The FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of `bytes`, continuing from state `h`, at compile time.
const fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// FNV-1a of a type's name, at compile time: the tag of a built-in type.
pub(crate) const fn name_tag(name: &str) -> u64 {
    fnv1a(FNV_OFFSET, name.as_bytes())
}

/// Support for the code `#[derive(ShmSafe)]` generates; not a public API
/// (re-exported as `shmsync::__private`).
pub mod derive_support {
    use super::{fnv1a, ShmSafe, FNV_OFFSET};

    /// What the derive reads of a field's type, available only when the
    /// type is `ShmSafe`. `Name` is a unit struct named after the field, so
    /// that the error for a field that is not `ShmSafe` names it. Every use
    /// in the generated code is `<Ty as Field<Name>>::…`: one obligation per
    /// field, hence one error.
    #[diagnostic::on_unimplemented(
        message = "field `{Name}` has type `{Self}`, which cannot live in shared memory: it does not implement `ShmSafe`",
        label = "not `ShmSafe`",
        note = "values in shared memory must be plain data of fixed layout, valid for every bit pattern: integers, floats, atomic integers, arrays of them, and `#[derive(ShmSafe)]` `#[repr(C)]` structs of them"
    )]
    pub trait Field<Name> {
        /// The field type's `TYPE_TAG`.
        const TAG: u64;
        /// The field type's `TYPE_VERSION`.
        const VERSION: u32;
        /// The field type's `HAS_PADDING`.
        const HAS_PADDING: bool;
        /// The field type's size.
        const SIZE: usize;
    }

    impl<T: ShmSafe, Name> Field<Name> for T {
        const TAG: u64 = T::TYPE_TAG;
        const VERSION: u32 = T::TYPE_VERSION;
        const HAS_PADDING: bool = T::HAS_PADDING;
        const SIZE: usize = core::mem::size_of::<T>();
    }

    /// The derived `TYPE_TAG`: FNV-1a 64 over a scheme marker, the type's
    /// name, each field (name, offset, size, tag, version) and the type's
    /// size and alignment. Strings are length-prefixed and numbers written
    /// as little-endian `u64`, so no two different inputs share a byte
    /// string. Changing this changes every derived tag: it is part of the
    /// segment format.
    #[derive(Clone, Copy, Debug)]
    pub struct TagHasher(u64);

    impl TagHasher {
        /// Starts the tag of the type called `type_name`.
        pub const fn new(type_name: &str) -> TagHasher {
            TagHasher(fnv1a(FNV_OFFSET, b"shmsync derive tag v1")).str(type_name)
        }

        const fn u64(self, value: u64) -> TagHasher {
            TagHasher(fnv1a(self.0, &value.to_le_bytes()))
        }

        const fn str(self, s: &str) -> TagHasher {
            let h = self.u64(s.len() as u64);
            TagHasher(fnv1a(h.0, s.as_bytes()))
        }

        /// Adds one field, in declaration order.
        pub const fn field(
            self,
            name: &str,
            offset: usize,
            size: usize,
            tag: u64,
            version: u32,
        ) -> TagHasher {
            self.str(name)
                .u64(offset as u64)
                .u64(size as u64)
                .u64(tag)
                .u64(version as u64)
        }

        /// Ends with the type's size and alignment.
        pub const fn finish(self, size: usize, align: usize) -> u64 {
            self.u64(size as u64).u64(align as u64).0
        }
    }
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
            const HAS_PADDING: bool = false;
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
    /// Elements follow each other without gaps (a size is a multiple of its
    /// alignment): only padding inside `T` counts.
    const HAS_PADDING: bool = T::HAS_PADDING;
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
