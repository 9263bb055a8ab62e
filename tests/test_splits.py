"""The split's assignments are pinned (computed by the quadratic rule before #30 made it
O(n log n)) and checked against a verbatim copy of that rule on random tables."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from medmm.data import splits as splits_module
from medmm.data.splits import group_split


def _old_group_split(n: int, *, groups=None, labels=None, val_fraction=0.15, test_fraction=0.15,
                     seed=0) -> np.ndarray:
    """The rule as it was before #30 (a row scan per group), kept here as the reference."""
    keys = np.asarray([str(g) for g in groups]) if groups is not None else np.arange(n).astype(str)
    uniq, group_ids = np.unique(keys, return_inverse=True)
    if labels is None or np.asarray(labels).ndim != 1:
        strata = np.zeros(len(uniq), dtype=object)
    else:
        labels = np.asarray(labels)
        strata = np.empty(len(uniq), dtype=object)
        for g in range(len(uniq)):
            values, counts = np.unique(labels[group_ids == g].astype(str), return_counts=True)
            strata[g] = values[counts.argmax()]
    rng = np.random.default_rng(seed)
    assignment = np.full(len(uniq), "train", dtype=object)
    for stratum in sorted(set(strata.astype(str))):
        members = np.flatnonzero(strata.astype(str) == stratum)
        members = members[rng.permutation(len(members))]
        n_val, n_test = splits_module._allocate(len(members), val_fraction, test_fraction)
        assignment[members[:n_test]] = "test"
        assignment[members[n_test: n_test + n_val]] = "val"
    return assignment[group_ids]


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(",".join(a.tolist()).encode()).hexdigest()[:16]


def _pinned_cases() -> dict[str, dict]:
    rng = np.random.default_rng(2026)
    plain_labels = rng.integers(0, 2, 1000)
    g = [f"p{rng.integers(300)}" for _ in range(1200)]
    return {
        "plain_1000": dict(n=1000),
        "plain_1000_labels": dict(n=1000, labels=plain_labels),
        "groups_1200_3class": dict(n=1200, groups=g, labels=np.asarray(["a", "b", "c"])[rng.integers(0, 3, 1200)],
                                   val_fraction=0.2, test_fraction=0.1, seed=5),
        "floats_labels_ties": dict(n=500, groups=[f"g{i % 97}" for i in range(500)],
                                   labels=(np.arange(500) % 2).astype(float), seed=11),
    }


PINNED = {"plain_1000": "d3df24848bd55ba4", "plain_1000_labels": "8d53ad39f2415745",
          "groups_1200_3class": "b12870f881c4d526", "floats_labels_ties": "68efa5a41c12849c"}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_split_assignments_are_the_ones_runs_had_before(name: str) -> None:
    case = _pinned_cases()[name]
    assert _digest(group_split(case.pop("n"), **case)) == PINNED[name]


def test_small_splits_pinned_literally() -> None:
    assert group_split(12, labels=np.array([0, 1] * 6), seed=3).tolist() == [
        "train", "train", "test", "train", "train", "test", "train", "train", "val", "val", "train", "train"]
    assert group_split(10, groups=list("aabbccddee"), seed=1).tolist() == [
        "val", "val", "train", "train", "train", "train", "train", "train", "test", "test"]


@pytest.mark.parametrize("seed", range(18))
def test_split_equals_the_old_rule_on_random_tables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    groups = None if seed % 3 == 0 else [f"p{rng.integers(max(1, n // 3))}" for _ in range(n)]
    labels = [None,
              rng.integers(0, 2, n),
              np.asarray(["x", "y", "z", "10", "9"])[rng.integers(0, 5, n)],
              rng.integers(0, 2, n).astype(float),
              rng.integers(0, 2, (n, 3)),  # 2-D (multilabel): one stratum
              rng.integers(0, 50, n)][seed % 6]  # many labels: the sort path, not the count table
    kw = dict(groups=groups, labels=labels, val_fraction=[0.15, 0.2, 0.0][seed % 3],
              test_fraction=[0.15, 0.0, 0.3][seed % 3], seed=seed)
    assert group_split(n, **kw).tolist() == _old_group_split(n, **kw).tolist()


def test_group_labels_pick_the_commonest_label_and_break_ties_by_the_smallest() -> None:
    group_ids = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    labels = np.array(["b", "a", "b", "z", "y", "10", "9", "9", "10"])
    ranks = {v: i for i, v in enumerate(sorted(set(labels.tolist())))}  # codes are string ranks
    assert splits_module.group_strata(group_ids, labels, 3).tolist() == [ranks["b"], ranks["y"], ranks["10"]]


def test_split_work_is_linear_in_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """No row scan per group: np.flatnonzero / == over all rows is called a bounded number of times."""
    calls = {"n": 0}
    real_unique = np.unique

    def counting_unique(*args, **kwargs):
        calls["n"] += 1
        return real_unique(*args, **kwargs)

    monkeypatch.setattr(splits_module.np, "unique", counting_unique)
    group_split(3000, labels=np.arange(3000) % 2)
    small = calls["n"]
    calls["n"] = 0
    group_split(30000, labels=np.arange(30000) % 2)
    assert calls["n"] == small <= 5


def test_row_id_ranks_and_labels_across_blocks_equal_the_string_sort() -> None:
    """Past one block (65,536 rows) and a digit boundary: the counted ranks are the string sort's,
    and integer labels of a small range (one count, no sort) get the ranks of their strings."""
    n = 2 * splits_module.BLOCK + 100_003
    keys = np.arange(n).astype(str)
    expected = np.empty(n, dtype=np.int64)
    expected[np.argsort(keys, kind="stable")] = np.arange(n)
    assert np.array_equal(splits_module._row_key_ranks(n), expected)
    labels = np.random.default_rng(3).integers(-3, 12, n)
    strings = np.unique(labels.astype(str), return_inverse=True)[1].reshape(-1)
    assert np.array_equal(splits_module._label_codes(labels), strings)
    small = np.random.default_rng(4).integers(0, 2, 5000)
    assert np.array_equal(group_split(5000, labels=small), _old_group_split(5000, labels=small))
