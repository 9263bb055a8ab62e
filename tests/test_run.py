"""Run.open: the one way to open a run directory (its errors are one line and name what is wrong)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmm import Run
from medmm.errors import MedmmError, UnknownNameError


def test_a_folder_without_run_json_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(MedmmError, match="is not a medmm run directory"):
        Run.open(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(MedmmError, match="run.json is corrupt"):
        Run.open(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"data": "x.csv"}))
    with pytest.raises(MedmmError, match="names no task"):
        Run.open(tmp_path)


def test_an_unregistered_task_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"task": "tabular-risc"}))
    with pytest.raises(UnknownNameError, match="Did you mean 'tabular-risk'"):
        Run.open(tmp_path)


def test_a_run_opens_with_its_saved_config_and_finds_its_data(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "rows.csv").write_text("y\n1\n")
    (run_dir / "run.json").write_text(json.dumps({"task": "tabular-risk", "data": str(tmp_path / "rows.csv")}))
    (run_dir / "config.yaml").write_text("data:\n  target: y\nengine:\n  epochs: 7\n")
    run = Run.open(run_dir, overrides=["engine.lr=0.5"])
    assert run.task_name == "tabular-risk" and run.spec.name == "tabular-risk"
    assert (run.cfg.data.target, run.cfg.engine.epochs, run.cfg.engine.lr) == ("y", 7, 0.5)
    assert run.data_path() == tmp_path / "rows.csv" and run.data_path("other.csv") == Path("other.csv")
    assert run.checkpoint("last") == run_dir / "checkpoints" / "last" and run.artifacts == run_dir / "artifacts"
    (tmp_path / "rows.csv").unlink()
    with pytest.raises(MedmmError, match="not reachable from here; pass --data"):
        run.data_path()
