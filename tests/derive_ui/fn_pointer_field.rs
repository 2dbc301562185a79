use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Callback {
    call: fn(u64) -> u64,
}

fn main() {}
