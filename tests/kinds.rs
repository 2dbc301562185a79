//! Where the value lives: values bigger than the stack (created zeroed or
//! in place), memfd cells (sealed, inherited or passed over a Unix socket)
//! and file-backed cells (reboot recovery, flush).
//!
//! Default libtest harness; other processes are this binary re-run by
//! `shmsync::testing::child!`.

use shmsync::testing::{self, TestName};
use shmsync::{CreateOptions, ShmCell, ShmSafe};

/// 64 MiB: far more than the 64 KiB stacks the tests run these paths on.
const BIG: usize = 64 << 20;
const SMALL_STACK: usize = 64 << 10;

#[repr(C)]
struct Big {
    seq: u64,
    bytes: [u8; BIG],
}
// SAFETY: integers only, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Big {
    const TYPE_TAG: u64 = 0xb16;
}

/// Runs `f` on a thread with a 64 KiB stack: building a `Big` there would
/// overflow it (and abort the process).
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn pattern(i: usize, seq: u64) -> u8 {
    (i as u64 ^ (i as u64 >> 8) ^ seq) as u8
}

#[test]
fn big_value_created_zeroed_written_and_opened_on_a_small_stack() {
    let other = testing::child!(|ctx| {
        let name = ctx.arg(0).to_string();
        on_small_stack(move || {
            let cell = ShmCell::<Big>::open(&name).unwrap();
            let mut g = cell.lock().unwrap();
            assert_eq!(g.seq, 1);
            for i in (0..BIG).step_by(4093) {
                assert_eq!(g.bytes[i], pattern(i, 1), "byte {i}");
            }
            g.seq = 2;
            for i in (0..BIG).step_by(4093) {
                g.bytes[i] = pattern(i, 2);
            }
        });
    });
    let name = TestName::new("big");
    let n = name.as_str().to_string();
    let cell = on_small_stack(move || {
        let cell = ShmCell::<Big>::create_zeroed(&n).unwrap();
        {
            let mut g = cell.lock().unwrap();
            assert_eq!(g.seq, 0);
            assert!(g.bytes.iter().step_by(4093).all(|&b| b == 0));
            g.seq = 1;
            for i in (0..BIG).step_by(4093) {
                g.bytes[i] = pattern(i, 1);
            }
        }
        cell
    });
    other.arg(&name).run().unwrap();
    let g = cell.lock().unwrap();
    assert_eq!(g.seq, 2);
    for i in (0..BIG).step_by(4093) {
        assert_eq!(g.bytes[i], pattern(i, 2), "byte {i}");
    }
    drop(g);
    drop(cell);
    ShmCell::<Big, shmsync::RobustMutex>::unlink(&name).unwrap();
}

#[test]
fn big_value_initialised_in_place_and_opened_or_created_on_a_small_stack() {
    let name = TestName::new("bigip");
    let n = name.as_str().to_string();
    let calls = on_small_stack(move || {
        let mut calls = 0;
        let a = ShmCell::<Big>::open_or_create_in_place(&n, &CreateOptions::default(), |v| {
            calls += 1;
            v.seq = 7;
            v.bytes[BIG - 1] = 9;
        })
        .unwrap();
        // Opened this time: the closure is not called again.
        let b = ShmCell::<Big>::open_or_create_in_place(&n, &CreateOptions::default(), |_| {
            calls += 100;
        })
        .unwrap();
        let z = ShmCell::<Big>::open_or_create_zeroed(&n).unwrap();
        let g = z.lock().unwrap();
        assert_eq!((g.seq, g.bytes[BIG - 1]), (7, 9));
        drop(g);
        drop((a, b, z));
        calls
    });
    assert_eq!(calls, 1);
    ShmCell::<Big>::unlink(&name).unwrap();
    let n = name.as_str().to_string();
    on_small_stack(move || {
        let c = ShmCell::<Big>::create_in_place(&n, &CreateOptions::new().mode(0o640), |v| {
            v.seq = 3;
        })
        .unwrap();
        assert_eq!(c.lock().unwrap().seq, 3);
        assert!(matches!(
            ShmCell::<Big>::create_zeroed(&n),
            Err(shmsync::Error::AlreadyExists { .. })
        ));
    });
    ShmCell::<Big>::unlink(&name).unwrap();
}
