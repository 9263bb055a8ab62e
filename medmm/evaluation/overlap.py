"""Which evaluated units the run itself trained on: a metric over them is not a validation.

When the data is the run's own (the same path, or the same fingerprint), the run's ``splits.csv``
(unit id and split, written when it was trained) tells which units it trained on; units are matched by
the id ``predictions.csv`` uses.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SplitCounter", "caveat", "own_data", "run_splits", "seen_splits"]


def run_splits(run_dir: Path) -> dict[str, str]:
    """``{unit id: split}`` from ``RUN_DIR/splits.csv`` (empty when the run has none)."""
    path = Path(run_dir) / "splits.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["id"]: row["split"] for row in csv.DictReader(f) if row.get("id") is not None}


def own_data(run_dir: Path, data: Path) -> bool:
    """Is ``data`` the data the run was trained on: the same path, or the same fingerprint (a copy)?

    Unit ids alone do not tell: row numbers and relative paths repeat across data sets.
    """
    from medmm.errors import MedmmError
    from medmm.fingerprint import check_same_data

    try:
        trained = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError):
        return False
    if trained and Path(trained).resolve() == Path(data).resolve():
        return True
    try:
        return check_same_data(Path(run_dir), Path(data))
    except (MedmmError, OSError, ValueError):
        return False


def seen_splits(run_dir: Path, units: Iterable[str], data: Path | None = None) -> dict[str, int]:
    """How many of ``units`` the run had in each of its splits (``{"train": 12, "val": 3}``; unseen ones absent).

    With ``data``: empty unless it is the run's own data (:func:`own_data`)."""
    if data is not None and not own_data(run_dir, data):
        return {}
    splits = run_splits(run_dir)
    return dict(Counter(splits[u] for u in dict.fromkeys(str(u) for u in units) if u in splits))


class SplitCounter:
    """:func:`seen_splits` for units that arrive in blocks, without holding their ids or the run's whole
    ``splits.csv``: the file is read alongside, in step, when the units come in its order (the run's own
    table, predicted row by row); a unit not next in the file waits in a list that the rest of the file
    settles at the end (the same counts whatever the order, held only for such units)."""

    def __init__(self, run_dir: Path) -> None:
        path = Path(run_dir) / "splits.csv"
        self._file = path.open(newline="", encoding="utf-8") if path.is_file() else None
        self._rows = csv.DictReader(self._file) if self._file is not None else iter(())
        self._next: dict[str, str] | None = self._advance()
        self._pending: dict[str, None] = {}
        self.counts: Counter[str] = Counter()

    def _advance(self) -> dict[str, str] | None:
        for row in self._rows:
            if row.get("id") is not None:
                return row
        return None

    def add(self, units: Iterable[str]) -> None:
        """Count the next block of units (in order)."""
        for u in units:
            u = str(u)
            if self._next is not None and self._next["id"] == u:
                self.counts[self._next["split"]] += 1
                self._next = self._advance()
            else:
                self._pending[u] = None

    def result(self) -> dict[str, int]:
        """``{split: units}``, as :func:`seen_splits` counts them; closes the file."""
        try:
            while self._pending and self._next is not None:  # units that came out of the file's order
                if self._pending.pop(self._next["id"], 0) is None:
                    self.counts[self._next["split"]] += 1
                self._next = self._advance()
        finally:
            if self._file is not None:
                self._file.close()
        return dict(self.counts)


def caveat(seen: dict[str, int], total: int) -> str | None:
    """One line saying that the figures include rows the model was fitted or tuned on; ``None`` when none."""
    fitted, tuned = seen.get("train", 0), seen.get("val", 0)
    if not fitted and not tuned:
        return None
    parts = [f"{fitted} in its training split" if fitted else "", f"{tuned} in its validation split" if tuned else ""]
    return (f"caveat: {fitted + tuned} of {total} evaluated units were used by this run ("
            + ", ".join(p for p in parts if p) + "); metrics over them are optimistic and are not a validation "
            "(evaluate on the run's test split or on new data)")
