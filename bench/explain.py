"""Seconds per example of ``medmm explain``'s batched attributions vs a naive captum loop.

For each task a short run is trained on its bundled demo data (a few optimizer steps: speed
does not depend on accuracy), then the same attribution code runs on the same examples

* batched: 16 examples per call, IG steps in chunks of ``internal_batch_size`` rows;
* naive: one example per captum call (the loop most notebooks write).

Text: Integrated Gradients on the embeddings of ``--text-backbone`` (MiniLM-L6 by default; TextCNN
is the fast one on a CPU) over the first ``--text-limit`` Indiana University reports (32 steps),
batched in data order and in length order (as ``medmm explain`` batches text: less padding,
the same attributions); image: Grad-CAM on EfficientNet-Lite0 (224 px) over the DICOM demo; tabular: IG
on the diabetes MLP. ``--repeats`` interleaves rounds and keeps each variant's best time (other
jobs only add time). Prints a table; asserts nothing about time.

    python bench/explain.py [--tasks text,image,tabular] [--text-limit 100] [--text-backbone textcnn] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from medmm.engine.device import move_to
from medmm.explain.core import Scorer
from medmm.explain.run import attribute, load_run
from medmm.plugins import default_plugins
from medmm.registry import resolve_object
from medmm.runner import resolved_config, run_task

STEPS, IBS = 32, 256
QUICK = ["engine.max_steps=3", "engine.epochs=1", "engine.bootstrap=0", "engine.device=cpu", "engine.precision=fp32"]


def _train(name: str, root: Path, extra: list[str]) -> tuple[Path, Path]:
    spec = default_plugins().registry.get("task", name)
    data, overrides = resolve_object(spec.demo)(root / f"{name}-data")
    cfg = resolved_config(spec, None, [*overrides, *QUICK, *extra])
    run = root / f"{name}-run"
    run_task(spec, cfg, Path(data), run, quiet=True)
    return run, Path(data)


def _time(task, model, split, collate, device, spec, positions: list[int], batch_size: int) -> float:
    scorer = Scorer(task, model)
    method = {"tokens": "ig", "image": "gradcam", "features": "ig"}[spec.kind]
    loader = DataLoader(Subset(split.dataset, positions), batch_size=batch_size, collate_fn=collate)
    start = time.perf_counter()
    for batch in loader:
        batch = move_to(batch, device)
        with torch.no_grad():
            target = scorer.predicted(scorer.output(batch))
        attribute(scorer, spec, batch, target, method, STEPS, IBS)
    return (time.perf_counter() - start) / len(positions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="text,image,tabular")
    ap.add_argument("--text-limit", type=int, default=100)
    ap.add_argument("--text-backbone", default="minilm-l6", help="medmm backbones --modality text")
    ap.add_argument("--limit", type=int, default=60, help="examples for image and tabular")
    ap.add_argument("--repeats", type=int, default=1,
                    help="interleaved rounds; the best round of each variant is kept (load only adds time)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    names = {"text": "text-cls", "image": "image-cls", "tabular": "tabular-risk"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for short in args.tasks.split(","):
            extra = [f"model.backbone={args.text_backbone}"] if short == "text" else []
            run, data = _train(names[short], Path(tmp), extra)
            _, task, model, split, collate, device, _cache = load_run(run, data, registry=default_plugins().registry)
            spec = task.explain_spec(model).inputs[0]
            limit = args.text_limit if short == "text" else args.limit
            positions = list(range(min(limit, len(split.dataset))))
            label = f"text ({args.text_backbone})" if short == "text" else short
            variants = {"naive": (positions, 1), "batched": (positions, 16)}
            if spec.kind == "tokens":  # padded per batch: in length order a batch wastes less on padding
                variants["batched, by length"] = (
                    sorted(positions, key=lambda p: len(split.dataset[p]["input_ids"])), 16)
            best: dict[str, float] = {}
            for r in range(args.repeats):
                for name, (order, bs) in variants.items():
                    t = _time(task, model, split, collate, device, spec, order, bs)
                    best[name] = min(t, best.get(name, t))
                    print(f"{label} round {r + 1}: {name} {t:.4f} s/example", flush=True)
            for name in variants:
                if name != "naive":
                    rows.append((f"{label}, {name}", len(positions), best[name], best["naive"]))
    print("\ntask                              examples  batched s/ex  naive s/ex  speed-up")
    for label, n, b, nv in rows:
        print(f"{label:<33} {n:>8}  {b:>12.4f}  {nv:>10.4f}  {nv / b:>7.2f}x")


if __name__ == "__main__":
    main()
