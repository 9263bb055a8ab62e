"""Beyond one machine (#30): ``torchrun --nnodes 2`` with a c10d rendezvous on 127.0.0.1 and gloo, two
local "nodes" of one process each, gives the metrics of one process (same global batch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sets(batch: int) -> list[str]:
    sets = ["data.target=y", "engine.device=cpu", "engine.precision=fp32", f"engine.batch_size={batch}",
            "engine.epochs=2", "engine.bootstrap=0", "engine.baseline=none", "model.backbone=linear"]
    return [a for s in sets for a in ("--set", s)]


def _val_records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "val"]


@pytest.mark.slow
def test_two_nodes_on_localhost_match_one_process(tmp_path: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] - x[:, 1] + rng.normal(0, 0.5, 400) > 0).astype(int)
    pd.DataFrame({**{f"x{i}": x[:, i] for i in range(4)}, "y": y}).to_csv(tmp_path / "t.csv", index=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "medmm", "run", "tabular-risk", "--data", str(tmp_path / "t.csv"),
                          "--out", str(tmp_path / "one"), *_sets(32)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                               "--rdzv-id", "medmm-test", "-m", "medmm", "run", "tabular-risk",
                               "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "two"), *_sets(16)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        outs = [n.communicate(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    for n, (_, err) in zip(nodes, outs):
        assert n.returncode == 0, err[-3000:]
    a, b = _val_records(tmp_path / "one"), _val_records(tmp_path / "two")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in ("loss", "auroc", "step"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-5), key
    assert not (tmp_path / "two" / "rank1").exists()  # rank 1 writes nothing into the run
