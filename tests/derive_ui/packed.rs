use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C, packed)]
struct Record {
    kind: u8,
    value: u64,
}

fn main() {}
