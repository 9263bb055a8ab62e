"""tabular-risk's torch-free input reader for its exports (``TaskSpec.runtime``): the run's
fitted preprocessor (JSON) on a table's feature columns, as the task's predict reader applies it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmm import DataError, Examples, Preprocessor, batch_slices, prepare_target, read_json, read_table
from medmm_plugins.tabular_risk.config import TabularRiskConfig

log = logging.getLogger("medmm")


class TabularInputs:
    """The run's fitted preprocessor (JSON) on a table's feature columns."""

    accepts = "rows"

    def __init__(self, export_dir: Path, cfg: TabularRiskConfig, batch_size: int, manifest: Mapping[str, Any]) -> None:
        
        self.cfg, self.d, self.batch_size = cfg, cfg.data, batch_size
        payload = read_json(export_dir / "artifacts" / "tabular.json")
        self.problem, self.label_names = payload["problem"], payload["label_names"]
        self.features = list(payload["features"])
        self.preprocessor = Preprocessor.from_json(payload["preprocessor"])
        self.columns = list(self.features)  # what a served row must hold

    def read(self, path: Path) -> Any:
        return read_table(path, **({"decimal": self.d.decimal} if self.d.decimal else {}))

    def examples(self, df: Any) -> Examples:
        d = self.d
        x = np.ascontiguousarray(self.preprocessor.transform(df), dtype=np.float32)
        col = d.id_column
        if col and col not in df.columns:
            raise DataError(f"id column {col!r} is not in the data")
        ids = df[col].astype(str).tolist() if col else [str(i) for i in range(len(df))]
        y = None
        cols = [d.time, d.event] if self.problem == "survival" else [d.target]
        if all(c and c in df.columns for c in cols):
            try:
                t = prepare_target(df, self.problem, d.target, d.time, d.event,
                                   positive_label=self.label_names[1] if self.label_names else None)
            except DataError as exc:
                log.warning("no metrics: the label column cannot be scored (%s)", exc)
                t = None
            if t is not None and t.mask.all():
                y = (np.stack([t.time, t.event], axis=1) if self.problem == "survival" else t.y).astype(np.float32)
        return Examples([{"x": x[s]} for s in batch_slices(len(x), self.batch_size)], ids, y)
