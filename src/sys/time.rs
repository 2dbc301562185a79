//! `clock_gettime(CLOCK_MONOTONIC)` (rustix; through the vDSO like glibc's)
//! and deadlines on that clock: absolute ones as a `libc::timespec` for
//! `sem_clockwait` / `pthread_mutex_clocklock` (which stay on libc),
//! relative ones as rustix's `Timespec` for `futex`.

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
        // CLOCK_MONOTONIC always exists on Linux: the call cannot fail.
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        Monotonic {
            nanos: ts.tv_sec.max(0) as u128 * 1_000_000_000 + ts.tv_nsec.max(0) as u128,
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

/// A relative, normalised `Timespec` for `d` (clamped), for `futex`.
pub(crate) fn relative_timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as _,
    }
}
