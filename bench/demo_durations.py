"""How long each ``medmm demo`` takes with its defaults, and whether it beats its classic baseline.

Runs ``medmm demo TASK`` (defaults, a fresh folder each) one after the other and prints, per demo:
wall-clock minutes, the test headline metric with its CI, the baseline's figure, and the load
average before and after (on a shared machine the timings only mean something when the load is
low: say which it was when quoting them).

    python bench/demo_durations.py [--tasks image-cls,text-cls,tabular-risk,fusion] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _round(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


def run_demo(task: str, overrides: list[str], root: Path) -> dict[str, object]:
    out = root / task
    cmd = [sys.executable, "-m", "medmm", "demo", task, "--out", str(out), "--quiet"]
    for item in overrides:
        cmd += ["--set", item]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    minutes = (time.perf_counter() - t0) / 60
    row: dict[str, object] = {"task": task, "rc": proc.returncode, "minutes": round(minutes, 2),
                              "load_before": round(load0, 1), "load_after": round(os.getloadavg()[0], 1)}
    summary = out / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        base = data.get("baseline") or {}
        head = base.get("headline") or data.get("monitor")
        row.update({"headline": head, "model": _round(data.get("metrics", {}).get(head)),
                    "ci": [_round(v) for v in data.get("ci", {}).get(head, [])],
                    "baseline": _round(base.get("baseline")), "baseline_kind": base.get("description")})
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="image-cls,text-cls,tabular-risk,fusion")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    print(f"cpu count {os.cpu_count()}; threads OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            print(json.dumps(run_demo(task.strip(), args.overrides, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
