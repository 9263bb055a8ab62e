"""Residual-identifier scan: how many source identifier values still occur in the output.

Values are matched case-insensitively and only as whole tokens (``medmm.deid.matching``), so a
patient id "12345" is found in "ID 12345" but not inside a 39-digit ``2.25`` UID. Results name
kinds, files and attributes, never the values themselves.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from medmm.deid.matching import ValueIndex

__all__ = ["IdentifierScan", "Residual", "pattern_kinds"]

_ID_LIKE = re.compile(r"(?<![\w.])\d[\d\-/]{4,}\d(?![\w.])")


def pattern_kinds(text: str) -> list[str]:
    """Identifier patterns in free text (OCR output): ``date`` (any common format) and ``id number``
    (6+ digits, possibly split by ``-`` or ``/``, not a date)."""
    from medmm.data.dicom.paths import date_kinds

    kinds = ["date"] if date_kinds(text) else []
    for m in _ID_LIKE.finditer(text):
        if sum(c.isdigit() for c in m[0]) >= 6 and not date_kinds(m[0]):
            kinds.append("id number")
            break
    return kinds

@dataclass
class Residual:
    """Occurrences of source identifiers found in the output (kinds and places, no values)."""

    checked: int = 0
    by_kind_checked: dict[str, int] = field(default_factory=dict)
    found: Counter[str] = field(default_factory=Counter)  # kind -> occurrences
    where: list[tuple[str, str]] = field(default_factory=list)  # (output place, kind)
    values_found: int = 0

    @property
    def remaining(self) -> int:
        return sum(self.found.values())

    def summary(self) -> dict[str, object]:
        return {"identifier_values_checked": self.checked, "checked_by_kind": self.by_kind_checked,
                "remaining": self.remaining, "remaining_distinct_values": self.values_found,
                "remaining_by_kind": dict(self.found), "where": [f"{p} ({k})" for p, k in self.where[:50]]}


class IdentifierScan:
    """Compiled matcher for a set of identifier values (value -> kind)."""

    def __init__(self, identifiers: dict[str, str]):
        values = {v.strip(): k for v, k in identifiers.items() if v and v.strip()}
        self.kinds = {v.casefold(): k for v, k in values.items()}
        self._index = ValueIndex(values)
        by_kind = dict(sorted(Counter(values.values()).items()))
        self.result = Residual(checked=len(values), by_kind_checked=by_kind)
        self._seen: set[str] = set()

    def scan(self, text: str, place: str) -> int:
        """Count identifier occurrences in ``text``; ``place`` (no PHI) is recorded for each kind found."""
        hits = 0
        kinds: set[str] = set()
        for _, _, found in self._index.finditer(text):
            value = found.casefold()
            kind = self.kinds.get(value, "value")
            self.result.found[kind] += 1
            kinds.add(kind)
            if value not in self._seen:
                self._seen.add(value)
                self.result.values_found += 1
            hits += 1
        self.result.where.extend((place, k) for k in sorted(kinds))
        return hits

    def matched_values(self, text: str) -> set[str]:
        """The identifier values (lower-cased) that occur in ``text``; nothing is counted."""
        return {value.casefold() for _, _, value in self._index.finditer(text)}

    def scan_many(self, items: Iterable[tuple[str, str]]) -> int:
        return sum(self.scan(text, place) for text, place in items)
