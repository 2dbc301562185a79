#!/usr/bin/env python3
"""Guard against creeping cost: instructions per uncontended
lock + increment + unlock, counted by callgrind, against a recorded figure.

    python3 scripts/callgrind_guard.py [--bin PATH] [--baseline FILE]
                                       [--record REASON]

* Builds (if --bin is not given) and finds the `callgrind` bench binary
  (`benches/callgrind.rs`), runs it under `valgrind --tool=callgrind` with
  N1 and N2 iterations for `cell` (ShmCell<u64>, robust mutex) and `raw` (a
  bare robust pthread mutex), and reports instructions per iteration =
  (total(N2) - total(N1)) / (N2 - N1): start-up and teardown cancel, and the
  figure is exact (the same on every run of the same build).
* Fails (exit 1) when ShmCell's figure exceeds the recorded one
  (default `benches/callgrind.toml`) by more than the tolerance (10 %).
* --record REASON: writes the measured figures to the baseline file with
  the reason, date, toolchain, glibc and valgrind versions. Re-record on
  purpose only: a change that adds work to the lock path, or a new
  toolchain/glibc that moves both figures; say which in REASON.

Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N1, N2 = 100_000, 200_000
TOLERANCE = 0.10
KINDS = ("cell", "raw")


def find_binary():
    out = subprocess.run(
        ["cargo", "bench", "--bench", "callgrind", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "callgrind" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("callgrind_guard: no executable for the `callgrind` bench")


def collected(binary, kind, n):
    r = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", binary, kind, str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if r.returncode != 0 or not m:
        sys.exit(f"callgrind_guard: valgrind {kind} {n} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return int(m.group(1))


def per_iteration(binary, kind):
    return (collected(binary, kind, N2) - collected(binary, kind, N1)) / (N2 - N1)


def read_baseline(path):
    vals = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                k, v = (x.strip() for x in line.split("=", 1))
                vals[k] = v.strip('"')
    return vals


def version(cmd):
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def record(path, figures, reason):
    glibc = version(["ldd", "--version"])
    with open(path, "w") as f:
        f.write(
            "# Instructions per uncontended lock + increment + unlock, one process,\n"
            "# counted by `valgrind --tool=callgrind` on `benches/callgrind.rs`\n"
            "# ((total(N2) - total(N1)) / (N2 - N1), exact for a given build).\n"
            "# CI (`.ci/run`) fails when `cell` grows by more than 10 % over this.\n"
            "# Re-record on purpose, with the reason:\n"
            "#   python3 scripts/callgrind_guard.py --record \"REASON\"\n"
            f"cell = {figures['cell']:.1f}\n"
            f"raw = {figures['raw']:.1f}\n"
            f"recorded = \"{datetime.date.today().isoformat()}\"\n"
            f"reason = \"{reason.replace(chr(34), chr(39))}\"\n"
            f"rustc = \"{version(['rustc', '--version'])}\"\n"
            f"glibc = \"{glibc}\"\n"
            f"valgrind = \"{version(['valgrind', '--version'])}\"\n"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="the callgrind bench binary (default: build and find it)")
    ap.add_argument("--baseline", default=os.path.join(ROOT, "benches", "callgrind.toml"))
    ap.add_argument("--record", metavar="REASON", help="write the measured figures as the new baseline")
    args = ap.parse_args()
    binary = args.bin or find_binary()
    figures = {k: per_iteration(binary, k) for k in KINDS}
    print(f"instructions per lock+increment+unlock: ShmCell {figures['cell']:.1f}, "
          f"raw robust pthread mutex {figures['raw']:.1f} (ShmCell adds {figures['cell'] - figures['raw']:.1f})")
    if args.record:
        record(args.baseline, figures, args.record)
        print(f"recorded in {os.path.relpath(args.baseline, ROOT)}")
        return 0
    base = read_baseline(args.baseline)
    limit = float(base["cell"]) * (1 + TOLERANCE)
    print(f"recorded: ShmCell {base['cell']}, raw {base.get('raw')} ({base.get('recorded')}: {base.get('reason')}); "
          f"limit for ShmCell {limit:.1f}")
    if figures["cell"] > limit:
        print(
            f"FAIL: ShmCell's lock + unlock now costs {figures['cell']:.1f} instructions, more than 10 % over "
            f"the recorded {base['cell']}.\n"
            f"If the raw mutex moved as well ({base.get('raw')} -> {figures['raw']:.1f}), the toolchain or glibc "
            f"changed; else a change added work to the lock path.\n"
            f"If that is intended, re-record on purpose and commit the file:\n"
            f"  python3 scripts/callgrind_guard.py --record \"<why the count moved>\"",
            file=sys.stderr,
        )
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
