//! `clock_gettime(CLOCK_MONOTONIC)` and deadlines on that clock.

use std::time::Duration;

/// A point on `CLOCK_MONOTONIC`, the clock every timed wait of the crate
/// uses (the wall clock can jump).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Monotonic {
    nanos: u128,
}

impl Monotonic {
    /// `clock_gettime(CLOCK_MONOTONIC)`.
    pub(crate) fn now() -> Monotonic {
        // SAFETY: all-zero is a valid timespec.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists
        // on Linux, so the call cannot fail.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Monotonic {
            nanos: ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128,
        }
    }

    /// `self + d`, saturating far in the future (`Duration::MAX` is fine).
    pub(crate) fn after(self, d: Duration) -> Monotonic {
        Monotonic {
            nanos: self.nanos.saturating_add(d.as_nanos()),
        }
    }

    /// Time left until `self`, zero if it has passed.
    pub(crate) fn remaining(self) -> Duration {
        let now = Monotonic::now();
        let left = self.nanos.saturating_sub(now.nanos);
        Duration::new(
            (left / 1_000_000_000).min(u64::MAX as u128) as u64,
            (left % 1_000_000_000) as u32,
        )
    }

    /// The absolute, normalised `timespec` (clamped to what `time_t` holds).
    pub(crate) fn to_timespec(self) -> libc::timespec {
        let secs = (self.nanos / 1_000_000_000).min(libc::time_t::MAX as u128);
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: (self.nanos % 1_000_000_000) as _,
        }
    }
}

/// A relative, normalised `timespec` for `d` (clamped).
pub(crate) fn relative_timespec(d: Duration) -> libc::timespec {
    let secs = d.as_secs().min(libc::time_t::MAX as u64);
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    }
}
