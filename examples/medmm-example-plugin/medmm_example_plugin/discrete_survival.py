"""``discrete-survival``: the risk of an event by a horizon, from a patient table (logistic hazard).

Follow-up is cut into ``data.bins`` intervals at quantiles of the training event times; the
network predicts one hazard logit per interval and is trained with the discrete-time survival
likelihood (Gensheimer & Narasimhan 2019; Kvamme & Borgan 2019, PyCox's ``LogisticHazard``),
in which a patient censored in an interval survived every interval up to and including it.
Unlike a Cox model it does not assume proportional hazards.

The task's output is the cumulative hazard by ``data.horizon`` (``risk`` in predictions.csv,
higher = earlier event): ``1 - exp(-risk)`` is the predicted probability of the event by the
horizon. medmm scores it as a survival model (C-index) and fits its classic Cox baseline on the
same split beside it.

Everything but the model and its loss comes from medmm: the one table reader (and so any
format a reader plugin adds), the tabular preprocessing fitted on training rows only, and the
task toolkit every built-in task uses (:mod:`medmm.task`): the one patient-grouped split rule
(``self.assign_splits``), ``self.write_skipped`` and ``self.backbone`` (the registry lookup).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medmm import (
    BaselineInputs, BundleMeta, DataBundle, DataError, DeploySpec, ExplainSpec, Preprocessor, Split, Task,
    feature_input, fit_preprocessor, infer_column_types, prepare_target, read_json, read_table, select_features,
    study_references, write_json_atomic,
)

log = logging.getLogger("medmm")
ARTIFACT = "discrete_survival.json"


def interval_cuts(time: np.ndarray, event: np.ndarray, bins: int) -> np.ndarray:
    """The inner cut points (ascending, unique) at quantiles of the event times: ``bins`` intervals at most."""
    events = time[event > 0]
    if len(events) == 0:
        raise DataError("the training rows have no events: a survival model cannot be fitted")
    cuts = np.unique(np.quantile(events, np.arange(1, bins) / bins))
    return cuts[cuts > 0]


def interval_of(time: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Interval index of each time: interval ``j`` is ``(cuts[j-1], cuts[j]]``, the last is open."""
    return np.searchsorted(cuts, time, side="left")


def logistic_hazard_nll(logits: torch.Tensor, interval: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of discrete-time survival with hazards ``sigmoid(logits)`` ``[N, K]``.

    A patient whose interval is ``j`` survived every interval before ``j`` (``-log(1 - h_k) =
    softplus(logit_k)``); in ``j`` the event happened (``-log h_j = softplus(-logit_j)``) or,
    censored, the patient survived it too.
    """
    k = torch.arange(logits.shape[1], device=logits.device)
    j = interval.long().unsqueeze(1)
    survived = F.softplus(logits) * (k < j)
    at_j = logits.gather(1, j).squeeze(1)
    last = torch.where(event > 0, F.softplus(-at_j), F.softplus(at_j))
    return (survived.sum(1) + last).mean()


def cumulative_hazard(logits: torch.Tensor, horizon_interval: int) -> torch.Tensor:
    """``-log S(horizon)``: the summed ``-log(1 - h_k)`` of the intervals up to the horizon's."""
    return F.softplus(logits[:, : horizon_interval + 1]).sum(1)


class SurvivalRows(Dataset):
    """Feature rows with ``(time, event, interval)`` targets and their index."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.zeros(len(x), 3) if y is None else torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], i


class DiscreteSurvivalTask(Task):
    """Logistic-hazard survival on a table; the backbone is any registered tabular one."""

    problem = "survival"
    label_names = None
    has_target = True

    def _ids(self, df: Any) -> list[str]:
        col = self.cfg.data.id_column
        if not col:
            return [str(i) for i in range(len(df))]
        if col not in df.columns:
            raise DataError(f"id column {col!r} is not in the data")
        return df[col].astype(str).tolist()

    def _targets(self, t: Any) -> np.ndarray:
        return np.stack([t.time, t.event, interval_of(t.time, self.cuts)], axis=1).astype(np.float32)

    # ------------------------------------------------------------------ training
    def build_data(self, data_path: Path) -> DataBundle:
        d = self.cfg.data
        df = read_table(data_path, decimal=d.decimal)
        target = prepare_target(df, "survival", time=d.time, event=d.event)
        ids_all = self._ids(df)
        self.write_skipped([(i, "missing time or event") for i, keep in zip(ids_all, target.mask) if not keep])
        kept = df[target.mask].reset_index(drop=True)
        ids = [i for i, keep in zip(ids_all, target.mask) if keep]
        reserved = {d.time, d.event, d.id_column, d.group_column, d.study_column, d.accession_column} - {None}
        self.features = select_features(list(df.columns), d.features, d.exclude, reserved)
        groups = kept[d.group_column].tolist() if d.group_column else None
        splits = self.assign_splits(ids, groups=groups, labels=target.event)  # the one split rule (medmm.task)
        train = splits == "train"
        self.cuts = interval_cuts(target.time[train], target.event[train], d.bins)
        self.horizon = float(d.horizon or np.median(target.time[train]))
        types = infer_column_types(kept, self.features, {})
        self.preprocessor = fit_preprocessor(kept[train], types)  # fitted on training rows only
        x = self.preprocessor.transform(kept)
        y = self._targets(target)

        def split(name: str) -> Split | None:
            m = splits == name
            return Split(SurvivalRows(x[m], y[m]), [i for i, k in zip(ids, m) if k], y[m]) if m.any() else None

        self._raw = {name: (x[splits == name], y[splits == name, :2], [i for i, k in zip(ids, splits == name) if k])
                     for name in ("train", "val", "test")}
        desc = (f"{len(kept)} patients x {len(self.features)} features, {int(target.event.sum())} events, "
                f"{len(self.cuts) + 1} intervals, risk = cumulative hazard by horizon {self.horizon:g}")
        studies = study_references(kept, ids, d.study_column, d.accession_column)  # predictions.csv, --dicom-sr
        return DataBundle(split("train"), split("val"), split("test"), meta=BundleMeta(description=desc,
                                                                                       unit_columns=studies))

    def build_model(self) -> torch.nn.Module:
        m = self.cfg.model
        factory = self.backbone(m.backbone, "tabular").load()
        accepted = inspect.signature(factory).parameters
        options = {k: v for k, v in {"hidden": m.hidden, "blocks": m.blocks, "dropout": m.dropout}.items()
                   if k in accepted}
        torch.manual_seed(self.cfg.seed)
        return factory(self.preprocessor.n_features, len(self.cuts) + 1, **options)

    def step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y, idx = batch
        logits = model(x).float()
        h = int(interval_of(np.asarray([self.horizon]), self.cuts)[0])
        out = {"output": cumulative_hazard(logits, h), "target": y[:, :2] if self.has_target else None, "index": idx}
        if self.has_target:
            out["loss"] = logistic_hazard_nll(logits, y[:, 2], y[:, 1])
        return out

    # ------------------------------------------------------------------ prediction
    def save_artifacts(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / ARTIFACT, {"features": self.features, "cuts": self.cuts.tolist(),
                                                 "horizon": self.horizon, "preprocessor": self.preprocessor.to_json()})

    def load_artifacts(self, directory: Path) -> None:
        payload = read_json(directory / ARTIFACT)
        self.features, self.horizon = payload["features"], float(payload["horizon"])
        self.cuts = np.asarray(payload["cuts"], dtype=np.float64)
        self.preprocessor = Preprocessor.from_json(payload["preprocessor"])

    def build_predict_data(self, data_path: Path) -> tuple[Split, Any]:
        d = self.cfg.data
        df = read_table(data_path, decimal=d.decimal)
        x, ids, y = self.preprocessor.transform(df), self._ids(df), None
        self.unit_columns = study_references(df, ids, d.study_column, d.accession_column,  # --dicom-sr's studies
                                             required=False)  # new data may lack them
        if d.time in df.columns and d.event in df.columns:
            target = prepare_target(df, "survival", time=d.time, event=d.event)
            y = self._targets(target) if target.mask.all() else None
        self.has_target = y is not None
        self._raw = {**getattr(self, "_raw", {}), "predict": (x, None if y is None else y[:, :2], ids)}
        return Split(SurvivalRows(x, y), ids, y), None

    def explain_spec(self, model: torch.nn.Module) -> ExplainSpec:
        """``medmm explain``: Integrated Gradients on the encoded columns, summed back to the source columns."""
        return ExplainSpec([feature_input("features", self.preprocessor, get=lambda b: b[0],
                                          put=lambda b, x: (x, *b[1:]))])

    def deploy_spec(self, model: torch.nn.Module) -> DeploySpec:
        """``medmm export``: one input ``x`` (the preprocessed features); the graph is :meth:`step`
        without targets, so it outputs the cumulative hazard by the horizon, as predict does."""
        return DeploySpec(
            preprocessing={"preprocessor": f"artifacts/{ARTIFACT}", "features": len(self.features),
                           "id_column": self.cfg.data.id_column},
            output=f"cumulative hazard by horizon {self.horizon:g} [batch] (1 - exp(-risk): probability of the "
                   "event by then; higher = earlier event)")

    def baseline_inputs(self, split: str) -> BaselineInputs | None:
        """The preprocessed features of a split: medmm fits its classic Cox model on them."""
        part = getattr(self, "_raw", {}).get(split)
        if part is None or not len(part[2]):
            return None
        x, y, ids = part
        return BaselineInputs(list(ids), y, tabular=x)
