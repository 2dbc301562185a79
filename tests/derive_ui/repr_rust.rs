use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(Rust, align(8))]
struct Account {
    balance: u64,
}

fn main() {}
