use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Named {
    name: &'static str,
}

fn main() {}
