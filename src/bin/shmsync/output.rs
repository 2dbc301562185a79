//! Printing: JSON objects and the `list` table.

use super::*;

pub(super) fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

/// One object, with the documented field names.
pub(super) fn entry_json(i: &Inspection) -> Value {
    let h = i.header.as_ref();
    let holder = i.lock.holder;
    json!({
        "name": i.name,
        "path": i.path(),
        "state": i.state.name(),
        "reason": i.reason,
        "stale": i.stale,
        "leftover": i.leftover.map(|l| l.name()),
        "size": i.size,
        "uid": i.uid,
        "mode": i.mode.map(|m| format!("{m:04o}")),
        "attached": i.attached.name(),
        "lock_kind": i.lock.kind.map(|k| k.name()),
        "lock_state": i.lock.state.name(),
        "holder_tid": holder.and_then(|h| h.tid),
        "holder_pid": holder.and_then(|h| h.pid),
        "holder_alive": holder.and_then(|h| h.alive),
        "holder_state": holder
            .filter(|h| h.alive == Some(true))
            .and_then(|h| h.pid)
            .and_then(process_state)
            .map(String::from),
        "lock_words": i
            .lock
            .words
            .iter()
            .map(|w| (w.name.to_string(), Value::from(w.value)))
            .collect::<serde_json::Map<_, _>>(),
        "creator_pid": h.map(|h| h.creator_pid),
        "created_unix": h.map(|h| h.created_unix),
        "age_secs": i.age.map(|a| a.as_secs()),
        "format_version": h.map(|h| h.format_version),
        "value_size": h.map(|h| h.value_size),
        "value_align": h.map(|h| h.value_align),
        "type_tag": h.map(|h| h.type_tag),
        "type_version": h.map(|h| h.type_version),
    })
}

/// Every header field, for `inspect --json`.
pub(super) fn header_json(i: &Inspection) -> Value {
    let Some(h) = &i.header else {
        return Value::Null;
    };
    json!({
        "format_version": h.format_version,
        "arch": h.arch,
        "libc": h.libc,
        "pointer_width": h.pointer_width,
        "mutex_size": h.mutex_size,
        "mutex_align": h.mutex_align,
        "lock_kind_code": h.lock_kind_code,
        "value_size": h.value_size,
        "value_align": h.value_align,
        "type_tag": h.type_tag,
        "type_version": h.type_version,
        "creator_pid": h.creator_pid,
        "pid_namespace": h.pid_namespace,
        "created_unix": h.created_unix,
        "lock_offset": h.lock_offset,
        "lock_size": h.lock_size,
        "value_offset": h.value_offset,
        "total_size": h.total_size,
        "checksum": h.checksum,
        "checksum_ok": h.checksum_ok,
        "state": h.state,
        "notify_seq": h.notify_seq,
        "notify_waiters": h.notify_waiters,
        "handles": h.handles,
    })
}

pub(super) fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The state letter of process `pid` (`/proc/PID/stat` field 3: `R`, `S`,
/// `D`, `T` stopped, `t` traced, …), if it can be read.
pub(super) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

pub(super) fn holder_cell(i: &Inspection) -> String {
    let Some(h) = i.lock.holder else {
        return "-".into();
    };
    let who = match (h.pid, h.tid) {
        (Some(pid), Some(tid)) if pid != tid => format!("pid {pid} (tid {tid})"),
        (Some(pid), _) => format!("pid {pid}"),
        (None, Some(tid)) => format!("tid {tid}"),
        (None, None) => "?".into(),
    };
    match h.alive {
        Some(true) => match h.pid.and_then(process_state) {
            Some(st @ ('T' | 't')) => format!("{who} alive, stopped ({st})"),
            _ => format!("{who} alive"),
        },
        Some(false) => format!("{who} dead"),
        None => format!("{who} ?"),
    }
}

pub(super) fn print_table(rows: &[Inspection]) {
    let header = [
        "NAME", "SIZE", "TYPE", "LOCK", "STATE", "ATTACHED", "HOLDER", "CREATOR", "AGE", "UID",
        "MODE", "STALE", "REASON",
    ];
    let dash = || "-".to_string();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|i| {
            let h = i.header.as_ref();
            let attached = match i.attached {
                Attached::Unknown if !i.state.is_shmsync() => dash(),
                a => a.name().into(),
            };
            vec![
                i.name.clone(),
                i.size.map_or_else(dash, |s| s.to_string()),
                h.map_or_else(dash, |h| inspect::describe_type(h.value_size, h.type_tag)),
                i.lock.kind.map_or_else(dash, |k| k.name().into()),
                i.state.name().into(),
                attached,
                holder_cell(i),
                h.map_or_else(dash, |h| h.creator_pid.to_string()),
                i.age.map_or_else(dash, |a| human_age(a.as_secs())),
                i.uid.map_or_else(dash, |u| u.to_string()),
                i.mode.map_or_else(dash, |m| format!("{m:04o}")),
                i.leftover.map_or("no", |l| l.name()).into(),
                i.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |out: &mut std::io::StdoutLock<'_>, cells: &[String]| {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (k, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if k == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:w$}  "));
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(&mut out, &header.map(String::from));
    for row in &table {
        line(&mut out, row);
    }
}
