"""Find many known values in text in time linear in the text, not in the number of values.

A regular-expression alternation of every patient's MRN and name is tried value by value at each
position (300,000 values x every character of every note); here the text is split once into runs
of letters and digits, and the runs at each position are looked up in a hash table per value
length (in runs). A
candidate counts only as a whole token: exactly equal (case-insensitively unless asked), not
inside a longer word (letters, digits, ``_``), and for UID- or date-like values (digits and dots)
not inside a longer dotted number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["ValueIndex"]

_TOKEN = re.compile(r"[^\W_]+")  # runs of letters and digits (any script)
_UIDLIKE = re.compile(r"[\d.]+")


class ValueIndex:
    """Index of values; :meth:`finditer` yields ``(start, end, value)`` for each whole occurrence."""

    def __init__(self, values: Iterable[str], ignore_case: bool = True):
        self.ignore_case = ignore_case
        # token count -> token tuple -> (value, chars before its first token, after its last)
        self._by_len: dict[int, dict[tuple[str, ...], list[tuple[str, int, int]]]] = {}
        self.values: set[str] = set()
        for value in values:
            value = value.strip()
            toks = [(m[0], m.start(), m.end()) for m in _TOKEN.finditer(value)]
            if not toks:
                continue
            norm = tuple(self._norm(t) for t, _, _ in toks)
            lead, trail = toks[0][1], len(value) - toks[-1][2]
            self._by_len.setdefault(len(norm), {}).setdefault(norm, []).append((value, lead, trail))
            self.values.add(value)

    def _norm(self, s: str) -> str:
        return s.casefold() if self.ignore_case else s

    def __len__(self) -> int:
        return len(self.values)

    def finditer(self, text: str) -> Iterator[tuple[int, int, str]]:
        if not self._by_len:
            return
        toks = [(self._norm(m[0]), m.start(), m.end()) for m in _TOKEN.finditer(text)]
        words = [t for t, _, _ in toks]
        for i in range(len(toks)):
            for k, table in self._by_len.items():
                if i + k > len(toks):
                    continue
                for value, lead, trail in table.get(tuple(words[i:i + k]), ()):
                    start, end = toks[i][1] - lead, toks[i + k - 1][2] + trail
                    if start < 0 or end > len(text) or self._norm(text[start:end]) != self._norm(value):
                        continue
                    if _bounded(text, start, end, uid_like=bool(_UIDLIKE.fullmatch(value))):
                        yield start, end, value


def _bounded(text: str, start: int, end: int, uid_like: bool) -> bool:
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if uid_like:
        # "1.2.3" inside "1.2.3.4", "12345" inside "2.25.123456", "0010" inside "20-0010" or "7_0010":
        # part of a longer number, not a whole value
        if before.isdigit() or after.isdigit():
            return False
        if before in ".-_/" and start > 1 and text[start - 2].isdigit():
            return False
        return not (after in ".-_/" and end + 1 < len(text) and text[end + 1].isdigit())
    word = lambda c: c.isalnum() or c == "_"  # noqa: E731
    return not (before and word(before)) and not (after and word(after))
