"""Peak memory of reading a table whole and of its data fingerprint, per format (#30).

    python bench/read_memory.py                     # CSV, Parquet, JSON Lines at 100,000 and 1,000,000 rows
    python bench/read_memory.py --rows 20000 --formats jsonl --what fingerprint

bench/scale.py's synthetic table (35 columns, labelled); Parquet with row groups of 65,536 rows and JSON Lines as
``pandas`` writes them (bench/scale_inputs.py's files). Each figure is a fresh process, one at a time: its peak RSS
above the RSS it had with the libraries imported, the seconds, and a short hash of the result (the fingerprint, or
the frame's column digests and dtypes), which must be equal across formats' sizes only where the data is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import table  # noqa: E402
from scale_inputs import _convert  # noqa: E402

CHILD = r"""
import hashlib, json, os, sys, time
import numpy, pandas, pyarrow, pyarrow.parquet  # noqa: F401  (the libraries, before the figure's start)
import medmm.fingerprint as f
import medmm.data.readers as r
with open("/proc/self/statm") as fh:
    base = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
t = time.perf_counter()
if sys.argv[1] == "fingerprint":
    out = f.fingerprint(sys.argv[2])
else:
    df = r.read_table(sys.argv[2])
    out = {"rows": len(df), "columns": {str(c): f._column_digest(df[c]) for c in df.columns},
           "dtypes": [str(d) for d in df.dtypes]}
s = time.perf_counter() - t
with open("/proc/self/status") as fh:  # this process's own high-water mark (ru_maxrss counts the parent's at fork)
    peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
print(json.dumps({"s": s, "above": peak - base, "hash": hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:12]}))
"""


def measure(what: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", CHILD, what, str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="the smaller table (the larger is 10x)")
    ap.add_argument("--formats", default="csv,parquet,jsonl")
    ap.add_argument("--what", default="fingerprint,read_table")
    args = ap.parse_args(argv)
    got: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medmm-read-") as tmp_s:
        tmp = Path(tmp_s)
        for n in (args.rows, args.rows * 10):
            csv = table(tmp / f"t{n}.csv", n)
            for fmt in args.formats.split(","):
                path = _convert(csv, fmt)
                for what in args.what.split(","):
                    r = got[f"{what} {fmt} {n}"] = measure(what, path)
                    load = Path("/proc/loadavg").read_text().split()[0]
                    print(f"{what} {fmt} {n:,} rows: {r['above']:.0f} MB above the libraries, {r['s']:.1f} s, "
                          f"result {r['hash']} (load {load})", flush=True)
    return got


if __name__ == "__main__":
    main()
