"""CUDA paths of the engine: device placement, bf16 autocast, fp16 with a grad scaler, resume.

Skipped without a GPU (CI has none); run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmm.engine.checkpoint import read_state
from medmm.engine.device import resolve_precision, select_device
from tests.toy_task import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_device_and_precision_pick_the_gpu() -> None:
    device = select_device("auto")
    assert device.type == "cuda"
    assert resolve_precision("auto", device) in {"bf16", "fp16"}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_learns_in_every_precision(tmp_path: Path, precision: str) -> None:
    weights = train(tmp_path / precision, device="cuda", precision=precision, checkpoint_every_steps=1000)
    assert all(torch.isfinite(w).all() for w in weights.values())
    lines = (tmp_path / precision / "metrics.jsonl").read_text().splitlines()
    import json

    val = [json.loads(l) for l in lines if '"val"' in l]
    assert val[-1]["auroc"] > 0.97 and val[-1]["loss"] < val[0]["loss"] * 1.5
    if precision == "fp16":
        from medmm.engine.checkpoint import load_trainer_state

        assert "scaler" in load_trainer_state(tmp_path / precision / "checkpoints" / "last")


@pytest.mark.slow
def test_resume_on_cuda_continues_to_the_same_weights(tmp_path: Path) -> None:
    from medmm.engine import TrainingError

    opts = {"device": "cuda", "precision": "bf16", "checkpoint_every_steps": 5}
    full = train(tmp_path / "full", **opts)
    with pytest.raises(TrainingError):  # a failure at step 33 leaves the step-30 checkpoint
        train(tmp_path / "part", nan_at_step=33, **opts)
    assert read_state(tmp_path / "part" / "checkpoints" / "last")["state"]["global_step"] == 30
    resumed = train(tmp_path / "part", resume=True, **opts)
    for k in full:
        assert torch.allclose(full[k].float(), resumed[k].float(), atol=1e-3), k
