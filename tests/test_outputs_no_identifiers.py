"""No patient identifier in anything run / predict / evaluate / explain / export write, for a PACS-style
``MODALITY/PATIENTID/STUDYUID/file`` folder of real pydicom / pydicom-data files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from medmm.data.dicom.paths import name_forms
from medmm.deid.verify import IdentifierScan
from medmm.demos.dicom import build_demo
from tests.conftest import cli

pytestmark = pytest.mark.slow  # trains a tiny model once

FAST = ["--set", "model.backbone=resnet18", "--set", "model.pretrained=none", "--set", "data.size=32",
        "--set", "engine.epochs=1", "--set", "engine.bootstrap=20", "--quiet"]


# name forms of the test files' PatientNames ("Patient^Name", "Perfusion^MCA Stroke") that are
# ordinary words in any report
ORDINARY = {"patient", "patientname", "namepatient", "perfusion", "anonymized", "anonymous"}


def _pacs_layout(demo: Path, root: Path) -> dict[str, str]:
    """Copy the demo into MODALITY/PATIENTID/STUDYUID/; returns identifier value -> kind."""
    identifiers: dict[str, str] = {}
    for path in sorted(p for c in ("CT", "MR") for p in (demo / c).glob("*.dcm")):  # small images: a quick run
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the deliberately broken file stays where it is
            continue
        if int(ds.get("Rows", 0) or 0) > 512:
            continue  # keeps the run quick
        pid = str(ds.get("PatientID", "") or "").strip()
        study = str(ds.get("StudyInstanceUID", "") or "nostudy").strip()
        rel = path.relative_to(demo)
        dest = root / rel.parts[0] / pid / study / rel.name if pid else root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
        if len(pid) >= 5:  # "0010" & co. are also ordinary numbers in metrics and tags
            identifiers[pid] = "patient id"
        for form in name_forms(str(ds.get("PatientName", "") or "")):
            if len(form) >= 7 and form not in ORDINARY:
                identifiers[form] = "name form"
    return identifiers


def test_every_output_byte_is_free_of_patient_ids(tmp_path: Path) -> None:
    demo = build_demo(tmp_path / "demo")
    data = tmp_path / "pacs"
    identifiers = _pacs_layout(demo, data)
    assert sum(k == "patient id" for k in identifiers.values()) >= 4
    # the layout really carries the ids in folder names
    assert IdentifierScan(identifiers).matched_values("\n".join(p.as_posix() for p in data.rglob("*")))
    run = tmp_path / "run"
    logs = []
    # caches outside the run: the DICOM header index (medmm/data/dicom/header_index.py) keeps PatientIDs
    # with the data on purpose (patient-level splits), under data.cache_dir
    cache = ["--set", f"data.cache_dir={tmp_path / 'cache'}"]
    for args in (["run", "image-cls", "--data", str(data), "--out", str(run), *FAST, *cache],
                 ["predict", str(run), "--data", str(data), "--out", str(tmp_path / "pred" / "p.csv")],
                 ["evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "eval"), "--no-card"],
                 ["explain", str(run), "--data", str(data), "--out", str(tmp_path / "explain"),
                  "--limit", "2"],
                 ["export", str(run), "--out", str(tmp_path / "export"), "--sample", "4"]):
        (tmp_path / "pred").mkdir(exist_ok=True)
        done = cli(*args)
        assert done.returncode == 0, (args[0], done.stderr[-3000:])
        logs.append(done.stdout + done.stderr)
    scan = IdentifierScan(identifiers)
    for folder in (run, tmp_path / "pred", tmp_path / "eval", tmp_path / "explain", tmp_path / "export"):
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert files, folder
        for p in files:
            scan.scan(p.relative_to(tmp_path).as_posix(), f"name {p.name}")
            scan.scan(p.read_bytes().decode("latin-1"), p.relative_to(tmp_path).as_posix())
    for i, text in enumerate(logs):
        scan.scan(text, f"console of command {i}")
    assert scan.result.remaining == 0, scan.result.where[:10]
    ids = [r.split(",")[0] for r in (run / "predictions.csv").read_text().splitlines()[1:]]
    assert ids and all(i.split("/")[1].startswith("T") for i in ids if i.count("/") >= 3)
