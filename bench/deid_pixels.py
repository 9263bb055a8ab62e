"""Burned-in pixel text: OCR recall before / after ``medmm deid``, and files per second.

    python bench/deid_pixels.py [--limit N]

Files: every ultrasound, secondary capture and multi-frame file that pydicom and pydicom-data
install (read from the installed package folders at run time; nothing is copied into the repo).
Known burned-in strings (read on the images by eye): "BAPTIST MED CTR" in US1_* and
examples_rgb_color.dcm; "5/25/2011", "2:56:22 PM", "11-05-25-142825" (the PatientID) and
"Philips Healthcare" in OBXXXX1A*.dcm. Recall before = share of those strings that RapidOCR reads
on the source pixels; after = the same on the de-identified output (must be 0).

Speed: ``medmm deid`` with ``--pixels keep`` (headers only) and ``--pixels blank`` (OCR, blank,
re-encode, second OCR pass), against ``dicom-anonymizer`` (Kitware's PS3.15 tool; headers only:
it does no pixel work at all, so its files still show the text). Wall-clock on whatever machine
runs it; print only, no assertion.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medmm.data.dicom.scan import list_files, quiet_pydicom  # noqa: E402
from medmm.deid.folder import deidentify_folder  # noqa: E402
from medmm.deid.options import DeidOptions  # noqa: E402
from medmm.deid.pixels import TextReader, display_image, frames_first, sample_frames  # noqa: E402
from medmm.deid.pseudonyms import Pseudonymizer  # noqa: E402
from medmm.demos.dicom import source_roots  # noqa: E402

KNOWN = [(re.compile(r"^US1_|^examples_rgb_color"), ["BAPTIST MED CTR"]),
         (re.compile(r"^OBXXXX1A"), ["5/25/2011", "2:56:22 PM", "11-05-25-142825", "Philips Healthcare"])]


def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", s.lower())


def _files(limit: int | None) -> list[Path]:
    import pydicom

    picked = []
    for root in source_roots():
        for rel in list_files(root):
            try:
                with quiet_pydicom():
                    ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
            except Exception:  # noqa: BLE001
                continue
            sop = str(ds.get("SOPClassUID", ""))
            try:
                frames = int(ds.get("NumberOfFrames", 1) or 1)
            except (TypeError, ValueError):
                frames = 1
            modality = str(ds.get("Modality", "")).upper()
            if modality in ("US", "SC") or sop.startswith("1.2.840.10008.5.1.4.1.1.7") or frames > 1:
                picked.append(root / rel)
    return picked[:limit] if limit else picked


def _ocr(reader: TextReader, path: Path) -> str | None:
    import numpy as np
    import pydicom

    try:
        with quiet_pydicom(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            arr, n = frames_first(ds, np.asarray(ds.pixel_array))
            return "\n".join(t for f in sample_frames(n) for _, t in reader.read(display_image(ds, arr[f])))
    except Exception:  # noqa: BLE001 - undecodable here: not counted
        return None


def _expected(name: str) -> list[str]:
    return next((strings for rx, strings in KNOWN if rx.search(name)), [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="first N files only")
    args = ap.parse_args()
    files = _files(args.limit)
    reader = TextReader()
    pseudo = Pseudonymizer(bytes(range(32)))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        names: dict[str, str] = {}  # output file name (medmm deid's keyed token) -> source name
        for i, f in enumerate(files):
            dest = src / f"{i:03d}_{f.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
            names[f"{pseudo.token(dest.name, 'file', 20)}.dcm"] = f.name
        n = len(files)
        print(f"{n} US / SC / multi-frame files from pydicom + pydicom-data")

        before_found = before_total = 0
        for f in files:
            want = _expected(f.name)
            if not want:
                continue
            text = _norm(_ocr(reader, f) or "")
            before_total += len(want)
            before_found += sum(_norm(w) in text for w in want)

        timings = {}
        results = {}
        for mode in ("keep", "blank"):
            out = Path(tmp) / f"out-{mode}"
            t0 = time.perf_counter()
            res = deidentify_folder(src, out, pseudo, DeidOptions(), pixels=mode)
            timings[mode] = time.perf_counter() - t0
            results[mode] = res
        from dicomanonymizer import anonymize

        out = Path(tmp) / "out-dicom-anonymizer"
        out.mkdir()
        t0 = time.perf_counter()
        done = 0
        for f in sorted(src.iterdir()):
            try:
                with quiet_pydicom(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    anonymize(str(f), str(out / f.name), {}, True)
                done += 1
            except Exception:  # noqa: BLE001 - its failures are counted, not fatal
                pass
        timings["dicom-anonymizer"] = time.perf_counter() - t0

        after_found = after_total = 0
        for p in (Path(tmp) / "out-blank").rglob("*.dcm"):
            want = _expected(names.get(p.name, ""))
            if want:
                text = _norm(_ocr(reader, p) or "")
                after_total += len(want)
                after_found += sum(_norm(w) in text for w in want)
        peer_found = peer_total = 0
        for p in out.iterdir():
            want = _expected(p.name.split("_", 1)[1])
            if want:
                text = _norm(_ocr(reader, p) or "")
                peer_total += len(want)
                peer_found += sum(_norm(w) in text for w in want)

    print(f"OCR recall of the known burned-in strings, sources:             {before_found}/{before_total}")
    print(f"OCR recall on medmm deid --pixels blank output:                  {after_found}/{after_total}")
    print(f"OCR recall on dicom-anonymizer output (headers only, no pixels): {peer_found}/{peer_total}")
    blank = results["blank"]
    c = blank.pixel_counts
    from collections import Counter

    why = Counter(r.split(":")[0] for _, r in blank.skipped)
    print("skipped with --pixels blank: " + (", ".join(f"{n} {k}" for k, n in sorted(why.items())) or "none"))
    print(f"pixel pass: {c['scanned']} scanned, {c['blanked']} blanked, {c['no text']} without text, "
          f"{c['skipped']} skipped; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(c.items()) if k.startswith("re-")))
    for mode, res in results.items():
        print(f"medmm deid --pixels {mode:5s}: {res.written:3d} written, {len(res.skipped):3d} skipped, "
              f"{timings[mode]:7.1f} s, {n / timings[mode]:6.2f} files/s")
    print(f"dicom-anonymizer (headers only): {done:3d} written, {n - done:3d} failed, "
          f"{timings['dicom-anonymizer']:7.1f} s, {n / timings['dicom-anonymizer']:6.2f} files/s")


if __name__ == "__main__":
    main()
