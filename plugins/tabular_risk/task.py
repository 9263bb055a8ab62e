"""tabular-risk: regression, binary risk or Cox survival from a patient table."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medmm import (
    BaselineInputs, BundleMeta, ConfigError, DataBundle, DataError, fit_preprocessor, infer_column_types,
    prepare_target, Preprocessor, read_json, read_split_column, read_table, read_table_blocks, release_free_memory,
    select_features, Split, Task, warn_leaky_features, write_json_atomic,
)
from medmm_plugins.tabular_risk.config import TabularRiskConfig

ARTIFACT = "tabular.json"


class TableDataset(Dataset):
    """Rows of a feature matrix with their targets and example index."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = None if y is None else torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], (self.y[i] if self.y is not None else torch.zeros(())), i

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole-batch indexing: one tensor gather instead of a Python loop per row."""
        index = torch.as_tensor(idx)
        y = self.y[index] if self.y is not None else torch.zeros(len(idx))
        return self.x[index], y, index


def _collate(batch: Any) -> Any:
    return batch  # __getitems__ already built the batch tensors


class TabularRiskTask(Task):
    """Features through a scikit-learn-fitted preprocessor, then an MLP or linear risk model."""

    cfg: TabularRiskConfig  # read by attribute (medmm.config)
    preprocessor: Preprocessor
    has_target: bool = True

    # ------------------------------------------------------------------ helpers
    def _problem(self, df: Any) -> str:
        d = self.cfg.data
        if d.problem != "auto":
            return d.problem
        if d.time or d.event:
            return "survival"
        if not d.target:
            raise ConfigError("tabular-risk needs data.target (or data.time + data.event for survival)")
        if d.target not in df.columns:
            raise DataError(f"target column {d.target!r} is not in the data; the data has {list(df.columns)}")
        return "binary" if df[d.target].dropna().nunique() == 2 else "regression"

    def _row_ids(self, df: Any) -> list[str]:
        from medmm_plugins.tabular_risk.runtime import row_ids

        return row_ids(df, self.cfg.data.id_column)

    def _targets(self, t: Any) -> np.ndarray:
        from medmm_plugins.tabular_risk.runtime import target_array

        return target_array(t, self.problem)

    # ------------------------------------------------------------------ training
    def build_data(self, data_path: Path) -> DataBundle:
        d = self.cfg.data
        df = read_table_blocks(data_path, decimal=d.decimal)  # a large CSV stays in its parsed blocks (#30)
        self.problem = self._problem(df)
        target = prepare_target(df, self.problem, d.target, d.time, d.event)
        ids_all = self._row_ids(df)
        rows = np.flatnonzero(np.asarray(target.mask, dtype=bool))
        y = self._targets(target)  # one per row of `rows`
        skipped = [(i, "missing target") for i, keep in zip(ids_all, target.mask) if not keep]
        given = None
        if d.split_column:  # the one split rule (medmm.task): rows without a usable cell are skipped
            if d.split_column not in df.columns:
                raise DataError(f"split column {d.split_column!r} is not in the data")
            given, bad = read_split_column([ids_all[r] for r in rows], df[d.split_column].iloc[rows].tolist())
            skipped += bad
            ok = np.asarray([s is not None for s in given], dtype=bool)
            rows, y, given = rows[ok], y[ok], [s for s in given if s is not None]
        self.write_skipped(skipped)
        n_all = len(df)
        kept = df if len(rows) == n_all else df.take(rows)  # a selection of the blocks' rows, not a copy
        ids = ids_all if len(rows) == n_all else [ids_all[r] for r in rows]
        del ids_all
        reserved = {d.target, d.time, d.event, d.id_column, d.group_column, d.split_column} - {None}
        features = select_features(list(df.columns), d.features, d.exclude, reserved)
        overrides = {**{c: "categorical" for c in d.categorical or []}, **{c: "numeric" for c in d.numeric or []}}
        types = infer_column_types(kept, features, overrides)
        if d.group_column and d.group_column not in kept.columns:
            raise DataError(f"group column {d.group_column!r} is not in the data")
        groups = kept[d.group_column].tolist() if d.group_column else None
        strat = y if self.problem == "binary" else (y[:, 1] if self.problem == "survival" else None)
        splits = self.assign_splits(ids, given=given, groups=groups, labels=strat)
        train = splits == "train"
        train_rows = kept[train]  # the training rows (a selection: each column is gathered when read)
        self.preprocessor = fit_preprocessor(train_rows, types)  # fitted on training rows only
        val = splits == "val"  # drop-column importance and follow-up names need validation rows
        warn_leaky_features(train_rows, types, self.problem, y[train], preprocessor=self.preprocessor,
                            val=(kept[val], y[val]) if val.any() else None)
        del train_rows
        parts = {name: np.flatnonzero(splits == name) for name in ("train", "val", "test")}
        # one float32 matrix, its rows in split order, filled block by block while each block of the table is
        # freed (the rows of a block land in one run per split); each split is a view (#30)
        release_free_memory()
        x = self.preprocessor.transform(kept, rows=np.concatenate(list(parts.values())), release=True)
        del kept, df
        self.label_names = [str(c) for c in target.classes] if target.classes is not None else None
        self.features = features
        if self.problem == "regression":  # train on a standardised target; predict in original units
            self.y_mean, self.y_std = float(y[train].mean()), float(y[train].std() or 1.0)

        width, ends = x.shape[1], np.cumsum([len(p) for p in parts.values()])
        xs = {name: x[end - len(p):end] for (name, p), end in zip(parts.items(), ends)}
        del x
        units = {name: [ids[i] for i in p] for name, p in parts.items()}  # one list per split, shared below
        n_kept = len(ids)
        del ids

        def split(name: str) -> Split | None:
            p = parts[name]
            if not len(p):
                return None
            return Split(TableDataset(xs[name], y[p]), units[name], y[p])

        # the classic baseline reads the same matrices the model trains on (no copy)
        self._raw = {name: (xs[name], y[p], units[name]) for name, p in parts.items()}
        desc = (f"{n_kept} rows x {len(features)} features ({width} after encoding), "
                f"problem {self.problem}, {n_all - n_kept} rows skipped")
        return DataBundle(split("train"), split("val"), split("test"), collate_fn=_collate,
                          meta=BundleMeta(description=desc))

    def build_model(self) -> torch.nn.Module:
        m = self.cfg.model
        if m.backbone == "auto":
            raise ConfigError("model.backbone=auto is decided by a training run (linear vs mlp on val, "
                              "choose_backbone); set model.backbone=linear or mlp to build a model directly")
        factory = self.backbone(m.backbone, "tabular").load()
        options = {"hidden": m.hidden, "blocks": m.blocks, "dropout": m.dropout}
        accepted = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in options.items() if k in accepted}
        torch.manual_seed(self.cfg.seed)
        return factory(self.preprocessor.n_features, 1, **kwargs)

    y_mean: float = 0.0
    y_std: float = 1.0

    def step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y, idx = batch
        out = model(x).squeeze(-1)
        result = {"output": out, "target": y if self.has_target else None, "index": idx}
        if self.problem == "regression":
            result["output"] = out * self.y_std + self.y_mean
            if self.has_target:
                z = (y - self.y_mean) / self.y_std
                fn = torch.nn.functional.huber_loss if self.cfg.model.loss == "huber" else torch.nn.functional.mse_loss
                result["loss"] = fn(out.float(), z)
        return result

    def choose_backbone(self, bundle: DataBundle) -> str | None:
        """``model.backbone=auto``: linear vs mlp by the validation metric (:mod:`.auto`); a console line or None."""
        from medmm_plugins.tabular_risk.auto import choose_backbone

        choice = choose_backbone(self, bundle)
        if choice is None:
            return None
        self.cfg.provenance["model.backbone"] = f"auto: {choice.reason()}"
        if choice.kept:  # the engine resumes the winner's finished training instead of training it again
            bundle.meta.trained_in_run_dir = True
        if choice.values:
            bundle.meta.report_sections = [*bundle.meta.report_sections,
                                          ("Backbone chosen by validation", choice.html())]
            bundle.meta.card_sections = [*bundle.meta.card_sections, choice.markdown()]
        return f"model.backbone=auto -> {choice.reason()}"

    # ------------------------------------------------------------------ prediction
    def save_artifacts(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"problem": self.problem, "label_names": self.label_names, "features": self.features,
                   "y_mean": self.y_mean, "y_std": self.y_std, "preprocessor": self.preprocessor.to_json()}
        write_json_atomic(directory / ARTIFACT, payload)

    def load_artifacts(self, directory: Path) -> None:
        payload = read_json(directory / ARTIFACT)
        self.problem, self.label_names = payload["problem"], payload["label_names"]
        self.features, self.y_mean, self.y_std = payload["features"], payload["y_mean"], payload["y_std"]
        self.preprocessor = Preprocessor.from_json(payload["preprocessor"])

    def build_predict_data(self, data_path: Path) -> tuple[Split, Any]:
        d = self.cfg.data
        df = read_table(data_path, decimal=d.decimal)
        x = self.preprocessor.transform(df)
        ids = self._row_ids(df)
        y = None
        cols = [d.time, d.event] if self.problem == "survival" else [d.target]
        if all(c and c in df.columns for c in cols):
            try:
                target = prepare_target(df, self.problem, d.target, d.time, d.event,
                                        positive_label=self.label_names[1] if self.label_names else None)
            except DataError as exc:  # e.g. one class only: predictions are still useful, metrics are not
                logging.getLogger("medmm").warning("no metrics: the label column cannot be scored (%s)", exc)
                target = None
            if target is not None and target.mask.all():
                y = self._targets(target)
        self.has_target = y is not None
        self._raw = {**getattr(self, "_raw", {}), "predict": (x, y, ids)}
        return Split(TableDataset(x, y), ids, y), _collate

    def predict_chunks(self, data_path: Path, rows: int) -> Iterator[tuple[Split, Any]]:
        """:meth:`build_predict_data` in consecutive blocks of at most ``rows`` rows, so ``medmm predict``
        holds one block of the table at a time (CSV / TSV stream; other formats are read whole).

        A first pass reads only the id and target columns (duplicate ids and whether every row can be
        scored are whole-table questions); the second reads the features block by block. The blocks'
        rows, ids and targets are those of :meth:`build_predict_data`, in order
        (:func:`~medmm_plugins.tabular_risk.runtime.table_blocks`, shared with the export's predict)."""
        from medmm_plugins.tabular_risk.runtime import table_blocks

        self.has_target, parts = table_blocks(Path(data_path), rows, self.cfg.data, self.problem, self.label_names,
                                              self.preprocessor)
        for x, ids, yc in parts:
            yield Split(TableDataset(x, yc), ids, yc), _collate

    def baseline_inputs(self, split: str) -> BaselineInputs | None:
        """The preprocessed feature matrix of a split, for the linear / Cox baseline."""
        part = getattr(self, "_raw", {}).get(split)
        if part is None or not len(part[2]):
            return None
        x, y, ids = part
        return BaselineInputs(list(ids), y, tabular=x)

    def explain_spec(self, model: torch.nn.Module) -> Any:
        """Integrated Gradients on the encoded columns, summed back to source columns (``medmm explain``)."""
        from medmm import ExplainSpec, feature_input

        return ExplainSpec([feature_input("tabular", self.preprocessor, get=lambda b: b[0],
                                          put=lambda b, x: (x, *b[1:]))])

    def deploy_spec(self, model: torch.nn.Module) -> Any:
        """One float input ``x`` ``[batch, features]``: the fitted preprocessor's output (``medmm export``)."""
        from medmm import DeploySpec

        d = self.cfg.data
        return DeploySpec(preprocessing={"preprocessor": "artifacts/tabular.json", "id_column": d.id_column})
