use shmsync::ShmSafe;

// The macro cannot see through an alias; the trait bound still refuses it.
type Flag = bool;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Flags {
    count: u32,
    ready: Flag,
}

fn main() {}
