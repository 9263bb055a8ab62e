"""Privacy / utility trade-off of DP-SGD in medmm, with the membership-inference audit.

    python bench/dp_tradeoff.py [--sets breast_cancer gbsg2 iu_reports] [--epsilons 8 3 1]
                                [--epochs 60] [--text-limit 1200] [--text-epochs 6]

For each data set, one run without DP and one per target ε, all through
:func:`medmm.runner.run_task` (the same task, engine, split, checkpoint selection and report as
``medmm run``), with ``engine.privacy.audit=true``: the loss-threshold membership attack on as
many training as test units, on the shipped (best-on-val) checkpoint.

- ``breast_cancer``: sklearn's 569 tumours, binary, tabular-risk MLP, test AUROC;
- ``gbsg2``: lifelines' German Breast Cancer Study Group 2 (686 patients), Cox MLP, test C-index;
- ``iu_reports``: the bundled Indiana University chest X-ray reports (normal vs abnormal),
  TextCNN baseline trained from scratch, test AUROC; ``--text-limit`` reports (stratified sample).

Every run of a set uses one training recipe, chosen to let the non-private model overfit (no
dropout, no weight decay, ``--epochs``), so the attack has something to find. The attack is run
on the shipped best-on-val checkpoint (in the run) and on the last one (``membership_audit(...,
checkpoint="last")``), which has trained longest on the same units. Time ratio = non-DP training samples/s over DP
samples/s (``samples_per_s`` of the train records in ``metrics.jsonl``; 1.0 = same speed).

MiniLM (the text-cls default) is not in the default sets: DP-SGD on it (22 M parameters,
per-example gradients of every layer) takes far longer than a few minutes on a shared 2-core
CPU; ``--sets iu_reports_minilm`` runs it anyway. No asserts: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def breast_cancer(out: Path) -> tuple[Path, str, list[str]]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.insert(0, "id", range(len(frame)))
    path = out / "breast_cancer.csv"
    frame.to_csv(path, index=False)
    return path, "tabular-risk", ["data.target=target", "data.id_column=id"]


def gbsg2(out: Path) -> tuple[Path, str, list[str]]:
    from lifelines.datasets import load_gbsg2

    frame = load_gbsg2()
    frame.insert(0, "id", range(len(frame)))
    path = out / "gbsg2.csv"
    frame.to_csv(path, index=False)
    return path, "tabular-risk", ["data.time=time", "data.event=cens", "data.id_column=id"]


def iu_reports(out: Path, limit: int, backbone: str = "textcnn") -> tuple[Path, str, list[str]]:
    import pandas as pd

    from medmm.demos.reports import build_reports_csv

    full = build_reports_csv(out / "reports_all.csv")
    frame = pd.read_csv(full)
    if limit and len(frame) > limit:
        frame = frame.groupby("label", group_keys=False).apply(
            lambda g: g.sample(n=max(1, round(limit * len(g) / len(frame))), random_state=0))
    path = out / "reports.csv"
    frame.to_csv(path, index=False)
    return path, "text-cls", ["data.text_column=text", "data.label_column=label", "data.id_column=report_id",
                              "data.max_length=128", f"model.backbone={backbone}", "model.dropout=0.0"]


def run_one(name: str, data: Path, task: str, overrides: list[str], out: Path) -> dict[str, Any]:
    from medmm.engine.callbacks import read_jsonl
    from medmm.plugins import get_registry
    from medmm.privacy.membership import membership_audit
    from medmm.runner import resolved_config, run_task

    spec = get_registry().get("task", task)
    cfg = resolved_config(spec, None, overrides)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary = run_task(spec, cfg, data, out / name, quiet=True)
        wall = time.perf_counter() - t0
        last = membership_audit(out / name, checkpoint="last", n_boot=200, write=False)
    rows = read_jsonl(out / name / "metrics.jsonl")
    rates = [r["samples_per_s"] for r in rows if r.get("split") == "train" and r.get("samples_per_s")]
    metric = "c_index" if "c_index" in summary["metrics"] else "auroc"
    audit = summary["membership_audit"]
    return {"metric": metric, "value": summary["metrics"][metric], "ci": summary["ci"].get(metric, (np.nan, np.nan)),
            "attack": audit["attack_auroc"], "attack_ci": (audit["ci_low"], audit["ci_high"]),
            "attack_last": last["attack_auroc"], "attack_last_ci": (last["ci_low"], last["ci_high"]),
            "epsilon": summary.get("privacy", {}).get("epsilon"), "sigma": summary.get("privacy", {}).get("noise_multiplier"),
            "rate": float(np.median(rates)) if rates else float("nan"), "wall": wall, "n": audit["units_per_group"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["breast_cancer", "gbsg2", "iu_reports"])
    ap.add_argument("--epsilons", nargs="+", type=float, default=[8.0, 3.0, 1.0])
    ap.add_argument("--epochs", type=int, default=40, help="tabular epochs (every run of a set)")
    ap.add_argument("--text-limit", type=int, default=1200, help="reports sampled from the 3,927 (0 = all)")
    ap.add_argument("--text-epochs", type=int, default=6)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"{'set':<14}{'DP':>8}{'ε spent':>9}{'σ':>8}  {'utility, best (95% CI)':<30}"
              f"{'attack AUROC best (95% CI)':<28}{'attack AUROC last (95% CI)':<28}{'units':>6}{'time x':>8}", flush=True)
        for name in args.sets:
            if name in ("breast_cancer", "gbsg2"):
                data, task, base = (breast_cancer if name == "breast_cancer" else gbsg2)(out)
                base += ["model.backbone=mlp", "model.hidden=256", "model.dropout=0.0", f"engine.epochs={args.epochs}",
                         "engine.weight_decay=0.0", "engine.min_steps=0", "engine.patience=0", "engine.batch_size=32",
                         "engine.baseline=none", "engine.bootstrap=200"]
            else:
                backbone = "minilm-l6" if name.endswith("minilm") else "textcnn"
                data, task, base = iu_reports(out, args.text_limit, backbone)
                base += [f"engine.epochs={args.text_epochs}", "engine.weight_decay=0.0", "engine.min_steps=0",
                         "engine.patience=0", "engine.batch_size=32", "engine.baseline=none", "engine.bootstrap=200",
                         "engine.lr=0.001" if backbone == "textcnn" else "engine.lr=0.0001"]
            base.append("engine.privacy.audit=true")
            plain = None
            for eps in [None, *args.epsilons]:
                extra = [] if eps is None else ["engine.privacy.enabled=true", f"engine.privacy.target_epsilon={eps}"]
                label = "none" if eps is None else f"ε={eps:g}"
                try:
                    r = run_one(f"{name}-{label}", data, task, base + extra, out)
                except Exception as exc:  # a benchmark row, not a crash: say why
                    print(f"{name:<14}{label:>8}  failed: {str(exc).splitlines()[0][:150]}")
                    continue
                plain = plain or (r if eps is None else None)
                ratio = plain["rate"] / r["rate"] if plain and r["rate"] else float("nan")
                spent = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
                sigma = "-" if r["sigma"] is None else f"{r['sigma']:.2f}"
                util = f"{r['metric']} {r['value']:.3f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f})"
                att = f"{r['attack']:.3f} ({r['attack_ci'][0]:.3f}-{r['attack_ci'][1]:.3f})"
                last = f"{r['attack_last']:.3f} ({r['attack_last_ci'][0]:.3f}-{r['attack_last_ci'][1]:.3f})"
                print(f"{name:<14}{label:>8}{spent:>9}{sigma:>8}  {util:<30}{att:<28}{last:<28}{r['n']:>6}{ratio:>8.2f}",
                      flush=True)
                (out / "dp_tradeoff.jsonl").open("a").write(json.dumps({"set": name, "dp": label, **r}) + "\n")


if __name__ == "__main__":
    main()
