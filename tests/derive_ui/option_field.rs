use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Slot {
    owner: Option<u32>,
}

fn main() {}
