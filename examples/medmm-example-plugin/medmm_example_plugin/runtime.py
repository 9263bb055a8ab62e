"""``discrete-survival`` without torch: the reader ``medmm predict EXPORT_DIR`` and ``medmm serve`` use.

Registered as ``TaskSpec(runtime="medmm_example_plugin.runtime:SurvivalRows")``. It reads the
run's artifact (feature columns, fitted preprocessor) and turns a table — a file, or the JSON rows
``medmm serve`` receives — into the graph's one input ``x``, in the same order and with the same
preprocessing as :meth:`DiscreteSurvivalTask.build_predict_data`. It imports numpy and pandas
through medmm's public API, never torch: the export runs where torch is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmm import (
    DataError, Examples, Preprocessor, batch_slices, prepare_target, read_json, read_table, study_references,
)

ARTIFACT = "discrete_survival.json"


class SurvivalRows:
    """Feature rows of a patient table -> ``{"x": [batch, features]}``; time / event when present."""

    accepts = "rows"  # JSON rows (medmm serve) or a table file (medmm predict)
    problem = "survival"
    label_names = None

    def __init__(self, export_dir: Path, cfg: Any, batch_size: int, manifest: Mapping[str, Any]) -> None:
        payload = read_json(Path(export_dir) / "artifacts" / ARTIFACT)
        self.d, self.batch_size = cfg.data, batch_size
        self.columns = list(payload["features"])  # what a served row must hold
        self.preprocessor = Preprocessor.from_json(payload["preprocessor"])

    def read(self, path: Path) -> Any:
        return read_table(path, decimal=self.d.decimal)

    def examples(self, df: Any) -> Examples:
        d = self.d
        x = np.ascontiguousarray(self.preprocessor.transform(df), dtype=np.float32)
        if d.id_column and d.id_column not in df.columns:
            raise DataError(f"id column {d.id_column!r} is not in the data")
        ids = df[d.id_column].astype(str).tolist() if d.id_column else [str(i) for i in range(len(df))]
        y = None
        if d.time in df.columns and d.event in df.columns:
            t = prepare_target(df, "survival", time=d.time, event=d.event)
            y = np.stack([t.time, t.event], axis=1).astype(np.float32) if t.mask.all() else None
        studies = study_references(df, ids, d.study_column, d.accession_column, required=False)  # --dicom-sr
        return Examples([{"x": x[s]} for s in batch_slices(len(x), self.batch_size)], ids, y, unit_columns=studies)
