use shmsync::{ShmCell, ShmSafe};

// The derive bounds `T: ShmSafe`: `Pair<u32>` is ShmSafe, `Pair<bool>` is not.
#[derive(Clone, Copy, ShmSafe)]
#[repr(C)]
struct Pair<T> {
    a: T,
    b: T,
}

fn open_pair() {
    let _ = ShmCell::<Pair<u32>>::open("/pair-of-u32");
    let _ = ShmCell::<Pair<bool>>::open("/pair-of-bool");
}

fn main() {
    let _ = open_pair;
}
