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
/// [`Error::Incompatible`](crate::Error::Incompatible). Bump
/// [`TYPE_VERSION`](ShmSafe::TYPE_VERSION) when you change a type's meaning
/// without changing its size.
pub unsafe trait ShmSafe: Sized + 'static {
    /// A tag naming the type (any number you choose; default 0).
    const TYPE_TAG: u64 = 0;
    /// The version of the type's meaning (default 0).
    const TYPE_VERSION: u32 = 0;
}

macro_rules! shm_safe {
    ($($t:ty),* $(,)?) => { $(
        // SAFETY: a primitive integer, float or atomic integer: fixed
        // layout, no pointers, every bit pattern valid.
        unsafe impl ShmSafe for $t {}
    )* };
}

shm_safe!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    ()
);
shm_safe!(
    std::sync::atomic::AtomicU8,
    std::sync::atomic::AtomicU16,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicI8,
    std::sync::atomic::AtomicI16,
    std::sync::atomic::AtomicI32,
    std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicIsize,
);

// SAFETY: an array of ShmSafe elements has a fixed layout, no pointers, and
// every bit pattern is valid if it is for each element.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {
    const TYPE_TAG: u64 = T::TYPE_TAG;
    const TYPE_VERSION: u32 = T::TYPE_VERSION;
}
