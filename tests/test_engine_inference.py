"""medmm.engine.inference.run_module: eval mode, no gradients, device / precision, state restored."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from medmm.engine.inference import run_module
from medmm.errors import ConfigError


class Probe(nn.Module):
    """Linear + dropout that records the mode, grad state and output dtype of each call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.9)
        self.calls: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.lin(x))
        self.calls.append({"training": self.training, "inference": torch.is_inference_mode_enabled(),
                           "device": x.device.type, "dtype": out.dtype})
        return out


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(5, 4, generator=g), torch.randn(2, 4, generator=g)]


def test_outputs_are_the_eval_mode_forward_in_batch_order() -> None:
    model = Probe().train()
    batches = _batches()
    outputs = run_module(model, iter(batches), device="cpu", precision="fp32")
    assert [o.shape for o in outputs] == [(5, 3), (2, 3)]
    for x, out in zip(batches, outputs):  # dropout off: exactly the linear layer
        torch.testing.assert_close(out, model.lin(x).detach())
        assert out.dtype == torch.float32 and out.device.type == "cpu" and not out.requires_grad
    assert all(not c["training"] and c["inference"] for c in model.calls)
    assert model.training and model.drop.training  # the previous mode is back


def test_custom_forward_gets_batches_moved_as_nested_structures() -> None:
    model = Probe()
    batches = [{"x": x, "scale": (torch.tensor(2.0),)} for x in _batches()]
    outputs = run_module(model, batches, device="cpu", precision="fp32",
                         forward=lambda m, b: m(b["x"]) * b["scale"][0])
    torch.testing.assert_close(outputs[1], 2 * model.lin(batches[1]["x"]).detach())


def test_reduced_precision_runs_under_autocast_and_returns_float32() -> None:
    model = Probe()
    outputs = run_module(model, _batches(), device="cpu", precision="bf16")
    assert {c["dtype"] for c in model.calls} == {torch.bfloat16}
    assert all(o.dtype == torch.float32 for o in outputs)
    torch.testing.assert_close(outputs[0], model.lin(_batches()[0]).detach(), atol=0.05, rtol=0.05)


def test_mode_is_restored_when_a_batch_fails() -> None:
    model = Probe().train()
    with pytest.raises(RuntimeError):
        run_module(model, [torch.zeros(2, 4), torch.zeros(2, 7)], device="cpu", precision="fp32")
    assert model.training and len(model.calls) == 1


def test_empty_batches_and_bad_device() -> None:
    assert run_module(Probe(), [], device="cpu", precision="fp32") == []
    with pytest.raises(ConfigError, match="engine.device"):
        run_module(Probe(), _batches(), device="warp-drive")
    with pytest.raises(ConfigError, match="fp16"):
        run_module(Probe(), _batches(), device="cpu", precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_there_and_the_module_comes_back_to_the_cpu() -> None:
    model = Probe()
    outputs = run_module(model, _batches(), device="cuda", precision="auto")
    assert {c["device"] for c in model.calls} == {"cuda"}
    assert {c["dtype"] for c in model.calls} <= {torch.bfloat16, torch.float16}
    assert next(model.parameters()).device.type == "cpu"
    assert all(o.device.type == "cpu" and o.dtype == torch.float32 for o in outputs)
    torch.testing.assert_close(outputs[0], model.lin(_batches()[0]).detach(), atol=0.05, rtol=0.05)
