"""Recall per identifier type and precision of ``medmm deid`` on synthetic notes with planted identifiers.

    python bench/deid_text.py [--notes 600] [--seed 0]

The notes come from ``tests/deid_notes.py`` (every planted span and its type known). A planted
identifier counts as caught when none of its letters or digits survive (every one is inside a
replaced span); precision is the share of replaced spans that overlap a planted identifier. The
same two-pass scrubber as ``medmm deid notes.csv`` is used, with the CSV's first/last name columns
as the name list; the end-to-end command (with its residual scan) is run once too.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medmm.deid.notes import NotesScrubber, deidentify_notes  # noqa: E402
from medmm.deid.options import DeidOptions  # noqa: E402
from medmm.deid.pseudonyms import Pseudonymizer  # noqa: E402
from tests.deid_notes import as_rows, make_notes  # noqa: E402

ORDER = ["NAME", "NAME_CUED", "NAME_BARE", "DATE", "PHONE", "EMAIL", "URL", "ID", "AGE", "ADDRESS", "ZIP"]


def measure(n: int, seed: int, retain_dates: bool = False) -> dict[str, object]:
    notes = make_notes(n, seed)
    rows = as_rows(notes)
    pseudo = Pseudonymizer(bytes(range(32)))
    t0 = time.perf_counter()
    scrubber = NotesScrubber(rows, pseudo, DeidOptions(retain_dates=retain_dates), "report", "patient_id",
                             ("first_name", "last_name"))
    found = [scrubber.scrub(r)[1] for r in rows]
    seconds = time.perf_counter() - t0
    planted, caught = Counter(), Counter()
    detected = true_pos = 0
    for note, spans in zip(notes, found):
        covered = set()
        for s in spans:
            covered.update(range(s.start, s.end))
            detected += 1
            true_pos += any(s.start < e and s.end > b for b, e, _ in note.spans)
        for b, e, kind in note.spans:
            planted[kind] += 1
            caught[kind] += all(i in covered for i in range(b, e) if note.text[i].isalnum())
    return {"planted": planted, "caught": caught, "detected": detected, "true_pos": true_pos,
            "notes": n, "seconds": seconds, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = measure(args.notes, args.seed)
    planted, caught = r["planted"], r["caught"]
    print(f"{r['notes']} synthetic notes, {sum(planted.values())} planted identifiers; "
          f"{r['notes'] / r['seconds']:.0f} notes/s (two passes)")
    print(f"{'type':<10} {'planted':>8} {'caught':>8} {'recall':>8}")
    for kind in ORDER:
        if planted[kind]:
            print(f"{kind:<10} {planted[kind]:>8} {caught[kind]:>8} {caught[kind] / planted[kind]:>8.3f}")
    total_p, total_c = sum(planted.values()), sum(caught.values())
    print(f"{'all':<10} {total_p:>8} {total_c:>8} {total_c / total_p:>8.3f}")
    print(f"precision: {r['true_pos']} of {r['detected']} replaced spans overlap a planted identifier = "
          f"{r['true_pos'] / max(r['detected'], 1):.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "notes.csv"
        with open(src, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(r["rows"][0]))
            writer.writeheader()
            writer.writerows(r["rows"])
        res = deidentify_notes(src, Path(tmp) / "out.csv", Pseudonymizer(bytes(range(32))),
                               DeidOptions(retain_dates=True), "report", "patient_id",
                               ("first_name", "last_name"))
        print(f"end to end (dates shifted): residual scan {res.remaining} of {res.identifiers_checked} "
              "source identifier values remain")


if __name__ == "__main__":
    main()
