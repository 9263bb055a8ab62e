"""image-cls end to end through the public CLI on real DICOM files (pydicom + pydicom-data)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom
import pytest

from medmm.demos.dicom import build_demo
from tests.conftest import cli

pytestmark = pytest.mark.slow  # every test runs `medmm run` (most train)

FAST = ["--set", "model.backbone=resnet18", "--set", "model.pretrained=none", "--set", "data.size=64",
        "--set", "engine.epochs=2", "--set", "engine.bootstrap=50", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("img")
    data = build_demo(root / "dicom")
    run = root / "run"
    out = cli("run", "image-cls", "--data", str(data), "--out", str(run), *FAST)
    assert out.returncode == 0, out.stderr[-3000:]
    return data, run


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_run_writes_every_output_and_accounts_for_every_file(trained: tuple[Path, Path]) -> None:
    data, run = trained
    for name in ("config.yaml", "metrics.jsonl", "predictions.csv", "report.html", "model_card.md",
                 "splits.csv", "skipped.csv", "checkpoints/best/model.safetensors", "checkpoints/last/trainer.pt"):
        assert (run / name).exists(), name
    files = [p for p in data.rglob("*") if p.is_file()]
    splits, skipped = _rows(run / "splits.csv"), _rows(run / "skipped.csv")
    assert len(splits) + len(skipped) == len(files)
    reasons = {r["path"]: r["reason"] for r in skipped}
    assert {"README.txt", "US/.DS_Store", "MR/MR_truncated.dcm"} <= set(reasons)
    assert "truncated" in reasons["MR/MR_truncated.dcm"]
    baseline = json.loads((run / "summary.json").read_text())["baseline"]  # pixel LR on the same test units
    assert baseline["description"].startswith("32px pixels + logistic regression") and "Model vs classic" in (
        run / "report.html").read_text()


def test_patients_never_cross_splits(trained: tuple[Path, Path]) -> None:
    data, run = trained
    from medmm.data.dicom.scan import real_paths

    by_patient: dict[str, set[str]] = {}
    rows = _rows(run / "splits.csv")
    real = real_paths(data, [row["id"] for row in rows])  # ids show identifier path parts as keyed tokens
    for row in rows:
        ds = pydicom.dcmread(data / real[row["id"]], stop_before_pixels=True)
        pid = str(ds.get("PatientID", "") or "")
        if pid:  # files without a PatientID fall back to their study (they are not one patient)
            by_patient.setdefault(pid, set()).add(row["split"])
    assert all(len(s) == 1 for s in by_patient.values()), by_patient
    assert len(by_patient) > 3


def test_predictions_are_keyed_by_path_and_uid_without_phi(trained: tuple[Path, Path]) -> None:
    data, run = trained
    rows = _rows(run / "predictions.csv")
    assert rows and {"id", "sop_instance_uid", "predicted", "true"} <= set(rows[0])
    probs = [[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows]
    assert all(abs(sum(p) - 1) < 1e-4 for p in probs)
    phi = set()
    for path in data.rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        for tag in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(tag, "") or "")
            if len(value) >= 5:
                phi.add(value)
    assert phi
    for out in run.rglob("*"):
        if out.is_file() and out.suffix in {".csv", ".json", ".jsonl", ".md", ".html", ".yaml", ".log"}:
            text = out.read_text(errors="ignore")
            leaked = [v for v in phi if v in text]
            assert not leaked, (out, leaked[:3])


def test_predict_reuses_the_run_and_matches_its_predictions(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    out = cli("predict", str(run), "--data", str(data), "--out", str(tmp_path / "p.csv"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "predictions" in out.stdout and "skipped" in out.stdout
    new = {r["id"]: r for r in _rows(tmp_path / "p.csv")}
    old = _rows(run / "predictions.csv")
    assert len(new) == len(_rows(run / "splits.csv"))
    for r in old:
        assert new[r["id"]]["predicted"] == r["predicted"]
        assert abs(float(new[r["id"]]["prob_CT"]) - float(r["prob_CT"])) < 1e-5
    skipped = _rows(tmp_path / "p.skipped.csv")
    assert len(skipped) == 3 and list(skipped[0]) == ["path", "reason"]  # files, keyed by path


def test_series_level_pools_instances(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    run = tmp_path / "series"
    out = cli("run", "image-cls", "--data", str(data), "--out", str(run), *FAST,
              "--set", "data.level=series", "--set", "engine.epochs=1")
    assert out.returncode == 0, out.stderr[-3000:]
    ids = [r["id"] for r in _rows(run / "predictions.csv")]
    assert ids and all(i.startswith(("series:", "path:")) for i in ids) and len(ids) == len(set(ids))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sizes"]["test"] >= len(ids)


def test_folder_without_dicom_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("hello")
    out = cli("run", "image-cls", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *FAST)
    assert out.returncode == 2 and "no readable DICOM image" in out.stderr and "Traceback" not in out.stderr


def test_auto_backbone_is_resolved_into_the_run_config(tmp_path: Path) -> None:
    import torch

    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    spec = get_registry().get("task", "image-cls")
    cfg = resolved_config(spec, None, ["engine.device=cpu"])
    # on CPU, auto picks the pretrained CNN that ships offline and says why (config.yaml comment)
    assert cfg["model"]["backbone"] == "efficientnet_lite0" and "auto:" in cfg.provenance["model.backbone"]
    spec.load()(cfg, tmp_path)
    assert cfg["model"]["backbone"] == "efficientnet_lite0"  # what config.yaml and predict will see
    if not torch.cuda.is_available():
        out = cli("run", "image-cls", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                  "--set", "engine.device=cuda")
        assert out.returncode == 2 and "no CUDA GPU" in out.stderr and "Traceback" not in out.stderr


def test_predict_keeps_no_header_record_per_file_and_writes_the_dict_per_unit_bytes(trained: tuple[Path, Path],
                                                                                    tmp_path: Path) -> None:
    """A DICOM folder's predict lets go of the pixel cache's header records, items and key index once the units
    and their UID columns are made (the dataset reads the pixel array only), holds the UID column as one string
    per unit (no dict per unit), and writes the bytes that a dict of columns per unit writes (#30)."""
    from medmm import UnitColumns
    from medmm.engine import Trainer
    from medmm.evaluation.calibration import apply_stored_calibration
    from medmm.evaluation.conformal import load_conformal, set_groups_of
    from medmm.evaluation.threshold import load_operating_point
    from medmm.predictions import write_predictions
    from medmm.run import Run

    data, run_dir = trained
    out = cli("predict", str(run_dir), "--data", str(data), "--out", str(tmp_path / "p.csv"))
    assert out.returncode == 0, out.stderr[-3000:]
    run = Run.open(run_dir)
    task = run.task()
    split, collate = run.predict_data(task, data)
    pixels = split.dataset.base.cache
    assert pixels.items == [] and pixels.index == {} and pixels.keys == [] and pixels.array.shape[0] >= len(split.units)
    cols = task.unit_columns
    assert isinstance(cols, UnitColumns) and cols.columns == ["sop_instance_uid"] and len(cols) == len(split.units)
    assert all(isinstance(v, str) for v in cols.values_of.values())
    trainer = Trainer(task, run.cfg, run.path, quiet=True)
    ev = apply_stored_calibration(run.path, task.problem, trainer.evaluate(run.model(task, "best"), split, collate))
    conf = load_conformal(run.path)
    kw = {"operating_point": load_operating_point(run.path), "conformal": conf,
          "set_groups": set_groups_of(conf, Path(data), run.cfg, ev.units)}
    plain = {u: dict(c) for u, c in cols.items()}
    files = [write_predictions(tmp_path / f"{i}.csv", ev, task.problem, task.label_names, c, **kw).read_bytes()
             for i, c in enumerate((cols, plain))]
    assert files[0] == files[1] == (tmp_path / "p.csv").read_bytes()
    assert b",sop_instance_uid," in files[0].splitlines()[0]
