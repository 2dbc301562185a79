//! Rows, rounds, medians, in-round ratios, the table and the results file.
//!
//! Method: every row runs once per round, in a rotated order, and a warm-up
//! round is discarded; a row's figure is the median over the rounds, and
//! its ratio to its baseline is the median of the ratios taken *within*
//! each round, so a slow phase of a shared machine hits both sides of a
//! ratio alike.

use std::fmt::Write as _;

/// Which direction is better for a section's unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One table section: the figure every row of it measures.
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub better: Better,
}

/// How a run was asked for.
pub struct Params {
    pub smoke: bool,
    pub rounds: usize,
    /// CPUs this process may use (from `sched_getaffinity`).
    pub cpus: Vec<usize>,
}

impl Params {
    /// An iteration count: `full` normally, a tiny one in smoke mode.
    pub fn iters(&self, full: u64) -> u64 {
        if self.smoke {
            (full / 1000).max(20)
        } else {
            full
        }
    }

    /// The `i`-th CPU (wrapping), for pinning child `i`.
    pub fn cpu(&self, i: usize) -> usize {
        self.cpus[i % self.cpus.len()]
    }
}

pub type RunFn<'a> = Box<dyn FnMut(&Params) -> Result<f64, String> + 'a>;

/// One row.
pub struct Case<'a> {
    pub section: &'static Section,
    pub name: String,
    /// The row this one's ratio is taken against (its `name`).
    pub baseline: Option<String>,
    /// What a holder's death does: "yes" (the next locker is told, as with
    /// `OwnerDied`), "freed" (the kernel releases it silently: `flock`),
    /// "no" (the lock is lost or wedged), "n/a" (not a lock).
    pub robust: &'static str,
    /// `None`: a slot for a row that comes with another branch.
    pub run: Option<RunFn<'a>>,
    /// What the slot waits for.
    pub pending: Option<&'static str>,
    /// Left out of this run by a command-line filter.
    pub skipped: bool,
    pub values: Vec<f64>,
}

/// The rows of one run, registered in table order.
#[derive(Default)]
pub struct Bench<'a> {
    pub cases: Vec<Case<'a>>,
    pub targets: Vec<Target>,
}

/// A target from the issue, checked against the measured figures.
pub struct Target {
    /// The words.
    pub text: &'static str,
    pub check: Check,
}

/// Rows are named `"SECTION/NAME"` (see [`key`]).
pub enum Check {
    /// Median over rounds of `num / den` (same round) must be ≤ `max`
    /// and/or ≥ `min`; with neither, it is shown for context.
    Ratio {
        num: String,
        den: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// The row's median must be ≤ `max` (in the section's unit).
    AtMost { case: String, max: f64 },
}

impl<'a> Bench<'a> {
    /// Adds a measured row.
    pub fn row(
        &mut self,
        section: &'static Section,
        name: impl Into<String>,
        baseline: Option<&str>,
        robust: &'static str,
        run: impl FnMut(&Params) -> Result<f64, String> + 'a,
    ) {
        self.cases.push(Case {
            section,
            name: name.into(),
            baseline: baseline.map(str::to_string),
            robust,
            run: Some(Box::new(run)),
            pending: None,
            skipped: false,
            values: Vec::new(),
        });
    }

    pub fn target(&mut self, text: &'static str, check: Check) {
        self.targets.push(Target { text, check });
    }

    /// The row named `name` in section `section`.
    fn index_in(&self, section: &str, name: &str) -> Option<usize> {
        self.cases
            .iter()
            .position(|c| c.section.id == section && c.name == name)
    }

    /// The row a target names as `"SECTION/NAME"`.
    fn index(&self, key: &str) -> Option<usize> {
        let (section, name) = key.split_once('/')?;
        self.index_in(section, name)
    }

    /// Checks that every baseline and target names a row.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.cases {
            if let Some(b) = &c.baseline {
                self.index_in(c.section.id, b)
                    .ok_or_else(|| format!("row {:?}: no baseline row {b:?}", c.name))?;
            }
        }
        for t in &self.targets {
            let names: Vec<&String> = match &t.check {
                Check::Ratio { num, den, .. } => vec![num, den],
                Check::AtMost { case, .. } => vec![case],
            };
            for n in names {
                self.index(n)
                    .ok_or_else(|| format!("target {:?}: no row {n:?}", t.text))?;
            }
        }
        Ok(())
    }

    /// Runs a warm-up round and `params.rounds` measured rounds, every row
    /// once per round, starting each round one row further on.
    pub fn run(&mut self, params: &Params) -> Result<(), String> {
        let n = self.cases.len();
        for round in 0..=params.rounds {
            let t0 = std::time::Instant::now();
            for j in 0..n {
                let c = &mut self.cases[(j + round) % n];
                if let Some(run) = c.run.as_mut() {
                    let v = run(params).map_err(|e| format!("{}: {e}", c.name))?;
                    if !v.is_finite() || v <= 0.0 {
                        return Err(format!("{}: measured {v}", c.name));
                    }
                    if round > 0 {
                        c.values.push(v);
                    }
                }
            }
            eprintln!(
                "round {round}/{}{} done in {:.1}s",
                params.rounds,
                if round == 0 { " (warm-up)" } else { "" },
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Per-round `num / den`.
    fn ratios(&self, num: usize, den: usize) -> Vec<f64> {
        let (a, b) = (&self.cases[num].values, &self.cases[den].values);
        a.iter().zip(b).map(|(x, y)| x / y).collect()
    }

    fn baseline_ratios(&self, i: usize) -> Option<Vec<f64>> {
        let c = &self.cases[i];
        let b = self.index_in(c.section.id, c.baseline.as_deref()?)?;
        if self.cases[i].values.is_empty() || self.cases[b].values.is_empty() {
            return None;
        }
        Some(self.ratios(i, b))
    }

    fn target_result(&self, t: &Target) -> (Option<f64>, Option<bool>) {
        match &t.check {
            Check::Ratio { num, den, min, max } => {
                let (Some(a), Some(b)) = (self.index(num), self.index(den)) else {
                    return (None, None);
                };
                if self.cases[a].values.is_empty() || self.cases[b].values.is_empty() {
                    return (None, None);
                }
                let r = median(&self.ratios(a, b));
                let ok = min.map_or(true, |m| r >= m) && max.map_or(true, |m| r <= m);
                (Some(r), Some(ok))
            }
            Check::AtMost { case, max } => {
                let Some(i) = self.index(case) else {
                    return (None, None);
                };
                if self.cases[i].values.is_empty() {
                    return (None, None);
                }
                let v = median(&self.cases[i].values);
                (Some(v), Some(v <= *max))
            }
        }
    }

    /// The table, as printed to stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut section: Option<&str> = None;
        let w = self
            .cases
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(10)
            .max(14);
        for (i, c) in self.cases.iter().enumerate() {
            if c.skipped {
                continue;
            }
            if section != Some(c.section.id) {
                section = Some(c.section.id);
                let better = match c.section.better {
                    Better::Lower => "lower is better",
                    Better::Higher => "higher is better",
                };
                let _ = writeln!(
                    out,
                    "\n## {} [{}, {better}]\n{:<w$}  {:>6}  {:>10}  {:>21}  {:>22}  vs",
                    c.section.title,
                    c.section.unit,
                    "row",
                    "robust",
                    "median",
                    "min..max",
                    "ratio (min..max)"
                );
            }
            if let Some(why) = c.pending {
                let _ = writeln!(out, "{:<w$}  {:>6}  pending: {why}", c.name, c.robust);
                continue;
            }
            let v = &c.values;
            let (lo, hi) = min_max(v);
            let ratio = match self.baseline_ratios(i) {
                Some(r) if c.baseline.as_deref() != Some(c.name.as_str()) => {
                    let (rl, rh) = min_max(&r);
                    format!(
                        "{:>6.3} ({:.2}..{:.2})  {}",
                        median(&r),
                        rl,
                        rh,
                        c.baseline.as_deref().unwrap_or("")
                    )
                }
                _ => format!("{:>22}", "(baseline)"),
            };
            let _ = writeln!(
                out,
                "{:<w$}  {:>6}  {:>10}  {:>21}  {ratio}",
                c.name,
                c.robust,
                fmt_num(median(v)),
                format!("{}..{}", fmt_num(lo), fmt_num(hi)),
            );
        }
        let _ = writeln!(out, "\n## Targets");
        for t in &self.targets {
            let (v, ok) = self.target_result(t);
            let verdict = match (ok, &t.check) {
                (
                    Some(_),
                    Check::Ratio {
                        min: None,
                        max: None,
                        ..
                    },
                ) => "(context)".to_string(),
                (Some(true), _) => "met".to_string(),
                (Some(false), _) => "MISSED".to_string(),
                (None, _) => "not measured".to_string(),
            };
            let shown = match (v, &t.check) {
                (Some(v), Check::Ratio { .. }) => format!("{v:.3}x"),
                (Some(v), Check::AtMost { case, .. }) => {
                    let i = self.index(case).expect("validated");
                    format!("{} {}", fmt_num(v), self.cases[i].section.unit)
                }
                _ => "-".to_string(),
            };
            let _ = writeln!(out, "{:<70}  {:>12}  {verdict}", t.text, shown);
        }
        out
    }

    /// The results as JSON (hand-written: the bench has no serde).
    pub fn json(&self, meta: &[(&str, String)]) -> String {
        let mut o = String::from("{\n  \"meta\": {");
        for (k, (key, val)) in meta.iter().enumerate() {
            let _ = write!(
                o,
                "{}\n    {}: {}",
                if k > 0 { "," } else { "" },
                q(key),
                q(val)
            );
        }
        o.push_str("\n  },\n  \"sections\": [");
        let mut seen: Vec<&str> = Vec::new();
        for c in self.cases.iter().filter(|c| !c.skipped) {
            if !seen.contains(&c.section.id) {
                let s = c.section;
                let _ = write!(
                    o,
                    "{}\n    {{\"id\": {}, \"title\": {}, \"unit\": {}, \"better\": {}}}",
                    if seen.is_empty() { "" } else { "," },
                    q(s.id),
                    q(s.title),
                    q(s.unit),
                    q(if s.better == Better::Lower {
                        "lower"
                    } else {
                        "higher"
                    })
                );
                seen.push(s.id);
            }
        }
        o.push_str("\n  ],\n  \"rows\": [");
        let mut first = true;
        for (i, c) in self.cases.iter().enumerate() {
            if c.skipped {
                continue;
            }
            let ratios = self.baseline_ratios(i);
            let _ = write!(
                o,
                "{}\n    {{\"section\": {}, \"name\": {}, \"robust\": {}, \"baseline\": {}, \"pending\": {}, \"values\": {}, \"median\": {}, \"ratios\": {}, \"ratio_median\": {}}}",
                if std::mem::take(&mut first) { "" } else { "," },
                q(c.section.id),
                q(&c.name),
                q(c.robust),
                c.baseline.as_deref().map_or("null".into(), q),
                c.pending.map_or("null".into(), q),
                nums(&c.values),
                if c.values.is_empty() { "null".into() } else { num(median(&c.values)) },
                ratios.as_deref().map_or("null".into(), nums),
                ratios.as_deref().map_or("null".into(), |r| num(median(r))),
            );
        }
        o.push_str("\n  ],\n  \"targets\": [");
        for (k, t) in self.targets.iter().enumerate() {
            let (v, ok) = self.target_result(t);
            let (kind, bound) = match &t.check {
                Check::Ratio { min, max, .. } => (
                    "ratio",
                    format!(
                        "{{\"min\": {}, \"max\": {}}}",
                        min.map_or("null".into(), num),
                        max.map_or("null".into(), num)
                    ),
                ),
                Check::AtMost { max, .. } => ("at_most", format!("{{\"max\": {}}}", num(*max))),
            };
            let _ = write!(
                o,
                "{}\n    {{\"text\": {}, \"kind\": {}, \"bound\": {bound}, \"measured\": {}, \"met\": {}}}",
                if k > 0 { "," } else { "" },
                q(t.text),
                q(kind),
                v.map_or("null".into(), num),
                ok.map_or("null".into(), |b| b.to_string()),
            );
        }
        o.push_str("\n  ]\n}\n");
        o
    }
}

/// How a target names a row.
pub fn key(section: &Section, name: &str) -> String {
    format!("{}/{}", section.id, name)
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// Three significant digits or so.
fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn q(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".into()
    }
}

fn nums(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|&x| num(x)).collect();
    format!("[{}]", parts.join(", "))
}
