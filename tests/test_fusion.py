"""fusion end to end through the CLI on the synthetic phantom-CT + note demo, plus bad input."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medmm.demos.fusion import build_fusion_demo
from tests.conftest import cli

pytestmark = pytest.mark.slow
DEMO_PATIENTS = 400  # as `medmm demo fusion`

COMMON = ["--set", "data.label_column=label", "--set", "data.classes=[no_malignancy,malignant]",
          "--set", "data.id_column=id", "--set", "data.group_column=patient", "--set", "data.split_column=split",
          "--set", "data.size=128", "--set", "data.window=lung", "--set", "engine.epochs=30",
          "--set", "engine.patience=10", "--set", "engine.bootstrap=0", "--quiet"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo table with a fixed patient-level split column, so every model sees the same rows."""
    root = tmp_path_factory.mktemp("fusion")
    pairs = build_fusion_demo(root / "data", n_patients=DEMO_PATIENTS)
    rows = _rows(pairs)
    for row in rows:
        bucket = int(hashlib.sha256(row["patient"].encode()).hexdigest(), 16) % 10
        row["split"] = "test" if bucket < 3 else "val" if bucket < 5 else "train"
    table = pairs.with_name("pairs_split.csv")
    _write(table, rows)
    return table


def _train(demo: Path, name: str, *extra: str) -> Path:
    run = demo.parent.parent / name
    out = cli("run", "fusion", "--data", str(demo), "--out", str(run), "--set",
              f"data.cache_dir={demo.parent.parent / 'cache'}", *COMMON, *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def runs(demo: Path) -> dict[str, Path]:
    return {
        "text": _train(demo, "text_only", "--set", "data.image_column=null"),
        "image": _train(demo, "image_only", "--set", "data.text_column=null"),
        "fused": _train(demo, "fused"),
    }


def _auroc_on(run: Path, ids: set[str], truth: dict[str, int]) -> float:
    preds = {r["id"]: float(r["prob_malignant"]) for r in _rows(run / "predictions.csv") if r["id"] in ids}
    keys = sorted(preds)
    return float(roc_auc_score([truth[k] for k in keys], [preds[k] for k in keys]))


def test_fused_model_beats_each_single_modality(demo: Path, runs: dict[str, Path]) -> None:
    rows = _rows(demo)
    truth = {r["id"]: int(r["label"] == "malignant") for r in rows}
    both = {r["id"] for r in rows if r["split"] == "test" and r["text"] and r["image"]}
    assert len(both) > 50
    auroc = {name: _auroc_on(run, both, truth) for name, run in runs.items()}
    # each modality carries part of the label (about 0.8 alone); together about 0.93
    assert auroc["fused"] > max(auroc["text"], auroc["image"]) + 0.04, auroc
    assert min(auroc["text"], auroc["image"]) > 0.6, auroc
    baseline = json.loads((runs["fused"] / "summary.json").read_text())["baseline"]  # the best single modality
    assert "(best single modality on val)" in baseline["description"] and baseline["baseline"] > 0.6


def test_masking_a_modality_degrades_gracefully(runs: dict[str, Path]) -> None:
    ablation = json.loads((runs["fused"] / "modality_ablation.json").read_text())
    full = ablation["all modalities"]["auroc"]
    assert ablation["without image"]["auroc"] > 0.6  # still works on the text alone, no collapse
    assert ablation["without text"]["auroc"] > 0.6
    assert full > max(ablation["without image"]["auroc"], ablation["without text"]["auroc"])
    report = (runs["fused"] / "report.html").read_text()
    assert "Per-modality contribution" in report and "without image" in report


def test_rows_missing_a_modality_are_kept_and_empty_rows_reported(demo: Path, runs: dict[str, Path]) -> None:
    rows = _rows(demo)
    neither = {r["id"] for r in rows if not r["text"] and not r["image"]}
    one_missing = {r["id"] for r in rows if bool(r["text"]) != bool(r["image"])}
    assert len(neither) == 1 and len(one_missing) > 10
    skipped = {r["id"]: r["reason"] for r in _rows(runs["fused"] / "skipped.csv")}
    assert set(skipped) == neither and all("no modality" in v for v in skipped.values())
    used = {r["id"] for r in _rows(runs["fused"] / "splits.csv")}
    assert one_missing <= used
    log = (runs["fused"] / "train.log").read_text()
    assert "text embeddings" in log and "from the cache" in log  # computed by the text-only run
    assert "SYN" not in skipped.get(next(iter(neither)), "")  # reasons never hold cell contents


def test_predict_new_table_with_missing_image(demo: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    rows = [r for r in _rows(demo) if r["split"] == "test" and r["text"] and r["image"]][:20]
    for r in rows[:5]:
        r["image"] = ""  # these arrive without their image
    rows[5]["image"] = "dicom/DOES/NOT/EXIST"
    rows[6]["text"], rows[6]["image"] = "", ""  # nothing to predict from
    table = demo.parent / "new.csv"
    _write(table, rows)
    out = tmp_path / "pred.csv"
    res = cli("predict", str(runs["fused"]), "--data", str(table), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    pred = {r["id"]: r for r in _rows(out)}
    assert set(pred) == {r["id"] for r in rows} - {rows[6]["id"]}
    probs = np.array([float(r["prob_malignant"]) for r in pred.values()])
    assert np.isfinite(probs).all() and probs.std() > 0.05
    trained = {r["id"]: float(r["prob_malignant"]) for r in _rows(runs["fused"] / "predictions.csv")}
    same = [r["id"] for r in rows[7:]]
    assert np.allclose([float(pred[i]["prob_malignant"]) for i in same], [trained[i] for i in same], atol=1e-4)
    skipped = _rows(out.with_name("pred.skipped.csv"))
    assert [s["id"] for s in skipped] == [rows[6]["id"]]  # table rows: keyed by id, as in the run's skipped.csv


def test_finetune_mode_trains_encoders_end_to_end(demo: Path, tmp_path: Path) -> None:
    """Tiny random encoders (bert-tiny, resnet18 at 32 px) + tabular age/sex, a few steps: the whole path runs.
    On the demo's first 80 patients (every split, both classes): the series scan and the evaluation passes
    that follow the steps cost in proportion to the rows, what is asserted does not depend on them."""
    from safetensors.torch import load_file

    every = _rows(demo)
    first = set(list(dict.fromkeys(r["patient"] for r in every))[:80])
    rows = [r for r in every if r["patient"] in first]
    assert {(r["split"], r["label"]) for r in rows} == {(s, c) for s in ("train", "val", "test")
                                                        for c in ("no_malignancy", "malignant")}
    table = demo.with_name("first_80_patients.csv")
    _write(table, rows)
    run = tmp_path / "ft"
    out = cli("run", "fusion", "--data", str(table), "--out", str(run), "--set", "model.mode=finetune",
              "--set", "model.text_backbone=bert-tiny", "--set", "model.image_backbone=resnet18",
              "--set", "model.image_pretrained=none", "--set", "model.head=attention",
              "--set", "data.tabular_columns=[age,sex]",
              "--set", "data.size=32", "--set", "engine.epochs=2", "--set", "engine.max_steps=6",
              *COMMON[:10], "--set", "engine.bootstrap=0", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    weights = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert any(k.startswith("encoders.text.") for k in weights)
    assert any(k.startswith("encoders.image.") for k in weights)
    assert any(k.startswith("encoders.tabular.") for k in weights)
    prep = json.loads((run / "artifacts" / "fusion.json").read_text())["preprocessor"]
    assert prep["numeric"] == ["age"] and prep["categorical"] == ["sex"]
    log = (run / "train.log").read_text()
    assert "embeddings" not in log  # nothing cached: encoders run on every batch


@pytest.mark.parametrize("args, message", [
    (["--set", "data.text_column=note"], "no column(s) ['note']"),
    (["--set", "data.text_column=null", "--set", "data.image_column=null"], "at least one of"),
    (["--set", "model.head=sum"], "unknown fusion head 'sum'"),
    (["--set", "model.image_backbone=minilm-l6"], "is a text backbone"),
])
def test_bad_config_fails_with_one_clear_line(demo: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = cli("run", "fusion", "--data", str(demo), "--out", str(tmp_path / "r"), *args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr


def test_folder_instead_of_table_is_refused(demo: Path, tmp_path: Path) -> None:
    out = cli("run", "fusion", "--data", str(demo.parent / "dicom"), "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "got a folder" in out.stderr
