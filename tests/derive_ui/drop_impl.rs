use shmsync::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Counter {
    value: u64,
}

impl Drop for Counter {
    fn drop(&mut self) {}
}

fn main() {}
