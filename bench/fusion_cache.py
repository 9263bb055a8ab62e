"""Fusion training speed: head-only epochs on cached frozen embeddings vs end-to-end epochs.

Same data (the synthetic ``medmm demo fusion`` set, 400 patients), same encoders (MiniLM-L6 +
EfficientNet-Lite0 at 128 px), same concat head, batch size and optimizer, fp32 on the CPU.
Both go through medmm's engine (``Trainer.fit``, each epoch including its validation pass and
checkpoint writes). Prints seconds per epoch for both modes, their ratio, and the one-time cost
of computing the embeddings (paid once per data set + encoder, then read from disk).

    python bench/fusion_cache.py [--epochs 1] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medmm.config import resolve  # noqa: E402
from medmm.demos.fusion import build_fusion_demo  # noqa: E402
from medmm.engine import Trainer  # noqa: E402
from medmm.plugins import get_registry  # noqa: E402
from medmm.runner import choices, task_defaults  # noqa: E402

SETTINGS = ["data.text_column=text", "data.image_column=image", "data.label_column=label",
            "data.id_column=id", "data.group_column=patient", "data.size=128", "data.window=lung",
            "engine.batch_size=32", "engine.bootstrap=0", "engine.device=cpu", "engine.patience=0"]


def config(mode: str, epochs: int, cache: Path) -> dict[str, Any]:
    spec = get_registry().get("task", "fusion")
    overrides = [*SETTINGS, f"model.mode={mode}", f"engine.epochs={epochs}", f"data.cache_dir={cache}"]
    return resolve(task_defaults(spec), None, overrides, choices(spec))


def run(mode: str, data: Path, work: Path, epochs: int) -> tuple[float, float]:
    """(seconds to build the data, including embeddings; seconds per training epoch)."""
    spec = get_registry().get("task", "fusion")
    cfg = config(mode, epochs, work / "cache")
    run_dir = work / mode
    run_dir.mkdir()
    task = spec.load()(cfg, run_dir)
    t0 = time.perf_counter()
    bundle = task.build_data(data)
    t_data = time.perf_counter() - t0
    model = task.build_model()
    trainer = Trainer(task, cfg, run_dir, quiet=True)
    t0 = time.perf_counter()
    trainer.fit(model, bundle)
    return t_data, (time.perf_counter() - t0) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="end-to-end epochs")
    parser.add_argument("--frozen-epochs", type=int, default=5, help="head-only epochs (each takes well under 1 s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("medmm").setLevel(logging.WARNING)
    import sklearn.metrics  # noqa: F401 - one-time import, not an epoch cost
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = build_fusion_demo(work / "data", n_patients=400)
        first_build, _ = run("frozen", data, work, 1)
        (work / "frozen").rename(work / "frozen-first")
        cached_build, frozen_epoch = run("frozen", data, work, args.frozen_epochs)  # embeddings read from disk
        _, finetune_epoch = run("finetune", data, work, args.epochs)
    print(f"fusion, 400 synthetic patients, MiniLM-L6 + EfficientNet-Lite0 @128px, concat head, "
          f"{torch.get_num_threads()} threads; {args.frozen_epochs} head-only / {args.epochs} end-to-end epoch(s)")
    print(f"  frozen encoders, embeddings cached:  {frozen_epoch:8.3f} s/epoch")
    print(f"  end-to-end fine-tuning:              {finetune_epoch:8.3f} s/epoch")
    print(f"  ratio end-to-end / cached head-only: {finetune_epoch / frozen_epoch:8.1f}x")
    print(f"  data build with embedding pass:      {first_build:8.3f} s (once per data set + encoders)")
    print(f"  data build with embeddings cached:   {cached_build:8.3f} s")


if __name__ == "__main__":
    main()
