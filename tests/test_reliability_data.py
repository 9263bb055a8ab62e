"""Reliability on real-shaped data (issue #13, items 10-13): numbers written for people, leakage,
DICOM oddities, honest summaries and a train.log that holds what the console showed."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.conftest import cli

CT = get_testdata_file("CT_small.dcm")  # installed with pydicom; 128 x 128 CT


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- item 10: numbers in text


def test_thousands_separators_are_read_as_numbers_with_a_warning(tmp_path: Path, caplog) -> None:
    from medmm.data.readers import read_table

    path = tmp_path / "t.csv"
    path.write_text('id,platelets,sex,code\n007,"395,000",F,"1,000"\n008,"1,234.5",M,x\n009,,F,"2,000"\n')
    with caplog.at_level(logging.WARNING, logger="medmm"):
        df = read_table(path, string_columns=["id"])
    assert df["platelets"].tolist()[:2] == [395000.0, 1234.5] and np.isnan(df["platelets"][2])
    assert df["code"].dtype == object and df["sex"].tolist() == ["F", "M", "F"]  # not all numbers: text stays
    assert df["id"].tolist() == ["007", "008", "009"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "'platelets'" in warned[0] and "thousands" in warned[0]
    assert "395" not in warned[0]  # names the column, never quotes a cell


def test_decimal_commas_when_asked_and_a_hint_when_not(tmp_path: Path, caplog) -> None:
    from medmm.data.readers import read_table
    from medmm.errors import ConfigError

    path = tmp_path / "eu.csv"  # the spreadsheet export of a decimal-comma locale
    path.write_text("id;creatinine;platelets;sex\n1;1,5;395.000;F\n2;0,75;1.234;M\n3;2;12;F\n")
    df = read_table(path, decimal=",")
    assert df["creatinine"].tolist() == [1.5, 0.75, 2.0] and df["platelets"].tolist() == [395000.0, 1234.0, 12.0]
    with caplog.at_level(logging.WARNING, logger="medmm"):
        plain = read_table(path)
    assert plain["creatinine"].dtype == object  # "1,5" is not a number unless data.decimal=","
    assert any("'creatinine'" in r.getMessage() and "data.decimal" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="data.decimal"):
        read_table(path, decimal=";")


# --------------------------------------------------------------------------- item 11: exclude + leakage


def test_exclude_leaves_columns_out_and_conflicts_are_errors(caplog) -> None:
    from medmm.data.tabular.preprocess import select_features
    from medmm.errors import ConfigError

    cols = ["age", "follow_up", "sex", "death"]
    assert select_features(cols, None, ["follow_up"], reserved=["death"]) == ["age", "sex"]
    assert select_features(cols, None, "follow_up", reserved=["death"]) == ["age", "sex"]  # --set data.exclude=x
    with pytest.raises(ConfigError, match="follow_up"):
        select_features(cols, ["age", "follow_up"], ["follow_up"])
    with caplog.at_level(logging.WARNING, logger="medmm"):
        assert select_features(cols, None, ["folow_up"], reserved=["death"]) == ["age", "follow_up", "sex"]
    assert "folow_up" in caplog.text  # a typo is named, not silently ignored


def test_single_feature_leakage_is_found_and_identifiers_are_not() -> None:
    from medmm.data.leakage import feature_scores, warn_leaky_features

    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.4).astype(float)
    df = pd.DataFrame({
        "age": rng.normal(60, 10, n) + 3 * y,  # a real, moderate signal
        "follow_up": np.where(y == 1, rng.uniform(1, 40, n), rng.uniform(45, 400, n)),  # known after the outcome
        "status": np.where(y == 1, "deceased", "alive"),  # categorical copy of the target
        "mrn": [f"P{i:05d}" for i in range(n)],  # one category per row: no signal, not leakage
    })
    types = {"age": "numeric", "follow_up": "numeric", "status": "categorical", "mrn": "categorical"}
    found = dict(warn_leaky_features(df, types, "binary", y))
    assert set(found) == {"follow_up", "status"} and min(found.values()) > 0.99
    scores = feature_scores(df, types, "binary", y)
    assert 0.55 < scores["age"] < 0.9 and scores.get("mrn", 0.5) < 0.6  # unseen ids: not scored

    reg = rng.normal(size=n)
    frame = pd.DataFrame({"copy": reg * 2 + 1 + rng.normal(0, 0.01, n), "noise": rng.normal(size=n)})
    assert [c for c, _ in warn_leaky_features(frame, {"copy": "numeric", "noise": "numeric"}, "regression", reg)] == ["copy"]
    time = rng.uniform(1, 100, n)
    surv = np.stack([time, (rng.random(n) < 0.6).astype(float)], axis=1)
    frame = pd.DataFrame({"days": time + rng.normal(0, 0.1, n), "noise": rng.normal(size=n)})
    assert [c for c, _ in warn_leaky_features(frame, {"days": "numeric", "noise": "numeric"}, "survival", surv)] == ["days"]


# --------------------------------------------------------------------------- item 12: DICOM


def _write_bare(ds: pydicom.Dataset, path: Path) -> None:
    """A real-world oddity: the data set alone (implicit VR little endian), no preamble, no file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    path.write_bytes(buf.getvalue())


def test_dicom_without_preamble_is_read_when_it_parses(tmp_path: Path) -> None:
    from medmm.data.dicom.pixels import PixelConfig, load_pixels
    from medmm.data.dicom.scan import scan_folder

    (tmp_path / "normal.dcm").write_bytes(Path(CT).read_bytes())
    (tmp_path / "meta_no_preamble.dcm").write_bytes(Path(CT).read_bytes()[132:])  # file meta, no preamble
    _write_bare(pydicom.dcmread(CT), tmp_path / "bare.dcm")
    header_only = pydicom.dcmread(CT, stop_before_pixels=True)
    _write_bare(header_only, tmp_path / "no_pixels.dcm")
    (tmp_path / "notes.txt").write_text("not an image\n")
    records, skipped = scan_folder(tmp_path)
    assert sorted(r.path for r in records) == ["bare.dcm", "meta_no_preamble.dcm", "normal.dcm"]
    assert {r.transfer_syntax for r in records if r.path == "bare.dcm"} == {"1.2.840.10008.1.2"}
    reasons = {s.path: s.reason for s in skipped}
    assert "no DICM preamble" in reasons["no_pixels.dcm"] and "no pixel data" in reasons["no_pixels.dcm"]
    assert "no DICM preamble" in reasons["notes.txt"]
    cfg = PixelConfig(size=32)
    reference = load_pixels(tmp_path / "normal.dcm", cfg)
    for name in ("bare.dcm", "meta_no_preamble.dcm"):
        assert np.array_equal(load_pixels(tmp_path / name, cfg), reference)


def test_constant_images_are_named(tmp_path: Path, caplog) -> None:
    from medmm.data.dicom.cache import PixelCache  # not medmm.data.dicom.dataset: that imports torch
    from medmm.data.dicom.pixels import PixelConfig
    from medmm.data.dicom.scan import scan_folder

    ds = pydicom.dcmread(CT)
    ds.PixelData = np.full((ds.Rows, ds.Columns), 100, dtype=np.int16).tobytes()
    (tmp_path / "data" / "sub").mkdir(parents=True)
    ds.save_as(tmp_path / "data" / "sub" / "flat.dcm", enforce_file_format=True)
    (tmp_path / "data" / "ok.dcm").write_bytes(Path(CT).read_bytes())
    records, _ = scan_folder(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="medmm"):
        cache = PixelCache.build(tmp_path / "data", records, PixelConfig(size=16), tmp_path / "cache")
    assert cache.constant == ["sub/flat.dcm"]
    assert "1 image(s) are constant" in caplog.text and "sub/flat.dcm" in caplog.text


def test_predict_cache_goes_outside_the_run(tmp_path: Path) -> None:
    from medmm.data.cache_dirs import predict_cache

    cfg = {"data": {"cache_dir": None}}
    cache = predict_cache(cfg, None)
    path = Path(cfg["data"]["cache_dir"])
    assert cache.temporary and path.is_dir()
    (path / "entry").mkdir()
    del cache  # dropped (predict returned or failed): the temporary cache is gone
    assert not path.exists()
    cfg = {"data": {"cache_dir": None}}
    kept = predict_cache(cfg, tmp_path / "mine")
    assert cfg["data"]["cache_dir"] == str(tmp_path / "mine") and not kept.temporary
    assert predict_cache({"data": {"target": "y"}}, None) is None  # a task without caches


def _series_folder(root: Path, n_patients: int = 8, per_series: int = 3) -> Path:
    """Two classes (sub-folders), one CT-like series of a few instances per patient."""
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(CT)
    rng = np.random.default_rng(0)
    for label, shift in (("low", 0), ("high", 400)):
        for p in range(n_patients):
            study, series = generate_uid(), generate_uid()
            for i in range(per_series):
                ds = base.copy()
                ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{label}{p}", study, series
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                img = rng.normal(shift, 50, (ds.Rows, ds.Columns)).astype(np.int16)
                ds.PixelData = img.tobytes()
                out = root / label / f"{label}{p}_{i}.dcm"
                out.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(out, enforce_file_format=True)
    return root


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.slow
def test_series_summary_counts_units_and_instances_and_predict_leaves_the_run_alone(tmp_path: Path) -> None:
    data = _series_folder(tmp_path / "dicom")
    run = tmp_path / "run"
    out = cli("run", "image-cls", "--data", str(data), "--out", str(run), "--set", "model.backbone=resnet18",
              "--set", "model.pretrained=none", "--set", "data.size=32", "--set", "data.level=series",
              "--set", "engine.epochs=1", "--set", "engine.bootstrap=0", "--set", "data.test_fraction=0.25",
              "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    n_test = len(_rows(run / "predictions.csv"))
    assert f"test split ({n_test} series from {3 * n_test} instances)" in out.stdout
    log = (run / "train.log").read_text()
    assert "epoch 1 step" in log and "val loss" in log and f"{n_test} series from" in log

    new = _series_folder(tmp_path / "new", n_patients=2)
    before = _listing(run)
    cache = tmp_path / "predict-cache"
    pred = cli("predict", str(run), "--data", str(new), "--out", str(tmp_path / "p.csv"), "--cache-dir", str(cache))
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert _listing(run) == before  # nothing of the new data lands in the trained run
    assert len(_rows(tmp_path / "p.csv")) == 4 and list(cache.glob("*/pixels.npy"))


# --------------------------------------------------------------------------- item 13: summaries, train.log


@pytest.mark.slow  # imports torch and the fusion plugin
def test_fusion_summary_separates_skipped_from_kept_with_a_modality_missing(tmp_path: Path) -> None:
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    spec = get_registry().get("task", "fusion")
    cfg = resolved_config(spec, None, ["data.text_column=null", "data.tabular_columns=[age]",
                                       "model.image_backbone=resnet18"])
    from medmm_plugins.fusion.rows import describe, tabular_columns

    task = spec.load()(cfg, tmp_path)
    data = {"mask": np.array([[True, True], [False, True], [True, False]]),
            "skipped": [("4", "no modality present")], "partial": [("2", "kept without its image: not found")]}
    desc = describe(data, np.arange(3), np.array(["train", "train", "test"]), task.names, ["no", "yes"], cfg.model)
    assert "1 rows skipped, 2 kept with a modality missing (1 of them with an image that could not be used)" in desc

    cfg = resolved_config(spec, None, ["data.tabular_columns=all", "data.exclude=[follow_up]", "data.id_column=id",
                                       "model.image_backbone=resnet18"])
    columns = ["id", "text", "image", "label", "age", "follow_up", "sex"]
    assert tabular_columns(spec.load()(cfg, tmp_path).d, columns) == ["age", "sex"]  # all = no other role, minus exclude


@pytest.mark.slow
def test_tabular_run_reads_separators_warns_on_leakage_excludes_and_logs_everything(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 240
    age = rng.normal(62, 11, n)
    platelets = rng.normal(263_000, 90_000, n).clip(30_000)
    logit = 0.06 * (age - 62) - (platelets - 263_000) / 60_000
    death = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    df = pd.DataFrame({
        "id": [f"r{i}" for i in range(n)], "age": age.round(1),
        "platelets": [f"{p:,.0f}" for p in platelets],  # "395,000": numbers written for people
        "follow_up_days": np.where(death == 1, rng.integers(4, 60, n), rng.integers(70, 280, n)),
        "discharge": np.where(death == 1, "deceased", "home"),  # leaks the target
        "death": death,
    })
    df.to_csv(tmp_path / "hf.csv", index=False)
    run = tmp_path / "run"
    out = cli("run", "tabular-risk", "--data", str(tmp_path / "hf.csv"), "--out", str(run),
              "--set", "data.target=death", "--set", "data.id_column=id", "--set", "data.exclude=[follow_up_days]",
              "--set", "model.backbone=linear", "--set", "engine.epochs=3", "--set", "engine.bootstrap=0")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "medmm: warning: column 'platelets' holds numbers written with thousands separators" in out.stderr
    assert "possible leakage: feature 'discharge'" in out.stderr and "data.exclude=[discharge]" in out.stderr
    assert "follow_up_days" not in out.stderr  # excluded: never a feature, never reported
    prep = json.loads((run / "artifacts" / "tabular.json").read_text())["preprocessor"]
    assert prep["numeric"] == ["age", "platelets"] and prep["categorical"] == ["discharge"]  # excluded: gone

    log = (run / "train.log").read_text()
    assert "data.exclude=['follow_up_days']" in log and "engine.epochs=3" in log  # config summary
    assert "240 rows x 3 features" in log  # data summary
    assert sum("epoch" in line and "val loss" in line for line in log.splitlines()) == 3  # per-epoch metrics
    assert "thousands separators" in log and "possible leakage: feature 'discharge'" in log  # warnings
    assert "test split (" in log and "auroc" in log  # the final summary, as printed

    df.drop(columns=["follow_up_days", "death"]).head(15).to_csv(tmp_path / "new.csv", index=False)
    pred = cli("predict", str(run), "--data", str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv"))
    assert pred.returncode == 0, pred.stderr[-3000:]  # the excluded column is not needed to predict
    assert len(_rows(tmp_path / "p.csv")) == 15


def test_survival_risk_meaning_is_documented() -> None:
    root = Path(__file__).resolve().parents[1]
    import medmm.predictions

    # the task's config documentation: the YAML's comments, or the typed config's field descriptions
    config_doc = "".join(p.read_text() for p in (root / "configs" / "tabular-risk.yaml",
                                                 root / "plugins" / "tabular_risk" / "config.py") if p.exists())
    user_doc = (root / "docs" / "guide" / "tabular-risk.md").read_text()  # the task's page of the site
    for text in (medmm.predictions.__doc__, config_doc, user_doc):
        assert "log hazard" in text and "higher" in text and "earlier event" in text
