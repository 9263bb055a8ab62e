"""bf16 autocast vs fp32 on this CPU: ``engine.cpu_bf16=auto`` against ``off``, same seeds, same data.

Each run is the ``medmm`` command a user types (``medmm run text-cls`` on the text demo's reports, the
first ``--limit`` of them, so that val / test evaluations stay seconds; ``medmm run text-cls`` on the
PadChest report set of ``bench/frozen_vs_finetune.py``; ``medmm demo image-cls`` with
``model.mode=finetune``), once with ``--set engine.cpu_bf16=auto`` and once with ``off``, per seed. The
bench reads each run's ``summary.json`` (val monitor, test headline metric, train phase seconds) and
``metrics.jsonl`` (optimizer steps, training samples/s timed from the first step, so without the probe)
and prints mean ± sd per task and precision, and the time-per-sample ratio bf16 / fp32 (per seed, same
batches, then mean ± sd). ``auto`` prints which precision the probe chose; a run
that fell back to fp32 is marked.

    python bench/cpu_bf16.py --only text-demo,padchest-8,image-demo --seeds 0,1,2 --max-steps 8 --limit 600
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

def command(name: str, tmp: Path, out: Path, seed: int, mode: str, max_steps: int, limit: int) -> list[str]:
    """The medmm command line of one run."""
    common = ["--out", str(out), "--quiet", "--set", f"seed={seed}", "--set", f"engine.cpu_bf16={mode}",
              "--set", "engine.device=cpu", "--set", "engine.bootstrap=0", "--set", f"engine.max_steps={max_steps}"]
    if name == "text-demo":  # the demo's reports (IU chest X-ray, normal vs abnormal), the first --limit of them
        from accuracy import build_data

        data = tmp / "iu-binary.csv"
        overrides = ["data.text_column=text", "data.id_column=report_id", "data.max_length=128",
                     "data.label_column=label"]
        if not data.exists():
            data, overrides = build_data("iu-binary", tmp, limit)
        sets = [x for o in overrides for x in ("--set", o)]
        return ["medmm", "run", "text-cls", "--data", str(data), *common, "--set", "model.backbone=minilm-l6",
                "--set", "model.mode=finetune", *sets]
    if name == "image-demo":
        return ["medmm", "demo", "image-cls", *common, "--set", "model.mode=finetune"]
    if name == "padchest-8":
        from frozen_vs_finetune import padchest

        data = tmp / "padchest-8.csv"
        overrides = ["data.text_column=text", "data.label_column=label", "data.id_column=report_id",
                     "data.group_column=patient", "data.max_length=128"]
        if not data.exists():
            data, overrides = padchest(tmp)
        sets = [x for o in overrides for x in ("--set", o)]
        return ["medmm", "run", "text-cls", "--data", str(data), *common, "--set", "model.backbone=minilm-l6",
                "--set", "model.mode=finetune", *sets]
    raise SystemExit(f"unknown data set: {name}")


def read_run(out: Path, stdout: str) -> dict:
    """Val monitor, test headline, steps, train seconds and the precision the run trained in."""
    s = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    steps = max((r.get("step", 0) for r in train), default=0)
    rate = train[-1].get("samples_per_s") if train else None  # timed from the epoch's first step: no probe
    headline = s.get("monitor") or "auroc"  # the task's headline: AUROC (binary), macro-F1 (multiclass)
    train_s = s.get("phase_seconds", {}).get("train")
    return {"val": s.get("best_value"), "monitor": s.get("monitor"), "test": s.get("metrics", {}).get(headline),
            "headline": headline, "steps": steps, "train_s": train_s,
            "samples_per_s": rate,
            "chose": "bf16" if "training in bf16" in stdout else "fp32"}


def _ms(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def table(rows: list[dict], names: list[str]) -> None:
    """The markdown table: mean ± sd per data set and precision, and the bf16 / fp32 time-per-sample ratio."""
    print("\n| data | cpu_bf16 | trained in | val monitor | test headline | samples/s | train phase s (probe "
          "included) | bf16 / fp32 time per sample |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for mode in ("off", "auto"):
            sel = [r for r in rows if r["data"] == name and r["cpu_bf16"] == mode]
            if not sel:
                continue
            ratios = ""
            if mode == "auto":
                base = {r["seed"]: r["samples_per_s"] for r in rows if r["data"] == name and r["cpu_bf16"] == "off"}
                ratios = _ms([base[r["seed"]] / r["samples_per_s"] for r in sel
                              if r["samples_per_s"] and base.get(r["seed"])])
            chose = "/".join(sorted({r["chose"] for r in sel}))
            print(f"| {name} | {mode} | {chose} | {sel[0]['monitor']} {_ms([r['val'] for r in sel])} | "
                  f"{sel[0]['headline']} {_ms([r['test'] for r in sel])} | {_ms([r['samples_per_s'] for r in sel])} | "
                  f"{_ms([r['train_s'] for r in sel])} | {ratios} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="text-demo,padchest-8,image-demo")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-steps", type=int, default=30, help="engine.max_steps of every run")
    ap.add_argument("--limit", type=int, default=600, help="documents of the text demo's reports")
    ap.add_argument("--json", type=Path, help="append the rows here (JSON lines)")
    ap.add_argument("--from-json", type=Path, nargs="+", help="print the table of rows saved by --json; run nothing")
    args = ap.parse_args()
    if args.from_json:
        rows = [json.loads(line) for p in args.from_json for line in p.read_text().splitlines() if line.strip()]
        table(rows, list(dict.fromkeys(r["data"] for r in rows)))
        return
    print(f"load average {os.getloadavg()[0]:.1f} at start, {os.cpu_count()} CPUs", flush=True)
    rows = []
    names = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="medmm-bf16-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for name in names:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for mode in ("off", "auto"):  # interleaved: both precisions see the same load drift
                    out = tmp / f"{name}-{mode}-{seed}"
                    proc = subprocess.run(command(name, tmp, out, seed, mode, args.max_steps, args.limit),
                                          capture_output=True, text=True, check=False)
                    if proc.returncode:
                        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                        raise SystemExit(f"{name} {mode} seed {seed} failed ({proc.returncode})")
                    row = {"data": name, "cpu_bf16": mode, "seed": seed, **read_run(out, proc.stdout + proc.stderr),
                           "load": round(os.getloadavg()[0], 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with args.json.open("a") as f:
                            f.write(json.dumps(row) + "\n")
    table(rows, names)

if __name__ == "__main__":
    main()
