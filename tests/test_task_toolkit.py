"""medmm.task toolkit: cache dir, backbone lookup, rank-0 writers, the one split rule, padding."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field

from medmm.config.engine import DataConfig, TaskConfig
from medmm.data.splits import group_split
from medmm.errors import ConfigError, DataError, UnknownNameError
from medmm.task import (
    INVALID_SPLIT,
    MISSING_SPLIT,
    Task,
    assign_splits,
    pad_id_of,
    pad_sequences,
    read_split_column,
)


class _Data(DataConfig):
    cache_dir: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15


class _Config(TaskConfig):
    data: _Data = Field(default_factory=_Data)


def _task(tmp_path: Path, **data: object) -> Task:
    return Task(_Config(seed=3, data=_Data(**data)), tmp_path / "run")


def _csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_cache_dir_defaults_to_the_run_and_expands_a_given_one(tmp_path: Path) -> None:
    assert _task(tmp_path).cache_dir == tmp_path / "run" / "cache"
    assert _task(tmp_path, cache_dir="~/medmm-cache").cache_dir == Path.home() / "medmm-cache"


def test_backbone_lookup_checks_the_modality(tmp_path: Path) -> None:
    task = _task(tmp_path)
    assert task.backbone("mlp", "tabular").name == "mlp"
    with pytest.raises(ConfigError, match=r"model.text_backbone 'mlp' is a tabular backbone; .*--modality text"):
        task.backbone("mlp", "text", key="model.text_backbone")
    with pytest.raises(UnknownNameError):
        task.backbone("no-such-backbone", "text")


def test_write_skipped_on_rank_zero_only_and_removes_a_stale_report(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(tmp_path)
    task.run_dir.mkdir()
    path = task.write_skipped([("r1", "missing label")])
    assert path == task.run_dir / "skipped.csv" and _csv(path) == [["id", "reason"], ["r1", "missing label"]]
    assert _csv(task.write_skipped([("a.dcm", "not DICOM")], key="path"))[0] == ["path", "reason"]
    assert task.write_skipped([]) is None and not path.exists()  # nothing skipped: no stale report

    monkeypatch.setenv("RANK", "1")
    assert task.write_skipped([("r1", "missing label")]) is None and not path.exists()
    task.assign_splits([f"r{i}" for i in range(10)])
    assert not (task.run_dir / "splits.csv").exists()


def test_read_split_column_aliases_and_reasons() -> None:
    cells = ["train", " Validation ", "TEST", "dev", None, float("nan"), "  ", "holdout"]
    ids = [f"r{i}" for i in range(len(cells))]
    splits, skipped = read_split_column(ids, cells)
    assert splits == ["train", "val", "test", "val", None, None, None, None]
    assert skipped == [("r4", MISSING_SPLIT), ("r5", MISSING_SPLIT), ("r6", MISSING_SPLIT), ("r7", INVALID_SPLIT)]


def test_a_given_split_is_kept_and_checked_for_leakage() -> None:
    ids = ["a", "b", "c", "d"]
    given = ["train", "val", "test", "train"]
    assert assign_splits(ids, given=given, groups=["p1", "p2", "p3", "p1"]).tolist() == given
    with pytest.raises(DataError, match="appears in both"):
        assign_splits(ids, given=given, groups=["p1", "p1", "p3", "p4"])
    # rows without a patient id are their own group: no false leakage between them
    assert assign_splits(ids, given=given, groups=[None, "", float("nan"), "p1"]).tolist() == given
    with pytest.raises(DataError, match="train / val / test"):
        assign_splits(ids, given=["train", None, "test", "train"])


def test_random_split_is_group_split_so_existing_runs_keep_their_rows() -> None:
    rng = np.random.default_rng(0)
    ids = [f"r{i}" for i in range(200)]
    groups = [f"p{rng.integers(60)}" for _ in ids]
    labels = rng.integers(0, 2, size=200)
    got = assign_splits(ids, groups=groups, labels=labels, val_fraction=0.2, test_fraction=0.1, seed=7)
    assert got.tolist() == group_split(200, groups=groups, labels=labels, val_fraction=0.2,
                                       test_fraction=0.1, seed=7).tolist()
    assert set(got) == {"train", "val", "test"}
    per_group: dict[str, set[str]] = {}
    for g, s in zip(groups, got):
        per_group.setdefault(g, set()).add(s)
    assert max(len(v) for v in per_group.values()) == 1


def test_rows_without_a_group_are_not_pooled_into_one_patient() -> None:
    ids = [f"r{i}" for i in range(60)]
    groups = [None] * 40 + [f"p{i % 10}" for i in range(20)]
    got = assign_splits(ids, groups=groups, seed=1)
    assert set(got[:40]) == {"train", "val", "test"}  # pooled, all 40 would share one split
    keys = [f"row:{i}" if g is None else g for i, g in zip(ids, groups)]
    assert got.tolist() == group_split(60, groups=keys, seed=1).tolist()


def test_task_assign_splits_uses_the_config_and_writes_splits_csv(tmp_path: Path) -> None:
    task = _task(tmp_path, val_fraction=0.25, test_fraction=0.25)
    task.run_dir.mkdir()
    ids = [f"r{i}" for i in range(40)]
    got = task.assign_splits(ids)
    assert got.tolist() == group_split(40, val_fraction=0.25, test_fraction=0.25, seed=3).tolist()
    assert _csv(task.run_dir / "splits.csv")[1:] == [[i, s] for i, s in zip(ids, got)]


def test_pad_sequences_and_pad_id() -> None:
    ids, mask = pad_sequences([[5, 6, 7], [8], []], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1], [1, 1, 1]] and ids.dtype == np.int64
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert pad_sequences([[], []])[0].shape == (2, 1)  # never width 0

    class Tok:
        pad_token_id = 9

    assert pad_id_of(Tok()) == 9 and pad_id_of(object()) == 0


def test_bundle_meta_is_typed_a_dict_of_its_fields_is_accepted_and_a_misspelt_key_is_refused() -> None:
    from medmm import BundleMeta, DataBundle, PluginError

    bundle = DataBundle(None, None, None, meta={"description": "40 rows", "extra": {"my_key": 1}})
    assert isinstance(bundle.meta, BundleMeta) and bundle.meta.description == "40 rows"
    assert bundle.meta.extra == {"my_key": 1} and bundle.meta.report_sections == [] and bundle.meta.unit_name == "units"
    assert DataBundle(None, None, None).meta == BundleMeta()  # each bundle its own (no shared lists)
    assert DataBundle(None, None, None).meta.card_sections is not DataBundle(None, None, None).meta.card_sections
    with pytest.raises(PluginError, match="no key 'descripton'.*meta.extra") as err:
        DataBundle(None, None, None, meta={"descripton": "40 rows"})
    assert "\n" not in str(err.value)
