"""DICOMweb pull throughput and peak memory: medmm pull vs a plain dicomweb-client retrieve loop.

    python bench/dicomweb_pull.py [--copies 4] [--repeats 3] [--workers 4] [--flat] [--image-size 512]

Starts a local Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1 and loads it with
pydicom's real test images (``tests/orthanc.py``: ``sample_files``), each stored ``--copies``
times under new UIDs and patient ids (a few hundred instances), in their own studies and series
(18 series per copy, 1 to 50 instances each; ``--flat``: every instance its own study and series).
Then, each in a fresh process, alternating, ``--repeats`` times:

  (a) plain loop: ``DICOMwebClient.search_for_instances`` (every page) and, one at a time,
      ``retrieve_instance`` (original transfer syntax) + ``save_as`` of the same files, no de-id;
  (b) ``medmm pull`` de-identified (PS3.15 Basic profile in memory, each instance verified on its
      written bytes), ``--workers`` connections on threads, and (b') on as many processes;
  (c) ``medmm pull --identified`` (no de-id), ``--workers`` connections;
  (d) ``medmm pull --pixels keep`` (de-identified headers, no OCR of burned-in text);
  (a') the plain loop with one streamed ``iter_series`` request per series instead (like for like:
       medmm retrieves a series of 2 or more instances to fetch that way).

Prints instances/s (median of the repeats, search included), the peak RSS of each run's main
process (worker processes of (b') and the OCR worker process of (b) not included), and the CPU time
per instance (median) of the client (imports and search included; worker processes included; the
main process alone in brackets: on a quiet machine the threads' GIL-bound work) and of Orthanc, which
depend far less on the machine's load than the rates do,
and the ratios (b)/(a) (goal >= 0.8) and (c)/(a) (goal >= 1.0), and each against (a'). No asserts: read
the ratios.

``--before DIR`` (a copy of an earlier medmm, e.g. ``git archive COMMIT | tar -x -C DIR``) also runs
(b), (c) and (d) with that code, in the same alternation, so that a change is measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, url, out, workers, parallel = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
start = time.perf_counter()
if mode.startswith("plain"):
    import logging
    from dicomweb_client.api import DICOMwebClient
    logging.getLogger("dicomweb_client").setLevel(logging.ERROR)
    client = DICOMwebClient(url)
    refs, offset = [], 0
    while True:
        page = client.search_for_instances(limit=500, offset=offset)
        refs += page
        offset += len(page)
        if len(page) < 500:
            break
    out.mkdir(parents=True)
    n = 0
    media = (("application/dicom", "*"),)
    if mode == "plain":
        for item in refs:
            study, series, sop = (item[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
            ds = client.retrieve_instance(study, series, sop, media_types=media)
            ds.save_as(out / f"{sop}.dcm")
            n += 1
    else:  # one streamed request per series
        for study, series in dict.fromkeys((item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]) for item in refs):
            for ds in client.iter_series(study, series, media_types=media):
                ds.save_as(out / f"{ds.SOPInstanceUID}.dcm")
                n += 1
else:
    from medmm.data.sources import parse_source
    from medmm.pacs.pull import pull
    pseudo = None
    if mode != "identified":
        from medmm.deid.pseudonyms import Pseudonymizer
        pseudo = Pseudonymizer(bytes(range(32)))
    src = parse_source("dicomweb+" + url)
    res = pull(src.server(connections=workers), {}, out, pseudo=pseudo, workers=workers, progress=False,
               echo=lambda m: None, parallel=parallel, pixels="keep" if mode == "deid-keep-pixels" else "blank")
    n = res.fetched
seconds = time.perf_counter() - start
cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
          for f in ("ru_utime", "ru_stime"))
main_cpu = sum(getattr(resource.getrusage(resource.RUSAGE_SELF), f) for f in ("ru_utime", "ru_stime"))
print(json.dumps({"n": n, "skipped": 0 if mode.startswith("plain") else len(res.skipped), "seconds": seconds,
                  "cpu": cpu, "main_cpu": main_cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def load(server, copies: int, folder: Path, flat: bool = False, size: int = 0) -> int:  # type: ignore[no-untyped-def]
    """Store every sample file ``copies`` times under new UIDs and patient ids; returns the count.

    Each copy keeps the files' own study / series structure (18 series in 11 studies per copy, one
    series of 50 instances), as a PACS holds them; ``flat`` gives every file its own study and series
    (one instance per series, the layout of the figures before 7 Dec 2026's second session). Most of
    the files (pydicom's ``dicomdirtests``) hold no pixel data, so the instances are small (median
    748 bytes); ``size`` gives each file without pixel data a ``size`` x ``size`` 12-bit image (seeded
    noise, Explicit VR Little Endian), the bytes of a CT slice at 512."""
    import pydicom
    from pydicom.uid import generate_uid

    from tests.orthanc import sample_files

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for c in range(copies):
        for i, f in enumerate(sample_files()):
            try:
                ds = pydicom.dcmread(f)
            except Exception:  # noqa: BLE001, S112 - a deliberately broken test file
                continue
            if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
                continue
            for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                unit = i if flat or kw == "SOPInstanceUID" else ""
                setattr(ds, kw, generate_uid(entropy_srcs=[f"{c}-{unit}-{kw}-{ds.get(kw)}"]))
            ds.PatientID = f"BENCH{c:02d}{i if flat else ds.get('PatientID', '')}"
            if size and "PixelData" not in ds:
                import numpy as np
                from pydicom.uid import ExplicitVRLittleEndian

                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                pixels = np.random.default_rng(c * 1000 + i).integers(0, 4096, (size, size), dtype=np.uint16)
                ds.set_pixel_data(pixels, "MONOCHROME2", 12, generate_instance_uid=False)
            if getattr(ds, "file_meta", None) is not None:
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = folder / f"{c}-{i}.dcm"
            ds.save_as(path)
            files.append(path)
    return server.upload(files)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(mode: str, url: str, out: Path, workers: int, parallel: str, tree: Path = ROOT) -> dict[str, float]:
    """One mode in a fresh process, importing medmm from ``tree`` (its working directory)."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, url, str(out), str(workers), parallel],
                          check=False, capture_output=True,
                          text=True, cwd=tree, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--flat", action="store_true", help="every instance its own study and series")
    ap.add_argument("--image-size", type=int, default=0,
                    help="give each file without pixel data an N x N 12-bit image (512: a CT slice's bytes)")
    ap.add_argument("--before", type=Path, help="an earlier medmm tree: (b) and (d) also run with its code")
    args = ap.parse_args()
    if args.before is not None and not (args.before / "medmm" / "pacs" / "pull.py").is_file():
        raise SystemExit(f"--before {args.before}: no medmm/pacs/pull.py there")
    from tests.orthanc import start_orthanc, unavailable

    reason = unavailable()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    w = args.workers
    modes = [("plain", 1, "threads"), ("deid", w, "threads"), ("deid", w, "processes"), ("identified", w, "threads"),
             ("deid-keep-pixels", w, "threads"), ("plain-series", 1, "threads")]
    names = {modes[0]: "(a) plain dicomweb-client loop, no de-id",
             modes[1]: f"(b) medmm pull, de-identified, {w} threads",
             modes[2]: f"(b') medmm pull, de-identified, {w} processes",
             modes[3]: f"(c) medmm pull --identified, {w} threads",
             modes[4]: f"(d) medmm pull --pixels keep, {w} threads",
             modes[5]: "(a') plain loop, one request per series"}
    before = {}
    if args.before is not None:  # the same modes with the earlier code
        before = {("deid-before", w, "threads"): ("deid", f"(b) before: {args.before.name}"),
                  ("identified-before", w, "threads"): ("identified", f"(c) before: {args.before.name}"),
                  ("deid-keep-pixels-before", w, "threads"): ("deid-keep-pixels", f"(d) before: {args.before.name}")}
        modes += list(before)
        names.update({m: label for m, (_, label) in before.items()})
    with tempfile.TemporaryDirectory() as tmp_s, start_orthanc(Path(tmp_s) / "orthanc") as server:
        tmp = Path(tmp_s)
        stored = load(server, args.copies, tmp / "files", flat=args.flat, size=args.image_size)
        print(f"Orthanc on 127.0.0.1 holds {stored} instances ({'one per series' if args.flat else 'in their series'})")
        results: dict[tuple[str, int, str], list[dict[str, float]]] = {m: [] for m in modes}
        for r in range(args.repeats):
            for mode, workers, parallel in modes:
                out = tmp / f"{mode}-{workers}-{parallel}-{r}"
                run = (before[(mode, workers, parallel)][0], args.before) if (mode, workers, parallel) in before \
                    else (mode, ROOT)
                server_cpu = cpu_seconds(server.process.pid)
                one = run_child(run[0], server.dicomweb, out, workers, parallel, run[1])
                one["server_cpu"] = cpu_seconds(server.process.pid) - server_cpu
                results[(mode, workers, parallel)].append(one)
        rate = {}
        for m in modes:
            runs = results[m]
            rate[m] = statistics.median(x["n"] / x["seconds"] for x in runs)
            peak = max(x["peak_rss_mb"] for x in runs)
            cpu = statistics.median(1000 * x["cpu"] / x["n"] for x in runs)
            main = statistics.median(1000 * x.get("main_cpu", x["cpu"]) / x["n"] for x in runs)
            server_cpu = statistics.median(1000 * x["server_cpu"] / x["n"] for x in runs)
            print(f"{names[m]:<48} {int(runs[0]['n']):>4} inst ({int(runs[0]['skipped'])} skipped) "
                  f"{rate[m]:7.1f} inst/s  peak RSS {peak:6.0f} MB  CPU/inst: client {cpu:5.2f} ms "
                  f"(main process {main:5.2f} ms), Orthanc {server_cpu:5.2f} ms")
        base, series = rate[modes[0]], rate[modes[5]]
        print(f"ratio de-identified (threads) / plain:   {rate[modes[1]] / base:.2f}x (goal >= 0.8)")
        print(f"ratio de-identified (processes) / plain: {rate[modes[2]] / base:.2f}x (goal >= 0.8)")
        print(f"ratio identified / plain:                {rate[modes[3]] / base:.2f}x (goal >= 1.0)")
        print(f"ratio de-identified without OCR / plain: {rate[modes[4]] / base:.2f}x")
        print("like for like, against the plain loop with one request per series (a'):")
        for m, label in ((modes[1], "de-identified (threads)"), (modes[3], "identified"),
                         (modes[4], "de-identified without OCR")):
            print(f"  {label} / plain per series: {rate[m] / series:.2f}x")
        for m in before:
            print(f"ratio {names[m]} / plain: {rate[m] / base:.2f}x")


if __name__ == "__main__":
    main()
