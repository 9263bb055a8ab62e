"""Frozen encoder + head vs fine-tuning vs the classic baseline: test figure and cost per recipe.

Each run goes through ``medmm.runner.run_task`` with the task's defaults plus ``model.mode`` (and
the data's column names and a seed); the classic baseline (TF-IDF + logistic regression for text,
32-px pixels + logistic regression for images) is fitted beside every run on the same split, so its
figure comes with each run. Three seeds = three splits and initialisations; mean ± sd of the test
headline metric, the wall time of each run and its phases (``data`` includes the frozen encoder's
pass over every document; a second seed reuses the cached embeddings: ``data.cache_dir`` is shared).

    python bench/frozen_vs_finetune.py --only iu-multiclass,padchest-8 --modes frozen
    python bench/frozen_vs_finetune.py --only dicom-demo --modes frozen,finetune
    python bench/frozen_vs_finetune.py --only padchest-8 --modes finetune --seeds 0 --set engine.max_steps=60

Data (offline): the IU chest X-ray report tasks of ``bench/accuracy.py`` (normal vs abnormal, the 5
most common single MeSH terms), the DICOM demo, and PadChest report labels (not tuned on by this
project: Spanish, stemmed reports from the PadChest label CSV in the torchxrayvision wheel, the 8
most common single-label findings, 60 reports each, split by patient). Fine-tuning cost per token
(``--tokens``) feeds ``model.mode=auto``'s estimate.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = {"iu-binary": "text-cls", "iu-multiclass": "text-cls", "padchest-8": "text-cls", "dicom-demo": "image-cls"}
PADCHEST = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
SKIP = {"exclude", "unchanged"}  # PadChest's non-finding labels


def padchest(tmp: Path, per_class: int = 60, classes: int = 8) -> tuple[Path, list[str]]:
    """The PadChest single-label report set (read from the installed wheel, never copied)."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("padchest-8 needs: pip install --no-deps torchxrayvision==1.5.7")
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / PADCHEST
    df = pd.read_csv(src, usecols=["ReportID", "PatientID", "Report", "Labels"], dtype=str).dropna()
    df = df.drop_duplicates("ReportID")
    labels = df["Labels"].map(lambda s: [x.strip() for x in ast.literal_eval(s) if x.strip()] if s.startswith("[") else [])
    one = df[labels.map(len) == 1].assign(label=labels[labels.map(len) == 1].str[0])
    one = one[~one["label"].isin(SKIP)]
    top = one["label"].value_counts().index[:classes]
    # (pandas may warn that apply sees the grouping column: kept, it is the sample the figures came from)
    small = (one[one["label"].isin(top)].groupby("label", group_keys=False)
             .apply(lambda g: g.sample(min(per_class, len(g)), random_state=0)))
    path = tmp / "padchest-8.csv"
    small.rename(columns={"ReportID": "report_id", "PatientID": "patient", "Report": "text"})[
        ["report_id", "patient", "text", "label"]].to_csv(path, index=False)
    return path, ["data.text_column=text", "data.label_column=label", "data.id_column=report_id",
                  "data.group_column=patient", "data.max_length=128"]


def build(name: str, tmp: Path, limit: int) -> tuple[Path, list[str]]:
    if name == "padchest-8":
        return padchest(tmp)
    from accuracy import build_data  # the IU tasks and the DICOM demo, as bench/accuracy.py builds them

    return build_data(name, tmp, limit)


def run_one(name: str, data: Path, overrides: list[str], mode: str, seed: int, out: Path, cache: Path) -> dict:
    import contextlib
    import io

    from medmm.plugins import get_registry
    from medmm.runner import resolved_config, run_task

    spec = get_registry().get("task", TASKS[name])
    extra = ["model.backbone=minilm-l6"] if TASKS[name] == "text-cls" else ["model.backbone=efficientnet_lite0"]
    cfg = resolved_config(spec, None, [*extra, *overrides, f"model.mode={mode}", f"seed={seed}",
                                       "engine.device=cpu", f"data.cache_dir={cache}", "engine.bootstrap=200"])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_task(spec, cfg, data, out, quiet=True)
    wall = time.perf_counter() - t0
    b = summary.get("baseline", {})
    phases = summary.get("phase_seconds", {})
    return {"data": name, "mode": mode, "seed": seed, "metric": b.get("headline"), "model": b.get("model"),
            "baseline": b.get("baseline"), "wall_s": round(wall, 1),
            "data_s": round(phases.get("data (read, split, preprocess)", float("nan")), 1),
            "train_s": round(phases.get("train", float("nan")), 1), "epochs": cfg.engine.epochs,
            "best_step": summary.get("best_step")}


def _ms(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="iu-multiclass,padchest-8,dicom-demo")
    ap.add_argument("--modes", default="frozen,finetune")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--limit", type=int, default=1000, help="documents of iu-binary")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, help="append the rows here (JSON lines)")
    args = ap.parse_args()
    import logging

    logging.getLogger("medmm").setLevel(logging.WARNING)
    print(f"load average {os.getloadavg()[0]:.1f} at start, {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medmm-frozen-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for name in args.only.split(","):
            (tmp / name).mkdir()
            data, overrides = build(name, tmp / name, args.limit)
            for mode in args.modes.split(","):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    row = run_one(name, data, [*overrides, *args.overrides], mode, seed,
                                  tmp / f"{name}-{mode}-{seed}", tmp / f"{name}-cache")
                    row["load"] = round(os.getloadavg()[0], 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with args.json.open("a") as f:
                            f.write(json.dumps(row) + "\n")
    print("\n| data | recipe | test metric | model | classic baseline | wall s (first / mean) | data s | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.only.split(","):
        for mode in args.modes.split(","):
            sel = [r for r in rows if r["data"] == name and r["mode"] == mode]
            if sel:
                print(f"| {name} | {mode} | {sel[0]['metric']} | {_ms([r['model'] for r in sel])} | "
                      f"{_ms([r['baseline'] for r in sel])} | {sel[0]['wall_s']:.0f} / "
                      f"{statistics.mean(r['wall_s'] for r in sel):.0f} | "
                      f"{statistics.mean(r['data_s'] for r in sel):.0f} | {statistics.mean(r['train_s'] for r in sel):.0f} |")


if __name__ == "__main__":
    main()
