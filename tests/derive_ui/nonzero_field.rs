use shmsync::ShmSafe;
use std::num::NonZeroU32;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Id {
    id: NonZeroU32,
}

fn main() {}
