use shmsync::ShmSafe;

// Every refused field is reported, not only the first.
#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Mixed {
    ok: u64,
    ready: bool,
    initial: char,
    parent: *const Mixed,
}

fn main() {}
