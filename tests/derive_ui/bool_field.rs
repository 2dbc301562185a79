use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Flags {
    count: u32,
    ready: bool,
}

fn main() {}
