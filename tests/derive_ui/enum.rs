use shmsync::ShmSafe;

#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
enum State {
    Idle,
    Busy,
}

fn main() {}
