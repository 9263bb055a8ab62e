"""De-identify a CSV of clinical notes: scrub the text column, pseudonymise the id column, verify.

Two passes: the first finds identifiers with the rules of :mod:`medmm.deid.text`; the second
scrubs every note again with everything found anywhere (an MRN found after "MRN:" in one note is
also removed where it stands alone in another), the supplied names and the id column's values.
The output is then re-read and every source identifier value counted: it must be 0.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmm.deid.options import DeidOptions
from medmm.deid.pseudonyms import Pseudonymizer
from medmm.errors import DataError, MedmmError
from medmm.io import read_csv_rows

__all__ = ["NotesResult", "NotesScrubber", "deidentify_notes", "read_names"]

_LITERAL_KINDS = ("ID", "PHONE", "EMAIL", "URL", "ADDRESS", "ZIP")


@dataclass
class NotesResult:
    out: Path
    rows: int = 0
    spans_by_kind: Counter[str] = field(default_factory=Counter)
    identifiers_checked: int = 0
    remaining: int = 0
    report: dict[str, Any] = field(default_factory=dict)


def read_names(path: Path) -> list[str]:
    """One name per line ("#" comments and blank lines ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read names file {path}: {exc}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _name_words(value: str) -> list[str]:
    import re

    return [w.strip(".'\"()") for w in re.split(r"[\s,^;/]+", value) if len(w.strip(".'\"()")) >= 2]


class NotesScrubber:
    """The two-pass scrubber over a table's rows (the bench and ``deidentify_notes`` share it)."""

    def __init__(self, rows: Sequence[dict[str, str]], pseudo: Pseudonymizer, options: DeidOptions,
                 text_column: str, id_column: str | None = None, name_columns: Sequence[str] = (),
                 names: Sequence[str] = ()):
        from medmm.deid.text import NameMatcher, literal_matcher, scrub

        self.pseudo, self.options = pseudo, options
        self.text_column, self.id_column = text_column, id_column
        self.identifiers: dict[str, str] = {}
        self.name_values = list(names)
        for row in rows:
            for col in name_columns:
                self.name_values.append(str(row.get(col) or ""))
            if id_column and str(row.get(id_column) or "").strip():
                self.identifiers[str(row[id_column]).strip()] = "id"
        matcher = NameMatcher(self.name_values)
        # pass 1: what the rules find, to be removed everywhere in pass 2
        self.found_names: list[str] = []
        self.literals: dict[str, str] = {v: "ID" for v in self.identifiers}
        for row in rows:
            text = str(row.get(text_column) or "")
            _, spans = scrub(text, matcher, None)
            for s in spans:
                value = text[s.start:s.end].strip()
                if s.kind in _LITERAL_KINDS and len(value) >= 4:
                    self.literals.setdefault(value, s.kind)
                elif s.kind == "NAME":
                    self.found_names.append(value)
        self.matcher = NameMatcher([*self.name_values, *self.found_names])
        self._literals = literal_matcher(self.literals)
        self._scrub = scrub

    def shift_for(self, row: dict[str, str]) -> int | None:
        pid = str(row.get(self.id_column) or "").strip() if self.id_column else ""
        return self.pseudo.date_shift_days(pid) if self.options.retain_dates and pid else None

    def scrub(self, row: dict[str, str]) -> tuple[str, list[Any]]:
        """(scrubbed text, spans in the original text) for one row."""
        text = str(row.get(self.text_column) or "")
        return self._scrub(text, self.matcher, self.shift_for(row), self._literals)


def deidentify_notes(src: Path, out: Path, pseudo: Pseudonymizer, options: DeidOptions, text_column: str,
                     id_column: str | None = None, name_columns: Sequence[str] = (),
                     names: Sequence[str] = (), drop_columns: Sequence[str] = ()) -> NotesResult:
    """Write ``out`` (a new CSV) and ``out``'s ``.deid.json`` report; see the module docstring."""
    from medmm.deid.text import NameMatcher
    from medmm.deid.verify import IdentifierScan
    from medmm.io import atomic_write, write_json_atomic

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise DataError(f"notes CSV not found: {src}")
    if out.exists():
        raise MedmmError(f"--out {out} exists; de-identified notes go to a new file (never overwritten)")
    if out.resolve() == src.resolve():
        raise MedmmError("--out must differ from the input CSV")
    header, rows = read_csv_rows(src, "notes CSV")
    wanted = [text_column, *([id_column] if id_column else []), *name_columns, *drop_columns]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"{src} has no column(s) {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(header)})")

    scrubber = NotesScrubber(rows, pseudo, options, text_column, id_column, name_columns, names)
    identifiers, literals = scrubber.identifiers, scrubber.literals
    name_values, found_names = scrubber.name_values, scrubber.found_names

    result = NotesResult(out=out)
    keep = [c for c in header if c not in set(name_columns) | set(drop_columns)]
    out_rows = []
    for row in rows:
        new = {c: row.get(c, "") for c in keep}
        scrubbed, spans = scrubber.scrub(row)
        new[text_column] = scrubbed
        result.spans_by_kind.update(s.kind for s in spans)
        if id_column:
            new[id_column] = pseudo.patient_id(str(row.get(id_column) or ""))
        out_rows.append(new)
    result.rows = len(out_rows)

    # verification: every source identifier value, counted in every output cell
    for value, kind in literals.items():
        identifiers.setdefault(value, kind.lower())
    name_ids = {w: "name" for v in [*name_values, *found_names] for w in [v.strip(), *_name_words(v)]
                if len(w) >= 2}
    scan = IdentifierScan(identifiers)
    name_scan = NameMatcher(name_ids)
    name_hits = 0
    for i, new in enumerate(out_rows):
        for col, cell in new.items():
            if cell:
                scan.scan(str(cell), f"row {i + 2} column {col}")
                hits = sum(1 for _ in name_scan.finditer(str(cell)))
                if hits:
                    name_hits += hits
                    scan.result.where.append((f"row {i + 2} column {col}", "name"))
    residual = scan.result
    residual.found["name"] += name_hits
    result.identifiers_checked = residual.checked + len(name_ids)
    result.remaining = residual.remaining
    if result.remaining:
        places = ", ".join(f"{p} ({k})" for p, k in residual.where[:5])
        raise MedmmError(f"de-identification verification FAILED, nothing written: {result.remaining} source "
                         f"identifier occurrence(s) remain ({dict(residual.found)}), e.g. in {places}")

    with atomic_write(out, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keep)
        writer.writeheader()
        writer.writerows(out_rows)
    result.report = {
        "format": "medmm-deid", "input": "notes-csv", "rows": result.rows, "text_column": text_column,
        "id_column": id_column, "dropped_columns": [*name_columns, *drop_columns],
        "options": options.describe(), "key_id": pseudo.token("key-id", "key-id", 8),
        "dates": "shifted per patient" if options.retain_dates and id_column else "replaced by [DATE]",
        "replaced_by_kind": dict(sorted(result.spans_by_kind.items())),
        "verification": {**residual.summary(), "identifier_values_checked": result.identifiers_checked},
    }
    write_json_atomic(out.with_name(out.name + ".deid.json"), result.report)
    return result
