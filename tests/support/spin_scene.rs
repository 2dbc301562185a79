//! The test's side of `tests/robust_spin.rs` (included there with
//! `#[path]`): [`Scene`], the cell, the shared words and the running
//! children of one test.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Mutex, MutexGuard};

use shmsync::testing::{ChildSpec, Running, Spawn};
use shmsync::{ShmCell, ShmGuard};

use crate::rig::{self, checked, SharedWords, Tally};
use crate::roles::{GO, WAIT};
use crate::support::Name;

/// Scenes take turns: libtest runs the tests of a binary in parallel, and
/// on 2 CPUs the processes of one scene would then mostly run beside
/// another scene's, rarely beside each other (measured: 99.8 % of their
/// `lock` calls found the word free), so they would hardly contend.
static TURN: Mutex<()> = Mutex::new(());

/// The test's side: the cell, the shared words, and the running children,
/// which a failure kills, quoting how those that had ended failed.
pub struct Scene {
    pub name: Name,
    pub cell: ShmCell<Tally>,
    pub words: SharedWords,
    pub children: RefCell<Vec<(usize, Running)>>,
    pub next_id: Cell<usize>,
    /// Last: released once the children are killed and the name removed.
    _turn: MutexGuard<'static, ()>,
}

impl Scene {
    pub fn new(tag: &str) -> Scene {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let name = Name::new(tag);
        let cell = ShmCell::<Tally>::create(name.as_str(), Tally::new()).unwrap();
        let words = SharedWords::create(&name);
        Scene {
            name,
            cell,
            words,
            children: RefCell::new(Vec::new()),
            next_id: Cell::new(0),
            _turn: turn,
        }
    }

    pub fn id(&self) -> usize {
        let id = self.next_id.get();
        assert!(id < rig::IDS, "out of worker ids");
        self.next_id.set(id + 1);
        id
    }

    /// A `hammer` with a new id, started: `inside` spins per increment,
    /// `iters` increments (0: until `stop`), `(mixed ops, pinned to CPU 0)`.
    pub fn hammer(&self, child: &ChildSpec, inside: u64, iters: u64, flags: (bool, bool)) {
        let (id, spawn) = self.hammer_dying(child, inside, iters, flags, [0; 3]);
        self.start(id, spawn, "started");
    }

    /// A `hammer` with a new id, not started, that stops at a point in its
    /// `n`-th increment (`[n, 0, 0]`), or SIGKILLs itself after step `k`
    /// of its `n`-th increment (`[0, n, k]`).
    pub fn hammer_dying(
        &self,
        child: &ChildSpec,
        inside: u64,
        iters: u64,
        (mixed, pin): (bool, bool),
        [stop_at, die_at, die_after]: [u64; 3],
    ) -> (usize, Spawn) {
        let id = self.id();
        let args = [
            id as u64,
            inside,
            iters,
            u64::from(mixed),
            u64::from(pin),
            stop_at,
            die_at,
            die_after,
        ];
        let mut spawn = child.command().args(["hammer", self.name.as_str()]);
        for a in args {
            spawn = spawn.arg(a.to_string());
        }
        (id, spawn.bound(WAIT * 3))
    }

    /// A cell whose holder was killed, and a `reporter` child holding its
    /// owner-died guard until `go`, then dropping it unrepaired after
    /// `delay_ns`.
    pub fn owner_died_held(child: &ChildSpec, delay_ns: u64) -> (Scene, Running) {
        let scene = Scene::new("nr");
        let ended = child
            .command()
            .args(["dier", scene.name.as_str()])
            .kill_at("holding");
        assert!(ended.unwrap().killed);
        let args = [
            "reporter".to_string(),
            scene.name.to_string(),
            delay_ns.to_string(),
        ];
        let mut reporter = child.command().args(args).bound(WAIT).spawn().unwrap();
        reporter.wait_point("armed").unwrap();
        (scene, reporter)
    }

    /// Starts `spawn` (worker `id`) and waits until it reached `point`.
    pub fn start(&self, id: usize, spawn: Spawn, point: &str) {
        match spawn
            .spawn()
            .and_then(|mut r| r.wait_point(point).map(|()| r))
        {
            Ok(r) => self.children.borrow_mut().push((id, r)),
            Err(e) => self.fail(format!("starting worker {id}: {e}")),
        }
    }

    pub fn go(&self) {
        self.words.get(GO).store(1, SeqCst);
    }

    /// Increments completed by every worker, as they counted them.
    pub fn counted(&self) -> u64 {
        (0..rig::IDS).map(|i| self.words.get(i).load(SeqCst)).sum()
    }

    /// Locks as the test (bounded: a hang fails), checked.
    pub fn lock(&self) -> ShmGuard<'_, Tally> {
        checked("the test", self.cell.lock_timeout(WAIT)).unwrap_or_else(|e| self.fail(e))
    }

    /// Tells every worker to stop and waits for each to end successfully.
    pub fn stop_all(&self) {
        self.lock().stop.store(1, SeqCst);
        let mut errors = Vec::new();
        for (id, r) in self.children.borrow_mut().drain(..) {
            if let Err(e) = r.wait() {
                errors.push(format!("worker {id}: {e}"));
            }
        }
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }

    /// Kills every child and fails with `msg` and every child's failure.
    pub fn fail(&self, msg: String) -> ! {
        let mut all = vec![msg];
        for (id, r) in self.children.borrow_mut().drain(..) {
            if let Err(e) = r.kill() {
                all.push(format!("worker {id}: {e}"));
            }
        }
        panic!("{}", all.join("\n"));
    }
}
