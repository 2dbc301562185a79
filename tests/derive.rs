//! `#[derive(ShmSafe)]`: the tags and padding it computes, and derived types
//! in real cells. (What it refuses is in `derive_ui.rs`.)

// The derived constants are what these tests check: runtime asserts report
// each failure by name, and let the other tests run.
#![allow(clippy::assertions_on_constants)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shmsync::{Error, ShmCell, ShmSafe};

/// A unique cell name, unlinked on drop (even when the test fails).
struct CellName(String);

impl CellName {
    fn new() -> CellName {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        CellName(format!("/shmsync-derive-{}-{n}", std::process::id()))
    }
}

impl Drop for CellName {
    fn drop(&mut self) {
        let _ = ShmCell::<u8>::unlink(&self.0);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, ShmSafe)]
#[repr(C)]
struct Position {
    x: u64,
    y: u64,
}

/// Same size, alignment and field types as `Position`, another name.
#[derive(Clone, Copy, Debug, PartialEq, ShmSafe)]
#[repr(C)]
struct Velocity {
    x: u64,
    y: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, ShmSafe)]
#[repr(C)]
#[shm(version = 2)]
struct Versioned {
    x: u64,
    y: u64,
}

/// The same name and layout in three modules: the field names differ in
/// `renamed`; `moved` is a copy (the tag ignores the module path).
mod renamed {
    #[derive(Clone, Copy, shmsync::ShmSafe)]
    #[repr(C)]
    pub struct Position {
        pub col: u64,
        pub row: u64,
    }
}
mod moved {
    #[derive(Clone, Copy, shmsync::ShmSafe)]
    #[repr(C)]
    pub struct Position {
        pub x: u64,
        pub y: u64,
    }
}
mod swapped {
    #[derive(Clone, Copy, shmsync::ShmSafe)]
    #[repr(C)]
    pub struct Position {
        pub y: u64,
        pub x: u64,
    }
}
mod signed {
    #[derive(Clone, Copy, shmsync::ShmSafe)]
    #[repr(C)]
    pub struct Position {
        pub x: i64,
        pub y: u64,
    }
}

/// A field type's version is part of the outer type's tag.
mod inner_v1 {
    #[derive(Clone, Copy, shmsync::ShmSafe)]
    #[repr(C)]
    #[shm(version = 1)]
    pub struct Inner(pub u32);
    #[derive(Clone, Copy, shmsync::ShmSafe)]
    #[repr(C)]
    pub struct Outer {
        pub inner: Inner,
    }
}
mod inner_v2 {
    #[derive(Clone, Copy, shmsync::ShmSafe)]
    #[repr(C)]
    #[shm(version = 2)]
    pub struct Inner(pub u32);
    #[derive(Clone, Copy, shmsync::ShmSafe)]
    #[repr(C)]
    pub struct Outer {
        pub inner: Inner,
    }
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Pair<T, const N: usize> {
    head: T,
    rest: [T; N],
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(transparent)]
struct Meters(u64);

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
#[shm(tag = 0x5eed, version = 9)]
struct Tagged {
    value: u32,
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Gap {
    small: u8,
    big: u32,
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct ContainsGap {
    gaps: [Gap; 2],
    tail: u64,
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C, align(16))]
struct Aligned {
    value: u64,
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Tight {
    a: u32,
    b: [u8; 4],
    c: f64,
    d: (),
}

#[derive(ShmSafe)]
#[repr(C)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU32,
    r#type: u32,
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Empty;

#[derive(Clone, Copy)]
#[repr(C)]
struct HandWritten {
    x: u64,
    y: u64,
}
// SAFETY: integers only, repr(C), every bit pattern valid.
unsafe impl ShmSafe for HandWritten {}

/// The derived tags are constants: usable where a constant is required.
const POSITION_TAG: u64 = Position::TYPE_TAG;
const _: () = assert!(!Position::HAS_PADDING);

#[test]
fn same_layout_different_names_get_different_tags() {
    assert_eq!(size_of::<Position>(), size_of::<Velocity>());
    assert_eq!(align_of::<Position>(), align_of::<Velocity>());
    assert_ne!(Position::TYPE_TAG, Velocity::TYPE_TAG);
    assert_ne!(POSITION_TAG, HandWritten::TYPE_TAG);
    assert_ne!(Position::TYPE_TAG, 0);
}

#[test]
fn field_names_order_and_types_change_the_tag() {
    let tags = [
        Position::TYPE_TAG,
        renamed::Position::TYPE_TAG,
        swapped::Position::TYPE_TAG,
        signed::Position::TYPE_TAG,
    ];
    for (i, a) in tags.iter().enumerate() {
        for b in &tags[i + 1..] {
            assert_ne!(a, b, "tags {tags:x?}");
        }
    }
}

#[test]
fn the_module_path_is_not_part_of_the_tag() {
    assert_eq!(Position::TYPE_TAG, moved::Position::TYPE_TAG);
}

#[test]
fn a_field_types_version_changes_the_outer_tag() {
    assert_eq!(inner_v1::Inner::TYPE_TAG, inner_v2::Inner::TYPE_TAG);
    assert_ne!(inner_v1::Inner::TYPE_VERSION, inner_v2::Inner::TYPE_VERSION);
    assert_ne!(inner_v1::Outer::TYPE_TAG, inner_v2::Outer::TYPE_TAG);
}

#[test]
fn version_and_tag_options() {
    assert_eq!(Position::TYPE_VERSION, 0);
    assert_eq!(Versioned::TYPE_VERSION, 2);
    assert_eq!(Tagged::TYPE_TAG, 0x5eed);
    assert_eq!(Tagged::TYPE_VERSION, 9);
}

#[test]
fn generic_instances_get_their_parameters_tags() {
    assert_ne!(<Pair<u32, 3>>::TYPE_TAG, <Pair<i32, 3>>::TYPE_TAG);
    assert_ne!(<Pair<u32, 3>>::TYPE_TAG, <Pair<u32, 2>>::TYPE_TAG);
    assert_ne!(<Pair<Position, 1>>::TYPE_TAG, <Pair<Velocity, 1>>::TYPE_TAG);
}

#[test]
fn a_transparent_newtype_is_not_its_field() {
    assert_eq!(size_of::<Meters>(), size_of::<u64>());
    assert_ne!(Meters::TYPE_TAG, u64::TYPE_TAG);
    assert!(!Meters::HAS_PADDING);
}

#[test]
fn padding_is_computed() {
    // Built-in types and arrays of them have none.
    assert!(!u8::HAS_PADDING);
    assert!(!f64::HAS_PADDING);
    assert!(!AtomicU64::HAS_PADDING);
    assert!(!<[u16; 3]>::HAS_PADDING);
    // Hand-written impls answer the conservative default.
    assert!(HandWritten::HAS_PADDING);
    // Derived types: exact.
    assert!(
        !Tight::HAS_PADDING,
        "u32 + [u8; 4] + f64 + () fill 16 bytes"
    );
    assert!(!Counters::HAS_PADDING);
    assert!(!Empty::HAS_PADDING);
    assert!(!<Pair<u8, 3>>::HAS_PADDING);
    assert!(Gap::HAS_PADDING, "3 bytes between u8 and u32");
    assert!(<[Gap; 2]>::HAS_PADDING);
    assert!(ContainsGap::HAS_PADDING, "a field with padding");
    assert!(
        Aligned::HAS_PADDING,
        "8 bytes after the u64 up to align(16)"
    );
    assert!(
        !<Pair<u64, 0>>::HAS_PADDING,
        "a zero-length array adds nothing"
    );
}

/// The tag scheme, written out independently of the crate: FNV-1a 64 over
/// the marker, then length-prefixed strings and little-endian `u64`s. It is
/// part of the segment format, so a change to it must be deliberate.
#[test]
fn the_tag_follows_the_documented_scheme() {
    fn num(bytes: &mut Vec<u8>, v: u64) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    fn string(bytes: &mut Vec<u8>, s: &str) {
        num(bytes, s.len() as u64);
        bytes.extend_from_slice(s.as_bytes());
    }
    let mut bytes = b"shmsync derive tag v1".to_vec();
    string(&mut bytes, "Gap");
    for (name, offset, size, tag) in [
        ("small", std::mem::offset_of!(Gap, small), 1, u8::TYPE_TAG),
        ("big", std::mem::offset_of!(Gap, big), 4, u32::TYPE_TAG),
    ] {
        string(&mut bytes, name);
        num(&mut bytes, offset as u64);
        num(&mut bytes, size);
        num(&mut bytes, tag);
        num(&mut bytes, 0); // the field type's version
    }
    num(&mut bytes, size_of::<Gap>() as u64);
    num(&mut bytes, align_of::<Gap>() as u64);
    let mut fnv1a = 0xcbf2_9ce4_8422_2325_u64;
    for b in &bytes {
        fnv1a ^= u64::from(*b);
        fnv1a = fnv1a.wrapping_mul(0x0100_0000_01b3);
    }
    assert_eq!(Gap::TYPE_TAG, fnv1a);
}

#[test]
fn a_derived_cell_round_trips() {
    let name = CellName::new();
    let created = ShmCell::<Position>::create(&name.0, Position { x: 3, y: 4 }).unwrap();
    let opened = ShmCell::<Position>::open(&name.0).unwrap();
    assert_eq!(opened.info().type_tag, Position::TYPE_TAG);
    {
        let mut guard = opened.lock().unwrap();
        assert_eq!(*guard, Position { x: 3, y: 4 });
        guard.y = 40;
    }
    assert_eq!(*created.lock().unwrap(), Position { x: 3, y: 40 });
}

#[test]
fn a_cell_of_one_derived_type_does_not_open_as_another() {
    let name = CellName::new();
    let _cell = ShmCell::<Position>::create(&name.0, Position { x: 1, y: 2 }).unwrap();
    match ShmCell::<Velocity>::open(&name.0) {
        Err(Error::Incompatible { field, .. }) => assert_eq!(field, "type_tag"),
        other => panic!("opened a Position cell as Velocity: {other:?}"),
    }
    match ShmCell::<Versioned>::open(&name.0) {
        Err(Error::Incompatible { field, .. }) => assert_eq!(field, "type_tag"),
        other => panic!("opened a Position cell as Versioned: {other:?}"),
    }
    match ShmCell::<HandWritten>::open(&name.0) {
        Err(Error::Incompatible { field, .. }) => assert_eq!(field, "type_tag"),
        other => panic!("opened a Position cell as HandWritten: {other:?}"),
    }
    // The same layout under the same name elsewhere opens it.
    let moved = ShmCell::<moved::Position>::open(&name.0).unwrap();
    assert_eq!(moved.lock().unwrap().y, 2);
}

#[test]
fn a_version_bump_does_not_open_the_old_cell() {
    mod v2 {
        #[derive(Clone, Copy, shmsync::ShmSafe)]
        #[repr(C)]
        #[shm(version = 3)]
        pub struct Versioned {
            pub x: u64,
            pub y: u64,
        }
    }
    let name = CellName::new();
    let _cell = ShmCell::<Versioned>::create(&name.0, Versioned { x: 1, y: 2 }).unwrap();
    assert_eq!(Versioned::TYPE_TAG, v2::Versioned::TYPE_TAG);
    match ShmCell::<v2::Versioned>::open(&name.0) {
        Err(Error::Incompatible { field, .. }) => assert_eq!(field, "type_version"),
        other => panic!("opened a version 2 cell as version 3: {other:?}"),
    }
}

/// `#[shm(crate = "...")]` for a crate that reaches shmsync by another path.
mod reexport {
    pub use shmsync as shm_again;

    #[derive(Clone, Copy, shm_again::ShmSafe)]
    #[repr(C)]
    #[shm(crate = "crate::reexport::shm_again")]
    pub struct ViaReexport {
        pub value: u64,
    }
}

#[test]
fn the_crate_path_can_be_given() {
    assert_ne!(reexport::ViaReexport::TYPE_TAG, 0);
    assert!(!reexport::ViaReexport::HAS_PADDING);
}
