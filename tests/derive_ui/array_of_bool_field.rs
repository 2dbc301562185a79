use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Bits {
    bits: [bool; 64],
}

fn main() {}
