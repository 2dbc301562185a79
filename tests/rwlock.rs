//! `ShmCell<T, RobustRwLock>` across real processes: the lock × state table
//! of the exclusive side (with the shared side beside it), readers sharing,
//! readers and writers killed holding or waiting, a kill loop, fork.
//!
//! Default libtest harness; other processes are this binary re-run by
//! `shmsync::testing::child!`. The fork test forks inside such a child.

use std::time::{Duration, Instant};

use shmsync::inspect::LockState;
use shmsync::testing::{self, Running, TestName};
use shmsync::{LockError, ReadError, RobustRwLock, ShmCell, ShmGuard, ShmSafe};

/// Two fields a writer changes one after the other (`a` first): a read
/// that sees `a != b` saw a half-done write. `n` counts completed writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Pair {
    a: u64,
    b: u64,
    n: u64,
}
// SAFETY: three integers, repr(C), every bit pattern valid.
unsafe impl ShmSafe for Pair {
    const TYPE_TAG: u64 = 0x5277_1c4e;
}

type Cell = ShmCell<Pair, RobustRwLock>;

const START: Pair = Pair { a: 7, b: 7, n: 0 };
/// `n` of a value repaired by the parent: readers stop when they see it.
const DONE: u64 = u64::MAX;

/// The generous bound for "within a short bound" (the lock itself probes
/// every 50 ms at most; the machine is shared and loaded).
const BOUND: Duration = Duration::from_secs(5);

fn kind<G>(r: &Result<G, LockError<G>>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(e) => e.kind(),
    }
}

fn read_kind<G>(r: &Result<G, ReadError>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(e) => e.kind(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Lock,
    Try,
    Timeout,
}
const OPS: [Op; 3] = [Op::Lock, Op::Try, Op::Timeout];

type Attempt<'a> =
    Result<ShmGuard<'a, Pair, RobustRwLock>, LockError<ShmGuard<'a, Pair, RobustRwLock>>>;

fn attempt(cell: &Cell, op: Op) -> Attempt<'_> {
    match op {
        Op::Lock => cell.lock(),
        Op::Try => cell.try_lock(),
        Op::Timeout => cell.lock_timeout(Duration::from_millis(100)),
    }
}

/// The three read operations, answered as a kind (and the value if Ok).
fn read_op(cell: &Cell, op: Op) -> (&'static str, Option<Pair>) {
    let r = match op {
        Op::Lock => cell.read(),
        Op::Try => cell.try_read(),
        Op::Timeout => cell.read_timeout(Duration::from_millis(100)),
    };
    (read_kind(&r), r.ok().map(|g| *g))
}

/// A child that writes: locks, sets `a = 1` (a half-done write), stops at
/// "half", then sets `b = 1` and releases.
macro_rules! half_writer {
    () => {
        testing::child!("writer", |ctx| {
            let cell = Cell::open(ctx.arg(0)).unwrap();
            let mut g = cell.lock().unwrap();
            g.a = 1;
            testing::point("half");
            g.b = 1;
            g.n += 1;
        })
    };
}

#[test]
fn table_free() {
    let name = TestName::new("rw-free");
    let cell = Cell::create(&name, START).unwrap();
    for op in OPS {
        let r = attempt(&cell, op);
        assert_eq!(kind(&r), "Ok", "{op:?} on a free lock");
        assert_eq!(*r.unwrap(), START);
        assert_eq!(read_op(&cell, op), ("Ok", Some(START)), "read {op:?}");
    }
    // Readers share: two guards of one handle, and one of another handle.
    let other = Cell::open(&name).unwrap();
    let (r1, r2, r3) = (
        cell.read().unwrap(),
        cell.read().unwrap(),
        other.read().unwrap(),
    );
    assert_eq!((*r1, *r2, *r3), (START, START, START));
    assert_eq!(kind(&cell.try_lock()), "WouldBlock", "write while read");
    drop((r1, r2, r3));
    assert_eq!(kind(&cell.try_lock()), "Ok");
}

/// Held by a live process: try_lock → WouldBlock, lock_timeout → TimedOut,
/// the readers likewise; lock and read wait for the release and see the
/// holder's complete write.
#[test]
fn table_held_by_live_process() {
    let writer = half_writer!();
    let name = TestName::new("rw-held");
    let cell = Cell::create(&name, START).unwrap();
    let mut holder = writer.arg(&name).stop_at("half").spawn().unwrap();
    holder.wait_stopped().unwrap();
    assert_eq!(kind(&attempt(&cell, Op::Try)), "WouldBlock");
    assert_eq!(kind(&attempt(&cell, Op::Timeout)), "TimedOut");
    assert_eq!(read_op(&cell, Op::Try), ("WouldBlock", None));
    assert_eq!(read_op(&cell, Op::Timeout), ("TimedOut", None));
    holder.resume().unwrap();
    // Bounded waits stand for lock() and read() here, which wait for the
    // release (a broken lock must fail the test, not hang it).
    let done = Pair { a: 1, b: 1, n: 1 };
    assert_eq!(*cell.read_timeout(BOUND).unwrap(), done);
    let g = cell.lock_timeout(BOUND).unwrap();
    assert_eq!(*g, done);
    drop(g);
    holder.wait().unwrap();
}

/// The holder SIGKILLed mid-write: every op gets OwnerDied with the torn
/// value; readers get WriterDied (never the torn value) until a writer
/// repairs; then everything is Ok again.
#[test]
fn table_holder_killed() {
    let writer = half_writer!();
    for op in OPS {
        let name = TestName::new("rw-died");
        let cell = Cell::create(&name, START).unwrap();
        let ended = writer.arg(&name).kill_at("half").unwrap();
        assert!(ended.killed);
        let info = shmsync::inspect::inspect(&name).unwrap();
        assert_eq!(info.lock.state, LockState::OwnerDied, "{:?}", info.lock);
        for rop in OPS {
            assert_eq!(read_op(&cell, rop), ("WriterDied", None), "read {rop:?}");
        }
        let r = attempt(&cell, op);
        assert_eq!(kind(&r), "OwnerDied", "{op:?} after the holder died");
        let mut g = r.unwrap_err().into_owner_died().unwrap();
        assert_eq!(*g, Pair { a: 1, b: 7, n: 0 }, "the torn value");
        assert!(g.is_inconsistent());
        g.b = g.a;
        g.make_consistent();
        drop(g);
        for rop in OPS {
            assert_eq!(read_op(&cell, rop), ("Ok", Some(Pair { a: 1, b: 1, n: 0 })));
        }
        for op in OPS {
            assert_eq!(kind(&attempt(&cell, op)), "Ok", "{op:?} after the repair");
        }
    }
}

/// An owner-died guard dropped unrepaired: not recoverable for writers and
/// readers, by every op.
#[test]
fn table_not_recoverable() {
    let writer = half_writer!();
    let name = TestName::new("rw-nr");
    let cell = Cell::create(&name, START).unwrap();
    writer.arg(&name).kill_at("half").unwrap();
    let g = cell.lock().unwrap_err().into_owner_died().unwrap();
    drop(g);
    let other = Cell::open(&name).unwrap();
    for c in [&cell, &other] {
        for op in OPS {
            assert_eq!(kind(&attempt(c, op)), "NotRecoverable", "{op:?}");
            assert_eq!(read_op(c, op), ("NotRecoverable", None), "read {op:?}");
        }
    }
}

/// The writer of a cell that died before it announced itself (killed
/// right after `lock()` returned would be the same for readers): the next
/// writer still gets OwnerDied, a try_lock after a timed-out writer too.
#[test]
fn owner_died_survives_a_writer_that_gave_up() {
    let writer = half_writer!();
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let g = cell.read().unwrap();
        testing::point("reading");
        drop(g);
    });
    let name = TestName::new("rw-gaveup");
    let cell = Cell::create(&name, START).unwrap();
    writer.arg(&name).kill_at("half").unwrap();
    // First repair half-way: a reader holds while a writer times out.
    let mut g = cell.lock().unwrap_err().into_owner_died().unwrap();
    g.b = g.a;
    g.make_consistent();
    drop(g);
    let mut r = reader.arg(&name).stop_at("reading").spawn().unwrap();
    r.wait_stopped().unwrap();
    assert_eq!(
        kind(&cell.lock_timeout(Duration::from_millis(50))),
        "TimedOut"
    );
    assert_eq!(kind(&cell.try_lock()), "WouldBlock");
    r.resume().unwrap();
    r.wait().unwrap();
    assert_eq!(kind(&cell.try_lock()), "Ok");
}

/// Four processes hold read guards at the same time; meanwhile a writer's
/// try_lock is WouldBlock (and lock_timeout TimedOut), and another read
/// is Ok.
#[test]
fn four_readers_at_once_block_a_writer() {
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let g = cell.read().unwrap();
        assert_eq!(*g, START);
        testing::point("reading");
        drop(g);
    });
    let name = TestName::new("rw-four");
    let cell = Cell::create(&name, START).unwrap();
    let mut readers: Vec<Running> = (0..4)
        .map(|_| reader.arg(&name).stop_at("reading").spawn().unwrap())
        .collect();
    for r in &mut readers {
        r.wait_stopped().unwrap();
    }
    // All four hold a read guard now.
    assert_eq!(kind(&cell.try_lock()), "WouldBlock");
    assert_eq!(
        kind(&cell.lock_timeout(Duration::from_millis(50))),
        "TimedOut"
    );
    assert_eq!(read_op(&cell, Op::Try), ("Ok", Some(START)));
    let info = shmsync::inspect::inspect(&name).unwrap();
    let word = |n: &str| {
        info.lock
            .words
            .iter()
            .find(|w| w.name == n)
            .map(|w| w.value)
    };
    assert_eq!(word("live_readers"), Some(4), "{:?}", info.lock);
    for r in &mut readers {
        r.resume().unwrap();
    }
    for r in readers {
        r.wait().unwrap();
    }
    assert_eq!(kind(&cell.try_lock()), "Ok");
}

/// Spawns a thread that takes the write lock (bounded by `BOUND`) through
/// its own handle and reports how long after `killed` it got it.
fn waiting_writer(name: &str) -> std::thread::JoinHandle<(&'static str, Instant)> {
    let name = name.to_string();
    std::thread::spawn(move || {
        let cell = Cell::open(&name).unwrap();
        let r = cell.lock_timeout(BOUND * 2);
        (kind(&r), Instant::now())
    })
}

/// Polls (bounded) until a writer is announced: a try_read answers
/// WouldBlock.
fn until_writer_announced(cell: &Cell) {
    let deadline = Instant::now() + BOUND;
    while read_kind(&cell.try_read()) == "Ok" {
        assert!(
            Instant::now() < deadline,
            "the writer never announced itself"
        );
        std::thread::yield_now();
    }
}

/// A reader SIGKILLed holding a read guard, while a writer waits: the
/// writer gets Ok (not OwnerDied: a reader cannot damage the value) within
/// the bound.
#[test]
fn reader_killed_holding_frees_a_waiting_writer() {
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let g = cell.read().unwrap();
        testing::point("reading");
        drop(g);
    });
    let name = TestName::new("rw-rkill");
    let cell = Cell::create(&name, START).unwrap();
    let mut r = reader.arg(&name).stop_at("reading").spawn().unwrap();
    r.wait_stopped().unwrap();
    let w = waiting_writer(&name);
    until_writer_announced(&cell);
    let killed = Instant::now();
    r.kill().unwrap();
    let (answer, at) = w.join().unwrap();
    assert_eq!(answer, "Ok");
    let took = at.duration_since(killed);
    assert!(
        took < BOUND,
        "the writer took {took:?} after the reader died"
    );
    eprintln!("writer got the lock {took:?} after the reader's death");
    assert_eq!(read_op(&cell, Op::Try), ("Ok", Some(START)));
}

/// A reader killed while *waiting* for a writer (at a random moment after
/// it started to read): nothing of it blocks the next writers.
#[test]
fn reader_killed_while_waiting() {
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        testing::point("reading");
        loop {
            drop(cell.read().unwrap());
        }
    });
    let name = TestName::new("rw-rwait");
    let cell = Cell::create(&name, START).unwrap();
    for _ in 0..20 {
        let g = cell.lock().unwrap();
        let ended = reader
            .arg(&name)
            .kill_within("reading", Duration::from_millis(5))
            .unwrap();
        assert!(ended.killed);
        drop(g);
        let t = Instant::now();
        let g = cell.lock_timeout(BOUND);
        assert_eq!(kind(&g), "Ok", "after {:?}", t.elapsed());
        drop(g);
        assert_eq!(read_op(&cell, Op::Try), ("Ok", Some(START)));
    }
}

/// A writer killed holding: readers running meanwhile never get Ok with a
/// torn value (they get WriterDied); the next writer gets OwnerDied and
/// repairs; the readers then see the repaired value.
#[test]
fn writer_killed_holding_readers_never_see_a_torn_value() {
    let writer = half_writer!();
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let (mut ok, mut died) = (0u64, 0u64);
        testing::point("reading");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match cell.read_timeout(Duration::from_millis(20)) {
                Ok(g) => {
                    assert_eq!(g.a, g.b, "a torn value was read: {:?}", *g);
                    ok += 1;
                    if g.n == DONE {
                        break;
                    }
                }
                Err(ReadError::WriterDied) => died += 1,
                Err(ReadError::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
            assert!(Instant::now() < deadline, "never saw the repair");
        }
        println!("ok {ok} writer-died {died}");
    });
    let name = TestName::new("rw-wkill");
    let cell = Cell::create(&name, START).unwrap();
    let mut readers: Vec<Running> = (0..2).map(|_| reader.arg(&name).spawn().unwrap()).collect();
    for r in &mut readers {
        r.wait_point("reading").unwrap();
    }
    writer.arg(&name).kill_at("half").unwrap();
    assert_eq!(read_op(&cell, Op::Lock), ("WriterDied", None));
    let mut g = cell
        .lock_timeout(BOUND)
        .unwrap_err()
        .into_owner_died()
        .unwrap();
    assert_eq!(*g, Pair { a: 1, b: 7, n: 0 });
    g.b = g.a;
    g.n = DONE;
    g.make_consistent();
    drop(g);
    for r in readers {
        let ended = r.wait().unwrap();
        assert!(ended.stdout.contains("ok "), "{ended:?}");
    }
}

/// `wait_while` / `notify_all` on the exclusive side.
#[test]
fn wait_while_and_notify() {
    let waiter = testing::child!("waiter", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let g = cell.lock().unwrap();
        testing::point("waiting");
        let (g, res) = g
            .wait_while_timeout(|p| p.n == 0, Duration::from_secs(20))
            .unwrap();
        assert!(!res.timed_out());
        assert_eq!(g.n, 1);
    });
    let name = TestName::new("rw-wait");
    let cell = Cell::create(&name, START).unwrap();
    let mut w = waiter.arg(&name).spawn().unwrap();
    w.wait_point("waiting").unwrap();
    let mut g = cell.lock().unwrap();
    g.n = 1;
    drop(g);
    cell.notify_all();
    w.wait().unwrap();
}

/// The kill loop: three readers and one writer run all the time; each
/// cycle SIGKILLs one of them at random and starts a new one. Readers
/// assert `a == b` on every read; the writer repairs after an owner death;
/// the test reads at every cycle (bounded: no hang). Cycles:
/// `RWLOCK_KILL_CYCLES` (default 500).
#[test]
fn kill_loop() {
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        testing::point("ready");
        loop {
            match cell.read() {
                Ok(g) => assert_eq!(g.a, g.b, "a torn value was read: {:?}", *g),
                Err(ReadError::WriterDied) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("read: {e}"),
            }
        }
    });
    let writer = testing::child!("writer", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        testing::point("ready");
        loop {
            let mut g = match cell.lock() {
                Ok(g) => g,
                Err(LockError::OwnerDied(mut g)) => {
                    g.b = g.a;
                    g.make_consistent();
                    g
                }
                Err(e) => panic!("lock: {e}"),
            };
            g.a += 1;
            for _ in 0..64 {
                std::hint::black_box(&mut *g);
            }
            g.b += 1;
            g.n += 1;
        }
    });
    let cycles: u32 = std::env::var("RWLOCK_KILL_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let name = TestName::new("rw-loop");
    let cell = Cell::create(&name, START).unwrap();
    let spawn = |i: usize| -> Running {
        let spec = if i == 0 { &writer } else { &reader };
        let mut c = spec.arg(&name).spawn().unwrap();
        c.wait_point("ready").unwrap();
        c
    };
    let mut procs: Vec<Option<Running>> = (0..4).map(|i| Some(spawn(i))).collect();
    let mut seed = std::process::id() as u64 | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut reads_ok, mut reads_died) = (0u32, 0u32);
    let started = Instant::now();
    for _ in 0..cycles {
        std::thread::sleep(Duration::from_micros(rand() % 3000));
        let victim = (rand() % 4) as usize;
        let ended = procs[victim].take().unwrap().kill().unwrap();
        assert!(ended.killed, "{ended:?}");
        match cell.read_timeout(BOUND) {
            Ok(g) => {
                assert_eq!(g.a, g.b, "{:?}", *g);
                reads_ok += 1;
            }
            Err(ReadError::WriterDied) => reads_died += 1,
            Err(e) => panic!("the test's read: {e}"),
        }
        procs[victim] = Some(spawn(victim));
    }
    for p in procs.iter_mut() {
        p.take().unwrap().kill().unwrap();
    }
    let g = match cell.lock_timeout(BOUND) {
        Ok(g) => g,
        Err(LockError::OwnerDied(mut g)) => {
            g.b = g.a;
            g.make_consistent();
            g
        }
        Err(e) => panic!("final lock: {e}"),
    };
    assert!(g.n > 0, "the writer never completed a write");
    eprintln!(
        "{cycles} cycles in {:?}: {} writes, test reads ok {reads_ok} / writer-died {reads_died}",
        started.elapsed(),
        g.n
    );
}

/// Fork: a read guard inherited by a forked child does nothing there
/// (the parent's read stays counted); the child's own read claims a slot
/// of its own, proven live by its own token, so a child that exits without
/// dropping its guard does not block writers.
#[test]
fn fork_child_claims_its_own_slot() {
    let body = testing::child!("forker", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let g = cell.read().unwrap();
        // 1. The child drops the inherited guard and reads on its own.
        let status = fork_run(|| {
            drop(g_copy(&g));
            let mine = cell.read().unwrap();
            assert_eq!(*mine, START);
            drop(mine);
        });
        assert_eq!(status, 0, "forked child 1 failed");
        // The parent's read is still counted.
        assert_eq!(kind(&cell.try_lock()), "WouldBlock");
        drop(g);
        assert_eq!(kind(&cell.try_lock()), "Ok");
        // 2. A forked child that exits holding its own read guard.
        let status = fork_run(|| {
            let mine = cell.read().unwrap();
            std::mem::forget(mine);
        });
        assert_eq!(status, 0, "forked child 2 failed");
        let t = Instant::now();
        assert_eq!(
            kind(&cell.lock_timeout(BOUND)),
            "Ok",
            "after {:?}",
            t.elapsed()
        );
    });
    let name = TestName::new("rw-fork");
    let _cell = Cell::create(&name, START).unwrap();
    body.arg(&name).run().unwrap();
}

/// A bitwise copy of a guard, as a forked child has it (its drop must do
/// nothing there).
fn g_copy<'a>(g: &shmsync::ShmReadGuard<'a, Pair>) -> shmsync::ShmReadGuard<'a, Pair> {
    // SAFETY: only called in a forked child, where the copy stands for the
    // inherited guard; the original is never dropped in that process.
    unsafe { std::ptr::read(g) }
}

/// Forks; the child runs `f` and `_exit`s (0, or 101 on panic); returns
/// the child's exit status. Only inside a `child!` process, whose other
/// thread (libtest's main) is parked holding no lock.
fn fork_run(f: impl FnOnce()) -> i32 {
    // SAFETY: see above: the copy runs ordinary Rust, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        // SAFETY: leaving the forked copy without running the parent's
        // atexit handlers or destructors.
        unsafe { libc::_exit(if ok { 0 } else { 101 }) };
    }
    let deadline = Instant::now() + BOUND * 2;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("forked child hung");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    }
}

/// A thread holding the write guard that reads gets Deadlock (not a wait
/// for ever), through its own handle or another.
#[test]
fn read_while_writing_is_a_deadlock() {
    let name = TestName::new("rw-dead");
    let cell = Cell::create(&name, START).unwrap();
    let other = Cell::open(&name).unwrap();
    let g = cell.lock().unwrap();
    for c in [&cell, &other] {
        for op in OPS {
            assert_eq!(read_op(c, op).0, "Deadlock", "{op:?}");
        }
    }
    drop(g);
    assert_eq!(read_op(&cell, Op::Try), ("Ok", Some(START)));
}

/// The reader slots: a dead process's slot is reclaimed; past
/// READER_SLOTS live reading handles, NoReaderSlot; a dropped handle gives
/// its slot back.
#[test]
fn reader_slots_fill_and_are_reclaimed() {
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let g = cell.read().unwrap();
        testing::point("reading");
        drop(g);
    });
    let name = TestName::new("rw-slots");
    let cell = Cell::create(&name, START).unwrap();
    // A killed reader holds a slot (and a count) that nobody releases.
    reader.arg(&name).kill_at("reading").unwrap();
    let n = shmsync::lock::READER_SLOTS;
    let handles: Vec<Cell> = (0..n).map(|_| Cell::open(&name).unwrap()).collect();
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(read_op(h, Op::Try).0, "Ok", "handle {i}");
    }
    let extra = Cell::open(&name).unwrap();
    assert_eq!(read_op(&extra, Op::Try).0, "NoReaderSlot");
    drop(handles);
    assert_eq!(read_op(&extra, Op::Try), ("Ok", Some(START)));
    // The dead reader's count was dropped with its slot: writers go.
    assert_eq!(kind(&cell.try_lock()), "Ok");
}

/// Readers blocked in `read()` behind a writer that dies: if it died
/// waiting for readers (the value intact), they read (`Ok`); if it died
/// holding the write guard, they get `WriterDied` — both within the bound.
#[test]
fn readers_waiting_on_a_writer_notice_its_death() {
    let holder = testing::child!("reader holding", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let g = cell.read().unwrap();
        testing::point("reading");
        drop(g);
    });
    let writer = half_writer!();
    let blocked = testing::child!("blocked reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let t = Instant::now();
        testing::point("reading");
        let r = cell.read_timeout(Duration::from_secs(20));
        println!("answer {} after {:?}", read_kind(&r), t.elapsed());
        if let Ok(g) = r {
            assert_eq!(g.a, g.b, "{:?}", *g);
        }
    });
    let answer = |ended: testing::Ended| -> String {
        ended
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("answer "))
            .map(|a| a.split(' ').next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no answer: {ended:?}"))
    };

    // 1. The writer dies while it waits for a reader: value intact.
    let name = TestName::new("rw-wwait");
    let cell = Cell::create(&name, START).unwrap();
    let mut h = holder.arg(&name).stop_at("reading").spawn().unwrap();
    h.wait_stopped().unwrap();
    let w = writer.arg(&name).spawn().unwrap();
    until_writer_announced(&cell);
    let mut b = blocked.arg(&name).spawn().unwrap();
    b.wait_point("reading").unwrap();
    let ended = w.kill().unwrap();
    assert!(
        ended.points.is_empty(),
        "the writer got past its lock: {ended:?}"
    );
    assert_eq!(answer(b.wait().unwrap()), "Ok");
    h.resume().unwrap();
    h.wait().unwrap();
    // The next writer is told of the death all the same.
    let g = cell
        .lock_timeout(BOUND)
        .unwrap_err()
        .into_owner_died()
        .unwrap();
    assert_eq!(*g, START);
    g.make_consistent();
    drop(g);

    // 2. The writer dies holding the write guard, mid-update.
    let name = TestName::new("rw-wheld");
    let cell = Cell::create(&name, START).unwrap();
    let mut w = writer.arg(&name).stop_at("half").spawn().unwrap();
    w.wait_stopped().unwrap();
    let mut b = blocked.arg(&name).spawn().unwrap();
    b.wait_point("reading").unwrap();
    w.kill().unwrap();
    assert_eq!(answer(b.wait().unwrap()), "WriterDied");
    assert_eq!(kind(&cell.lock()), "OwnerDied");
}

/// No writer starvation: three processes read in a tight loop (their read
/// guards overlap all the time); a writer still gets in, every time,
/// within the bound.
#[test]
fn a_stream_of_readers_does_not_starve_a_writer() {
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        testing::point("ready");
        loop {
            let g = cell.read().unwrap();
            assert_eq!(g.a, g.b, "{:?}", *g);
            for _ in 0..200 {
                std::hint::black_box(&*g);
            }
        }
    });
    let name = TestName::new("rw-starve");
    let cell = Cell::create(&name, START).unwrap();
    let mut readers: Vec<Running> = (0..3).map(|_| reader.arg(&name).spawn().unwrap()).collect();
    for r in &mut readers {
        r.wait_point("ready").unwrap();
    }
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        let mut g = cell.lock_timeout(BOUND).unwrap();
        worst = worst.max(t.elapsed());
        g.a += 1;
        std::hint::black_box(&mut *g);
        g.b += 1;
        g.n = i;
    }
    eprintln!("worst write wait among 200 with 3 readers running: {worst:?}");
    for r in readers {
        // Killed, not ended: a reader that failed its check reports it.
        assert!(r.kill().unwrap().killed);
    }
}

/// The header's `suspect` word (offset 156: set by a writer that panicked
/// holding the lock, or whose owner-died error was converted away) keeps
/// readers from a value that may be half-updated: 1 → WriterDied,
/// 2 → NotRecoverable, 0 → Ok. Written here with `pwrite`, as the writer
/// that sets it would leave it.
#[test]
fn readers_honour_the_suspect_word() {
    use std::os::unix::fs::FileExt;
    let name = TestName::new("rw-suspect");
    let cell = Cell::create(&name, START).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(name.path())
        .unwrap();
    for (word, answer) in [(1u32, "WriterDied"), (2, "NotRecoverable"), (0, "Ok")] {
        file.write_at(&word.to_ne_bytes(), 156).unwrap();
        for op in OPS {
            assert_eq!(read_op(&cell, op).0, answer, "suspect {word}, {op:?}");
        }
    }
    // The refused reads gave their place back.
    assert_eq!(kind(&cell.try_lock()), "Ok");
}

/// `try_lock` checks the readers it finds: a reader killed holding its
/// read guard does not make `try_lock` answer WouldBlock.
#[test]
fn try_lock_checks_dead_readers() {
    let reader = testing::child!("reader", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        let g = cell.read().unwrap();
        testing::point("reading");
        drop(g);
    });
    let name = TestName::new("rw-trydead");
    let cell = Cell::create(&name, START).unwrap();
    for _ in 0..3 {
        reader.arg(&name).kill_at("reading").unwrap();
    }
    assert_eq!(kind(&cell.try_lock()), "Ok");
}

/// A writer *thread* that exits holding the write guard (its process
/// lives on, so its liveness token is held): readers blocked behind it
/// notice through the robust mutex's owner-died mark and get WriterDied;
/// the next writer gets OwnerDied.
#[test]
fn writer_thread_exit_is_noticed_by_readers() {
    let writer = testing::child!("writer thread", |ctx| {
        let cell = Cell::open(ctx.arg(0)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut g = cell.lock().unwrap();
                g.a = 1;
                std::mem::forget(g);
            });
        });
        testing::point("thread gone");
    });
    let name = TestName::new("rw-thread");
    let cell = Cell::create(&name, START).unwrap();
    let mut w = writer.arg(&name).stop_at("thread gone").spawn().unwrap();
    w.wait_stopped().unwrap();
    let t = Instant::now();
    assert_eq!(read_kind(&cell.read_timeout(BOUND)), "WriterDied");
    assert!(t.elapsed() < BOUND);
    assert_eq!(read_kind(&cell.try_read()), "WriterDied");
    let g = cell
        .lock_timeout(BOUND)
        .unwrap_err()
        .into_owner_died()
        .unwrap();
    assert_eq!(*g, Pair { a: 1, b: 7, n: 0 });
    g.make_consistent();
    drop(g);
    assert_eq!(read_op(&cell, Op::Try).0, "Ok");
    w.kill().unwrap();
}
