use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
union Word {
    int: u64,
    float: f64,
}

fn main() {}
