"""Prediction with an exported model: onnxruntime + numpy, never torch.

An export folder (``medmm export``) holds the ONNX graph, the run's ``config.yaml`` and its
``artifacts/`` (label map, tabular preprocessor JSON, tokenizer files, pixel pipeline). The
predictor reads data with the torch-free reader the task registers (``TaskSpec.runtime``: built
from the same pieces as the task's own reader, e.g. ``read_table``, the preprocessor,
``tokenize_cached``, the DICOM scan and pixel cache), runs the graph in the batches the torch path
uses, pools per unit and writes the same ``predictions.csv``. Nothing here names a task.

Only numpy, onnxruntime, pydicom, tokenizers, pandas, pyyaml and pydantic (the export's ``config.yaml``
is read as the task's typed config) are imported (``medmm[runtime]``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmm.deploy.manifest import MODEL, MODEL_INT8, read_manifest, require
from medmm.errors import DataError, MedmmError
from medmm.pooling import pool_by_unit

if TYPE_CHECKING:
    from medmm.config import TaskConfig

log = logging.getLogger("medmm")
EXTRA = "runtime"


@dataclass
class Prediction:
    """Scores pooled per unit (the fields :func:`medmm.predictions.write_predictions` reads)."""

    units: list[str]
    scores: np.ndarray
    targets: np.ndarray | None = None
    unit_columns: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    records: dict[str, list[Any]] = field(default_factory=dict)  # image unit -> DicomRecords (for SR)
    loss: float = math.nan
    skipped_key: str = "id"  # as medmm.task.Split: the skipped inputs are row "id"s or file "path"s
    set_groups: list[str] | None = None  # per unit, its group of the conformal thresholds' group_column (#32)
    referral: str | None = None  # a streamed prediction's referral line, counted block by block
    count: int | None = None  # a streamed prediction's units (it keeps no scores of unlabelled input)


# --------------------------------------------------------------------------- inputs per task


@dataclass
class Examples:
    """A task's examples ready for the graph: feeds per batch, the unit of each example."""

    batches: list[dict[str, np.ndarray]]
    units: list[str]
    targets: np.ndarray | None = None
    unit_columns: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    records: dict[str, list[Any]] = field(default_factory=dict)
    skipped_key: str = "id"  # row "id"s, or file "path"s (DICOM)
    # the example of each batch row, batches concatenated (length-sorted windows, medmm.batching);
    # None: batches in example order
    order: np.ndarray | None = None


def batch_slices(n: int, size: int) -> Iterator[slice]:
    """``slice``s of ``size`` (the last one shorter) over ``n`` examples: the eval batches."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class FastTokenizer:
    """The run's Hugging Face fast tokenizer through the ``tokenizers`` library alone.

    Called the way :func:`medmm.data.text.tokenize.tokenize_cached` calls a ``transformers``
    tokenizer; truncation is the Rust backend's, exactly as ``transformers`` configures it.
    """

    def __init__(self, directory: Path) -> None:
        tokenizers = require("tokenizers", EXTRA, "text prediction from an export")
        self._tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        conf_path = directory / "tokenizer_config.json"
        conf = json.loads(conf_path.read_text(encoding="utf-8")) if conf_path.is_file() else {}
        self.model_max_length = conf.get("model_max_length")
        self.truncation_side = conf.get("truncation_side", "right")
        self.name_or_path = str(directory)
        self._lock = threading.Lock()  # truncation is tokenizer state: one call at a time

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: str | Sequence[str], *, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, **_: Any) -> dict[str, Any]:
        single = isinstance(texts, str)
        with self._lock:
            if truncation and max_length:
                self._tok.enable_truncation(int(max_length), stride=0, strategy="longest_first",
                                            direction=self.truncation_side)
            else:
                self._tok.no_truncation()
            enc = self._tok.encode_batch([texts] if single else list(texts), add_special_tokens=add_special_tokens)
        ids = [e.ids for e in enc]
        return {"input_ids": ids[0] if single else ids}


# --------------------------------------------------------------------------- the predictor


def export_config(directory: Path, task: str, registry: Any = None) -> TaskConfig:
    """The export's ``config.yaml`` as the task's typed config (pydantic and the task's config module:
    no torch); keys this medmm no longer knows are dropped with a warning."""
    from medmm.config import saved_config

    if registry is None:
        from medmm.plugins import get_registry

        registry = get_registry()
    return saved_config(registry.get("task", task), Path(directory) / "config.yaml")


def runtime_reader(spec: Any) -> Any:
    """The task's torch-free reader class (``TaskSpec.runtime``); a one-line error when it has none."""
    from medmm.registry import resolve_object

    if getattr(spec, "runtime", None) is None:
        raise MedmmError(f"task {spec.name!r} declares no torch-free reader (TaskSpec.runtime), so it has no "
                         "export / onnxruntime predictor; predict it with medmm predict RUN_DIR")
    return resolve_object(spec.runtime)


def task_inputs(directory: Path, manifest: Mapping[str, Any], cfg: Any, registry: Any = None) -> Any:
    """The task's torch-free reader (``read``, ``examples``) for an export folder, in eval batches."""
    if registry is None:
        from medmm.plugins import get_registry

        registry = get_registry()
    reader = runtime_reader(registry.get("task", manifest["task"]))
    return reader(Path(directory), cfg, cfg.engine.eval_batch_size, manifest)


class ExportedModel:
    """An export folder loaded for prediction with onnxruntime (thread-safe ``predict_*``)."""

    def __init__(self, export_dir: Path, *, quantized: bool = False, threads: int = 0, verify: bool = True) -> None:
        ort = require("onnxruntime", EXTRA, "prediction from an export")
        for module in ("yaml", "pydantic"):  # the typed config (medmm.config)
            require(module, EXTRA, "prediction from an export")
        self.dir = Path(export_dir)
        self.manifest = read_manifest(self.dir, verify=verify)
        name = MODEL_INT8 if quantized else MODEL
        if not (self.dir / name).is_file():
            raise MedmmError(f"{self.dir} has no {name}" + ("; export with --quantize" if quantized else ""))
        self.task = self.manifest["task"]
        self.cfg = export_config(self.dir, self.task)  # an unregistered task: UnknownNameError names the known ones
        self.inputs: Any = task_inputs(self.dir, self.manifest, self.cfg)
        self.problem, self.label_names = self.inputs.problem, self.inputs.label_names
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.dir / name), opts, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name

    # -- the graph -------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores of one batch (probabilities, or values for regression / survival)."""
        return self.session.run([self.output], dict(feeds))[0]

    def score(self, ex: Examples, *, calibrate: bool = True) -> Prediction:
        """Run every batch, pool per unit, apply the run's stored calibration (if any and ``calibrate``)."""
        parts = [self.run(b) for b in ex.batches]
        if parts:
            scores = np.concatenate(parts).astype(np.float32)
        else:
            k = 1 if self.problem in ("binary", "regression", "survival") else len(self.label_names or [])
            scores = np.zeros((0,) if k == 1 else (0, k), dtype=np.float32)
        if ex.order is not None and len(scores):  # back to example order, as the torch path pools
            restored = np.empty_like(scores)
            restored[ex.order] = scores
            scores = restored
        units, pooled, targets = pool_by_unit(ex.units, scores, ex.targets)
        pred = Prediction(units, pooled, targets, ex.unit_columns, ex.skipped, ex.records, skipped_key=ex.skipped_key)
        return self._calibrated(pred) if calibrate else pred

    def _calibrated(self, pred: Prediction) -> Prediction:
        if not (self.dir / "artifacts").is_dir():
            return pred
        try:
            from medmm.evaluation.calibration import apply_stored_calibration
        except ImportError:  # a medmm without recalibration support
            return pred
        return apply_stored_calibration(self.dir, self.problem, pred)

    def operating_point(self) -> dict[str, Any] | None:
        """The run's stored operating point (thresholds), when it has one."""
        try:
            from medmm.evaluation.threshold import load_operating_point
        except ImportError:
            return None
        return load_operating_point(self.dir)

    def conformal(self) -> dict[str, Any] | None:
        """The run's stored conformal thresholds (prediction sets / intervals, refer flag), when it has them."""
        try:
            from medmm.evaluation.conformal import load_conformal
        except ImportError:
            return None
        return load_conformal(self.dir)

    def group_column(self) -> str | None:
        """The column whose groups have conformal thresholds of their own (``eval.conformal.group_column``)."""
        conf = self.conformal()
        return str(conf["group_column"]) if conf and conf.get("group_thresholds") else None

    # -- inputs ----------------------------------------------------------------------------
    def predict_path(self, data: Path) -> Prediction:
        """Predict a table (tabular, text) or a DICOM folder (images), read as the task reads it."""
        pred = self.score(self.inputs.examples(self.inputs.read(Path(data))))
        conf = self.conformal()
        if conf is not None and conf.get("group_thresholds"):  # the group column of each unit, as the torch path reads it
            from medmm.evaluation.conformal import set_groups_of

            pred.set_groups = set_groups_of(conf, Path(data), self.cfg, pred.units)
        return pred

    def predict_rows(self, rows: list[dict[str, Any]]) -> Prediction:
        """Predict JSON-like rows (tabular, text): one dict of column -> value per row. A grouped run's
        thresholds follow each row's value of the group column (none: the per-class thresholds)."""
        if self.inputs.accepts != "rows":
            raise DataError(f"{self.task} predicts " + ("DICOM files" if self.inputs.accepts == "dicom" else
                                                         "a table file (image cells are paths)") + ", not rows")
        import pandas as pd

        pred = self.score(self.inputs.examples(pd.DataFrame.from_records(rows)))
        col = self.group_column()
        if col is not None:
            from medmm.evaluation.conformal import group_values

            id_col = self.cfg.data.id_column
            keys = [str(r[id_col]) if id_col and r.get(id_col) is not None else str(i) for i, r in enumerate(rows)]
            value = dict(zip(keys, (r.get(col) for r in rows)))
            pred.set_groups = group_values(self.conformal(), [value.get(u) for u in pred.units])  # type: ignore[arg-type]
        return pred

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model", self.task))


def predict_export(export_dir: Path, data: Path, out: Path, *, quantized: bool = False,
                   dicom_sr: Path | None = None, overwrite: bool = False) -> Prediction:
    """``medmm predict EXPORT_DIR``: write ``predictions.csv`` (and a skipped report) with onnxruntime."""
    import click

    from medmm.io import write_skipped
    from medmm.predictions import write_predictions
    from medmm.rundir import check_output_file

    out = Path(out)
    check_output_file(out, overwrite=overwrite)  # before any work, as the torch path does
    model = ExportedModel(export_dir, quantized=quantized)
    if dicom_sr is not None and model.inputs.accepts != "dicom":  # a table task: its rows must name their study
        from medmm.deploy.sr import study_column
        from medmm.plugins import get_registry
        from medmm.task import STUDY_UID

        column = study_column(get_registry().get("task", model.task), model.cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    conf = model.conformal()  # prediction set + abstain flag (#32), per group of its group_column when it has one
    pred = stream_export(model, Path(data), out, keep_units=dicom_sr is not None)  # a table: block by block (#30)
    if pred is None:
        pred = model.predict_path(data)
        kwargs: dict[str, Any] = {}
        op = model.operating_point()
        if op is not None:
            kwargs["operating_point"] = op
        if conf is not None:
            kwargs["conformal"] = conf
            kwargs["set_groups"] = pred.set_groups
        write_predictions(out, pred, model.problem, model.label_names, pred.unit_columns or None, **kwargs)
    count = pred.count if pred.count is not None else len(pred.scores)
    msg = f"medmm predict: {count} predictions (onnxruntime, {Path(export_dir).name}) -> {out}"
    if conf is not None:
        from medmm.evaluation.conformal import referred_line

        msg += pred.referral if pred.referral is not None else referred_line(conf, pred.scores, pred.set_groups)
    if pred.skipped:
        report = write_skipped(out.with_name(out.stem + ".skipped.csv"), pred.skipped, key=pred.skipped_key)
        msg += f"\n  {len(pred.skipped)} inputs skipped -> {report}"
    if pred.targets is not None and len(pred.scores) and _has("sklearn"):  # metrics need scikit-learn
        from medmm.metrics import compute_metrics

        t = pred.targets
        if model.problem == "survival":
            metrics = compute_metrics("survival", None, pred.scores, time=t[:, 0], event=t[:, 1].astype(bool))
        else:
            metrics = compute_metrics(model.problem, t.astype(int) if model.problem in ("binary", "multiclass") else t,
                                      pred.scores)
        msg += "\n" + "\n".join(f"  {k:<10} {v:.4f}" if isinstance(v, float) else f"  {k:<10} {v}"
                                for k, v in metrics.items())
    if dicom_sr is not None and model.inputs.accepts != "dicom" and not any(
            STUDY_UID in (pred.unit_columns or {}).get(u, {}) for u in pred.units):
        raise DataError(f"--dicom-sr: no row of the data names its study in column {column!r}")
    if dicom_sr is not None:
        from medmm.deploy.sr import write_reports

        m = model.manifest
        written, bad = write_reports(dicom_sr, Path(data), pred.units, pred.scores, pred.records, problem=model.problem,
                                label_names=model.label_names or [], model_name=model.model_name,
                                model_version=f"medmm {m.get('medmm', '?')} run {m.get('run', '?')}",
                                threshold=float(m.get("threshold") or 0.5), conformal=conf,
                                set_groups=pred.set_groups, unit_columns=pred.unit_columns)
    click.echo(msg)
    if dicom_sr is not None:
        from medmm.deploy.sr import echo_reports

        echo_reports(dicom_sr, written, bad)
    return pred


def stream_export(model: ExportedModel, data: Path, out: Path, *, rows: int | None = None,
                  keep_units: bool = False) -> Prediction | None:
    """``predict_export`` of a CSV / TSV table block by block: each block's rows are scored and appended to
    ``out`` (atomically), so memory does not grow with the table: the scores and targets of labelled input
    are kept for the metrics (float32 and the smallest exact dtype, :class:`~medmm.pooling.Growing`), nothing
    per row of unlabelled input (``count``; the referral line is counted per block); the units, their scores
    and columns and a grouped run's labels only when ``keep_units``, for ``--dicom-sr``.
    The file is byte-identical to one pass: blocks are whole eval batches, every row depends on its own
    unit. ``None`` when the input does not stream (the task's reader has no ``blocks``; not a CSV / TSV
    file; a grouped run calibrated before its group bands were stored): the caller reads it whole."""
    import csv

    from medmm.data.readers import chunk_rows, streams
    from medmm.evaluation.conformal import ReferralCount, StreamedGroups
    from medmm.io import atomic_write
    from medmm.pooling import Growing
    from medmm.predictions import predictions_table

    blocks = getattr(model.inputs, "blocks", None)
    if blocks is None or not streams(data):
        return None
    conf = model.conformal()
    grouped = bool(conf and conf.get("group_thresholds"))
    if grouped and "group_edges" not in conf:  # type: ignore[operator]
        return None
    batch = max(int(model.inputs.batch_size), 1)
    rows = -(-(rows or chunk_rows()) // batch) * batch  # whole eval batches: the graph sees one pass's batches
    side = StreamedGroups(conf, data, model.cfg, rows) if grouped else None  # type: ignore[arg-type]
    op = model.operating_point()
    units: list[str] = []
    unit_columns: dict[str, dict[str, str]] = {}
    scores = Growing()  # kept for the metrics (labelled input) and --dicom-sr's reports only, grown in place
    targets = Growing(exact_small=True)
    n = 0
    refer = ReferralCount(conf)  # the referral line's counts, block by block (no unit's set is kept)
    labels: list[str] = []  # --dicom-sr of a grouped run: each unit's group label (its SR's set)
    skipped: list[tuple[str, str]] = []
    skipped_key = "id"
    has_targets = True
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f)
        for i, ex in enumerate(blocks(data, rows)):
            pred = model.score(ex)
            groups = None if side is None else side.labels(pred.units)
            header, lines = predictions_table(pred, model.problem, model.label_names, pred.unit_columns or None,
                                              operating_point=op, conformal=conf, set_groups=groups)
            if i == 0:
                writer.writerow(header)
            writer.writerows(lines)
            has_targets = has_targets and pred.targets is not None
            if keep_units or has_targets:
                scores.add(np.asarray(pred.scores))
            if has_targets:
                targets.add(np.asarray(pred.targets))
            n += len(pred.units)
            refer.add(pred.scores, groups)
            skipped += pred.skipped
            skipped_key = pred.skipped_key
            if keep_units:
                units += pred.units
                unit_columns.update(pred.unit_columns)
                labels += groups or []
    kept = scores.array() if keep_units or has_targets else None
    return Prediction(units, np.zeros(0, np.float32) if kept is None else kept, targets.array() if has_targets else None,
                      unit_columns, skipped, skipped_key=skipped_key, referral=refer.line(),
                      set_groups=labels if keep_units and side is not None else None, count=n)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
