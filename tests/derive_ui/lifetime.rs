use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Borrowed<'a> {
    value: u64,
    marker: std::marker::PhantomData<&'a u64>,
}

fn main() {}
