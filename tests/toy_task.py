"""A small real task for engine tests: breast-cancer (sklearn) binary risk with a dropout MLP.

Run as a script to train one configuration (used by the SIGKILL-resume and torchrun tests):
``python tests/toy_task.py RUN_DIR [--resume] [KEY=VALUE ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from medmm.task import DataBundle, Split, Task

ENGINE = {
    "device": "cpu", "precision": "fp32", "epochs": 3, "max_steps": 0, "batch_size": 16, "eval_batch_size": 64,
    "grad_accum": 1, "max_grad_norm": 1.0, "lr": 0.01, "weight_decay": 0.01, "schedule": "cosine",
    "warmup_ratio": 0.1, "class_weights": "none", "sampler": "shuffle", "label_smoothing": 0.0,
    "eval_every_steps": 0, "monitor": "auto", "monitor_mode": "auto", "patience": 0,
    "checkpoint_every_steps": 1, "nan_policy": "stop", "num_workers": 0, "bootstrap": 0, "tensorboard": False,
}


class Indexed(TensorDataset):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return (*super().__getitem__(i), torch.tensor(i))


class ToyTask(Task):
    problem = "binary"
    label_names = ["benign", "malignant"]

    def build_data(self, data_path: Path) -> DataBundle:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(y))
        parts = np.split(order, [380, 470])

        def split(idx: np.ndarray) -> Split:
            ds = Indexed(torch.from_numpy(x[idx]), torch.from_numpy(y[idx].astype(np.float32)))
            return Split(ds, [f"row{i}" for i in idx], y[idx])

        return DataBundle(split(parts[0]), split(parts[1]), split(parts[2]))

    def build_model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.get("seed", 0))
        dropout = float(self.cfg.get("model", {}).get("dropout", 0.2))
        return torch.nn.Sequential(torch.nn.Linear(30, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                                   torch.nn.Linear(32, 1))

    def step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y, idx = batch
        out = model(x).squeeze(-1)
        nan_at = self.cfg.get("model", {}).get("nan_at_step")
        sleep = self.cfg.get("model", {}).get("sleep")  # [seconds per training step, from step k, seconds after]
        if sleep and model.training:
            import time

            self.trained = getattr(self, "trained", 0) + 1
            time.sleep(sleep[0] if self.trained < sleep[1] else sleep[2])
        if nan_at is not None and model.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == nan_at:
                out = out * float("nan")
        return {"output": out, "target": y, "index": idx}


def make_cfg(dropout: float = 0.2, nan_at_step: int | None = None, sleep: list[float] | None = None,
             **engine: Any) -> dict[str, Any]:
    return {"seed": 0, "model": {"dropout": dropout, "nan_at_step": nan_at_step, "sleep": sleep},
            "engine": {**ENGINE, **engine}}


LAST: dict[str, Any] = {}  # the last train()'s Trainer (the script prints what it did)


def train(run_dir: Path, resume: bool = False, **kw: Any) -> dict[str, torch.Tensor]:
    from medmm.engine import Trainer

    cfg = make_cfg(**kw)
    task = ToyTask(cfg, run_dir)
    data = task.build_data(Path("."))
    model = task.build_model()
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(task, cfg, run_dir, quiet=True)
    LAST["trainer"] = trainer
    trainer.fit(model, data, resume=resume)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    from safetensors.torch import save_file

    run = Path(sys.argv[1])
    resume = "--resume" in sys.argv
    kv = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
    weights = train(run, resume=resume, **{k: _value(v) for k, v in kv.items()})
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(run / "final.safetensors"))
    done = LAST["trainer"]
    rank = os.environ.get("RANK", "0")
    line = f"toy rank {rank}: step {done.state.global_step} of {done.total}, stopped {done.stopped}\n"
    (run / f"done-rank{rank}.txt").write_text(line)  # one file per rank: two ranks' prints interleave
    sys.stdout.write(line)
