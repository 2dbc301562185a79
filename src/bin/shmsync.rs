//! `shmsync`: list, inspect and safely clean the shared-memory objects made
//! by the shmsync crate (feature `cli`).
//!
//! All the reading is the library's own ([`shmsync::inspect`]);
//! this file parses arguments and prints.
//!
//! # JSON output (`--json`)
//!
//! `list --json` prints an array with one object per entry of `/dev/shm`;
//! `inspect --json` prints one such object with an extra `header` object;
//! `clean --json` prints an array of `{name, action, reason, state, leftover}`;
//! `unlink --json` prints `{name, action: "removed", state, attached}`.
//! `sysv list --json` prints an array of System V segments (`key` as
//! `0x…`, `id`, `state`, `reason`, `stale`, `size`, `uid`, `mode`,
//! `nattch`, `removed`, `creator_pid`, `lock_kind`, `lock_state`,
//! `holder_*`, `age_secs`, `value_size`, `type_tag`); `sysv clean --json`
//! an array of `{key, id, action, reason}`.
//! Field names are stable; `null` means "not known / not applicable".
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `name` | string | object name with its leading `/` |
//! | `path` | string | `/dev/shm/...` |
//! | `state` | string | `ready`, `initialising`, `abandoned-init`, `owner-died`, `recovering`, `not-recoverable`, `holder-dead`, `incompatible`, `damaged`, `foreign`, `unreadable` |
//! | `reason` | string or null | why it is in that state |
//! | `stale` | bool | `clean` removes it: nobody is attached and it crashed (`leftover` is `crashed`) |
//! | `leftover` | string or null | for a shmsync object nobody uses: `crashed` (its last users were killed, its creator died initialising it, or its lock holder died: `clean` removes it) or `detached` (every user detached normally: `clean` keeps it unless `--include-detached`); `null` when in use or not removable |
//! | `size` | int or null | bytes (`fstat`) |
//! | `uid` | int or null | owner (`fstat`) |
//! | `mode` | string or null | permission bits in octal, e.g. `"0600"` |
//! | `attached` | string | `live`, `creator`, `none`, `unknown` |
//! | `lock_kind` | string or null | `robust-mutex`, `flock`, `semaphore` |
//! | `lock_state` | string | `free`, `held`, `owner-died`, `recovering`, `not-recoverable`, `unknown` |
//! | `holder_tid` | int or null | thread holding (or that died holding) the lock |
//! | `holder_pid` | int or null | its process |
//! | `holder_alive` | bool or null | whether it still runs |
//! | `holder_state` | string or null | a live holder's process state letter (`/proc/PID/stat`): `S`, `R`, `D`, `T` stopped, `t` traced… |
//! | `lock_words` | object | the lock's raw words by name: `lock_word`, `owner_word` (robust mutex: glibc `__lock`, `__owner`); `sem_holder`, `sem_state`, `sem_waiters`, `sem_holder_tid` (semaphore); empty when not read |
//! | `creator_pid` | int or null | creator's pid |
//! | `created_unix` | int or null | creation time, seconds since 1970 |
//! | `age_secs` | int or null | seconds since creation |
//! | `format_version` | int or null | header format |
//! | `value_size`, `value_align` | int or null | `size_of`/`align_of` of the value type |
//! | `type_tag`, `type_version` | int or null | `ShmSafe::TYPE_TAG` / `TYPE_VERSION` |

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use shmsync::inspect::{self, Attached, CleanAction, Inspection, State};

#[path = "shmsync/output.rs"]
mod output;
#[path = "shmsync/sysv.rs"]
mod sysv;

use output::*;
use sysv::*;

const ABOUT: &str = "List, inspect and safely clean the shared-memory objects made by shmsync";

const LONG_ABOUT: &str = "\
List, inspect and safely clean the shared-memory objects (in /dev/shm) made by
the shmsync crate. Objects are only read (open without following symbolic
links, fstat, pread): never mapped, never locked, except that `clean` tries a
non-blocking exclusive lock on what it removes.";

const EXAMPLES: &str = "\
Examples:
  shmsync list
  shmsync list --prefix /myapp- --json
  shmsync inspect /myapp-counter
  shmsync clean --prefix /myapp- --dry-run
  shmsync unlink /myapp-counter";

#[derive(Parser)]
#[command(name = "shmsync", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every object in /dev/shm, one row each.
    ///
    /// Columns: NAME, SIZE (bytes), TYPE (the value type: a built-in's name
    /// such as `u64`, else its size and the first 8 hex digits of its
    /// `ShmSafe::TYPE_TAG`, or `untagged`), LOCK (backend), STATE (ready, initialising, abandoned-init,
    /// owner-died, recovering, not-recoverable, holder-dead, incompatible,
    /// damaged, foreign, unreadable), ATTACHED (live, creator, none),
    /// HOLDER (process or thread holding the lock, or that died holding
    /// it), CREATOR (pid), AGE, UID, MODE, STALE (for an object nobody
    /// uses: `crashed` — its last users were killed, its creator died
    /// initialising it, or its lock holder died: `clean` removes it —, or
    /// `detached` — every user detached normally: `clean` keeps it unless
    /// `--include-detached`; `no` when it is in use or not removable) and a
    /// REASON for objects that are not shmsync's or cannot be read.
    #[command(
        after_help = "Examples:\n  shmsync list\n  shmsync list --prefix /myapp-\n  shmsync list --json"
    )]
    List {
        /// Print a JSON array instead of a table (fields: see the crate docs).
        #[arg(long)]
        json: bool,
        /// Only objects whose name starts with PREFIX (a leading `/` is added if missing).
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
    },
    /// Show everything the header of one object says, each field explained,
    /// and its lock's state read without taking it. NAME is an object of
    /// /dev/shm, or a path with a directory in it (`./x.cell`,
    /// `/var/lib/app/x.cell`) for a file-backed cell.
    #[command(
        after_help = "Examples:\n  shmsync inspect /myapp-counter\n  shmsync inspect myapp-counter --json\n  shmsync inspect ./shmsync-counter.cell"
    )]
    Inspect {
        /// The object's name (`/x` or `x` for /dev/shm/x).
        name: String,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove, among the objects named or under --prefix, the shmsync
    /// objects that crashed: no process attached, no live lock holder, and
    /// either an initialisation its creator abandoned, a lock whose holder
    /// died, or last users that were killed (they never detached).
    ///
    /// A scope is required (names, --prefix, or --all): /dev/shm holds
    /// every application's objects, and a cell nobody has open may belong
    /// to a service that is simply not running. Cells whose users all
    /// detached normally are kept unless --include-detached asks for them
    /// (`shmsync list` shows STALE `crashed` or `detached`).
    ///
    /// Each is removed while holding its exclusive attach lock, after
    /// checking that the name still refers to the locked inode; its
    /// companion objects go with it. Live, foreign, damaged and unreadable
    /// objects and symbolic links are never removed.
    #[command(
        after_help = "Examples:\n  shmsync clean --prefix /myapp- --dry-run\n  shmsync clean --prefix /myapp-\n  shmsync clean --prefix /myapp- --include-detached\n  shmsync clean /myapp-counter\n\nExit status: 0 done, 1 a removal failed, 2 bad usage (no scope)."
    )]
    Clean {
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print a JSON array of {name, action, reason, state, leftover}.
        #[arg(long)]
        json: bool,
        /// Only objects whose name starts with PREFIX (a leading `/` is
        /// added if missing; `/dev/shm/` is stripped).
        #[arg(long, value_name = "PREFIX", conflicts_with = "all")]
        prefix: Option<String>,
        /// Every application's objects in /dev/shm (what crashed, and with
        /// --include-detached also what is not in use).
        #[arg(long)]
        all: bool,
        /// Also remove cells whose users all detached normally (a service
        /// that is not running), not only those that crashed.
        #[arg(long)]
        include_detached: bool,
        /// Only these objects.
        #[arg(conflicts_with = "all")]
        names: Vec<String>,
    },
    /// Remove one object by name, whatever its state (forced), with its
    /// companion objects; warns if processes are still attached (they keep
    /// their mappings).
    #[command(after_help = "Example:\n  shmsync unlink /myapp-counter")]
    Unlink {
        /// The object's name (`/x` or `x`).
        name: String,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// System V segments (`ipcs -m`): list, inspect, clean.
    #[command(subcommand)]
    Sysv(SysvCommand),
}

/// `shmsync sysv …` (see `sysv_cli` at the end of this file).
#[derive(Subcommand)]
enum SysvCommand {
    /// List every System V segment readable here (walking the kernel's
    /// table with shmctl(SHM_STAT)); segments that are not shmsync's are
    /// shown as foreign.
    ///
    /// Columns: KEY, ID, SIZE, LOCK, STATE, NATTCH (shm_nattch), UID, MODE,
    /// STALE (`sysv clean` would remove it), REASON.
    #[command(after_help = "Examples:\n  shmsync sysv list\n  shmsync sysv list --json")]
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one segment: its kernel status and header.
    #[command(
        after_help = "Examples:\n  shmsync sysv inspect --key 0x4d2\n  shmsync sysv inspect --id 32769"
    )]
    Inspect {
        #[command(flatten)]
        target: SysvTarget,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove (IPC_RMID) the shmsync segments that provably crashed:
    /// shm_nattch is 0 AND the header says so (abandoned initialisation,
    /// owner died, holder dead, not recoverable). Needs a scope: --all, or
    /// --key / --id; with none, nothing is removed.
    #[command(
        after_help = "Examples:\n  shmsync sysv clean --all --dry-run\n  shmsync sysv clean --key 0x4d2"
    )]
    Clean {
        /// Every segment in the table.
        #[arg(long, conflicts_with_all = ["key", "id"])]
        all: bool,
        #[command(flatten)]
        target: SysvTargetOpt,
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print a JSON array of {key, id, action, reason}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct SysvTarget {
    /// The segment's key (decimal, or hex with 0x).
    #[arg(long, value_parser = parse_key)]
    key: Option<i32>,
    /// The segment's id (shmid).
    #[arg(long)]
    id: Option<i32>,
}

#[derive(clap::Args)]
#[group(required = false, multiple = false)]
struct SysvTargetOpt {
    /// The segment's key (decimal, or hex with 0x).
    #[arg(long, value_parser = parse_key)]
    key: Option<i32>,
    /// The segment's id (shmid).
    #[arg(long)]
    id: Option<i32>,
}

/// `x` and `/dev/shm/x` both mean `/x`.
fn object_name(arg: &str) -> String {
    let rest = arg.strip_prefix("/dev/shm/").unwrap_or(arg);
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

/// Exit status for bad usage (as clap's own).
const USAGE: u8 = 2;

/// `--prefix`, as an object-name prefix: `x`, `/x` and `/dev/shm/x` all
/// mean `/x`. Refuses what would match every name (use `--all`) or none (a
/// `/` after the first character: names in /dev/shm have none).
fn prefix_arg(arg: &str, for_clean: bool) -> Result<String, String> {
    let p = object_name(arg);
    if p[1..].contains('/') {
        return Err(format!(
            "--prefix {arg:?} can match nothing: an object name has no '/' after its first character"
        ));
    }
    if for_clean && p == "/" {
        return Err(format!(
            "--prefix {arg:?} matches every object in /dev/shm; say --all if that is what you mean"
        ));
    }
    Ok(p)
}

/// A usage error of our own: the message on stderr, exit status 2.
struct Usage(String);

fn main() -> ExitCode {
    if std::env::var_os("SHMSYNC_CLEAN_PAUSE").is_some() {
        // Test hook (undocumented in --help): pause `clean` between taking
        // an object's lock and checking its inode, until a line arrives on
        // stdin.
        inspect::set_clean_hook(Some(pause));
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(Failure::Usage(Usage(msg))) => {
            eprintln!("shmsync: {msg}");
            ExitCode::from(USAGE)
        }
        Err(Failure::Error(msg)) => {
            eprintln!("shmsync: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed: bad usage (exit 2) or an error (exit 1).
enum Failure {
    Usage(Usage),
    Error(String),
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure::Error(msg)
    }
}

impl From<Usage> for Failure {
    fn from(u: Usage) -> Failure {
        Failure::Usage(u)
    }
}

fn pause(name: &str) {
    eprintln!("shmsync: clean paused before the inode check of {name}");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn run(command: Command) -> Result<ExitCode, Failure> {
    let err = |e: shmsync::Error| inspect::error_line(&e);
    match command {
        Command::List { json, prefix } => {
            let prefix = prefix
                .map(|p| prefix_arg(&p, false))
                .transpose()
                .map_err(Usage)?;
            let rows = inspect::list_matching(|n| {
                prefix.as_ref().map_or(true, |p| n.starts_with(p.as_str()))
            })
            .map_err(err)?;
            if json {
                print_json(&Value::Array(rows.iter().map(entry_json).collect()));
            } else {
                print_table(&rows);
            }
        }
        Command::Inspect { name, json } => {
            // A path with a directory in it names a file-backed cell;
            // anything else is an object of /dev/shm.
            let as_path = std::path::Path::new(&name);
            let i = if !name.starts_with("/dev/shm/")
                && (name.starts_with('.') || name.get(1..).is_some_and(|r| r.contains('/')))
            {
                inspect::inspect_file(as_path).map_err(err)?
            } else {
                inspect::inspect(&object_name(&name)).map_err(err)?
            };
            if json {
                let mut v = entry_json(&i);
                v["header"] = header_json(&i);
                print_json(&v);
            } else {
                let fields = i.fields();
                let w = fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
                let vw = fields
                    .iter()
                    .map(|f| f.value.len())
                    .max()
                    .unwrap_or(0)
                    .min(28);
                for f in fields {
                    println!("{:w$}  {:vw$}  {}", f.name, f.value, f.meaning);
                }
            }
        }
        Command::Clean {
            dry_run,
            json,
            prefix,
            all,
            include_detached,
            names,
        } => {
            if prefix.is_none() && names.is_empty() && !all {
                return Err(Usage(
                    "clean needs a scope and removed nothing: /dev/shm holds every application's \
                     objects, and a cell nobody has open may belong to a service that is simply \
                     not running. Name the objects, or give --prefix /yourapp- (or --all for \
                     every application's crashed objects)."
                        .into(),
                )
                .into());
            }
            let prefix = prefix
                .map(|p| prefix_arg(&p, true))
                .transpose()
                .map_err(Usage)?;
            let names: Vec<String> = names.iter().map(|n| object_name(n)).collect();
            let options = inspect::CleanOptions::new()
                .dry_run(dry_run)
                .include_detached(include_detached);
            let mut outcomes = inspect::clean(
                |n| {
                    prefix.as_ref().map_or(true, |p| n.starts_with(p.as_str()))
                        && (names.is_empty() || names.iter().any(|m| m == n))
                },
                &options,
            )
            .map_err(err)?;
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| !outcomes.iter().any(|o| &o.name == *n))
                .collect();
            for name in missing {
                outcomes.push(inspect::CleanOutcome::skipped(name, "no such object"));
            }
            let failed = outcomes.iter().any(|o| o.action == CleanAction::Failed);
            if json {
                let v = outcomes
                    .iter()
                    .map(|o| {
                        json!({
                            "name": o.name,
                            "action": o.action.name(),
                            "reason": o.reason,
                            "state": o.inspection.as_ref().map(|i| i.state.name()),
                            "leftover": o
                                .inspection
                                .as_ref()
                                .and_then(|i| i.leftover)
                                .map(|l| l.name()),
                        })
                    })
                    .collect();
                print_json(&Value::Array(v));
            } else {
                let w = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0);
                let mut removed = 0;
                for o in &outcomes {
                    println!("{:12}  {:w$}  {}", o.action.name(), o.name, o.reason);
                    removed += matches!(o.action, CleanAction::Removed | CleanAction::WouldRemove)
                        as usize;
                }
                let verb = if dry_run { "would remove" } else { "removed" };
                println!("{verb} {removed} of {} object(s)", outcomes.len());
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Sysv(cmd) => return sysv_cli(cmd).map_err(Failure::from),
        Command::Unlink { name, json } => {
            let name = object_name(&name);
            let done = inspect::unlink(&name).map_err(err)?;
            let i = &done.inspection;
            if matches!(i.attached, Attached::Live | Attached::Creator) {
                eprintln!(
                    "shmsync: warning: processes were still attached to {name}; they keep their mapping until they close it"
                );
            }
            if i.state == State::Companion {
                eprintln!(
                    "shmsync: warning: {name} was a companion object ({}): the cell is now unusable",
                    i.reason.as_deref().unwrap_or("-")
                );
            } else if !i.state.is_shmsync() {
                eprintln!(
                    "shmsync: warning: {name} was not a shmsync object ({}: {})",
                    i.state.name(),
                    i.reason.as_deref().unwrap_or("-")
                );
            }
            if json {
                print_json(&json!({
                    "name": name,
                    "action": "removed",
                    "state": i.state.name(),
                    "attached": i.attached.name(),
                }));
            } else {
                println!("removed {name} ({})", i.state.name());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
