"""The command-line surface, run as a user runs it (a fresh process each time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli


def test_help_is_fast_and_imports_no_heavy_library() -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "medmm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout and "predict" in out.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "transformers", "timm", "pydicom", "sklearn", "numpy"}


def test_run_help_lists_tasks_lazily() -> None:
    out = run_cli("run", "--help")
    assert out.returncode == 0
    assert "image-cls" in out.stdout and "tabular-risk" in out.stdout


def test_config_prints_resolved_yaml_with_overrides() -> None:
    out = run_cli("config", "tabular-risk", "--set", "engine.epochs=3", "--set", "data.target=y")
    cfg = yaml.safe_load(out.stdout)
    assert cfg["engine"]["epochs"] == 3 and cfg["data"]["target"] == "y"
    assert cfg["model"]["backbone"] == "auto"  # linear vs mlp chosen on val at run time (#14)


def test_tasks_and_backbones_listing() -> None:
    tasks = run_cli("tasks").stdout
    assert {"text-cls", "image-cls", "tabular-risk", "fusion"} <= {l.split()[0] for l in tasks.splitlines()}
    vits = run_cli("backbones", "vit_*").stdout.splitlines()
    assert vits and all(l.startswith("vit_") for l in vits)
    text = run_cli("backbones", "--modality", "text").stdout
    assert "minilm-l6" in text and "textcnn" in text and "resnet18" not in text


def _error(*args: str) -> str:
    out = run_cli(*args)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medmm: error:")
    return lines[0]


@pytest.mark.slow
def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    assert "Did you mean 'text-cls'" in _error("run", "text-clz", "--data", str(tmp_path))
    assert "--data path does not exist" in _error("run", "text-cls", "--data", str(tmp_path / "nope.csv"))
    assert "engine.epochz" in _error("config", "text-cls", "--set", "engine.epochz=3")
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {epochs: [\n")
    assert "malformed YAML" in _error("config", "text-cls", "--config", str(bad))
    assert "not a medmm run directory" in _error("predict", str(tmp_path), "--data", str(tmp_path), "--out", "x.csv")


def test_debug_shows_the_traceback() -> None:
    out = run_cli("--debug", "run", "text-clz", "--data", ".")
    assert out.returncode != 0 and "Traceback" in out.stderr
