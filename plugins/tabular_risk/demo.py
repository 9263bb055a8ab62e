"""``medmm demo tabular-risk``: scikit-learn's diabetes table (442 real patients, disease progression)."""

from __future__ import annotations

from pathlib import Path


def build(out_dir: Path) -> tuple[Path, list[str]]:
    """Write ``diabetes.csv`` (10 baseline variables + one-year progression) and the overrides to train on it."""
    from sklearn.datasets import load_diabetes

    out_dir.mkdir(parents=True, exist_ok=True)
    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    path = out_dir / "diabetes.csv"
    frame.to_csv(path, index_label="patient")
    return path, ["data.target=progression", "data.id_column=patient", "engine.epochs=150"]
