"""Engine overhead: the same model, data and batches through medmm's engine vs a bare PyTorch loop.

Prints samples/s of both and their ratio (goal >= 0.95). Data: scikit-learn's digits (1,797 real
8x8 handwritten digits, 10 classes), replicated 8x; model: a 64-512-512-10 MLP; AdamW, fp32, CPU.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from medmm.engine import Trainer
from medmm.task import DataBundle, Split, Task

EPOCHS, BATCH = 3, 64


def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x = np.tile((x / 16.0).astype(np.float32), (8, 1))
    return torch.from_numpy(x), torch.from_numpy(np.tile(y, 8))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                               torch.nn.ReLU(), torch.nn.Linear(512, 10))


def bare_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    net = model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        for xb, yb in loader:
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return EPOCHS * len(x) / (time.perf_counter() - t0)


class Indexed(TensorDataset):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return (*super().__getitem__(i), i)


class DigitsTask(Task):
    problem = "multiclass"

    def step(self, net: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        xb, yb, idx = batch
        return {"output": net(xb), "target": yb, "index": idx}


def engine(x: torch.Tensor, y: torch.Tensor) -> float:
    cfg = {"seed": 0, "engine": {
        "device": "cpu", "precision": "fp32", "epochs": EPOCHS, "max_steps": 0, "batch_size": BATCH,
        "eval_batch_size": 256, "grad_accum": 1, "max_grad_norm": 1.0, "lr": 1e-3, "weight_decay": 0.0,
        "schedule": "constant", "warmup_ratio": 0.0, "class_weights": "none", "sampler": "shuffle",
        "label_smoothing": 0.0, "eval_every_steps": 0, "monitor": "loss", "monitor_mode": "min", "patience": 0,
        "checkpoint_every_steps": 10**9, "nan_policy": "stop", "num_workers": 0, "bootstrap": 0,
        "tensorboard": False}}
    with tempfile.TemporaryDirectory() as tmp:
        task = DigitsTask(cfg, Path(tmp))
        bundle = DataBundle(Split(Indexed(x, y), [str(i) for i in range(len(x))], y.numpy()), None, None)
        net = model()
        t0 = time.perf_counter()
        Trainer(task, cfg, Path(tmp), quiet=True).fit(net, bundle)
        return EPOCHS * len(x) / (time.perf_counter() - t0)


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x, y = data()
    bare_loop(x, y)  # warm-up
    bare, eng = [], []
    for _ in range(3):
        bare.append(bare_loop(x, y))
        eng.append(engine(x, y))
    b, e = float(np.median(bare)), float(np.median(eng))
    print(f"data: {len(x)} digits x {EPOCHS} epochs, batch {BATCH}, MLP 64-512-512-10, fp32 CPU")
    print(f"bare PyTorch loop   {b:9.0f} samples/s")
    print(f"medmm engine        {e:9.0f} samples/s   (includes final checkpoint write)")
    print(f"ratio engine/bare   {e / b:9.3f}   (goal >= 0.95)")


if __name__ == "__main__":
    main()
