"""DICOM Structured Reports of image predictions (highdicom), one per study.

Each report is a Comprehensive 3D SR holding a TID 1500 Measurement Report: one measurement
group per predicted unit (instance, series or study) with the predicted finding (a coded
qualitative evaluation), the probability of each class, the algorithm's name and version, and
references to the source images (SOP class / instance UIDs; study and series via the evidence).
This is how imaging AI results go back to a PACS; the report carries the study's patient module
(copied from the source by highdicom, as PACS matching needs), so treat the files as patient data.

A unit with no DICOM file (a row of a table task) is reported when its unit columns carry the
study it came from (``StudyInstanceUID``, optionally ``AccessionNumber``; a task declares its
study column with ``TaskSpec.study_key`` and fills them with :func:`medmm.task.study_references`):
its SR is filed in that study (the SR's StudyInstanceUID) and names it in the Referenced Request
Sequence (study UID and accession number); it references no image, so its patient module is
empty. Regression and survival scores are reported as measurements without a finding.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmm.deploy.manifest import require
from medmm.errors import DataError, MedmmError
from medmm.task import ACCESSION, STUDY_UID

SCHEME = "99MEDMM"  # private coding scheme of medmm's label names
MAX_CLASSES = 50


def _concept(value: str, meaning: str, scheme: str = SCHEME) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value[:16] or "?", scheme_designator=scheme, meaning=meaning[:64] or "?")


def _measured(problem: str, scores: np.ndarray, names: Sequence[str]) -> list[tuple[str, str, float]]:
    """``(code, meaning, value)`` of each measurement of one unit: class probabilities, or the score."""
    if problem == "survival":
        return [("RISK", "Predicted risk (higher = earlier event)", float(np.asarray(scores).ravel()[0]))]
    if problem == "regression":
        return [("VALUE", "Predicted value", float(np.asarray(scores).ravel()[0]))]
    if problem == "binary":
        return [("P0", f"Probability of {names[1]}", float(scores))]  # as before: one measurement, P0
    return [(f"P{k}", f"Probability of {n}", float(p))
            for k, (n, p) in enumerate(zip(names, np.asarray(scores).ravel()))][:MAX_CLASSES]


def _finding(problem: str, scores: np.ndarray, names: Sequence[str], threshold: float) -> list[str]:
    if problem in ("regression", "survival"):  # a score, no class: measurements only
        return []
    s = np.asarray(scores, dtype=float)
    if problem == "binary":
        return [str(names[int(float(s) >= threshold)])]
    if problem == "multilabel":
        return [str(n) for n, p in zip(names, s.ravel()) if p >= threshold] or ["none"]
    return [str(names[int(s.argmax())])]


def write_reports(out_dir: Path, root: Path, units: Sequence[str], scores: np.ndarray,
                  records: Mapping[str, Sequence[Any]], *, problem: str, label_names: Sequence[str],
                  model_name: str, model_version: str, threshold: float = 0.5,
                  conformal: Mapping[str, Any] | None = None, set_groups: Sequence[Any] | None = None,
                  unit_columns: Mapping[str, Mapping[str, str]] | None = None,
                  ) -> tuple[list[Path], list[tuple[str, str]]]:
    """One SR file per study under ``out_dir`` (no clashing files); returns ``(written, skipped studies)``.

    A unit's study comes from its DICOM ``records``, else from its ``unit_columns``' ``StudyInstanceUID``
    (a table row: the module docstring).

    A study whose source files highdicom cannot reference (e.g. a retired SOP class) is skipped
    with its reason; nothing is written unless every buildable report is built. ``conformal`` (the
    run's stored thresholds) adds each unit's prediction set members and a "refer to a clinician" yes / no;
    ``set_groups`` (per unit, its group of the thresholds' group column) picks its group's thresholds.
    """
    hd = require("highdicom", "sr", "--dicom-sr")
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if problem not in ("binary", "multiclass", "multilabel", "regression", "survival"):
        raise MedmmError(f"--dicom-sr reports classification findings or scores; this model predicts {problem}")
    out_dir, root = Path(out_dir), Path(root)
    by_study: dict[str, list[int]] = {}
    referenced: dict[str, dict[str, str]] = {}  # study -> the unit columns naming it (units without a file)
    for i, unit in enumerate(units):
        recs = records.get(unit) or []
        ref = (unit_columns or {}).get(unit) or {}
        if recs:
            by_study.setdefault(recs[0].study_uid or f"path:{recs[0].path}", []).append(i)
        elif ref.get(STUDY_UID):
            by_study.setdefault(ref[STUDY_UID], []).append(i)
            referenced.setdefault(ref[STUDY_UID], dict(ref))
    if not by_study:
        raise DataError("--dicom-sr: no predicted unit could be traced back to a DICOM file or carries a "
                        f"{STUDY_UID} unit column")
    names = {study: f"SR_{study if not study.startswith('path:') else generate_uid()}.dcm" for study in by_study}
    clash = [n for n in names.values() if (out_dir / n).exists()]
    if clash:
        raise MedmmError(f"--dicom-sr {out_dir} already holds {clash[0]}; give a new folder (files are never overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=f"medmm {model_name}"[:64], manufacturer_name="medmm",
            model_name=model_name[:64]))
    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64], version=model_version[:64],
                                              family=codes.DCM.ArtificialIntelligence)
    reports: list[tuple[Path, Any]] = []
    skipped: list[tuple[str, str]] = []
    for study, idx in by_study.items():
        try:
            with _quiet():  # pydicom / highdicom warnings quote header values (patient names): never shown
                sr = _study_report(hd, codes, generate_uid, root, [units[i] for i in idx], [scores[i] for i in idx],
                                   records, problem, label_names, threshold, device, algorithm, model_name,
                                   conformal, None if set_groups is None else [set_groups[i] for i in idx],
                                   referenced.get(study))
        except KeyError as exc:  # highdicom's SOP class table lacks the source's (e.g. retired US Image Storage)
            skipped.append((study, f"highdicom cannot reference source SOP class {exc.args[0] if exc.args else '?'}"))
            continue
        except (ValueError, AttributeError, TypeError, OSError) as exc:  # one study's odd source files
            skipped.append((study, f"{type(exc).__name__}: {str(exc)[:120]}"))
            continue
        reports.append((out_dir / names[study], sr))
    if not reports:
        raise DataError(f"--dicom-sr: no report could be built ({skipped[0][1]})")
    written: list[Path] = []
    try:  # every report is built before the first file is written; a failed write removes the others
        for path, sr in reports:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=out_dir)
            os.close(fd)
            try:
                with _quiet():
                    sr.save_as(tmp, enforce_file_format=True)
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written, skipped


def _study_report(hd: Any, codes: Any, generate_uid: Any, root: Path, units: list[str], scores: list[Any],
                  records: Mapping[str, Sequence[Any]], problem: str, label_names: Sequence[str], threshold: float,
                  device: Any, algorithm: Any, model_name: str, conformal: Mapping[str, Any] | None = None,
                  set_groups: Sequence[Any] | None = None, reference: Mapping[str, str] | None = None) -> Any:
    """The Comprehensive 3D SR of one study: a measurement group per predicted unit. ``reference``: the
    unit columns naming a study whose units have no DICOM file (the SR is filed in it, no image evidence)."""
    evidence: dict[str, Any] = {}
    groups = []
    for n, (unit, score) in enumerate(zip(units, scores), start=1):
        group = None if set_groups is None else set_groups[n - 1]
        sources = []
        for rec in [] if reference is not None else records[unit]:
            if rec.sop_uid not in evidence:
                evidence[rec.sop_uid] = _header(root / rec.path)
            sources.append(hd.sr.SourceImageForMeasurementGroup.from_source_image(evidence[rec.sop_uid]))
        measurements = [hd.sr.Measurement(name=_concept(code, meaning), value=value, unit=codes.UCUM.NoUnits,
                                          algorithm_id=algorithm)
                        for code, meaning, value in _measured(problem, score, label_names)]
        findings = [hd.sr.QualitativeEvaluation(
            name=codes.DCM.Finding, value=_concept(f"L{list(label_names).index(f)}" if f in label_names else "NONE", f))
            for f in _finding(problem, score, label_names, threshold)]
        if conformal is not None:  # prediction set + refer flag (medmm.evaluation.conformal)
            findings += _set_findings(hd, codes, conformal, score, label_names, group)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"prediction {n}"),
            algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=findings or None,
            source_images=sources or None))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    extra: dict[str, Any] = {}
    if reference is not None:  # no instance to cite: the study itself, as highdicom's first "evidence"
        evidence = {"study": _study_stub(reference, generate_uid)}
        extra["requested_procedures"] = [_request(reference)]
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence.values()), content=report, series_instance_uid=generate_uid(), series_number=990,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medmm", is_complete=True,
        is_final=False, is_verified=False, series_description=f"medmm {model_name} prediction"[:64], **extra)
    if reference is not None:  # the stub is no instance: the SR cites none (the sequence is type 1C)
        for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if keyword in sr:
                delattr(sr, keyword)
    return sr


def _study_stub(reference: Mapping[str, str], generate_uid: Any) -> Any:
    """The study of a unit without a DICOM file, as the dataset highdicom takes its study and (empty)
    patient attributes from; its SOP instance is a placeholder the SR does not cite."""
    from pydicom import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = Dataset()
    ds.StudyInstanceUID = reference[STUDY_UID]
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    for keyword in _TYPE2:
        setattr(ds, keyword, "")
    ds.AccessionNumber = reference.get(ACCESSION, "")
    return ds


def _request(reference: Mapping[str, str]) -> Any:
    """A Referenced Request Sequence item: the referenced study's UID and accession number."""
    from pydicom import Dataset

    item = Dataset()
    item.StudyInstanceUID = reference[STUDY_UID]
    item.AccessionNumber = reference.get(ACCESSION, "")
    item.ReferencedStudySequence = []
    for keyword in ("PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
                    "RequestedProcedureID", "RequestedProcedureDescription"):
        setattr(item, keyword, "")
    item.RequestedProcedureCodeSequence = []
    return item


def _set_findings(hd: Any, codes: Any, conformal: Mapping[str, Any], score: Any, names: Sequence[str],
                  group: Any = None) -> list[Any]:
    """One evaluation per class in the unit's conformal set (multi-label: per label called 1 in it) and
    "Refer to clinician": yes / no. ``group``: the unit's group of a grouped run's thresholds (``None``: per class)."""
    from medmm.evaluation.conformal import apply_sets

    out = apply_sets(conformal, np.asarray(score, dtype=float)[None], None if group is None else [group])
    level = f"{100 * (1 - float(conformal['alpha'])):g}%"
    name = _concept("SET", f"Member of {level} conformal prediction set")
    sets = out["sets"][0]
    members = [k for k in range(len(names)) if (sets[k, 1] if sets.ndim == 2 else sets[k])]
    evals = [hd.sr.QualitativeEvaluation(name=name, value=_concept(f"L{k}", str(names[k]))) for k in members]
    refer = codes.SCT.Yes if bool(out["abstain"][0]) else codes.SCT.No
    evals.append(hd.sr.QualitativeEvaluation(name=_concept("REFER", "Refer to clinician (conformal set not one class)"),
                                             value=refer))
    return evals


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from medmm.data.dicom.scan import quiet_pydicom

    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet_pydicom(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


# Patient / study attributes a report must carry (type 2: present, possibly empty).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


def _header(path: Path) -> Any:
    """The source file's header; absent type-2 patient / study attributes become empty values."""
    from pydicom import dcmread
    from pydicom.valuerep import DA, TM

    ds = dcmread(path, stop_before_pixels=True)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword, kind in (("StudyDate", DA), ("StudyTime", TM), ("PatientBirthDate", DA)):
        value = ds.get(keyword)
        try:
            kind(str(value)) if value not in (None, "") else None
        except ValueError:  # a non-conformant source value is left out, not copied into the report
            setattr(ds, keyword, "")
    return ds


def reports_from_predictions(predictions: Path, data: Path, out_dir: Path, *, level: str | None, frames: str,
                             problem: str, label_names: Sequence[str], model_name: str,
                             model_version: str, conformal: Mapping[str, Any] | None = None, study: str = "",
                             set_groups: Sequence[Any] | None = None) -> tuple[list[Path], list[tuple[str, str]]]:
    """SRs from a written ``predictions.csv`` (the torch ``medmm predict RUN_DIR`` path).

    The DICOM folder is scanned again (headers only) to trace each predicted unit to its files;
    ``level=None`` (a table task): each unit's study is its ``StudyInstanceUID`` column (read from the
    data's column ``study``).
    """
    from medmm.data.dicom.scan import group_key, image_items, scan_folder

    traced: dict[str, list[Any]] = {}
    if level is not None:
        records, _ = scan_folder(Path(data), workers=0)
        for item in image_items(records, frames):
            unit = item.key if level == "instance" else group_key(item, level)
            if item.record not in traced.get(unit, []):
                traced.setdefault(unit, []).append(item.record)
    with Path(predictions).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if level is None and not any(r.get(STUDY_UID) for r in rows):
        raise DataError(f"--dicom-sr: no row of the data names its study in column {study!r}")
    refs = {r["id"]: {k: r[k] for k in (STUDY_UID, ACCESSION) if r.get(k)} for r in rows} if level is None else None
    names = [str(n) for n in label_names]
    cols = ({"survival": ["risk"], "regression": ["prediction"]}.get(problem) or
            ([f"prob_{names[1]}"] if problem == "binary" else [f"prob_{n}" for n in names]))
    try:
        scores = np.asarray([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
    except KeyError as exc:
        raise DataError(f"{predictions} has no column {exc}; it was not written by this run") from None
    if problem in ("binary", "regression", "survival"):
        scores = scores[:, 0]
    return write_reports(out_dir, data, [r["id"] for r in rows], scores, traced, problem=problem,
                         label_names=names, model_name=model_name, model_version=model_version,
                         conformal=conformal, unit_columns=refs, set_groups=set_groups)


def reports_for_run(run_dir: Path, predictions: Path, data: Path,
                    out_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """``medmm predict RUN_DIR --dicom-sr OUT``: the run's task, labels and model name from its files.

    Any task that reads a DICOM folder (its data config has ``level`` and ``frames``) qualifies, and a
    table task whose rows name their study (``TaskSpec.study_key``, :func:`study_column`).
    """
    from medmm import __version__
    from medmm.evaluation.conformal import load_conformal, set_groups_of
    from medmm.run import Run

    run = Run.open(run_dir)
    d = run.cfg.data
    images = hasattr(d, "level") and hasattr(d, "frames")
    study = "" if images else study_column(run.spec, run.cfg)  # a one-line error unless rows name their study
    task = run.task()  # its artifacts: problem and label names
    model = run.cfg.model
    conf = load_conformal(run.path)
    with Path(predictions).open(newline="", encoding="utf-8") as f:
        ids = [r["id"] for r in csv.DictReader(f)] if conf and conf.get("group_thresholds") else []
    return reports_from_predictions(predictions, data, out_dir, level=d.level if images else None,
                                    frames=d.frames if images else "first", problem=task.problem,
                                    label_names=list(task.label_names or []),
                                    model_name=str(getattr(model, "backbone", None) or run.task_name),
                                    model_version=f"medmm {run.info.get('medmm', __version__)} run "
                                                  f"{run.path.resolve().name}",
                                    conformal=conf, study=study,  # set + refer flag (#32), per group when grouped
                                    set_groups=set_groups_of(conf, Path(data), run.cfg, ids) if ids else None)


def study_column(spec: Any, cfg: Any) -> str:
    """The table column of each row's StudyInstanceUID for a task that reads no DICOM folder (its
    ``TaskSpec.study_key`` names the config key); a one-line :class:`MedmmError` naming what is missing."""
    key = getattr(spec, "study_key", None)
    if not key:
        raise MedmmError(f"--dicom-sr reports on DICOM studies; task {spec.name!r} reads no DICOM folder and its "
                         "rows name no study (TaskSpec.study_key)")
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    if not node:
        raise MedmmError(f"--dicom-sr needs the study of each {spec.name} row: the run was trained without {key} "
                         f"(the column of each row's {STUDY_UID}); train with --set {key}=COLUMN")
    return str(node)


def echo_reports(out_dir: Path, written: Sequence[Path], skipped: Sequence[tuple[str, str]]) -> None:
    """One console line about the reports written (no identifiers: counts and the folder)."""
    import click

    msg = f"  {len(written)} DICOM SR report(s) (one per study) -> {out_dir}"
    if skipped:
        msg += f"; {len(skipped)} stud{'y' if len(skipped) == 1 else 'ies'} without a report ({skipped[0][1]})"
    click.echo(msg)
