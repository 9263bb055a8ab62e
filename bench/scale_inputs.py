"""Peak memory of ``medmm predict`` / ``evaluate`` / ``explain`` against input size, per input format (#30).

    python bench/scale_inputs.py                      # CSV, JSON Lines, Parquet at 1,000 / 100,000 / 1,000,000 rows
    python bench/scale_inputs.py --rows 20000 --formats jsonl,parquet --commands predict,explain
    python bench/scale_inputs.py --whole              # also each command with the old whole read (for comparison)

One 1,000-row tabular-risk run (35 columns, bench/scale.py's synthetic table); each command is a fresh process
(peak RSS of the child), one at a time. The 1,000-row input is the floor (the libraries); the figures are peak
RSS above it at ``--rows`` and 10x, and their ratio (goal: flat, i.e. far below 10x). ``--whole`` runs the same
command with ``medmm.data.readers.streams`` answering False: the whole-read path of earlier versions.
``bench/scale.py --parts inputs`` runs this too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import peak_rss_of, table  # noqa: E402

WHOLE = ("import sys, medmm.data.readers as r; r.streams = lambda path: False; from medmm.cli import main; "
         "sys.argv = ['medmm', *sys.argv[1:]]; main()")


def _convert(csv: Path, fmt: str) -> Path:
    import pandas as pd

    if fmt == "csv":
        return csv
    out = csv.with_suffix(".jsonl" if fmt == "jsonl" else ".parquet")
    if not out.exists():
        df = pd.read_csv(csv)
        if fmt == "jsonl":
            df.to_json(out, orient="records", lines=True)
        else:
            df.to_parquet(out, row_group_size=65_536)
    return out


def _command(kind: str, run: Path, data: Path, out: Path, whole: bool) -> list[str]:
    head = [sys.executable, "-c", WHOLE] if whole else [sys.executable, "-m", "medmm"]
    if kind == "predict":
        return [*head, "predict", str(run), "--data", str(data), "--out", str(out.with_suffix(".csv"))]
    if kind == "evaluate":
        return [*head, "evaluate", str(run), "--data", str(data), "--out", str(out), "--no-card"]
    return [*head, "explain", str(run), "--data", str(data), "--out", str(out), "--limit", "5", "--split", "all"]


def bench_inputs(rows: int, formats: tuple[str, ...], commands: tuple[str, ...], whole: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medmm-inputs-") as tmp_s:
        tmp = Path(tmp_s)
        run = tmp / "run"
        sets = ["data.target=y", "engine.epochs=1", "engine.bootstrap=0", "engine.baseline=none",
                "model.backbone=linear", "engine.device=cpu"]
        secs, _, proc = peak_rss_of([sys.executable, "-m", "medmm", "run", "tabular-risk", "--data",
                                     str(table(tmp / "t1000.csv", 1000)), "--out", str(run), "--quiet",
                                     *[a for s in sets for a in ("--set", s)]])
        if proc.returncode:
            print(f"tabular-risk 1,000-row run failed: {proc.stderr[-800:]}")
            return out
        sizes = (1000, rows, rows * 10)
        for n in sizes[1:]:
            table(tmp / f"t{n}.csv", n)
        for fmt in formats:
            for kind in commands:
                for mode in ("streamed", "whole") if whole else ("streamed",):
                    got: dict[int, dict[str, float]] = {}
                    for n in sizes:
                        data = _convert(tmp / f"t{n}.csv", fmt)
                        dest = tmp / f"{kind}-{fmt}-{mode}-{n}"
                        secs, rss, proc = peak_rss_of(_command(kind, run, data, dest, mode == "whole"))
                        shutil.rmtree(dest, ignore_errors=True)
                        if proc.returncode:
                            print(f"{kind} {fmt} {mode} {n:,} rows failed: {proc.stderr[-600:]}", flush=True)
                            break
                        above = max(rss - got[1000]["mb"], 0.0) if got else 0.0
                        got[n] = {"s": secs, "mb": rss, "above": above}
                        print(f"{kind} {fmt} {mode} {n:,} rows: {secs:.1f} s, peak RSS {rss:.0f} MB"
                              + (f" ({above:.0f} MB above 1,000 rows: {above * 2**20 / n:.0f} B/row)" if n != 1000 else ""),
                              flush=True)
                    out[f"{kind} {fmt} {mode}"] = got
                    a, b = sizes[1:]
                    if a in got and b in got:
                        ratio = got[b]["above"] / got[a]["above"] if got[a]["above"] > 0 else float("nan")
                        print(f"{kind} {fmt} {mode}: peak RSS above the floor {got[a]['above']:.0f} -> "
                              f"{got[b]['above']:.0f} MB for 10x rows ({ratio:.1f}x); time {got[b]['s'] / got[a]['s']:.1f}x",
                              flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="the smaller input (the larger is 10x)")
    ap.add_argument("--formats", default="csv,jsonl,parquet")
    ap.add_argument("--commands", default="predict,evaluate,explain")
    ap.add_argument("--whole", action="store_true", help="also the whole-read path (streams() answering False)")
    args = ap.parse_args(argv)
    return bench_inputs(args.rows, tuple(args.formats.split(",")), tuple(args.commands.split(",")), args.whole)


if __name__ == "__main__":
    main()
