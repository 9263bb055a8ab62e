"""``medmm demo discrete-survival``: lifelines' GBSG2 (686 German breast-cancer patients, recurrence-free survival)."""

from __future__ import annotations

from pathlib import Path

from medmm import MedmmError


def build(out_dir: Path) -> tuple[Path, list[str]]:
    """Write ``gbsg2.csv`` (8 baseline variables, days to recurrence or censoring) and the overrides to train on it."""
    try:
        from lifelines.datasets import load_gbsg2
    except ImportError:
        raise MedmmError("the discrete-survival demo needs lifelines: pip install 'medmm-example-plugin[demo]'") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gbsg2.csv"
    load_gbsg2().to_csv(path, index_label="patient")
    return path, ["data.time=time", "data.event=cens", "data.id_column=patient", "data.horizon=1825"]
