//! A user's crash-recovery test, written only against the public API, as
//! the "Testing your crash recovery" chapter of `shmsync::testing` shows
//! it. Runs under plain `cargo test` (default harness, parallel threads).

use shmsync::testing::{self, Seen, TestName};
use shmsync::{ShmCell, ShmSafe};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ShmSafe)]
#[repr(C)]
struct Account {
    checking: u64,
    savings: u64,
}

const TOTAL: u64 = 100;

#[test]
fn a_transfer_killed_half_way_is_repaired() {
    // The child's code comes first: the child process runs it, then exits.
    let transfer = testing::child!(|ctx| {
        let cell = ShmCell::<Account>::open(ctx.arg(0)).unwrap();
        let mut acct = cell.lock().unwrap();
        acct.checking -= 10;
        testing::point("after the debit");
        acct.savings += 10;
    });
    // The test: a name removed even if it fails, the cell, the kill.
    let name = TestName::new("bank");
    let cell = ShmCell::<Account>::create(
        &name,
        Account {
            checking: TOTAL,
            savings: 0,
        },
    )
    .unwrap();
    transfer.arg(&name).kill_at("after the debit").unwrap();
    // The repair rolls back a debit that has no credit.
    let seen = testing::recover(&cell, |a| a.checking = TOTAL - a.savings).unwrap();
    assert_eq!(
        seen,
        Seen::OwnerDied {
            found: Account {
                checking: 90,
                savings: 0
            },
            repaired: Account {
                checking: TOTAL,
                savings: 0
            },
        }
    );
}
