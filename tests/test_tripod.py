"""``medmm report RUN --tripod-ai`` on a hand-made run directory with planted answers (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmm.errors import MedmmError
from medmm.evaluation.tripod import ITEMS, SUPPLY, tripod_ai, write_tripod_ai


def _run(tmp_path: Path, status: str = "done") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "notes.csv"
    data.write_text("id,text,y\n")
    (tmp_path / "notes.csv.deid.json").write_text(json.dumps({"options": {"dates": "shift"}}))
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"task": "text-cls", "medmm": "9.9", "data": str(data), "status": status}))
    (run / "config.yaml").write_text("data:\n  text_column: text\n  label_column: y\n  id_column: pid\n"
                                     "model:\n  backbone: minilm\nengine:\n  epochs: 2\n  class_weights: balanced\n"
                                     "  sampler: shuffle\n  bootstrap: 100\neval:\n  min_group_size: 10\n")
    (run / "summary.json").write_text(json.dumps({
        "split": "test", "sizes": {"train": 70, "val": 15, "test": 15}, "metrics": {"auroc": 0.8},
        "ci": {"auroc": [0.7, 0.9]}, "monitor": "auroc", "best_step": 7, "subgroups_flagged": {"sex": ["F"]},
        "privacy": {"epsilon": 2.5, "target_epsilon": 3.0, "delta": 1e-5},
        "conformal": {"alpha": 0.1, "coverage": 0.91, "coverage_ci": [0.85, 0.95], "mean_size": 1.1,
                      "referred": 0.2, "size_name": "set size", "flagged": []}}))
    (run / "skipped.csv").write_text("id,reason\n3,empty text\n9,empty text\n11,missing label\n")
    (run / "predictions.csv").write_text("id,prob_pos,predicted,true\n1,0.9,pos,pos\n2,0.2,neg,neg\n4,0.3,neg,pos\n")
    (run / "artifacts" / "conformal.json").write_text(json.dumps({
        "format": "medmm-conformal", "problem": "binary", "alpha": 0.1, "mondrian": "class", "refer": "not_single",
        "classes": ["neg", "pos"], "n_per_class": [9, 6]}))
    ev = run / "evaluations" / "siteB-1"
    ev.mkdir(parents=True)
    (ev / "evaluation.json").write_text(json.dumps({
        "provenance": {"data": "siteB.csv", "site": "Hospital B", "date_range": ["2024-01-02", "2024-06-30"],
                       "date_column": "visit"}, "metrics": {"auroc": 0.75},
        "shift": {"warnings": ["feature 'age': standardized mean difference +0.6"]},
        "recalibration": {"method": "conformal", "fit_units": 50, "before": {"coverage": 0.8},
                          "after": {"coverage": 0.9}}}))
    return run


def test_every_item_is_present_with_a_status_and_a_source_where_filled(tmp_path: Path) -> None:
    rep = tripod_ai(_run(tmp_path))
    items = {r["item"]: r for r in rep["items"]}
    assert list(items) == [i for i, *_ in ITEMS] and len({i.rstrip("abcdefg") for i in items}) == 27
    for r in rep["items"]:
        assert r["status"] in ("filled", "partly", SUPPLY)
        assert r["status"] == SUPPLY or r["source"], r["item"]  # what the run answers cites its artefact
    assert items["17"]["status"] == SUPPLY and items["18a"]["text"] == SUPPLY
    assert "empty text (2)" in items["6b"]["text"] and items["6b"]["source"] == "skipped.csv"
    assert "2024-01-02 to 2024-06-30" in items["5b"]["text"] and "Hospital B" in items["6a"]["text"]
    assert "notes.csv.deid.json" in items["7"]["text"]
    assert "ε = 2.5000" in items["12c"]["text"]
    assert "by 'pid'" in items["12a"]["text"]
    assert "balanced" in items["13"]["text"]
    assert "neg: 1, pos: 2" in items["20a"]["text"]
    assert "sex: ['F']" in items["23b"]["text"] and "conformal 90% coverage 0.9100" in items["23a"]["text"]
    assert "coverage 0.8000 -> 0.9000" in items["24"]["text"] and items["16"]["status"] == "filled"


def test_written_markdown_and_json_and_refusals(tmp_path: Path) -> None:
    run = _run(tmp_path)
    md, js = write_tripod_ai(run)
    assert md.parent == run / "tripod-ai" and json.loads(js.read_text())["format"] == "medmm-tripod-ai"
    text = md.read_text()
    assert text.count("| 12c |") == 1 and "## Open science" in text
    assert "3,empty" not in text and "\n3," not in text  # aggregates only: no row of skipped.csv verbatim
    with pytest.raises(MedmmError, match="not empty"):
        write_tripod_ai(run)
    with pytest.raises(MedmmError, match="not finished"):
        tripod_ai(_run(tmp_path / "other", status="running"))
