"""How right each ``medmm demo``'s printed ETA is: the estimate against the time the run really had left.

Runs ``medmm demo TASK --quiet`` (defaults, a fresh folder each) one after the other and prints, per
demo, every estimate the run recorded (``summary.json`` ``eta_check``: when it was made, what it
said, what was really left) with its error, and the 1-minute load average before and after (on a
shared machine say which it was when quoting a figure). The goal (#29) is the firm estimate within
+-30 %: "after the first evaluation", or "after 25% of the steps" for a fit whose one evaluation
ends it (text-cls's one epoch). ``model.backbone=auto`` (tabular-risk) trains two candidates: the
run's first estimates are the first candidate's and count the second.

    python bench/eta_check.py [--tasks fusion,image-cls,tabular-risk,text-cls] [--set KEY=VALUE ...] [--keep DIR]
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

FIRM = ("after the first evaluation", "after 25% of the steps")


def check(task: str, overrides: list[str], root: Path) -> list[dict[str, object]]:
    out = root / task
    cmd = [sys.executable, "-m", "medmm", "demo", task, "--out", str(out), "--quiet"]
    for item in overrides:
        cmd += ["--set", item]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load = f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"
    if proc.returncode != 0 or not (out / "summary.json").is_file():
        return [{"task": task, "rc": proc.returncode, "load": load, "error": proc.stderr.strip()[-300:]}]
    rows = []
    for i, e in enumerate(json.loads((out / "summary.json").read_text()).get("eta_check") or []):
        actual, predicted = float(e["actual_s"]), float(e["predicted_s"])
        rows.append({"task": task, "n": i + 1, "label": e["label"], "firm": str(e["label"]).startswith(FIRM),
                     "at_s": e["at_s"], "predicted_s": predicted, "actual_s": actual,
                     "error": round((predicted - actual) / actual, 3) if actual > 0 else None,
                     "wall_s": round(wall, 1), "load": load})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="fusion,image-cls,tabular-risk,text-cls")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--keep", type=Path, help="write the runs here (a new folder) instead of a temporary one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) if args.keep is None else args.keep
        for task in args.tasks.split(","):
            for row in check(task.strip(), args.overrides, root):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
