"""HTML report and model card: self-contained, escaped, robust to degenerate inputs."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medmm import metrics as M
from medmm import report
from medmm.model_card import write_model_card
from medmm.report import write_report

IMG = '<img src="data:image/png;base64,'
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(problem: str, epochs: int = 4) -> list[dict[str, Any]]:
    head, _ = M.headline(problem)
    rows = []
    for epoch in range(1, epochs + 1):
        rows.append({"epoch": epoch, "step": 10 * epoch, "split": "train", "loss": 1 / epoch,
                     "lr": 1e-3 / epoch, "samples_per_s": 100.0, head: 0.5 + 0.05 * epoch})
        rows.append({"epoch": epoch, "step": 10 * epoch, "split": "val", "loss": 1.2 / epoch,
                     head: 0.5 + 0.04 * epoch})
    return rows


def _predictions(problem: str, n: int = 120, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    if problem == "binary":
        y = rng.integers(0, 2, n)
        return {"y_true": y, "y_score": np.clip(0.4 * y + 0.6 * rng.random(n), 0, 1)}
    if problem in ("multiclass", "multilabel"):
        k = 3
        if problem == "multiclass":
            y = rng.integers(0, k, n)
            p = rng.dirichlet(np.ones(k), n) + np.eye(k)[y]
            return {"y_true": y, "y_score": p / p.sum(axis=1, keepdims=True)}
        y = rng.integers(0, 2, (n, k))
        return {"y_true": y, "y_score": np.clip(0.4 * y + 0.6 * rng.random((n, k)), 0, 1)}
    if problem == "regression":
        y = rng.normal(size=n)
        return {"y_true": y, "y_score": y + 0.3 * rng.normal(size=n)}
    risk = rng.normal(size=n)
    return {"y_true": None, "y_score": risk, "time": rng.exponential(np.exp(-risk)),
            "event": rng.random(n) < 0.7}


LABELS = {"binary": ["benign", "malignant"], "multiclass": ["normal", "pneumonia", "covid"],
          "multilabel": ["effusion", "edema", "nodule"]}
# training curves + per-problem evaluation figures
EXPECTED_IMAGES = {"binary": 4, "multiclass": 4, "multilabel": 2, "regression": 2, "survival": 2}


def _write(tmp_path: Path, problem: str, **overrides: Any) -> tuple[Path, str]:
    kwargs: dict[str, Any] = dict(_predictions(problem))
    kwargs.update(overrides)
    metric_kwargs = {k: kwargs[k] for k in ("time", "event") if k in kwargs}
    metrics = M.compute_metrics(problem, kwargs["y_true"], kwargs["y_score"], **metric_kwargs)
    kwargs.setdefault("metrics", metrics)
    kwargs.setdefault("history", _history(problem))
    kwargs.setdefault("label_names", LABELS.get(problem))
    path = write_report(tmp_path / "report.html", title=f"{problem} <run> & co",
                        problem=problem, **kwargs)
    return path, path.read_text(encoding="utf-8")


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.mark.parametrize("problem", M.PROBLEMS)
def test_report_per_problem(tmp_path: Path, problem: str) -> None:
    if problem == "survival":
        pytest.importorskip("lifelines")
    inputs = _predictions(problem)
    metrics = M.compute_metrics(problem, inputs["y_true"], inputs["y_score"],
                                time=inputs.get("time"), event=inputs.get("event"))
    ci = {name: (value - 0.01, value + 0.01) for name, value in metrics.items()}
    path, page = _write(tmp_path, problem, metrics=metrics, ci=ci,
                        summary={"task": "demo", "rows (train/val/test)": "400/120/120"},
                        extra_sections=[("Modality ablation", "<table><tr><td>text only</td>"
                                         "</tr></table>")])
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left
    assert page.count(IMG) == EXPECTED_IMAGES[problem], re.findall(r'class="note">[^<]*', page)
    assert all(png.startswith(PNG_MAGIC) for png in _images(page))
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert "not shown" not in page
    for name, value in metrics.items():
        assert f"<td>{name}</td>" in page
        # rounded to what the CI supports (width 0.02: 3 decimals), value and interval alike (#27)
        assert f"{value:.3f}</td>" in page and f"[{value - 0.01:.3f}, {value + 0.01:.3f}]" in page
    assert f"{problem} &lt;run&gt; &amp; co" in page  # escaped title
    assert "<h2>Modality ablation</h2>" in page and "<td>text only</td>" in page
    assert "400/120/120" in page
    for name in LABELS.get(problem, []):
        if problem != "binary":
            assert f"<td>{name}</td>" in page  # per-class table


def test_binary_single_class_skips_roc_only(tmp_path: Path) -> None:
    y = np.ones(50, dtype=int)
    _, page = _write(tmp_path, "binary", y_true=y, y_score=np.linspace(0.1, 0.9, 50), history=[])
    assert page.count(IMG) == 2  # confusion matrix, reliability diagram
    assert "ROC and precision-recall curves: not shown (y_true has a single class" in page
    assert "n/a" in page


def test_empty_history_and_empty_predictions(tmp_path: Path) -> None:
    _, page = _write(tmp_path, "binary", history=[], y_true=np.zeros(0, int),
                     y_score=np.zeros(0))
    assert IMG not in page
    assert "Training curves: not shown (no per-epoch history was logged)" in page
    assert "not shown (no evaluated rows)" in page


def test_non_finite_predictions(tmp_path: Path) -> None:
    inputs = _predictions("multiclass")
    inputs["y_score"][0, 0] = np.nan
    _, page = _write(tmp_path, "multiclass", **inputs, history=[])
    assert IMG not in page
    assert "predictions contain NaN or infinity" in page


def test_history_without_epochs_or_headline(tmp_path: Path) -> None:
    history = [{"epoch": 1, "split": "train", "loss": float("nan")},
               {"step": 5, "split": "train", "loss": 0.3}, {"epoch": 2, "split": "val"}]
    _, page = _write(tmp_path, "regression", history=history)
    assert "Training curves: not shown" in page


def test_survival_degenerate_and_without_lifelines(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _predictions("survival")
    _, page = _write(tmp_path, "survival", **{**inputs, "y_score": np.zeros(120)}, history=[])
    assert "no median split" in page
    monkeypatch.setitem(sys.modules, "lifelines", None)  # import lifelines -> ImportError
    _, page = _write(tmp_path, "survival", **inputs, history=[])
    assert "lifelines is not installed" in page
    assert IMG not in page


def test_curves_are_capped_to_the_most_prevalent_classes() -> None:
    rng = np.random.default_rng(1)
    k = report.MAX_CURVES + 3
    y = np.eye(k, dtype=int)[np.r_[rng.integers(0, k, 300), np.zeros(100, int)]]
    y[:, -1] = 0  # a class never present is not drawn
    fig = report._fig_roc_pr(y, rng.random(y.shape), [f"c{i}" for i in range(k)])
    roc_ax = fig.axes[0]
    labels = [line.get_label() for line in roc_ax.get_lines()]
    assert len(labels) == report.MAX_CURVES + 1 and labels[-1] == "chance"
    assert labels[0].startswith("c0:")  # the most prevalent class first
    assert f"{report.MAX_CURVES} of {k} classes shown" in fig.get_suptitle()


def test_report_falls_back_to_indices_on_wrong_label_count(tmp_path: Path) -> None:
    _, page = _write(tmp_path, "multiclass", label_names=["a", "b"], history=[])
    assert "2 label names were given for 3 classes; indices are shown." in page
    assert page.count(IMG) == 3


def test_report_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    path, page = _write(tmp_path, "regression", history=[])
    assert path == target and page.startswith("<!DOCTYPE html>")


def test_model_card(tmp_path: Path) -> None:
    config = {"task": "image-cls", "data": {"path": Path("/data/x"), "image_size": 224},
              "train": {"epochs": 3, "lr": 0.001}}
    path = write_model_card(
        tmp_path / "sub" / "MODEL_CARD.md", task="image-cls", model="efficientnet_b0 (timm)",
        data_description="1,200 studies from 1,100 patients; 20% positive.",
        metrics={"auroc": 0.91234, "f1": float("nan")}, ci={"auroc": (0.88, 0.94)},
        label_names=["normal", "pneumonia"], limitations=["Single-site data."], config=config)
    card = path.read_text(encoding="utf-8")
    for heading in ("# Model card: image-cls", "## Model details", "## Intended use",
                    "## Training data", "## Evaluation",
                    "## Limitations and ethical considerations", "## How to reproduce"):
        assert heading in card
    assert "| auroc | 0.912 | 0.880 – 0.940 |" in card  # CI width 0.06: three decimals (#27)
    assert "| f1 | n/a |  |" in card
    assert "Not a medical device" in card and "- Single-site data." in card
    assert "medmm run image-cls --data <DATA> --config config.yaml" in card
    assert "image_size: 224" in card and "path: /data/x" in card
    assert "`pneumonia`" in card
    assert [p.name for p in path.parent.iterdir()] == ["MODEL_CARD.md"]


def test_html_table_escapes_text_and_formats_numbers() -> None:
    table = report.html_table(["rows <shown>", "auroc"], [("without <b>", 0.912345), ("only text", float("nan")),
                                                          ("count", np.int64(7)), ("flag", True)])
    assert table.startswith("<table><tr><th>rows &lt;shown&gt;</th><th>auroc</th></tr>")
    assert "<td>without &lt;b&gt;</td><td class=\"num\">0.9123</td>" in table
    assert '<td class="num">n/a</td>' in table and '<td class="num">7</td>' in table
    assert "<td>True</td>" in table and "<b>" not in table
    assert table.count("<tr>") == 5
