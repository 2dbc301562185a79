#!/usr/bin/env python3
"""Turn the results of `cargo bench --bench locks` into a chart and a table.

    python3 scripts/bench_chart.py [RESULTS.json] [--svg OUT.svg]
                                   [--doc BENCHMARKS.md] [--record OUT.json]

* RESULTS.json: default `$CARGO_TARGET_DIR/shmsync-bench/locks.json`
  (else `target/shmsync-bench/locks.json`).
* --svg: the chart (default `docs/bench/locks.svg`): one bar per row, the
  in-round ratio to the section's baseline on a log scale, targets marked.
* --doc: rewrites the table between `<!-- bench-table:begin -->` and
  `<!-- bench-table:end -->` in that file (default `BENCHMARKS.md`; `-` to
  skip).
* --record: copies the results next to the chart (default
  `docs/bench/locks.json`; `-` to skip), so the chart can be regenerated.

Python 3 standard library only; the SVG is written by hand.
"""

import argparse
import html
import json
import math
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_results():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "shmsync-bench", "locks.json")


def fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def kind_of(name):
    """Colour class of a row: ours, peer crate, or raw OS call."""
    if name.startswith(("ShmCell", "RobustMutex")):
        return "ours"
    if name.startswith(("raw_sync", "process-sync")):
        return "peer"
    return "raw"


def rows_by_section(res):
    order = [s["id"] for s in res["sections"]]
    by = {sid: [] for sid in order}
    for r in res["rows"]:
        by.setdefault(r["section"], []).append(r)
    return [(s, by[s["id"]]) for s in res["sections"]]


# ----------------------------------------------------------------- markdown


def markdown(res):
    out = []
    meta = res["meta"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(int(meta.get("date_unix", "0") or 0)))
    out.append(
        f"Run of {when}: {meta.get('rounds')} rounds, CPUs {meta.get('cpus')}, "
        f"{meta.get('cpu_model')}, Linux {meta.get('kernel')}, glibc {meta.get('glibc')}, "
        f"load average {meta.get('loadavg_before')} before and {meta.get('loadavg_after')} after "
        f"({meta.get('seconds')} s){' — SMOKE counts, not a measurement' if meta.get('smoke') == 'true' else ''}."
    )
    out.append("")
    for sec, rows in rows_by_section(res):
        better = "lower is better" if sec["better"] == "lower" else "higher is better"
        out.append(f"**{sec['title']}** ({sec['unit']}, {better})")
        out.append("")
        out.append("| row | robust | median | min..max | ratio to baseline (min..max) | baseline |")
        out.append("|---|:-:|--:|--:|--:|---|")
        for r in rows:
            name = "`" + r["name"] + "`"
            if r["pending"]:
                out.append(f"| {name} | {r['robust']} | pending: {r['pending']} | | | {r['baseline'] or ''} |")
                continue
            vals = r["values"]
            lo, hi = (min(vals), max(vals)) if vals else (None, None)
            if r["baseline"] == r["name"]:
                ratio, base = "(baseline)", ""
            elif r["ratios"]:
                ratio = f"{r['ratio_median']:.3f} ({min(r['ratios']):.2f}..{max(r['ratios']):.2f})"
                base = r["baseline"]
            else:
                ratio, base = "", ""
            out.append(f"| {name} | {r['robust']} | {fmt(r['median'])} | {fmt(lo)}..{fmt(hi)} | {ratio} | {base} |")
        out.append("")
    out.append("**Targets** (issue 5; `(15)`: issue 15)")
    out.append("")
    out.append("| target | measured | verdict |")
    out.append("|---|--:|---|")
    for t in res["targets"]:
        if t["kind"] == "pending":
            m, v = "-", f"pending: {t['bound']['why']}"
        else:
            m = "-" if t["measured"] is None else (
                f"{t['measured']:.3f}x" if t["kind"] == "ratio" else f"{fmt(t['measured'])} us")
            bound = t["bound"]
            if t["kind"] == "ratio" and bound.get("min") is None and bound.get("max") is None:
                v = "(context)"
            else:
                v = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        out.append(f"| {t['text']} | {m} | {v} |")
    return "\n".join(out) + "\n"


def update_doc(path, table):
    begin, end = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    a, b = text.find(begin), text.find(end)
    if a < 0 or b < a:
        sys.exit(f"{path}: markers {begin} / {end} not found")
    text = text[: a + len(begin)] + "\n" + table + text[b:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------------- svg

COLOURS = {"ours": "#2b6cb0", "peer": "#dd6b20", "raw": "#718096"}
LABEL_W = 330  # row names
PLOT_W = 480  # bars
VALUE_W = 300  # figures
ROW_H = 18
LO, HI = -3, 3  # log2 range of the axis: 1/8 .. 8 (beyond: clipped, marked)


def svg(res):
    width = LABEL_W + PLOT_W + VALUE_W + 20
    x0 = LABEL_W + PLOT_W * (0 - LO) / (HI - LO)  # where ratio 1 sits

    def xr(ratio):
        l2 = max(LO, min(HI, math.log2(ratio)))
        return LABEL_W + PLOT_W * (l2 - LO) / (HI - LO)

    # Target bounds per (section, row name), drawn as red ticks.
    marks = {}
    for t in res["targets"]:
        if t["kind"] != "ratio" or t["measured"] is None:
            continue
        b = t["bound"]
        lim = b.get("max") if b.get("max") is not None else b.get("min")
        if lim is None:
            continue
        marks.setdefault(t["text"], lim)

    parts = []
    y = 50
    for sec, rows in rows_by_section(res):
        better = "lower is better" if sec["better"] == "lower" else "higher is better"
        bases = {r["baseline"] for r in rows if r["baseline"]}
        base = bases.pop() if len(bases) == 1 else "the row's baseline (see table)"
        y += 10
        parts.append(
            f'<text x="10" y="{y + 12}" class="sec">{html.escape(sec["title"])}</text>'
        )
        y += 18
        parts.append(
            f'<text x="10" y="{y + 11}" class="sub">{html.escape(sec["unit"])}, {better}; '
            f'bar = ratio to {html.escape(base)} in the same round</text>'
        )
        y += 18
        top = y
        for r in rows:
            kind = kind_of(r["name"])
            cy = y + ROW_H / 2
            parts.append(
                f'<text x="{LABEL_W - 8}" y="{cy + 4}" class="lbl" text-anchor="end">'
                f'{html.escape(r["name"])}{"" if r["robust"] != "no" else " *"}</text>'
            )
            if r["pending"]:
                parts.append(
                    f'<rect x="{x0 - 30}" y="{y + 3}" width="60" height="{ROW_H - 6}" '
                    f'class="pending"/><text x="{LABEL_W + PLOT_W + 8}" y="{cy + 4}" '
                    f'class="val">pending: {html.escape(r["pending"])}</text>'
                )
            elif r["baseline"] == r["name"]:
                parts.append(
                    f'<rect x="{x0 - 1.5}" y="{y + 2}" width="3" height="{ROW_H - 4}" fill="#000"/>'
                    f'<text x="{LABEL_W + PLOT_W + 8}" y="{cy + 4}" class="val">'
                    f"baseline, {fmt(r['median'])} {html.escape(sec['unit'])}</text>"
                )
            elif r["ratio_median"]:
                rr = r["ratio_median"]
                xa, xb = sorted((x0, xr(rr)))
                parts.append(
                    f'<rect x="{xa:.1f}" y="{y + 3}" width="{max(xb - xa, 1.5):.1f}" '
                    f'height="{ROW_H - 6}" fill="{COLOURS[kind]}"/>'
                )
                if not 2.0**LO <= rr <= 2.0**HI:  # clipped: an arrowhead at the edge
                    xe, d = (xb, 7) if rr > 1 else (xa, -7)
                    parts.append(
                        f'<path d="M{xe:.1f},{y + 1} l{d},{ROW_H / 2 - 1} l{-d},{ROW_H / 2 - 1} z" '
                        f'fill="{COLOURS[kind]}"/>'
                    )
                lo, hi = min(r["ratios"]), max(r["ratios"])
                parts.append(
                    f'<line x1="{xr(lo):.1f}" x2="{xr(hi):.1f}" y1="{cy}" y2="{cy}" class="range"/>'
                )
                parts.append(
                    f'<text x="{LABEL_W + PLOT_W + 8}" y="{cy + 4}" class="val">'
                    f"{rr:.3f}x  ({fmt(r['median'])} {html.escape(sec['unit'])})</text>"
                )
            y += ROW_H
        # Axis for the section: ticks at powers of two.
        for l2 in range(LO, HI + 1):
            x = LABEL_W + PLOT_W * (l2 - LO) / (HI - LO)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{y}" '
                f'class="{"one" if l2 == 0 else "grid"}"/>'
            )
            label = f"{2 ** l2:g}" if l2 >= 0 else f"1/{2 ** -l2:g}"
            parts.append(f'<text x="{x:.1f}" y="{y + 12}" class="tick" text-anchor="middle">{label}x</text>')
        y += 22

    # Targets as a list under the chart.
    y += 6
    parts.append(f'<text x="10" y="{y + 12}" class="sec">Targets (issue 5; (15): issue 15)</text>')
    y += 20
    for t in res["targets"]:
        if t["kind"] == "pending":
            verdict, cls = "pending: " + t["bound"]["why"], "pend"
        elif t["measured"] is None:
            verdict, cls = "not measured", "pend"
        else:
            shown = f"{t['measured']:.3f}x" if t["kind"] == "ratio" else f"{fmt(t['measured'])} us"
            b = t["bound"]
            if t["kind"] == "ratio" and b.get("min") is None and b.get("max") is None:
                verdict, cls = f"{shown} (context)", "pend"
            elif t["met"]:
                verdict, cls = f"{shown} met", "met"
            else:
                verdict, cls = f"{shown} MISSED", "miss"
        parts.append(
            f'<text x="20" y="{y + 12}" class="lbl">{html.escape(t["text"])}</text>'
            f'<text x="{LABEL_W + PLOT_W + 8}" y="{y + 12}" class="{cls}">{html.escape(verdict)}</text>'
        )
        y += 17

    meta = res["meta"]
    y += 10
    notes = [
        f"{meta.get('rounds')} rounds, medians; CPUs {meta.get('cpus')}; {meta.get('cpu_model')}; "
        f"glibc {meta.get('glibc')}; load average {meta.get('loadavg_before')} before, "
        f"{meta.get('loadavg_after')} after" + (" (SMOKE counts)" if meta.get("smoke") == "true" else ""),
        "Blue: shmsync; orange: peer crates; grey: raw OS calls; * = not robust to a holder's death; "
        "thin line = min..max of the per-round ratios; arrowhead = beyond the axis.",
    ]
    for note in notes:
        parts.append(f'<text x="10" y="{y + 12}" class="sub">{html.escape(note)}</text>')
        y += 16
    y += 8
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
        f'viewBox="0 0 {width} {y}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">'
        "<style>"
        ".sec{font-size:14px;font-weight:bold;fill:#1a202c}"
        ".sub{font-size:11px;fill:#4a5568}"
        ".lbl{font-size:12px;fill:#1a202c}"
        ".val{font-size:11px;fill:#2d3748}"
        ".tick{font-size:10px;fill:#718096}"
        ".grid{stroke:#e2e8f0;stroke-width:1}"
        ".one{stroke:#1a202c;stroke-width:1}"
        ".range{stroke:#1a202c;stroke-width:1}"
        ".pending{fill:none;stroke:#a0aec0;stroke-dasharray:4 3}"
        ".met{font-size:12px;fill:#276749;font-weight:bold}"
        ".miss{font-size:12px;fill:#c53030;font-weight:bold}"
        ".pend{font-size:12px;fill:#4a5568}"
        "</style>"
        f'<rect width="{width}" height="{y}" fill="#fff"/>'
        f'<text x="10" y="26" font-size="18" font-weight="bold" fill="#1a202c">'
        "shmsync locks bench: ratio to the raw baseline, same round (log scale)</text>"
    )
    return head + "".join(parts) + "</svg>\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default=default_results())
    ap.add_argument("--svg", default=os.path.join(ROOT, "docs", "bench", "locks.svg"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--record", default=os.path.join(ROOT, "docs", "bench", "locks.json"))
    a = ap.parse_args()
    with open(a.results, encoding="utf-8") as f:
        res = json.load(f)
    os.makedirs(os.path.dirname(os.path.abspath(a.svg)), exist_ok=True)
    with open(a.svg, "w", encoding="utf-8") as f:
        f.write(svg(res))
    print(f"chart: {a.svg}")
    table = markdown(res)
    if a.doc != "-":
        update_doc(a.doc, table)
        print(f"table: {a.doc}")
    else:
        sys.stdout.write(table)
    if a.record != "-" and os.path.abspath(a.record) != os.path.abspath(a.results):
        os.makedirs(os.path.dirname(os.path.abspath(a.record)), exist_ok=True)
        shutil.copyfile(a.results, a.record)
        print(f"results: {a.record}")


if __name__ == "__main__":
    main()
