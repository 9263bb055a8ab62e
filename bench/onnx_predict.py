"""Prediction speed of an export: onnxruntime (fp32, and dynamic int8) vs torch eager, same inputs.

For each task a small run is trained for a couple of steps (the weights do not change the speed)
with its CPU default backbone, exported with ``medmm export --quantize``, and the graph's
computation (the task's forward + probabilities) is timed on one batch of 1 and one of 64:

* tabular-risk: the MLP on the scikit-learn breast-cancer table (30 features),
* text-cls: MiniLM-L6 (the packaged pretrained weights) at 128 tokens per document,
* image-cls: EfficientNet-Lite0 (packaged ImageNet weights) at 224 px, one channel.

Both runtimes get the same number of threads; each figure is the best of a few timed rounds.
Prints predictions/s and the ratio to torch eager.

    python bench/onnx_predict.py [--tasks tabular-risk,text-cls,image-cls] [--threads N] [--seconds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medmm.cli import _registry
from medmm.cli import main as medmm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FAST = ["--quiet", "--set", "engine.device=cpu", "--set", "engine.bootstrap=0", "--set", "engine.max_steps=2",
        "--set", "engine.epochs=1", "--set", "engine.baseline=none"]


def make_run(task: str, work: Path) -> Path:
    """A run of ``task`` trained for two steps on bundled / generated data."""
    run = work / f"run-{task}"
    if task == "tabular-risk":
        from sklearn.datasets import load_breast_cancer

        df = load_breast_cancer(as_frame=True).frame
        df.columns = [c.replace(" ", "_") for c in df.columns]
        df.to_csv(work / "bc.csv", index_label="pid")
        args = ["run", task, "--data", work / "bc.csv", "--set", "data.target=target", "--set", "data.id_column=pid"]
    elif task == "text-cls":
        from tests.test_text_cls import synthetic_notes

        synthetic_notes(120, ["normal", "effusion", "pneumonia"]).to_csv(work / "notes.csv", index=False)
        args = ["run", task, "--data", work / "notes.csv", "--set", "model.backbone=minilm-l6",
                "--set", "data.max_length=128"]
    else:
        from medmm.demos.dicom import build_demo

        data = build_demo(work / "dicom")
        args = ["run", task, "--data", data, "--set", "model.backbone=efficientnet_lite0", "--set", "data.size=224"]
    code = medmm([str(a) for a in [*args, "--out", run, *FAST]])
    if code:
        raise SystemExit(f"training {task} failed")
    return run


def inputs(task: str, export: Path, batch: int) -> dict[str, np.ndarray]:
    """Feeds of one batch, shaped like the export's inputs."""
    rng = np.random.default_rng(0)
    if task == "tabular-risk":
        import json

        n = json.loads((export / "manifest.json").read_text())["inputs"][0]["shape"][1]
        return {"x": rng.standard_normal((batch, n)).astype(np.float32)}
    if task == "text-cls":
        ids = rng.integers(1000, 20000, (batch, 128)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        return {"input_ids": ids, "attention_mask": np.ones((batch, 128), dtype=np.int64)}
    return {"x": rng.random((batch, 1, 224, 224), dtype=np.float32)}


def rate(fn: Any, batch: int, seconds: float) -> float:
    """Predictions per second: best of rounds of ``fn()`` over about ``seconds``."""
    fn()  # warm-up
    best, deadline = float("inf"), time.perf_counter() + seconds
    rounds = 0
    while rounds < 3 or (time.perf_counter() < deadline and rounds < 200):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        rounds += 1
    return batch / best


def bench(task: str, work: Path, threads: int, seconds: float) -> list[tuple[str, int, float, float, float | None]]:
    import onnxruntime as ort
    import torch

    from medmm.deploy.export import GRAPHS, _graph_module, export_run, load_run

    run = make_run(task, work)
    export = export_run(run, work / f"export-{task}", registry=_registry(), quantize=True, quiet=True)
    _, task_obj, model, _ = load_run(run, _registry())
    graph = _graph_module(task_obj, model, GRAPHS[task])
    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    fp32 = ort.InferenceSession(str(export / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(export / "model.int8.onnx"), opts, providers=["CPUExecutionProvider"])
    rows = []
    for batch in (1, 64):
        feeds = inputs(task, export, batch)
        tensors = [torch.from_numpy(feeds[name]) for name in GRAPHS[task].inputs]

        def eager(tensors: list[Any] = tensors) -> None:
            with torch.inference_mode():
                graph(*tensors)

        t = rate(eager, batch, seconds)
        o = rate(lambda feeds=feeds: fp32.run(None, feeds), batch, seconds)
        q = rate(lambda feeds=feeds: int8.run(None, feeds), batch, seconds)
        rows.append((task, batch, t, o, q))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="tabular-risk,text-cls,image-cls")
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes (1: steady on a shared host)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per figure")
    args = parser.parse_args()
    logging.getLogger("medmm").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    table = [f"onnxruntime vs torch eager on the CPU, {args.threads} thread(s); predictions/s (best round)",
             f"{'task':<14}{'batch':>6}{'torch':>12}{'ort fp32':>12}{'ratio':>9}{'ort int8':>12}{'ratio':>9}"]
    with tempfile.TemporaryDirectory(prefix="medmm-bench-onnx-") as tmp:
        for task in args.tasks.split(","):
            for task_, batch, t, o, q in bench(task.strip(), Path(tmp), args.threads, args.seconds):
                table.append(f"{task_:<14}{batch:>6}{t:>12.1f}{o:>12.1f}{o / t:>8.2f}x{q:>12.1f}{q / t:>8.2f}x")
            print("\n" + "\n".join(table), flush=True)  # the table so far, after each task


if __name__ == "__main__":
    main()
