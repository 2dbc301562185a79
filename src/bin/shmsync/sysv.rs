//! `shmsync sysv …`: the same verbs for System V segments.

use super::*;

pub(super) fn parse_key(s: &str) -> Result<i32, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).map(|v| v as i32),
        None => s.parse::<i32>(),
    };
    v.map_err(|e| format!("not a key: {e}"))
}

pub(super) fn sysv_ref(key: Option<i32>, id: Option<i32>) -> Option<inspect::SysvRef> {
    match (key, id) {
        (Some(k), _) => Some(inspect::SysvRef::Key(k)),
        (_, Some(id)) => Some(inspect::SysvRef::Id(id)),
        _ => None,
    }
}

pub(super) fn sysv_json(i: &inspect::SysvInspection) -> Value {
    json!({
        "key": i.key_hex(),
        "id": i.id,
        "state": i.state.name(),
        "reason": i.reason,
        "stale": i.stale,
        "size": i.size,
        "uid": i.uid,
        "mode": format!("{:04o}", i.mode),
        "nattch": i.attached_count,
        "removed": i.removed,
        "creator_pid": i.creator_pid,
        "lock_kind": i.lock.kind.map(|k| k.name()),
        "lock_state": i.lock.state.name(),
        "holder_tid": i.lock.holder.and_then(|h| h.tid),
        "holder_pid": i.lock.holder.and_then(|h| h.pid),
        "holder_alive": i.lock.holder.and_then(|h| h.alive),
        "age_secs": i.age.map(|a| a.as_secs()),
        "value_size": i.header.as_ref().map(|h| h.value_size),
        "type_tag": i.header.as_ref().map(|h| format!("{:#x}", h.type_tag)),
    })
}

pub(super) fn sysv_cli(cmd: SysvCommand) -> Result<ExitCode, String> {
    let err = |e: shmsync::Error| inspect::error_line(&e);
    match cmd {
        SysvCommand::List { json } => {
            let rows = inspect::list_sysv().map_err(err)?;
            if json {
                print_json(&Value::Array(rows.iter().map(sysv_json).collect()));
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:<10} {:>10} {:>10} {:<13} {:<16} {:>6} {:>6} {:<5} {:<5} REASON",
                "KEY", "ID", "SIZE", "LOCK", "STATE", "NATTCH", "UID", "MODE", "STALE"
            );
            for i in &rows {
                let _ = writeln!(
                    out,
                    "{:<10} {:>10} {:>10} {:<13} {:<16} {:>6} {:>6} {:<5} {:<5} {}",
                    i.key_hex(),
                    i.id,
                    i.size,
                    i.lock.kind.map_or("-", |k| k.name()),
                    i.state.name(),
                    i.attached_count,
                    i.uid,
                    format!("{:04o}", i.mode),
                    if i.stale { "yes" } else { "no" },
                    i.reason.as_deref().unwrap_or(""),
                );
            }
        }
        SysvCommand::Inspect { target, json } => {
            let r = sysv_ref(target.key, target.id).ok_or("give --key or --id")?;
            let i = inspect::inspect_sysv(r).map_err(err)?;
            if json {
                print_json(&sysv_json(&i));
            } else {
                let v = sysv_json(&i);
                let mut out = std::io::stdout().lock();
                if let Value::Object(m) = v {
                    for (k, v) in m {
                        let _ = writeln!(out, "{k:<13} {v}");
                    }
                }
            }
        }
        SysvCommand::Clean {
            all,
            target,
            dry_run,
            json,
        } => {
            let scope = match (all, sysv_ref(target.key, target.id)) {
                (true, _) => inspect::SysvScope::All,
                (false, Some(r)) => inspect::SysvScope::One(r),
                (false, None) => {
                    eprintln!(
                        "shmsync: sysv clean removes nothing without a scope: \
                         give --all, --key or --id"
                    );
                    return Ok(ExitCode::from(2));
                }
            };
            let outcomes = inspect::clean_sysv(scope, dry_run).map_err(err)?;
            if json {
                let rows = outcomes
                    .iter()
                    .map(|o| {
                        json!({
                            "key": format!("{:#010x}", o.key as u32),
                            "id": o.id,
                            "action": o.action.name(),
                            "reason": o.reason,
                        })
                    })
                    .collect();
                print_json(&Value::Array(rows));
            } else {
                let mut out = std::io::stdout().lock();
                for o in &outcomes {
                    let _ = writeln!(
                        out,
                        "{:#010x} {:>10} {:<12} {}",
                        o.key as u32,
                        o.id,
                        o.action.name(),
                        o.reason
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
