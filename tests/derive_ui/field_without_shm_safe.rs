use shmsync::ShmSafe;

// A struct of the user's that does not implement ShmSafe.
#[derive(Clone, Copy)]
#[repr(C)]
struct Inner {
    x: u64,
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Outer(u32, Inner);

fn main() {}
