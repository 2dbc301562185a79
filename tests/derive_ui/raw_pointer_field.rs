use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Node {
    value: u64,
    next: *mut Node,
}

fn main() {}
