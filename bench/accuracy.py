"""Default medmm vs the classic baseline it fits beside every run, on the data sets that ship.

Each run goes through ``medmm.runner.run_task`` with the task's default config (plus the data's
column names and a seed): the deep model and the classic baseline (``engine.baseline=auto``) are
fitted on the same split and scored on the same test units. Three seeds (= three splits and
initialisations); mean ± sd of the test headline metric and the wall time of each run.

    python bench/accuracy.py                 # MiniLM for text (slow on a CPU: ~2-3 samples/s)
    python bench/accuracy.py --quick         # text deep model = TextCNN (its recipe), 400 documents
    python bench/accuracy.py --only iu-binary,diabetes --seeds 0,1

Data (all offline): IU chest X-ray reports (torchxrayvision wheel, normal vs abnormal; a 6-label
multi-label task from the reports' own MeSH major terms; a small multiclass task of the 5 most
common single-term reports), scikit-learn's breast cancer and diabetes, lifelines' GBSG2, and the
pydicom DICOM demo (a pipeline check: few patients). Higher is better except MAE.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _reports(tmp: Path, limit: int, seed: int = 0) -> "object":
    import pandas as pd

    from medmm.demos.reports import build_reports_csv

    df = pd.read_csv(build_reports_csv(tmp / "reports.csv"), dtype=str).fillna("")
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def build_data(name: str, tmp: Path, limit: int) -> tuple[Path, list[str]]:
    """``(data path, overrides)`` of one benchmark data set."""

    if name in ("iu-binary", "iu-mesh-multilabel", "iu-multiclass"):
        df = _reports(tmp, limit)
        base = ["data.text_column=text", "data.id_column=report_id", "data.max_length=128"]
        if name == "iu-binary":
            df = df.head(limit)
            path = tmp / f"{name}.csv"
            df[["report_id", "text", "label"]].to_csv(path, index=False)
            return path, [*base, "data.label_column=label"]
        terms = df["mesh_major"].str.lower().str.split(";")
        heads = terms.apply(lambda ts: sorted({t.split("/")[0].strip() for t in ts if t.strip()}))
        if name == "iu-mesh-multilabel":
            common = [t for t, _ in collections.Counter(t for ts in heads for t in ts).most_common(6)]
            df = df.assign(labels=heads.apply(lambda ts: ";".join(t for t in ts if t in common)))
            df = df[df["labels"] != ""].head(limit)
            path = tmp / f"{name}.csv"
            df[["report_id", "text", "labels"]].to_csv(path, index=False)
            return path, [*base, "data.label_column=labels", "data.label_delimiter=;"]
        single = df[heads.apply(len) == 1].assign(label=heads[heads.apply(len) == 1].str[0])
        single = single[single["label"] != "normal"]
        top = [t for t, _ in collections.Counter(single["label"]).most_common(5)]
        small = single[single["label"].isin(top)].head(min(limit, 330))
        path = tmp / f"{name}.csv"
        small[["report_id", "text", "label"]].to_csv(path, index=False)
        return path, [*base, "data.label_column=label"]
    if name == "breast-cancer":
        from sklearn.datasets import load_breast_cancer

        path = tmp / "bc.csv"
        load_breast_cancer(as_frame=True).frame.to_csv(path, index_label="pid")
        return path, ["data.target=target", "data.id_column=pid"]
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        path = tmp / "diabetes.csv"
        load_diabetes(as_frame=True, scaled=False).frame.to_csv(path, index_label="pid")
        return path, ["data.target=target", "data.id_column=pid"]
    if name == "gbsg2-survival":
        from lifelines.datasets import load_gbsg2

        df = load_gbsg2()
        df["event"] = df.pop("cens")
        path = tmp / "gbsg2.csv"
        df.to_csv(path, index_label="pid")
        return path, ["data.time=time", "data.event=event", "data.id_column=pid"]
    if name == "dicom-demo":
        from medmm.demos.dicom import build_demo

        return build_demo(tmp / "dicom"), []
    raise SystemExit(f"unknown data set {name!r}")


TASKS = {"iu-binary": "text-cls", "iu-mesh-multilabel": "text-cls", "iu-multiclass": "text-cls",
         "breast-cancer": "tabular-risk", "diabetes": "tabular-risk", "gbsg2-survival": "tabular-risk",
         "dicom-demo": "image-cls"}


def run_one(name: str, data: Path, overrides: list[str], seed: int, out: Path) -> dict[str, object]:
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config, run_task

    spec = get_registry().get("task", TASKS[name])
    cfg = resolved_config(spec, None, [*overrides, f"seed={seed}", "engine.device=cpu"])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # each run's own summary
        summary = run_task(spec, cfg, data, out, quiet=True)
    wall = time.perf_counter() - t0
    b = summary.get("baseline", {})
    return {"data": name, "seed": seed, "metric": b.get("headline"), "model": b.get("model"),
            "baseline": b.get("baseline"), "wall_s": wall, "backbone": cfg["model"].get("backbone"),
            "epochs": cfg["engine"]["epochs"], "lr": cfg["engine"]["lr"]}


def _ms(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=1000, help="documents per text data set")
    ap.add_argument("--quick", action="store_true", help="text deep model = TextCNN, 400 documents")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (compare a recipe with the default)")
    args = ap.parse_args()
    logging.getLogger("medmm").setLevel(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    limit = min(args.limit, 400) if args.quick else args.limit
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.only.split(","):
            data, overrides = build_data(name, tmp, limit)
            if args.quick and TASKS[name] == "text-cls":
                overrides = [*overrides, "model.backbone=textcnn"]
            overrides = [*overrides, *args.overrides]
            for seed in seeds:
                row = run_one(name, data, overrides, seed, tmp / f"run-{name}-{seed}")
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("| data set | task (deep default) | metric | medmm default | classic baseline | wall s / run |")
    print("|---|---|---|---:|---:|---:|")
    for name in dict.fromkeys(r["data"] for r in rows):
        rs = [r for r in rows if r["data"] == name]
        print(f"| {name} | {TASKS[name]} ({rs[0]['backbone']}, lr {rs[0]['lr']:g}, {rs[0]['epochs']} ep) | "
              f"{rs[0]['metric']} | {_ms([r['model'] for r in rs])} | {_ms([r['baseline'] for r in rs])} | "
              f"{statistics.mean(r['wall_s'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
