"""DICOM SR of a table task (#25): rows that name their imaging study get an SR filed in that study;
a task that names none is refused in one line naming what is missing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medmm.errors import DataError, MedmmError

pytest.importorskip("highdicom")

STUDY_A, STUDY_B = "2.25.1001", "2.25.1002"


def _groups(ds) -> dict[str, dict[str, object]]:
    """Per measurement group (its tracking identifier): coded measurements and qualitative findings."""
    out: dict[str, dict[str, object]] = {}

    def walk(items, group):
        for item in items:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if name is not None and name.CodeValue == "112039":
                group = item.TextValue
                out[group] = {}
            elif name is not None and group and "MeasuredValueSequence" in item:
                out[group][name.CodeValue] = float(item.MeasuredValueSequence[0].NumericValue)
            elif name is not None and group and "ConceptCodeSequence" in item and item.RelationshipType == "CONTAINS":
                out[group][name.CodeMeaning] = item.ConceptCodeSequence[0].CodeMeaning
            if "ContentSequence" in item:
                walk(item.ContentSequence, group)

    walk(ds.ContentSequence, None)
    return out


def test_rows_with_a_study_get_one_sr_per_study_that_cites_no_image(tmp_path: Path) -> None:
    import pydicom

    from medmm.deploy.sr import write_reports

    refs = {"p1": {"StudyInstanceUID": STUDY_A, "AccessionNumber": "ACC1"}, "p2": {"StudyInstanceUID": STUDY_A},
            "p3": {"StudyInstanceUID": STUDY_B}}
    written, skipped = write_reports(tmp_path / "sr", tmp_path, ["p1", "p2", "p3", "p4"],
                                     np.asarray([0.25, 1.5, 3.0, 9.0], dtype=np.float32), {}, problem="survival",
                                     label_names=[], model_name="mlp", model_version="test", unit_columns=refs)
    assert not skipped and sorted(p.name for p in written) == [f"SR_{STUDY_A}.dcm", f"SR_{STUDY_B}.dcm"]
    a = pydicom.dcmread(tmp_path / "sr" / f"SR_{STUDY_A}.dcm")
    assert a.Modality == "SR" and a.StudyInstanceUID == STUDY_A
    assert a.ReferencedRequestSequence[0].StudyInstanceUID == STUDY_A
    assert a.ReferencedRequestSequence[0].AccessionNumber == "ACC1" and a.AccessionNumber == "ACC1"
    assert "CurrentRequestedProcedureEvidenceSequence" not in a and "PertinentOtherEvidenceSequence" not in a
    assert a.PatientID == "" and a.PatientName == ""  # a table row has no patient module to copy
    assert _groups(a) == {"prediction 1": {"RISK": 0.25}, "prediction 2": {"RISK": 1.5}}  # p4: no study, no report
    b = pydicom.dcmread(tmp_path / "sr" / f"SR_{STUDY_B}.dcm")
    assert _groups(b) == {"prediction 1": {"RISK": 3.0}} and b.ReferencedRequestSequence[0].AccessionNumber == ""


def test_a_classifier_rows_sr_holds_the_probability_and_the_finding(tmp_path: Path) -> None:
    import pydicom

    from medmm.deploy.sr import write_reports

    written, _ = write_reports(tmp_path / "sr", tmp_path, ["r1"], np.asarray([0.75], dtype=np.float32), {},
                               problem="binary", label_names=["benign", "malignant"], model_name="mlp",
                               model_version="test", unit_columns={"r1": {"StudyInstanceUID": STUDY_A}})
    groups = _groups(pydicom.dcmread(written[0]))
    assert groups["prediction 1"]["P0"] == pytest.approx(0.75) and groups["prediction 1"]["Finding"] == "malignant"


def test_no_study_no_report_and_the_errors_name_what_is_missing(tmp_path: Path) -> None:
    from pydantic import Field

    from medmm.config import DataConfig, TaskConfig
    from medmm.deploy.sr import study_column, write_reports

    class Data(DataConfig):
        study_column: str | None = None

    class Config(TaskConfig):
        data: Data = Field(default_factory=Data)

    with pytest.raises(DataError, match="StudyInstanceUID unit column"):
        write_reports(tmp_path / "sr", tmp_path, ["p1"], np.zeros(1, dtype=np.float32), {}, problem="survival",
                      label_names=[], model_name="mlp", model_version="test", unit_columns={"p1": {}})
    assert not (tmp_path / "sr").exists()
    cfg = Config()
    with pytest.raises(MedmmError, match=r"rows name no study \(TaskSpec.study_key\)"):
        study_column(SimpleNamespace(name="los", study_key=None), cfg)
    with pytest.raises(MedmmError, match="trained without data.study_column .*--set data.study_column=COLUMN"):
        study_column(SimpleNamespace(name="los", study_key="data.study_column"), cfg)
    cfg = Config(data=Data(study_column="study_uid"))
    assert study_column(SimpleNamespace(name="los", study_key="data.study_column"), cfg) == "study_uid"


def test_study_references_reads_the_columns_and_never_repeats_a_value() -> None:
    import pandas as pd

    from medmm import study_references

    df = pd.DataFrame({"s": [STUDY_A, None, STUDY_B], "acc": ["A1", "A2", None]})
    assert study_references(df, ["x", "y", "z"], "s", "acc") == {
        "x": {"StudyInstanceUID": STUDY_A, "AccessionNumber": "A1"}, "z": {"StudyInstanceUID": STUDY_B}}
    assert study_references(df, ["x", "y", "z"], None) == {}
    with pytest.raises(DataError, match="study column 'nope' is not in the data"):
        study_references(df, ["x", "y", "z"], "s", "nope")
    assert study_references(df, ["x", "y", "z"], "nope", required=False) == {}  # new data without it: no study
    assert study_references(df, ["x"] * 3, "s", "nope", required=False)["x"] == {"StudyInstanceUID": STUDY_B}
    with pytest.raises(DataError, match="'s' holds a value that is not a DICOM UID") as err:
        study_references(df.assign(s=["Jane Doe", None, None]), ["x", "y", "z"], "s")
    assert "Jane" not in str(err.value)
