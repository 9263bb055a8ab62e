"""Which units `medmm explain` explains, blank Grad-CAM maps, and faithfulness verdicts in words (#27)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medmm.errors import MedmmError
from medmm.explain.core import Attribution, Items
from medmm.explain.outputs import deletion_verdict, randomisation_verdict
from medmm.explain.run import _annotate, _candidates, _distinct


def _run(tmp_path: Path) -> Path:
    (tmp_path / "splits.csv").write_text("id,split\n" + "".join(f"u{i},{s}\n" for i, s in enumerate(
        ["train"] * 6 + ["val"] * 2 + ["test"] * 2)))
    return tmp_path


def test_the_run_own_data_defaults_to_its_held_out_units(tmp_path: Path) -> None:
    run = _run(tmp_path)
    units = [f"u{i}" for i in range(10)]
    picked, why = _candidates(run, units, None)
    assert picked == ["u8", "u9"] and why.startswith("held-out units of the run's test split")
    assert _candidates(run, units, "train")[0] == [f"u{i}" for i in range(6)]
    assert _candidates(run, units, "all")[0] == units
    new = ["n1", "n2"]  # new data: all of it, nothing to hold out
    assert _candidates(run, new, None) == (new, "all 2 units of the data (none was used by the run)")
    with pytest.raises(MedmmError, match="--split all"):
        _candidates(run, new, "test")
    (run / "run.json").write_text('{"task": "image-cls", "data": "/somewhere/train"}')
    other = tmp_path / "new-folder"
    other.mkdir()
    assert _candidates(run, units, None, other)[0] == units  # same ids, another data set: all of it
    assert _candidates(run, units, None, Path("/somewhere/train"))[0] == ["u8", "u9"]  # the run's own
    (tmp_path / "splits.csv").write_text("id,split\na,train\nb,val\n")  # no test split: val is held out
    assert _candidates(tmp_path, ["a", "b"], None)[0] == ["b"]


def test_one_image_stored_several_times_is_explained_once() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((1, 8, 8)).astype(np.float32)
    other = rng.random((1, 8, 8)).astype(np.float32)
    # the same pixels in four transfer syntaxes (four units), then another image; items as image-cls makes them
    dataset = [(img.copy(), np.int64(0), i) for i in range(4)] + [(other, np.int64(0), 4)]
    split = SimpleNamespace(units=["a", "b", "c", "d", "e"], dataset=dataset)
    chosen, skipped = _distinct(split, split.units, limit=20)
    assert list(chosen) == ["a", "e"] and skipped == 3
    assert list(_distinct(split, split.units, limit=1)[0]) == ["a"]


def test_a_blank_map_is_flagged_and_features_get_their_values() -> None:
    items = Items(["c0", "c1", "c2"], [np.array([0]), np.array([1]), np.array([2])])
    blank = Attribution(items, np.zeros(3), {"cam": np.zeros((4, 4)), "peak": (0, 0)})
    real = Attribution(items, np.array([0.1, 0.5, 0.0]), {"cam": np.eye(4), "peak": (0, 0)})
    _annotate(SimpleNamespace(kind="image", describe=None), None, [blank, real, None])
    assert blank.extra.get("degenerate") and not real.extra.get("degenerate")
    import torch

    tab = Attribution(items, np.array([0.2, -0.1, 0.0]), {})
    spec = SimpleNamespace(kind="features", get=lambda b: b, describe=lambda row: [f"{v:g}" for v in row])
    _annotate(spec, torch.tensor([[31.5, 2.0, 0.0]]), [tab])
    assert tab.extra["values"] == ["31.5", "2", "0"]


def test_faithfulness_verdicts_say_pass_or_fail_with_their_rule() -> None:
    good = {"deletion_top": 0.30, "deletion_random": 0.10, "deletion_n": 12, "kind": "image"}
    assert deletion_verdict(good).startswith("pass: deleting the top 10% of grid cells drops the score 3.0x more")
    assert "(rule: pass when" in deletion_verdict(good)
    weak = {"deletion_top": 0.077, "deletion_random": 0.058, "deletion_n": 18, "kind": "image"}  # the figures
    assert deletion_verdict(weak).startswith("weak:")
    assert deletion_verdict({**weak, "deletion_top": 0.05}).startswith("fail:")
    assert deletion_verdict({"deletion_top": None, "deletion_random": None, "deletion_n": 0}).startswith("not checked")
    assert randomisation_verdict({"randomisation_spearman": 0.1, "randomisation_n": 16}).startswith("pass")
    assert randomisation_verdict({"randomisation_spearman": 0.8, "randomisation_n": 16}).startswith("fail")
