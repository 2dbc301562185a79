use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
struct Account {
    balance: u64,
}

fn main() {}
