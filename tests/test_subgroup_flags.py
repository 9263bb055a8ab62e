"""Subgroup flags read the operating-point figures and fairlearn's gaps, not only the headline CI (#27)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fairlearn")

from medmm.evaluation.subgroups import MAX_GAP, audit, audit_html, audit_markdown


def _shifted(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same ranking in both groups (equal AUROC), but group "long" scores half as high: at the 0.5
    threshold its sensitivity collapses while its AUROC CI overlaps the overall one."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.array(["short", "long"]), n // 2)
    x = rng.normal(size=n)
    y = (x + rng.normal(scale=0.7, size=n) > 0).astype(int)
    p = 1 / (1 + np.exp(-3 * x))
    p = np.where(g == "long", p * 0.45, p)
    return y, p, g


def test_an_operating_point_gap_is_flagged_with_its_reason_and_rule() -> None:
    y, p, g = _shifted()
    op = {"classes": ["no", "yes"], "thresholds": {"yes": 0.5}}
    result = audit("binary", y, p, {"length": g}, op=op, n_boot=200)
    col = result["columns"]["length"]
    rows = {r["group"]: r for r in col["groups"]}
    long, overall = rows["long"], result["overall"]
    # the headline alone would not flag it: its AUROC CI overlaps the overall CI
    assert long["ci"][1] >= overall["ci"][0]
    assert overall["sensitivity"] - long["sensitivity"] > MAX_GAP
    assert col["flagged"] == ["long"]
    assert any(r.startswith("sensitivity") for r in long["reasons"])
    assert not rows["short"]["flagged"]
    assert any(f.startswith("equalized-odds difference") for f in col["column_flags"])
    for page in (audit_html(result), audit_markdown(result)):
        assert "Flag rule:" in page and f"more than {MAX_GAP:.2f} below" in page
        assert "FLAGGED" in page and "flagged groups: long" in page and "none" not in page.split("flagged groups:")[1][:6]
        assert "PPV" in page and "NPV" in page


def test_no_flag_when_groups_agree() -> None:
    rng = np.random.default_rng(1)
    n = 600
    g = rng.choice(np.array(["a", "b"]), n)
    x = rng.normal(size=n)
    y = (x + rng.normal(scale=0.7, size=n) > 0).astype(int)
    p = 1 / (1 + np.exp(-3 * x))
    result = audit("binary", y, p, {"site": g}, op={"classes": ["no", "yes"], "thresholds": {"yes": 0.5}}, n_boot=200)
    col = result["columns"]["site"]
    assert col["flagged"] == [] and col["column_flags"] == []
    assert "flagged groups: none" in audit_html(result)
