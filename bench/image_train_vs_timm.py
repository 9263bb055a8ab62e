"""Image training throughput: a timm ResNet-18 in a bare PyTorch loop vs ImageClassifier + medmm's engine.

Same architecture (1-channel ResNet-18, timm), same data (random 128x128 tensors, 3 classes),
batch 16, AdamW, gradient clipping, fp32 on the CPU. Prints samples/s of both and their ratio
(goal >= 0.95) for the training loop alone, and for the whole ``fit`` including its final
checkpoint writes (weights + optimizer state, ~135 MB for ResNet-18).

    python bench/image_train_vs_timm.py [--steps 30] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medmm.engine import Trainer  # noqa: E402
from medmm.models.image import ImageClassifier, create_image_backbone  # noqa: E402
from medmm.task import DataBundle, Split, Task  # noqa: E402
from tests.toy_task import ENGINE  # noqa: E402

BATCH, SIZE, CLASSES, LR = 16, 128, 3, 3e-4


def make_data(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = steps * BATCH
    return torch.randn(n, 1, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def bare_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    """Hand-written loop on the plain timm model; returns samples/s."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=CLASSES)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    net.train()
    t0 = time.perf_counter()
    for xb, yb in loader:
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return len(x) / (time.perf_counter() - t0)


class Indexed(TensorDataset):
    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (*super().__getitem__(i), i)


class RandomImages(Task):
    problem = "multiclass"

    def step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        xb, yb, idx = batch
        return {"output": model(xb), "target": yb, "index": idx}


class LoopTimer:
    """Wall time from the first step to the end-of-epoch record (before checkpoints are written)."""

    def on_train_start(self, trainer: Any) -> None:
        self.t0 = time.perf_counter()

    def on_evaluate(self, trainer: Any, record: dict[str, Any]) -> None:
        self.seconds = time.perf_counter() - self.t0


def engine(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """ImageClassifier through medmm's Trainer; returns (loop samples/s, fit samples/s)."""
    cfg = {"seed": 0, "engine": {**ENGINE, "epochs": 1, "batch_size": BATCH, "lr": LR, "schedule": "constant",
                                 "warmup_ratio": 0.0, "monitor": "loss", "monitor_mode": "min", "patience": 0,
                                 "bootstrap": 0, "checkpoint_every_steps": 10**9}}
    torch.manual_seed(0)
    model = ImageClassifier(create_image_backbone("resnet18", in_chans=1, img_size=SIZE, pretrained="none"), CLASSES)
    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = DataBundle(Split(Indexed(x, y), [str(i) for i in range(len(x))], y.numpy()), None, None)
        t0 = time.perf_counter()
        Trainer(RandomImages(cfg, Path(tmp)), cfg, Path(tmp), quiet=True, callbacks=[timer]).fit(model, bundle)
        total = time.perf_counter() - t0
    return len(x) / timer.seconds, len(x) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = make_data(args.steps)
    bare_loop(x[: 4 * BATCH], y[: 4 * BATCH])  # warm-up: allocator, oneDNN kernels
    bare, loop, fit = [], [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(x, y))
        e_loop, e_fit = engine(x, y)
        loop.append(e_loop)
        fit.append(e_fit)
    b, lo, fi = (float(np.median(v)) for v in (bare, loop, fit))
    print(f"resnet18 (timm), 1x{SIZE}x{SIZE}, batch {BATCH}, {args.steps} steps, AdamW + clipping, fp32 CPU, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(f"bare PyTorch loop            {b:8.1f} samples/s")
    print(f"medmm engine, training loop  {lo:8.1f} samples/s   ratio {lo / b:.3f}  (goal >= 0.95)")
    print(f"medmm engine, whole fit      {fi:8.1f} samples/s   ratio {fi / b:.3f}  (incl. checkpoint writes)")


if __name__ == "__main__":
    main()
