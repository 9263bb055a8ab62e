"""Every figure medmm shows agrees with every other (#27): strict JSON, the training-rows caveat,
the model card's latest audit, and (slow) every artefact of a demo run read back and compared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medmm.evaluation.overlap import caveat, seen_splits
from medmm.io import dumps_json, write_json_atomic
from medmm.model_card import set_section


def _strict(text: str) -> object:
    """``json.loads`` that refuses NaN / Infinity (Python's accepts them; browsers and jq do not)."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_the_json_writer_is_strict(tmp_path: Path) -> None:
    payload = {"auroc": float("nan"), "ci": (0.1, float("inf")), "n": np.int64(3), "x": np.float32(0.5),
               "arr": np.array([1.0, np.nan]), "path": tmp_path}
    out = _strict(write_json_atomic(tmp_path / "a.json", payload).read_text())
    assert out == {"auroc": None, "ci": [0.1, None], "n": 3, "x": 0.5, "arr": [1.0, None], "path": str(tmp_path)}
    assert "NaN" not in dumps_json({"a": [math.nan, -math.inf]})


def test_units_the_run_trained_on_get_a_caveat(tmp_path: Path) -> None:
    (tmp_path / "splits.csv").write_text("id,split\na,train\nb,train\nc,val\nd,test\n")
    seen = seen_splits(tmp_path, ["a", "b", "c", "d", "e", "a"])
    assert seen == {"train": 2, "val": 1, "test": 1}
    text = caveat(seen, 5)
    assert text.startswith("caveat: 3 of 5 evaluated units were used by this run (2 in its training split, "
                           "1 in its validation split)")
    assert caveat(seen_splits(tmp_path, ["d", "e"]), 2) is None  # test rows and new rows: no caveat
    assert caveat(seen_splits(tmp_path / "nowhere", ["a"]), 1) is None  # a run without splits.csv


def test_the_card_subgroups_section_is_replaced_not_duplicated(tmp_path: Path) -> None:
    card = tmp_path / "model_card.md"
    card.write_text("# Model card\n\n## Evaluation\n\nx\n\n## Subgroups\n\nNot audited: none given.\n\n"
                    "## Limitations and ethical considerations\n\n- y\n\n## Validation\n\n### entry\n")
    set_section(card, "Subgroups", "Latest audit: evaluate on 2026-12-06.")
    text = card.read_text()
    assert text.count("## Subgroups") == 1 and "Not audited" not in text
    assert text.index("## Evaluation") < text.index("Latest audit") < text.index("## Limitations")
    assert text.endswith("### entry\n")
    bare = tmp_path / "bare.md"
    bare.write_text("# Model card\n\n## Limitations and ethical considerations\n\n- y\n")
    set_section(bare, "Subgroups", "Latest audit.")
    assert bare.read_text().index("## Subgroups") < bare.read_text().index("## Limitations")
