"""Every figure medmm shows agrees with every other (#27): strict JSON, the training-rows caveat,
the model card's latest audit, and (slow) every artefact of a demo run read back and compared."""

from __future__ import annotations

import html as _html
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from medmm import metrics as M
from medmm.evaluation.overlap import caveat, seen_splits
from medmm.io import dumps_json, write_json_atomic
from medmm.model_card import set_section
from tests.conftest import cli


def _strict(text: str) -> object:
    """``json.loads`` that refuses NaN / Infinity (Python's accepts them; browsers and jq do not)."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_the_json_writer_is_strict(tmp_path: Path) -> None:
    payload = {"auroc": float("nan"), "ci": (0.1, float("inf")), "n": np.int64(3), "x": np.float32(0.5),
               "arr": np.array([1.0, np.nan]), "path": tmp_path}
    out = _strict(write_json_atomic(tmp_path / "a.json", payload).read_text())
    assert out == {"auroc": None, "ci": [0.1, None], "n": 3, "x": 0.5, "arr": [1.0, None], "path": str(tmp_path)}
    assert "NaN" not in dumps_json({"a": [math.nan, -math.inf]})


def test_units_the_run_trained_on_get_a_caveat(tmp_path: Path) -> None:
    (tmp_path / "splits.csv").write_text("id,split\na,train\nb,train\nc,val\nd,test\n")
    seen = seen_splits(tmp_path, ["a", "b", "c", "d", "e", "a"])
    assert seen == {"train": 2, "val": 1, "test": 1}
    text = caveat(seen, 5)
    assert text.startswith("caveat: 3 of 5 evaluated units were used by this run (2 in its training split, "
                           "1 in its validation split)")
    assert caveat(seen_splits(tmp_path, ["d", "e"]), 2) is None  # test rows and new rows: no caveat
    assert caveat(seen_splits(tmp_path / "nowhere", ["a"]), 1) is None  # a run without splits.csv
    # ids alone do not tell (row numbers and relative paths repeat across data sets): the data must be the run's
    trained, other = tmp_path / "train.csv", tmp_path / "other.csv"
    for f in (trained, other):
        f.write_text("id,x\na,1\nb,2\n")
    other.write_text("id,x\na,5\nb,6\n")
    (tmp_path / "run.json").write_text(json.dumps({"task": "t", "data": str(trained)}))
    assert seen_splits(tmp_path, ["a", "b"], trained) == {"train": 2}
    assert seen_splits(tmp_path, ["a", "b"], other) == {}  # same ids, other rows: no caveat


def test_the_card_subgroups_section_is_replaced_not_duplicated(tmp_path: Path) -> None:
    card = tmp_path / "model_card.md"
    card.write_text("# Model card\n\n## Evaluation\n\nx\n\n## Subgroups\n\nNot audited: none given.\n\n"
                    "## Limitations and ethical considerations\n\n- y\n\n## Validation\n\n### entry\n")
    set_section(card, "Subgroups", "Latest audit: evaluate on 2026-12-06.")
    text = card.read_text()
    assert text.count("## Subgroups") == 1 and "Not audited" not in text
    assert text.index("## Evaluation") < text.index("Latest audit") < text.index("## Limitations")
    assert text.endswith("### entry\n")
    bare = tmp_path / "bare.md"
    bare.write_text("# Model card\n\n## Limitations and ethical considerations\n\n- y\n")
    set_section(bare, "Subgroups", "Latest audit.")
    assert bare.read_text().index("## Subgroups") < bare.read_text().index("## Limitations")


# --------------------------------------------------------------------------- every artefact of demo runs



DEMOS = {  # each demo, as small as it gets (the figures are checked for agreement, not for accuracy)
    "image-cls": ["--set", "model.backbone=resnet18", "--set", "model.pretrained=none", "--set", "data.size=32",
                  "--set", "engine.epochs=2", "--set", "engine.bootstrap=50"],
    "tabular-risk": ["--set", "engine.epochs=3", "--set", "engine.bootstrap=50"],
    "text-cls": ["--set", "model.backbone=textcnn", "--set", "engine.bootstrap=50"],
    "fusion": ["--set", "data.size=64", "--set", "engine.epochs=2", "--set", "engine.bootstrap=50"],  # frozen encoders
}


def _visible(page: str) -> str:
    """The text a reader sees on an HTML page: no tags, no embedded images, entities decoded."""
    page = re.sub(r'src="data:[^"]*"', "", page)
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.DOTALL)
    return _html.unescape(re.sub(r"<[^>]+>", " ", page))


def _prose(markdown: str) -> str:
    """A Markdown file without its code blocks (the card's resolved config is YAML, quoted as it is)."""
    return re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)


def _no_glitches(text: str, where: str) -> None:
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), (where, re.search(r".{40}\bnan\b.{40}", text, re.IGNORECASE | re.DOTALL))
    assert not re.search(r"\binf(inity)?\b", text, re.IGNORECASE), where
    assert not re.search(r"(^|\s)\?(\s|$)", text), (where, "a '?' where a value should be")
    assert '{"' not in text and "{'" not in text, (where, "raw JSON / dict in user-facing text")


def _inside(value: float | None, ci: list | tuple | None, where: str) -> None:
    if value is None or ci is None or ci[0] is None:
        return
    assert ci[0] <= value <= ci[1], (where, value, ci)


@pytest.fixture(params=list(DEMOS))
def demo_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """``(task, run dir, what the demo printed)``."""
    task = request.param
    run = tmp_path_factory.mktemp(task) / "run"
    done = cli("demo", task, "--out", str(run), *DEMOS[task], "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    return task, run, done.stdout


@pytest.mark.slow
def test_every_artefact_of_a_demo_run_agrees(demo_run: tuple[str, Path, str], tmp_path: Path) -> None:
    task, run, console = demo_run
    summary = _strict((run / "summary.json").read_text())
    rows = [_strict(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = next(r for r in rows if r.get("final"))
    metrics, ci, split = summary["metrics"], summary["ci"], summary["split"]
    assert final["split"] == split
    report = (run / "report.html").read_text()
    card = (run / "model_card.md").read_text()
    for name, value in metrics.items():
        assert final.get(name) == value, (name, final.get(name), value)  # one figure per metric and split
        _inside(value, ci.get(name), f"summary.json {name}")
        shown = M.format_estimate(value, ci.get(name) and tuple(ci[name]), style="[{lo}, {hi}]")
        figure, _, interval = shown.partition(" ")
        cell = re.search(rf"<td>{re.escape(name)}</td><td class=\"num\">([^<]*)</td><td class=\"num\">([^<]*)</td>",
                         report)
        assert cell and cell.group(1) == figure and cell.group(2) == interval, (name, cell and cell.groups(), shown)
        row = re.search(rf"^\| {re.escape(name)} \| ([^|]*) \| ([^|]*) \|$", card, re.MULTILINE)
        assert row and row.group(1) == figure, (name, row and row.groups(), shown)
        printed = M.format_estimate(value, ci.get(name) and tuple(ci[name]), style=" (95% CI {lo}-{hi})")
        assert f"{name:<10} {printed}" in console, (name, printed)
    for cls, op in (summary.get("operating_point") or {}).items():
        for k in ("sensitivity", "specificity", "ppv", "npv"):
            _inside(op[k], op["ci"].get(k), f"operating point {cls} {k}")
    best = summary["best_checkpoint"]
    assert f"best checkpoint</th><td>{best}" in report and f"at {best}" in console  # one best, said the same way
    for where, text in (("report.html", _visible(report)), ("model_card.md", _prose(card)), ("console", console)):
        _no_glitches(text, where)

    # evaluate on the demo's own data: the caveat, the same figures on the test rows, the card's latest audit
    data = run / "demo-data" if task == "image-cls" else Path(_strict((run / "run.json").read_text())["data"])
    extra = {"image-cls": ["--subgroups", "Modality"], "fusion": ["--subgroups", "sex"]}.get(task, [])
    done = cli("evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "eval"), *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "caveat:" in done.stdout and "were used by this run" in done.stdout
    done_eval = done.stdout
    if task == "tabular-risk":  # predict with labels prints metrics: the same caveat
        done = cli("predict", str(run), "--data", str(data), "--out", str(tmp_path / "pred.csv"))
        assert done.returncode == 0 and "caveat:" in done.stdout, done.stderr[-2000:]
    ev = _strict((tmp_path / "eval" / "evaluation.json").read_text())
    assert ev["provenance"]["caveat"].startswith("caveat:")
    for name, value in ev["metrics"].items():
        _inside(value, ev["ci"].get(name), f"evaluation.json {name}")
    page = (tmp_path / "eval" / "evaluation.html").read_text()
    _no_glitches(_visible(page), "evaluation.html")
    assert "caveat:" in _visible(page)
    for col, c in ((ev.get("subgroups") or {}).get("columns") or {}).items():  # console and page flag alike
        groups = f"flagged groups: {', '.join(c['flagged']) or 'none'}"
        assert groups in done_eval and groups in _visible(page), (col, groups)
        flags = c.get("column_flags") or []
        if flags:  # every column flag on the console line, in the page's words
            assert "column FLAGGED: " + "; ".join(flags) in done_eval, (col, flags)
        for flag in flags:
            assert flag in _visible(page), (col, flag)
    card = (run / "model_card.md").read_text()
    if extra:
        sub = card.split("## Subgroups", 1)[1].split("\n## ", 1)[0]
        assert "Latest audit: `medmm evaluate`" in sub and "Not audited" not in sub and "Flag rule:" in sub
    _no_glitches(_prose(card), "model_card.md after evaluate")

    # explain on the run's own data: its held-out units by default
    done = cli("explain", str(run), "--data", str(data), "--out", str(tmp_path / "explain"), "--limit", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out units of the run's" in done.stdout
    ex = _strict((tmp_path / "explain" / "summary.json").read_text())
    assert all(f["deletion_verdict"].split(":")[0] in ("pass", "weak", "fail", "not checked")
               for f in ex["faithfulness"].values())
    explanations = (tmp_path / "explain" / "explanations.html").read_text()
    _no_glitches(_visible(explanations), "explanations.html")

    # every page in a real browser: no console message, nothing loaded from outside the file
    from tests.browser import open_page

    for name, html_path in (("report", run / "report.html"), ("evaluation", tmp_path / "eval" / "evaluation.html"),
                            ("explanations", tmp_path / "explain" / "explanations.html")):
        text = html_path.read_text()
        assert not re.search(r'(src|href)="(?!data:|#)', text), (name, "a resource outside the page")
        console_lines = open_page(html_path, tmp_path / f"{task}-{name}.png")
        assert console_lines == [], (name, console_lines)


def test_report_names_its_rules_and_never_prints_nan_or_raw_json(tmp_path: Path) -> None:
    from medmm.report import best_step, write_report
    from medmm.runner import _model_name

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 6)  # class 2 ("covid") absent from the evaluated split
    s = rng.dirichlet([1, 1, 1], 12)
    history = [{"epoch": 1, "step": 3, "split": "train", "loss": 1.0, "lr": 0.1},
               {"epoch": 1, "step": 3, "split": "val", "loss": 0.9, "macro_f1": 0.5, "lr": 0.1},
               {"epoch": 2, "step": 6, "split": "val", "loss": 0.8, "macro_f1": 0.7, "lr": 0.05},
               {"epoch": 3, "step": 9, "split": "val", "loss": 0.7, "macro_f1": 0.7, "lr": 0.01}]
    assert best_step(history, "max", "macro_f1") == 6  # the first best, the checkpoint the engine keeps
    metrics = M.compute_metrics("multiclass", y, s)
    page = write_report(tmp_path / "r.html", title="t", problem="multiclass", history=history, y_true=y, y_score=s,
                        label_names=["normal", "pneumonia", "covid"], metrics=metrics,
                        ci=M.bootstrap_cis("multiclass", y, s, n_boot=30),
                        summary={"examples": {"train": 35, "val": 12, "test": 11}}).read_text()
    text = _visible(page)
    _no_glitches(text, "report")
    assert "train 35 · val 12 · test 11" in text
    assert "sensitivity (arg-max)" in text and "F1 (arg-max)" in text and "n/a (no positives)" in text
    assert "Confusion matrix (calls by arg-max" in text and "widened where needed to contain" in text
    binary = write_report(tmp_path / "b.html", title="t", problem="binary", history=[], y_true=y, y_score=s[:, 1],
                          label_names=["benign", "malignant"], metrics={}).read_text()
    binary = _visible(binary)
    assert "Positive class 'malignant'" in binary and "Reliability diagram (positive class 'malignant')" in binary
    fusion = {"head": "concat", "text_backbone": "minilm-l6", "image_backbone": "efficientnet_lite0"}
    assert _model_name(type("C", (), {"model": fusion})()) == "concat head over minilm-l6 + efficientnet_lite0"


@pytest.mark.slow
def test_serve_422_names_the_column_never_the_value(tmp_path: Path) -> None:
    """The fault seen: `medmm serve` answered a text cell in a numeric column with `e.g. ['old']`."""
    pytest.importorskip("fastapi")
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from medmm.deploy.runtime import ExportedModel
    from medmm.deploy.service import create_app

    run = tmp_path / "run"
    done = cli("demo", "tabular-risk", "--out", str(run), "--set", "engine.epochs=1", "--set", "engine.bootstrap=0",
                   "--set", "engine.baseline=none", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    done = cli("export", str(run), "--out", str(tmp_path / "export"), "--sample", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    client = TestClient(create_app(ExportedModel(tmp_path / "export")))
    row = {"patient": "p1", "age": 59, "sex": 2, "bmi": 32.1, "bp": 101, "s1": 157, "s2": 93.2, "s3": 38, "s4": 4,
           "s5": 4.86, "s6": 87}
    assert client.post("/predict", json={"rows": [row]}).status_code == 200
    marker = "zebra-old-7731"
    r = client.post("/predict", json={"rows": [{**row, "bmi": marker}]})
    assert r.status_code == 422 and "bmi" in r.text and marker not in r.text and "zebra" not in r.text, r.text
