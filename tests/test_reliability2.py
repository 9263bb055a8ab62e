"""Reliability, second pass (#28): each test plants the fault an adversarial user found and checks
the fix (ONNX text export on short texts and at the edges of every dynamic axis, plugins raising
any BaseException, replacing only medmm's own files, predict / evaluate --out, library logging,
non-finite config values, SIGTERM / SIGINT status, follow-up-time leakage)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# --------------------------------------------------------------------------- 1. TextCNN / export edges


@pytest.mark.slow  # torch.onnx's first import costs seconds
def test_textcnn_exported_on_long_texts_runs_texts_shorter_than_its_kernels() -> None:
    """The issue's fault: traced on long inputs, the graph had no padding and onnxruntime refused
    texts of fewer tokens than the widest kernel (``Invalid input shape`` in a Conv node)."""
    ort = pytest.importorskip("onnxruntime")
    import torch

    from medmm.models.text_baselines import TextCNN

    torch.manual_seed(0)
    model = TextCNN(50, embedding_dim=8, kernel_sizes=(2, 3, 5), channels=4, dropout=0.0).eval()
    ids, mask = torch.randint(1, 50, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    f = io.BytesIO()
    torch.onnx.export(model, (ids, mask), f, input_names=["input_ids", "attention_mask"], output_names=["e"],
                      dynamo=False, dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    session = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for batch, length in [(1, 1), (1, 3), (3, 4), (2, 40)]:
        ids = torch.randint(1, 50, (batch, length))
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2 + 1:] = 0  # a right-padded row too
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            want = model(ids, mask).numpy()
        assert np.abs(got - want).max() < 1e-5, (batch, length)


def test_textcnn_output_does_not_depend_on_padding() -> None:
    import torch

    from medmm.models.text_baselines import TextCNN

    torch.manual_seed(0)
    model = TextCNN(30, embedding_dim=6, kernel_sizes=(3, 4, 5), channels=3, dropout=0.0).eval()
    ids = torch.tensor([[4, 7]])
    with torch.no_grad():
        short = model(ids, torch.ones_like(ids))
        padded = model(torch.tensor([[4, 7, 0, 0, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0, 0, 0, 0]]))
    assert torch.allclose(short, padded, atol=1e-6)


def test_edge_cases_cover_size_one_and_the_largest_size_of_every_axis() -> None:
    from types import SimpleNamespace

    from medmm.deploy.edges import axis_edges, edge_cases

    feeds = {"input_ids": np.arange(12).reshape(3, 4), "attention_mask": np.ones((3, 4), np.int64)}
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    cfg = SimpleNamespace(engine=SimpleNamespace(eval_batch_size=8), data=SimpleNamespace(max_length=10))
    edges = axis_edges(cfg, dynamic, feeds)
    assert edges == {"batch": (1, 8), "sequence": (1, 10)}
    cases = edge_cases(feeds, dynamic, edges)
    assert [c[0] for c in cases] == [{"batch": 1, "sequence": 1}, {"batch": 1, "sequence": 10},
                                     {"batch": 8, "sequence": 1}, {"batch": 8, "sequence": 10}]
    small, big = cases[0][1], cases[3][1]
    assert small["input_ids"].tolist() == [[0]]
    assert big["input_ids"].shape == (8, 10) and big["input_ids"][3].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    # an axis with no known limit is checked at 1 and the largest size seen
    assert axis_edges(SimpleNamespace(), {"x": {0: "rows"}}, {"x": np.zeros((5, 2))}) == {"rows": (1, 5)}


def test_edge_parity_reports_the_case_an_exported_graph_gets_wrong_or_cannot_run() -> None:
    from medmm.deploy.edges import edge_cases, edge_parity

    feeds = {"x": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)}
    cases = edge_cases(feeds, {"x": {0: "batch"}}, {"batch": (1, 16)})

    def reference(f: dict) -> np.ndarray:
        return f["x"].sum(1)

    def fails_on_one_row(f: dict) -> np.ndarray:  # as onnxruntime refusing a shape
        if len(f["x"]) == 1:
            raise RuntimeError("Invalid input shape: {1}")
        return reference(f)

    worst, rows = edge_parity(reference, fails_on_one_row, cases)
    assert worst == float("inf") and "Invalid input shape" in rows[0]["error"] and rows[1]["max_abs_diff"] == 0

    def off_on_big_batches(f: dict) -> np.ndarray:
        return reference(f) + (1e-3 if len(f["x"]) > 8 else 0)

    worst, rows = edge_parity(reference, off_on_big_batches, cases)
    assert worst == pytest.approx(1e-3, rel=1e-3) and rows[0]["max_abs_diff"] < 1e-6
    def large(f: dict) -> np.ndarray:  # values in the thousands (regression / survival outputs)
        return 1000 + 1000 * f["x"].sum(1) ** 2

    absolute, _ = edge_parity(large, lambda f: large(f) + 0.5, cases)
    relative, _ = edge_parity(large, lambda f: large(f) + 0.5, cases, relative=True)
    assert absolute == pytest.approx(0.5) and relative <= 0.5 / 1000 + 1e-9  # relative to the value's size


# --------------------------------------------------------------------------- 2. plugins


def test_plugin_raising_keyboard_interrupt_or_any_base_exception_is_isolated(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import medmm.plugins as plugins

    (tmp_path / "kbd_at_import.py").write_text("raise KeyboardInterrupt\n")
    (tmp_path / "gen_exit_at_import.py").write_text("raise GeneratorExit('odd')\n")
    (tmp_path / "kbd_at_register.py").write_text(
        "from medmm import hookimpl\n@hookimpl\ndef register_tasks(register):\n    raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = plugins._sorted_entry_points()
    fakes = [EntryPoint(name=n, value=n, group="medmm") for n in ("kbd_at_import", "gen_exit_at_import", "kbd_at_register")]
    monkeypatch.setattr(plugins, "_sorted_entry_points", lambda: [*real, *fakes])
    loaded = plugins.load_plugins()
    errors = {i.name: i.error for i in loaded.infos}
    assert "KeyboardInterrupt raised by the plugin" in errors["kbd_at_import"]
    assert "KeyboardInterrupt raised by the plugin" in errors["kbd_at_register"]
    assert errors["gen_exit_at_import"].startswith("GeneratorExit")
    assert "tabular-risk" in loaded.registry.names("task")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_real_ctrl_c_while_plugins_load_still_stops_the_command(fake_plugin) -> None:
    env = fake_plugin("slow_plugin", "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
    out = subprocess.run([sys.executable, "-c", "from medmm.plugins import load_plugins; load_plugins(); print('loaded')"],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert out.returncode != 0 and "KeyboardInterrupt" in out.stderr and "loaded" not in out.stdout


@pytest.mark.slow
def test_cli_survives_a_plugin_raising_keyboard_interrupt(fake_plugin) -> None:
    env = fake_plugin("interrupter", "raise KeyboardInterrupt\n")
    out = run_cli("plugins", env=env)
    assert out.returncode == 0 and "interrupter" in out.stdout and "FAILED" in out.stdout, out.stderr
