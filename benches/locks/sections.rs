//! The table's sections (what each measures, in which unit), the names of
//! the rows that more than one place refers to (baselines, targets), and
//! the operation counts of the cross-process rows.

use crate::harness::{Better, Section};

pub static UNCONTENDED: Section = Section {
    id: "uncontended",
    title: "Uncontended lock + increment + unlock, one process",
    unit: "ns/op",
    better: Better::Lower,
};
pub static CONTENDED: Section = Section {
    id: "contended",
    title: "Two processes contending, pinned to two CPUs: each N x (lock, increment, unlock), counter checked = 2N; [in] = the counter is in the cell (ShmCell: its value, on the cache line after the lock word; raw mutex: the same place), [out] = it lives in a mapping of its own",
    unit: "Mlock/s",
    better: Better::Higher,
};
pub static HANDOVERS: Section = Section {
    id: "handovers",
    title: "Contention probe, same runs as above: lock hand-overs between the two processes",
    unit: "per 1000 locks",
    better: Better::Lower,
};
pub static SLEEPS: Section = Section {
    id: "sleeps",
    title: "Contention probe, same runs as above: voluntary context switches (futex sleeps)",
    unit: "per 1000 locks",
    better: Better::Lower,
};
pub static CONTENDED_READ: Section = Section {
    id: "contended-read",
    title: "Two processes reading, pinned to two CPUs: each N x (read lock, load the value, unlock), no writer; the mutex row takes its lock to read",
    unit: "Mread/s",
    better: Better::Higher,
};
pub static HANDOFF_1CPU: Section = Section {
    id: "handoff-1cpu",
    title: "Hand-off round trip between two processes pinned to ONE CPU",
    unit: "us/round trip",
    better: Better::Lower,
};
pub static HANDOFF_2CPU: Section = Section {
    id: "handoff-2cpu",
    title: "Hand-off round trip between two processes pinned to TWO CPUs",
    unit: "us/round trip",
    better: Better::Lower,
};
pub static ATTACH: Section = Section {
    id: "attach",
    title: "Attach: open an existing object (handle kept, closed untimed)",
    unit: "us/open",
    better: Better::Lower,
};
pub static SCALING: Section = Section {
    id: "scaling",
    title: "Contended throughput by process count (pinned round-robin to the two CPUs: 4 and 8 are oversubscribed)",
    unit: "Mlock/s",
    better: Better::Higher,
};
pub static LAT_P99: Section = Section {
    id: "latency-p99",
    title: "One process's lock + increment + unlock call while P processes contend [in], 99th percentile",
    unit: "us",
    better: Better::Lower,
};
pub static LAT_MAX: Section = Section {
    id: "latency-max",
    title: "The same runs, longest call",
    unit: "us",
    better: Better::Lower,
};
pub static VALUE_SIZE: Section = Section {
    id: "value-size",
    title: "Lock + write one byte + unlock, by value size",
    unit: "ns/op",
    better: Better::Lower,
};

// --------------------------------------------------------------- row names

pub const CELL_LOCK: &str = "ShmCell<RobustMutex>::lock";
pub const CELL_TRY: &str = "ShmCell<RobustMutex>::try_lock";
pub const RM_LOCK: &str = "RobustMutex::lock (standalone)";
pub const RAW_ROBUST: &str = "raw robust pshared pthread mutex";
pub const RAW_TRYLOCK: &str = "raw robust pthread_mutex_trylock";
pub const RAW_CLOCKLOCK: &str = "raw robust clocklock(MONOTONIC, 0 s)";
pub const RAW_PLAIN: &str = "raw pshared pthread mutex (not robust)";
pub const RAW_SYNC: &str = "raw_sync 0.1 locks::Mutex";
pub const PROCESS_SYNC: &str = "process-sync 0.2 SharedMutex";
pub const RAW_FLOCK: &str = "raw flock(LOCK_EX) + flock(LOCK_UN)";
pub const RAW_SEM: &str = "raw named sem_wait + sem_post";
pub const CELL_SEM: &str = "ShmCell<NamedSemaphore>::lock";
pub const SEM_PAIR: &str = "raw semaphore pair (sem_post/sem_wait)";
pub const PIPE_PAIR: &str = "raw pipe pair (1 byte each way)";
pub const CONDVAR: &str = "raw pshared mutex + condvar";
pub const FUTEX: &str = "raw futex (FUTEX_WAIT/FUTEX_WAKE)";
pub const CELL_RW_READ: &str = "ShmCell<RobustRwLock>::read";
pub const CELL_RW_READ_LOAD: &str = "ShmCell<RobustRwLock>::read (load only)";
pub const CELL_RW_LOCK: &str = "ShmCell<RobustRwLock>::lock";
pub const RAW_RWLOCK_READ: &str = "raw pshared pthread rwlock read";
pub const RAW_RWLOCK_READ_LOAD: &str = "raw pshared pthread rwlock read (load only)";
pub const CELL_OPEN: &str = "ShmCell<u64>::open";
pub const CELL_OPEN_BIG: &str = "ShmCell<[u8; 64 MiB]>::open";
pub const RAW_ATTACH: &str = "raw shm_open + fstat + mmap";
pub const CELL_4K: &str = "ShmCell<[u8; 4 KiB]>::lock";
pub const CELL_64M: &str = "ShmCell<[u8; 64 MiB]>::lock";

/// Operations per contended measurement (split among the processes).
pub const LOCK_OPS: u64 = 2_000_000;
/// Operations per latency measurement (child 0 keeps every call's time).
pub const LATENCY_OPS: u64 = 1_000_000;
/// The same for `flock` (about 1 µs each when contended).
pub const FLOCK_OPS: u64 = 100_000;
/// The same for a semaphore used as a lock.
pub const SEM_OPS: u64 = 1_000_000;
/// Reads per contended read measurement of the locks whose readers share
/// a cache line (the mutex, the raw rwlock: some 40 M/s, about 0.25 s).
pub const READ_OPS: u64 = 10_000_000;
/// The same for `RobustRwLock`, whose readers share no line written to
/// (some 300 M/s: four times as many reads for a span of about 0.1 s).
pub const RWLOCK_READ_OPS: u64 = 40_000_000;
/// Round trips per hand-off measurement (halved on two CPUs, where a
/// cross-CPU wake-up costs several times more).
pub const HANDOFFS: u64 = 20_000;

/// Size of the big value.
pub const BIG: usize = 64 << 20;
pub type Big = [u8; BIG];
