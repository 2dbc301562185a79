use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
#[shm(version = 4294967296)]
struct TooNew {
    value: u64,
}

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
#[shm(name = "x")]
struct Unknown {
    value: u64,
}

fn main() {}
