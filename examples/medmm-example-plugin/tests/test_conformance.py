"""discrete-survival honours medmm's task contract: medmm's conformance kit, as a plugin author runs it,
then its DICOM SR: each row names its imaging study, so `medmm predict --dicom-sr` files a report there."""

from pathlib import Path

import pytest

from medmm import check_task

ROWS = 240


def study_uid(i: int) -> str:
    return f"2.25.{1000 + i}"  # a UUID-derived DICOM UID (2.25.<integer>)


def tiny_gbsg2(folder: Path) -> tuple[Path, list[str]]:
    """240 patients of lifelines' GBSG2 table, each with the study its data came from, and the --set
    items that name its columns."""
    datasets = pytest.importorskip("lifelines.datasets")
    folder.mkdir(parents=True, exist_ok=True)
    df = datasets.load_gbsg2().head(ROWS)
    df["study_uid"] = [study_uid(i) for i in range(len(df))]
    df["accession"] = [f"ACC{i:05d}" for i in range(len(df))]
    df.to_csv(folder / "gbsg2.csv", index_label="patient")
    return folder / "gbsg2.csv", ["data.time=time", "data.event=cens", "data.id_column=patient", "data.horizon=1825",
                                  "data.study_column=study_uid", "data.accession_column=accession"]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    work = tmp_path_factory.mktemp("check")
    report = check_task("discrete-survival", tiny_gbsg2, work, overrides=["engine.epochs=2"],
                        exporter="torchscript")  # the quicker of medmm export's two exporters
    return report, work


def test_discrete_survival_passes_medmm_check_task(checked) -> None:
    report, _ = checked
    print(report)  # one line per check: run, resume, predict, evaluate, explain, export, serve, bad-input
    assert report.ok, str(report)
    assert all(c.ok for c in report.checks), str(report)  # every check ran: it exports and serves too


def _sr_findings(path: Path) -> tuple[object, dict[str, float]]:
    """The SR read back with pydicom: its dataset and the RISK measurement of each measurement group."""
    import pydicom

    ds = pydicom.dcmread(path)
    risks = {}

    def walk(items, group):
        for item in items:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if name is not None and name.CodeValue == "112039":  # Tracking Identifier: one group per row
                group = item.TextValue
            if name is not None and name.CodeValue == "RISK" and "MeasuredValueSequence" in item:
                risks[group] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence, group)

    walk(ds.ContentSequence, None)
    return ds, risks


@pytest.mark.parametrize("source", ["run", "export"])  # torch (medmm predict RUN) and onnxruntime (EXPORT)
def test_its_sr_is_filed_in_each_rows_study(checked, source: str) -> None:
    import csv
    import subprocess
    import sys

    pytest.importorskip("highdicom")  # medmm[sr]
    report, work = checked
    assert report["export"].ok, str(report)
    out, sr = work / f"sr-{source}.csv", work / f"sr-{source}"
    rows = list(csv.DictReader((work / "data" / "gbsg2.csv").open()))[:5]  # five patients, five studies
    with (work / f"five-{source}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    done = subprocess.run([sys.executable, "-m", "medmm", "predict", str(work / source), "--data",
                           str(work / f"five-{source}.csv"), "--out", str(out), "--dicom-sr", str(sr)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "5 DICOM SR report(s)" in done.stdout
    predicted = {r["id"]: r for r in csv.DictReader(out.open())}
    assert {r["StudyInstanceUID"] for r in predicted.values()} == {r["study_uid"] for r in rows}
    files = sorted(sr.glob("*.dcm"))
    assert len(files) == 5
    for row in rows:
        ds, risks = _sr_findings(sr / f"SR_{row['study_uid']}.dcm")
        assert ds.Modality == "SR" and ds.StudyInstanceUID == row["study_uid"]  # filed in the row's study
        request = ds.ReferencedRequestSequence[0]
        assert request.StudyInstanceUID == row["study_uid"] and request.AccessionNumber == row["accession"]
        assert "CurrentRequestedProcedureEvidenceSequence" not in ds  # no image is cited: none exists
        assert list(risks) == ["prediction 1"]
        assert risks["prediction 1"] == pytest.approx(float(predicted[row["patient"]]["risk"]), rel=1e-5, abs=1e-6)
