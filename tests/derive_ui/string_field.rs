use shmsync::ShmSafe;

#[derive(Clone, ShmSafe)]
#[repr(C)]
struct Message {
    id: u64,
    text: String,
}

fn main() {}
