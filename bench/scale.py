"""Cost against data size (#30): each part at two sizes 10x apart, printed as ratios.

    python bench/scale.py                       # split 1M/10M, DICOM 2k/20k files, tabular-risk 100k/1M, text-cls 10k/100k
    python bench/scale.py --parts split,dicom   # some parts only
    python bench/scale.py --tiny                # seconds; the fast-tier test runs this and asserts on counts

Goal per part: time ratio <= 1.2x the size ratio, memory above the libraries <= the size ratio,
predict memory flat. Timings on a shared machine are noisy: read the ratios, never assert them.
``--tiny`` reports *counts of work* that a return of anything quadratic would change:

- split: function calls (Python and C, ``sys.setprofile``) made by ``group_split``; a scan of the
  rows per group makes them grow with the table, the sort-based split does not;
- dicom: headers read on a second scan of the same folder with the same cache (0 expected), and the
  function calls of a cached ingest (fingerprint, header index, pixel cache): about 10x for 10x files,
  never per pair of files;
- predict: the largest number of table rows held at once by ``medmm predict`` (one chunk).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


# ------------------------------------------------------------------------------ helpers
def count_calls(fn: Callable[[], Any]) -> int:
    """Function calls (Python and C) made while ``fn`` runs: a machine-independent count of work."""
    calls = 0

    def prof(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def timed(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds ``fn`` takes by ``clock`` (wall time; ``time.process_time`` for this process's CPU time)."""
    start = clock()
    fn()
    return clock() - start


def peak_rss_of(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd`` in a fresh wrapper process: (seconds, peak RSS in MB of the child, the process)."""
    wrapper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(json.dumps({'s': time.perf_counter() - t, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
               " 'rc': p.returncode, 'err': p.stderr[-3000:]}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["s"], out["rss"] / 1024, subprocess.CompletedProcess(cmd, out["rc"], "", out["err"])


def ratio_line(name: str, small: int, large: int, t_small: float, t_large: float, unit: str = "rows") -> str:
    size = large / small
    r = t_large / max(t_small, 1e-9)
    verdict = "ok" if r <= 1.2 * size else "MISSES the goal"
    return (f"{name}: {small:,} -> {large:,} {unit} ({size:.0f}x): {t_small:.2f} s -> {t_large:.2f} s, "
            f"time ratio {r:.1f}x (goal <= {1.2 * size:.0f}x: {verdict})")


# ------------------------------------------------------------------------------ split
def split_work(n: int) -> int:
    """Calls made by the default split (every row its own group, binary labels) of ``n`` rows."""
    from medmm.data.splits import group_split

    labels = np.arange(n) % 2
    return count_calls(lambda: group_split(n, labels=labels))


def bench_split(small: int, tiny: bool) -> dict[str, Any]:
    from medmm.data.splits import group_split

    large = small * 10
    split_work(small)  # first call: lazy imports and caches, not the split's own work
    out: dict[str, Any] = {"calls": [split_work(small), split_work(large)]}
    if not tiny:
        rng = np.random.default_rng(0)
        times, cpu = [], []
        for n in (small, large):
            labels = rng.integers(0, 2, n)
            times.append(min(timed(lambda n=n, labels=labels: group_split(n, labels=labels)) for _ in range(3)))
            cpu.append(min(timed(lambda n=n, labels=labels: group_split(n, labels=labels), time.process_time)
                           for _ in range(3)))
        out["seconds"], out["cpu_seconds"] = times, cpu
        print(ratio_line("split (no group column, binary labels; best of 3)", small, large, *times))
        print(ratio_line("split, CPU time of this process (what other jobs' load distorts least; best of 3)",
                         small, large, *cpu))
    print(f"split: function calls {out['calls'][0]} -> {out['calls'][1]} for {small:,} -> {large:,} rows")
    return out


# ------------------------------------------------------------------------------ DICOM ingest
SMALL_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm")


UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root; then 1. / 2. / 3. (study / series / SOP) and 10 digits
PLACEHOLDERS = (b"@@@@@@@", b"##########", b"$$$$$$$$$$", b"%%%%%%%%%%")  # patient, study, series, SOP


def dicom_templates() -> list[bytes]:
    """pydicom's CT / MR test files (explicit, implicit, big-endian) as bytes, with fixed-width placeholders
    for the patient id / name and the study, series and SOP instance UIDs (:func:`dicom_folder` fills them)."""
    import io
    import warnings

    import pydicom

    from medmm.demos.dicom import source_roots

    src = source_roots()[0]
    out = []
    for name in SMALL_FILES:
        ds = pydicom.dcmread(src / name)
        patient, study, series, sop = (p.decode() for p in PLACEHOLDERS)
        with warnings.catch_warnings():  # the placeholders are not valid UIDs until filled
            warnings.simplefilter("ignore")
            ds.PatientID, ds.PatientName = f"SCALE{patient}", f"Scale^{patient}"
            ds.StudyInstanceUID = f"{UID_ROOT}1.{study}"
            ds.SeriesInstanceUID = f"{UID_ROOT}2.{series}"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}3.{sop}"
            buf = io.BytesIO()
            ds.save_as(buf)
        raw = buf.getvalue()
        if [raw.count(p) for p in PLACEHOLDERS] != [2, 1, 1, 2]:  # id + name, study, series, SOP in meta + body
            raise RuntimeError(f"{name}: a placeholder also occurs elsewhere in the file")
        out.append(raw)
    return out


def dicom_folder(root: Path, n: int) -> Path:
    """``n`` small real DICOM files: pydicom's CT / MR test files (explicit, implicit and big-endian) with new
    patient ids and new study / series / SOP instance UIDs (20 instances per patient and study, 10 per
    series), labelled by their sub-folder (``ct`` / ``mr``: what the pixels show, so a model can learn it),
    100 files per leaf folder. The values are filled into fixed-width fields of the files' bytes (same
    lengths, so every element's length stays valid): about 0.2 ms per file instead of a pydicom write."""
    templates = dicom_templates()
    for i in range(n):
        k, patient = i % len(templates), i // 20
        raw = templates[k]
        for placeholder, value in zip(PLACEHOLDERS, (b"%07d" % patient, b"1%09d" % patient, b"1%09d" % (i // 10),
                                                     b"1%09d" % i)):
            raw = raw.replace(placeholder, value)  # UID components: no leading zero
        leaf = root / ("ct" if SMALL_FILES[k].startswith("CT") else "mr") / f"s{i // 100:05d}"
        leaf.mkdir(parents=True, exist_ok=True)
        (leaf / f"{i:07d}.dcm").write_bytes(raw)
    return root


FOLDERS_VERSION = 1  # bump when dicom_folder writes other files


def cached_dicom_folder(n: int) -> Path:
    """:func:`dicom_folder` of ``n`` files, kept under the temp dir between bench runs
    (``medmm-scale-dicom/v1-N``; a ``.done`` file beside it says it is whole). Delete the folder to rebuild."""
    base = Path(tempfile.gettempdir()) / "medmm-scale-dicom"
    root, done = base / f"v{FOLDERS_VERSION}-{n}", base / f"v{FOLDERS_VERSION}-{n}.done"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        dicom_folder(root, n)
        done.write_text(str(n))
        print(f"dicom: wrote {n:,} files in {time.perf_counter() - start:.1f} s -> {root}", flush=True)
    return root


def ingest(root: Path, cache: Path, workers: int) -> tuple[float, dict[str, int]]:
    """What an image run does before training: fingerprint, header scan, pixel cache."""
    from medmm.data.dicom.cache import PixelCache
    from medmm.data.dicom.pixels import PixelConfig
    from medmm.data.dicom.scan import image_items, scan_folder
    from medmm.fingerprint import fingerprint

    stats: dict[str, int] = {}
    start = time.perf_counter()
    fingerprint(root)
    records, _ = scan_folder(root, workers=workers, index_dir=cache, stats=stats)
    PixelCache.build(root, image_items(records), PixelConfig(size=64, channels=1), cache, workers=workers)
    return time.perf_counter() - start, stats


def image_cls_data(root: Path, cache: Path, run_dir: Path, workers: int) -> dict[str, Any]:
    """The ingest of ``medmm run image-cls`` with ``data.cache_dir``: the run's data fingerprint, then the
    task's own ``build_data`` (header scan, pixel cache, folder labels, patient split), seconds per phase."""
    from medmm.fingerprint import fingerprint
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config
    from medmm.task import Task

    spec = get_registry().get("task", "image-cls")
    sets = [f"data.cache_dir={cache}", "data.size=64", "data.channels=1", "model.backbone=test_resnet",
            "model.mode=finetune", f"engine.num_workers={workers}", "engine.device=cpu"]
    run_dir.mkdir(parents=True, exist_ok=True)
    import sklearn.model_selection  # noqa: F401 - the libraries' import time is not the ingest's
    import timm  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401

    task = spec.load()(resolved_config(spec, None, sets), run_dir)
    module = sys.modules[type(task).__module__]
    phases: dict[str, float] = {}

    def timing(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
        return timed_call

    stats: dict[str, int] = {}
    scan = module.scan_folder
    module.scan_folder = timing("header scan", lambda *a, **k: scan(*a, **{**k, "stats": stats}))
    build = module.PixelCache.build
    originals = {"labels_from_folders": module.labels_from_folders}
    module.labels_from_folders = timing("folder labels", module.labels_from_folders)
    split = Task.assign_splits
    try:
        module.PixelCache.build = timing("pixel cache", build)
        Task.assign_splits = timing("patient split", split)  # type: ignore[method-assign]
        start = time.perf_counter()
        fingerprint(root)
        phases["fingerprint"] = time.perf_counter() - start
        bundle = task.build_data(root)
        phases["whole ingest"] = time.perf_counter() - start
    finally:
        module.scan_folder, module.PixelCache.build, Task.assign_splits = scan, build, split  # type: ignore[method-assign]
        module.labels_from_folders = originals["labels_from_folders"]
    phases["rest of build_data"] = phases["whole ingest"] - sum(v for k, v in phases.items() if k != "whole ingest")
    phases["files (fingerprint, headers, pixels)"] = sum(phases[k] for k in ("fingerprint", "header scan", "pixel cache"))
    sizes = [len(s.units) for s in (bundle.train, bundle.val, bundle.test) if s is not None]
    return {"phases": phases, "headers_read": stats.get("headers_read", 0), "images": sum(sizes)}


def _dicom_child(root: str, cache: str, run_dir: str, workers: str) -> None:
    """``--dicom-child``: one ingest in a fresh process; prints its phases and peak RSS as JSON."""
    import resource

    out = image_cls_data(Path(root), Path(cache), Path(run_dir), int(workers))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({**out, "rss_mb": own, "worker_rss_mb": kids}))


def dicom_child(root: Path, cache: Path, run_dir: Path, workers: int) -> dict[str, Any]:
    """:func:`image_cls_data` in a fresh process (its own peak RSS)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--dicom-child", str(root), str(cache),
                           str(run_dir), str(workers)], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_dicom(sizes: tuple[int, int], tiny: bool, workers: int) -> dict[str, Any]:
    """Folders of ``sizes`` files: the image-cls ingest twice with one cache (fresh processes, peak RSS),
    time and memory ratios and phase shares. ``tiny``: the in-process ingest, counts of work only."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medmm-scale-") as tmp:
        for n in sizes:
            need = n * 60_000 * 2  # about 40 KB per file and its cached pixels, with room
            free = shutil.disk_usage(tmp).free
            if free < need:
                print(f"dicom {n:,} files: skipped, {free / 2**30:.1f} GB free in {tmp} (needs {need / 2**30:.1f})")
                continue
            start = time.perf_counter()
            root = dicom_folder(Path(tmp) / f"d{n}", n) if tiny else cached_dicom_folder(n)
            made = time.perf_counter() - start
            cache = Path(tmp) / f"cache{n}"
            if tiny:
                first, s1 = ingest(root, cache, workers)
                second, s2 = ingest(root, cache, workers)
                calls = count_calls(lambda root=root, cache=cache: ingest(root, cache, workers))  # a third, cached
                out[n] = {"first": first, "second": second, "headers_read": [s1["headers_read"], s2["headers_read"]],
                          "cached_calls": calls}
                continue
            runs = [dicom_child(root, cache, Path(tmp) / f"run{n}-{k}", workers) for k in range(2)]
            first, second = (r["phases"]["whole ingest"] for r in runs)
            out[n] = {"first": first, "second": second, "headers_read": [r["headers_read"] for r in runs],
                      "rss_mb": [r["rss_mb"] for r in runs], "phases": [r["phases"] for r in runs]}
            print(f"dicom {n:,} files (ready in {made:.1f} s): image-cls ingest {first:.2f} s, "
                  f"{runs[0]['headers_read']:,} headers read, peak RSS {runs[0]['rss_mb']:.0f} MB; with the same cache "
                  f"{second:.2f} s, {runs[1]['headers_read']:,} headers read, peak RSS {runs[1]['rss_mb']:.0f} MB: "
                  f"{first / max(second, 1e-9):.1f}x faster")
            for label, r in zip(("first", "cached"), runs):
                ph = r["phases"]
                total = ph["whole ingest"] or 1.0
                print(f"  {label}: " + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in ph.items()
                                                   if k not in ("whole ingest", "files (fingerprint, headers, pixels)")))
            files = [r["phases"]["files (fingerprint, headers, pixels)"] for r in runs]
            print(f"  the files alone (fingerprint, headers, pixels): {files[0]:.2f} s, cached {files[1]:.2f} s: "
                  f"{files[0] / max(files[1], 1e-9):.0f}x faster")
            shutil.rmtree(cache)
    if tiny:
        for n, got in out.items():
            print(f"dicom ingest, {n:,} files: headers read {got['headers_read'][0]} then {got['headers_read'][1]}; "
                  f"function calls of a cached ingest {got['cached_calls']:,}")
    elif len(out) == 2:
        a, b = sizes
        print(ratio_line("dicom image-cls ingest, first", a, b, out[a]["first"], out[b]["first"], "files"))
        print(ratio_line("dicom image-cls ingest, cached", a, b, out[a]["second"], out[b]["second"], "files"))
        for k in range(2):
            for phase in out[a]["phases"][k]:
                x, y = out[a]["phases"][k][phase], out[b]["phases"][k][phase]
                print(f"  {('first', 'cached')[k]} {phase}: {x:.2f} -> {y:.2f} s ({y / max(x, 1e-9):.1f}x)")
        print(f"dicom peak RSS {out[a]['rss_mb'][0]:.0f} -> {out[b]['rss_mb'][0]:.0f} MB (first ingest), "
              f"{out[a]['rss_mb'][1]:.0f} -> {out[b]['rss_mb'][1]:.0f} MB (cached)")
    return out


# ------------------------------------------------------------------------------ image-cls end to end
# A cheap CPU recipe, so 20,000 files train in minutes on 2 cores: timm's 0.4M-parameter test ResNet from
# random init, fine-tuned for one epoch on 32-px grey images (augmentation, the classic baseline on
# 32-px pixels, the bootstrap CIs and the report as a user gets them).
IMAGE_RECIPE = ("model.backbone=test_resnet", "model.mode=finetune", "data.size=32", "data.channels=1",
                "engine.epochs=1", "engine.device=cpu")


@contextlib.contextmanager
def timed_image_steps(phases: dict[str, float], stats: dict[str, int], raised: dict[str, float]) -> Any:
    """Time the steps of ``medmm run image-cls`` / ``medmm predict`` in this process: the data fingerprint,
    header scan (its counts into ``stats``), pixel cache, folder labels, patient split, training, the
    evaluation on the held-out splits, the baseline (its pixels apart), the model's forward passes over a
    split (``Trainer.evaluate``) and the predictions CSV. ``raised``: MB by which each step raised this
    process's peak RSS (so the step that set the peak is the last one with a non-zero figure)."""
    import resource

    from medmm import classic, evaluation, predictions
    from medmm import fingerprint as fingerprints
    from medmm.engine import Trainer
    from medmm.plugins import get_registry
    from medmm.task import Task

    cls = get_registry().get("task", "image-cls").load()
    module = sys.modules[cls.__module__]

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def timing(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start, peak = time.perf_counter(), peak_mb()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
                raised[name] = raised.get(name, 0.0) + peak_mb() - peak
        return timed_call

    scan = module.scan_folder
    patches = [(fingerprints, "fingerprint", "data fingerprint"), (module.PixelCache, "build", "pixel cache"),
               (module, "labels_from_folders", "folder labels"), (Task, "assign_splits", "patient split"),
               (Trainer, "fit", "train"), (evaluation, "training_evaluation", "held-out evaluation"),
               (classic, "prefit_baseline", "baseline fit (before training)"),
               (classic, "baseline_for_run", "baseline (finish)"), (cls, "baseline_inputs", "baseline pixels"),
               (Trainer, "evaluate", "forward passes (evaluate)"), (predictions, "write_predictions", "predictions CSV")]
    saved = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in patches]
    try:
        module.scan_folder = timing("header scan", lambda *a, **k: scan(*a, **{**k, "stats": stats}))
        for owner, attr, name in patches:
            setattr(owner, attr, timing(name, getattr(owner, attr)))
        yield
    finally:
        module.scan_folder = scan
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def _image_child(out_json: str, *argv: str) -> None:
    """``--image-child OUT.json ARGS``: ``medmm ARGS`` in this fresh process under :func:`timed_image_steps`;
    writes the steps' seconds, the header counts, the exit code and the peak RSS (this process, its workers)."""
    import resource

    from medmm.cli import main as medmm_main

    phases: dict[str, float] = {}
    stats: dict[str, int] = {}
    raised: dict[str, float] = {}
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the libraries this process imported
    with timed_image_steps(phases, stats, raised):
        rc = medmm_main(list(argv))
    Path(out_json).write_text(json.dumps({
        "rc": rc, "seconds": time.perf_counter() - start, "steps": phases, "stats": stats,
        "raised_mb": {k: round(v, 1) for k, v in raised.items() if v >= 0.5}, "rss_before_mb": before,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def image_child(tmp: Path, *argv: str) -> dict[str, Any]:
    """:func:`_image_child` in a fresh process: its JSON, plus ``wall`` (seconds with start-up and imports)."""
    out_json = tmp / f"child-{time.monotonic_ns()}.json"
    start = time.perf_counter()
    # One intra-op thread: on a shared 2-core VM two OpenMP threads spin against the other jobs (test_resnet,
    # batch 32 of 32 px, load 10: 3.16 s per training step with 2 threads, 0.078 s with 1).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--image-child", str(out_json), *argv],
                          capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - start
    if proc.returncode or not out_json.exists():
        raise RuntimeError(f"medmm {' '.join(argv[:2])} failed: {proc.stderr[-2000:]}")
    got = json.loads(out_json.read_text())
    if got["rc"]:
        raise RuntimeError(f"medmm {' '.join(argv[:2])} exited {got['rc']}: {proc.stderr[-2000:]}")
    return {**got, "wall": wall}


DATA_STEPS = ("header scan", "pixel cache", "folder labels", "patient split")


def _run_phases(got: dict[str, Any]) -> dict[str, float]:
    """The runner's phases (``summary.json``), "data" cut into the task's steps; the fingerprint before them."""
    runner = dict(got["summary"].get("phase_seconds", {}))
    steps = got["steps"]
    out = {"data fingerprint": steps.get("data fingerprint", 0.0)}
    data = runner.pop("data (read, split, preprocess)", 0.0)
    for k in DATA_STEPS:
        out[f"data: {k}"] = steps.get(k, 0.0)
    out["data: rest"] = data - sum(steps.get(k, 0.0) for k in DATA_STEPS)
    for k, v in runner.items():
        out[k] = v
    return out


def _predict_phases(got: dict[str, Any]) -> dict[str, float]:
    steps = got["steps"]
    out = {k: steps.get(k, 0.0) for k in ("header scan", "pixel cache", "folder labels", "forward passes (evaluate)",
                                          "predictions CSV")}
    out["rest (start-up, imports, model, checks)"] = got["wall"] - sum(out.values())
    return out


def _shares(phases: dict[str, float]) -> str:
    total = sum(phases.values()) or 1.0
    return ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in phases.items())


def image_task_work(root: Path, tmp: Path) -> dict[str, int]:
    """Function calls of the image-cls steps around the model, on a folder whose pixel cache and header index
    are warm: ``build_data`` (cached ingest, folder labels, patient split, units, datasets; the model that
    ``model.mode`` needs was built by a first call on the same task), the baseline's pixels of the training split,
    and ``build_predict_data``. They grow with the files, never per pair of files."""
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    spec = get_registry().get("task", "image-cls")
    sets = [f"data.cache_dir={tmp / 'cache'}", "data.size=16", "data.channels=1", "model.backbone=test_resnet",
            "model.mode=finetune", "engine.num_workers=0", "engine.device=cpu"]
    (tmp / "run").mkdir(parents=True, exist_ok=True)
    task = spec.load()(resolved_config(spec, None, sets), tmp / "run")
    task.build_data(root)  # decodes the pixels, writes the header index, builds the model: not counted
    out = {"build_data": count_calls(lambda: task.build_data(root))}
    np.asarray(task.baseline_inputs("train").image)  # its first call imports the baseline's module: not counted
    # the pixels are a lazy row source: every row of it read (what the baseline's fit and predict read in blocks)
    out["baseline_pixels"] = count_calls(lambda: np.asarray(task.baseline_inputs("train").image))
    other = spec.load()(resolved_config(spec, None, sets), tmp / "run")
    other.label_names, other.problem = task.label_names, task.problem
    out["build_predict_data"] = count_calls(lambda: other.build_predict_data(root))
    return out


def bench_image_work(sizes: tuple[int, ...]) -> dict[str, Any]:
    """``--tiny``: :func:`image_task_work` on folders of ``sizes`` files; the calls per added file between
    consecutive sizes (the fixed part cancels), which a loop over pairs of files would make grow with the size."""
    out: dict[str, Any] = {"calls": {}, "per_added_file": {}}
    with tempfile.TemporaryDirectory(prefix="medmm-scale-work-") as tmp_s:
        for n in sizes:
            tmp = Path(tmp_s) / f"n{n}"
            out["calls"][n] = image_task_work(dicom_folder(tmp / "data", n), tmp)
    for a, b in itertools.pairwise(sizes):
        out["per_added_file"][b] = {k: (out["calls"][b][k] - out["calls"][a][k]) / (b - a) for k in out["calls"][a]}
    for n, got in out["calls"].items():
        print(f"image-cls {n:,} files, function calls: " + ", ".join(f"{k} {v:,}" for k, v in got.items())
              + ("" if n not in out["per_added_file"] else "; per added file: "
                 + ", ".join(f"{k} {v:.0f}" for k, v in out["per_added_file"][n].items())))
    return out


def bench_image_run(sizes: tuple[int, int], floor: int, workers: int) -> dict[str, Any]:
    """``medmm run image-cls`` (:data:`IMAGE_RECIPE`, a fresh ``data.cache_dir``) and ``medmm predict`` of the
    same folder (a fresh ``--cache-dir``: every header and pixel read again) at ``floor`` files (the libraries)
    and ``sizes``, each in a fresh process: seconds, peak RSS and the share of each phase."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medmm-scale-image-") as tmp_s:
        tmp = Path(tmp_s)
        for n in (floor, *sizes):
            root = cached_dicom_folder(n)
            run = tmp / f"run{n}"
            sets = _sets(*IMAGE_RECIPE, f"engine.num_workers={workers}", f"data.cache_dir={tmp / f'cache{n}'}")
            got = image_child(tmp, "run", "image-cls", "--data", str(root), "--out", str(run), *sets, "--quiet")
            got["summary"] = json.loads((run / "summary.json").read_text())
            pred = image_child(tmp, "predict", str(run), "--data", str(root), "--out", str(tmp / f"pred{n}.csv"),
                               "--cache-dir", str(tmp / f"pcache{n}"))
            rows = sum(1 for _ in (tmp / f"pred{n}.csv").open()) - 1
            out[n] = {"run": got, "predict": pred, "run_phases": _run_phases(got), "predict_phases": _predict_phases(pred),
                      "predicted_rows": rows}
            metric = got["summary"].get("metrics", {}).get("auroc")
            print(f"image-cls {n:,} files: run {got['wall']:.1f} s (test AUROC {metric}), peak RSS {got['rss_mb']:.0f} MB "
                  f"(workers {got['worker_rss_mb']:.0f} MB); predict {pred['wall']:.1f} s, {rows:,} rows, peak RSS "
                  f"{pred['rss_mb']:.0f} MB (workers {pred['worker_rss_mb']:.0f} MB)", flush=True)
            print(f"  run phases: {_shares(out[n]['run_phases'])}")
            memory = got["summary"].get("memory_mb", {})
            print(f"  run memory (summary.json): {memory}; peak RSS raised (MB) by: {got['raised_mb']}")
            print(f"  predict phases: {_shares(out[n]['predict_phases'])}")
            print(f"  predict peak RSS raised (MB) by: {pred['raised_mb']}", flush=True)
            shutil.rmtree(tmp / f"cache{n}", ignore_errors=True)
            shutil.rmtree(tmp / f"pcache{n}", ignore_errors=True)
    a, b = sizes
    if a in out and b in out:
        for what in ("run", "predict"):
            print(ratio_line(f"image-cls {what} (wall, with start-up)", a, b, out[a][what]["wall"], out[b][what]["wall"],
                             "files"))
            above = [max(out[n][what]["rss_mb"] - out[floor][what]["rss_mb"], 0.0) for n in sizes]
            out[f"{what}_above_mb"] = above
            times = (f"{above[1] / above[0]:.1f}x for {b // a}x files" if above[0] >= 1.0 else  # a ratio of noise
                     f"no ratio: {a:,} files peak at or below the floor ({out[a][what]['rss_mb']:.0f} MB)")
            print(f"image-cls {what} peak RSS above {floor:,} files' {out[floor][what]['rss_mb']:.0f} MB: "
                  f"{above[0]:.0f} -> {above[1]:.0f} MB ({times}; {(above[1] - above[0]) * 2**20 / (b - a):.0f} B per "
                  f"added file)")
        for what in ("run_phases", "predict_phases"):
            for k in out[a][what]:
                x, y = out[a][what][k], out[b][what][k]
                print(f"  {what.split('_')[0]} {k}: {x:.2f} -> {y:.2f} s ({y / max(x, 1e-9):.1f}x)")
    return out


# ------------------------------------------------------------------------------ tables (tabular-risk)
def table(path: Path, n: int, cols: int = 35, seed: int = 0, label: bool = True) -> Path:
    """A synthetic patient table: ``cols`` numeric + categorical features, a binary target (unless not ``label``)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cols - 5)).astype(np.float32)
    df = pd.DataFrame(x, columns=[f"x{i}" for i in range(cols - 5)])
    for j in range(4):
        df[f"c{j}"] = rng.choice(["a", "b", "c", "d", "e"], n)
    logit = x[:, 0] - 0.5 * x[:, 1] + 0.3 * (df["c0"] == "a")
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    (df if label else df.drop(columns=["y"])).to_csv(path, index=False)
    return path


def _table_run(tmp: Path, n: int, epochs: int) -> dict[str, float] | None:
    data = table(tmp / f"t{n}.csv", n)
    run = tmp / f"run{n}"
    sets = ["data.target=y", f"engine.epochs={epochs}", "engine.batch_size=1024", "engine.bootstrap=0",
            "model.backbone=linear", "engine.device=cpu"]
    cmd = [sys.executable, "-m", "medmm", "run", "tabular-risk", "--data", str(data), "--out", str(run),
           *[a for s in sets for a in ("--set", s)]]
    secs, rss, proc = peak_rss_of(cmd)
    if proc.returncode:
        print(f"tabular-risk {n:,} rows failed: {proc.stderr[-800:]}")
        return None
    summary = json.loads((run / "summary.json").read_text())
    phases, memory = summary.get("phase_seconds", {}), summary.get("memory_mb", {})
    if phases:  # the runner's own seconds per phase
        total = sum(phases.values()) or 1.0
        print(f"tabular-risk {n:,} rows, share of each phase: "
              + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in phases.items()))
    psecs, prss, pproc = peak_rss_of([sys.executable, "-m", "medmm", "predict", str(run), "--data", str(data),
                                      "--out", str(tmp / f"p{n}.csv")])
    return {"train_s": secs, "train_mb": rss, "predict_s": psecs, "predict_mb": prss if pproc.returncode == 0 else math.nan,
            "phases": phases, "memory": memory}


def _in_process(got: dict[str, Any], n: int) -> str:
    """The run's own memory figures (summary.json ``memory_mb``): peak and data phase above the RSS it had
    before reading a row (the libraries, measured in the same process), in MB and bytes per row."""
    m = got.get("memory") or {}
    if not m.get("before_data") or not m.get("peak"):
        return ""
    got["peak_above_start"] = m["peak"] - m["before_data"]
    got["data_above_start"] = m["peak_after_data"] - m["before_data"]
    return (f"; in the run's own process: {m['before_data']:.0f} MB before the data, peak "
            f"{got['peak_above_start']:.0f} MB above it ({got['peak_above_start'] * 2**20 / n:.0f} B/row), "
            f"data phase {got['data_above_start']:.0f} MB above it ({got['data_above_start'] * 2**20 / n:.0f} B/row)")


def bench_table(sizes: tuple[int, int], epochs: int) -> dict[str, Any]:
    """Peak RSS above the libraries: the same run on 1,000 rows is the floor subtracted."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medmm-scale-") as tmp:
        floor = _table_run(Path(tmp), 1000, epochs)
        if floor is None:
            return out
        print(f"libraries (1,000 rows): run peak RSS {floor['train_mb']:.0f} MB, predict {floor['predict_mb']:.0f} MB"
              + _in_process(floor, 1000))
        for n in sizes:
            got = _table_run(Path(tmp), n, epochs)
            if got is None:
                continue
            out[n] = got
            above = {k: max(got[k] - floor[k], 0.0) for k in ("train_mb", "predict_mb")}
            got.update(train_above=above["train_mb"], predict_above=above["predict_mb"])
            rows_own = _in_process(got, n) and "data_above_start" in floor
            if rows_own:  # the data phase's growth beyond the 1,000-row run's (its imports): the rows' own memory
                got["data_rows"] = max(got["data_above_start"] - floor["data_above_start"], 0.0)
            print(f"tabular-risk {n:,} rows x 35 cols: run {got['train_s']:.1f} s, peak RSS {got['train_mb']:.0f} MB "
                  f"({above['train_mb'] * 2**20 / n:.0f} B/row above the libraries); predict {got['predict_s']:.1f} s, "
                  f"peak RSS {got['predict_mb']:.0f} MB ({above['predict_mb'] * 2**20 / n:.0f} B/row above)"
                  + _in_process(got, n)
                  + (f"; data phase beyond the 1,000-row run's: {got['data_rows']:.0f} MB "
                     f"({got['data_rows'] * 2**20 / n:.0f} B/row)" if rows_own else ""))
    if len(out) == 2:
        a, b = sizes
        print(ratio_line("tabular-risk run", a, b, out[a]["train_s"], out[b]["train_s"]))
        def ratio(k: str) -> float:
            return out[b][k] / max(out[a][k], 1e-9)

        print(f"tabular-risk peak RSS above the libraries, ratio: run {ratio('train_above'):.1f}x, predict "
              f"{ratio('predict_above'):.1f}x (size ratio {b / a:.0f}x; goal: run <= size ratio, predict flat)")
        if "peak_above_start" in out[a] and "peak_above_start" in out[b]:  # the floor measured in the same process
            print(f"tabular-risk run memory above the RSS before the data (same process), ratio: peak "
                  f"{ratio('peak_above_start'):.1f}x, data phase {ratio('data_above_start'):.1f}x (size ratio "
                  f"{b / a:.0f}x); marginal {(out[b]['train_mb'] - out[a]['train_mb']) * 2**20 / (b - a):.0f} B per "
                  f"added row of peak RSS")
        if "data_rows" in out[a] and "data_rows" in out[b]:
            print(f"tabular-risk data phase beyond the 1,000-row run's (same-process floors), ratio "
                  f"{ratio('data_rows'):.1f}x (size ratio {b / a:.0f}x; goal <= size ratio)")
    return out


# ------------------------------------------------------------------------------ reports (text-cls)
def bench_predict(sizes: tuple[int, int]) -> dict[str, Any]:
    """``medmm predict`` of one 1,000-row tabular-risk run on tables of 1,000 (the floor: the libraries),
    ``sizes[0]`` and ``sizes[1]`` rows: peak RSS above the floor per row (streaming: flat in the rows)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        run = tmp / "run"
        sets = ["data.target=y", "engine.epochs=1", "engine.bootstrap=0", "engine.baseline=none",
                "model.backbone=linear", "engine.device=cpu"]
        proc = subprocess.run([sys.executable, "-m", "medmm", "run", "tabular-risk", "--data",
                               str(table(tmp / "t1000.csv", 1000)), "--out", str(run),
                               *[a for s in sets for a in ("--set", s)]], check=False, capture_output=True, text=True)
        if proc.returncode:
            print(f"tabular-risk 1,000-row run failed: {proc.stderr[-800:]}")
            return out
        for label in (False, True):  # unlabelled: predictions only; labelled: + metrics over every row
            kind = "labelled" if label else "unlabelled"
            for n in (1000, *sizes):
                data = table(tmp / f"p{n}.csv", n, label=label)
                secs, rss, pproc = peak_rss_of([sys.executable, "-m", "medmm", "predict", str(run), "--data",
                                                str(data), "--out", str(tmp / f"out{n}{kind}.csv")])
                data.unlink()
                if pproc.returncode:
                    print(f"predict {n:,} rows failed: {pproc.stderr[-800:]}")
                    return out
                got = out.setdefault(kind, {})
                got[n] = {"predict_s": secs, "predict_mb": rss, "predict_above": max(rss - got[1000]["predict_mb"]
                                                                                     if n != 1000 else 0.0, 0.0)}
                above = got[n]["predict_above"]
                print(f"predict {kind} {n:,} rows x 35 cols: {secs:.1f} s, peak RSS {rss:.0f} MB"
                      + ("" if n == 1000 else f" ({above:.0f} MB above 1,000 rows: {above * 2**20 / n:.0f} B/row)"))
    return out


def _medmm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medmm", *args], check=False, capture_output=True, text=True)


def _sets(*pairs: str) -> list[str]:
    return [a for s in pairs for a in ("--set", s)]


def _predict_rss(model: Path, make: Callable[[int], Path], sizes: tuple[int, ...], name: str,
                 unit: str) -> dict[int, dict[str, float]]:
    """Peak RSS and seconds of ``medmm predict MODEL`` on the inputs ``make(n)`` builds; the first size is the floor."""
    got: dict[int, dict[str, float]] = {}
    for n in sizes:
        data = make(n)
        out = data.parent / f"{data.stem}-pred-{model.name}.csv"
        secs, rss, proc = peak_rss_of([sys.executable, "-m", "medmm", "predict", str(model), "--data", str(data),
                                       "--out", str(out)])
        if proc.returncode:
            print(f"{name}: predict {n:,} {unit} failed: {proc.stderr[-800:]}")
            return got
        above = max(rss - got[sizes[0]]["mb"], 0.0) if got else 0.0
        got[n] = {"s": secs, "mb": rss, "above": above}
        print(f"{name}: predict {n:,} {unit}: {secs:.1f} s, peak RSS {rss:.0f} MB"
              + (f" ({above:.0f} MB above {sizes[0]:,}: {above * 2**20 / n:.0f} B per {unit[:-1]})" if n != sizes[0] else ""),
              flush=True)
    if len(got) == len(sizes) == 3:
        a, b = sizes[1:]
        ratio = got[b]["above"] / got[a]["above"] if got[a]["above"] > 0 else math.nan
        print(f"{name}: peak RSS above the floor {got[a]['above']:.0f} -> {got[b]['above']:.0f} MB for {b // a}x "
              f"{unit} ({ratio:.1f}x); time {got[b]['s'] / got[a]['s']:.1f}x", flush=True)
    return got


def bench_predict_paths(rows: int, reports_n: int, files: int,
                        paths: tuple[str, ...] = ("tabular", "text", "image", "fusion")) -> dict[str, Any]:
    """Peak RSS of ``medmm predict`` on each streamed path at a floor size and two sizes 10x apart: tabular-risk
    through onnxruntime (tables of 1,000 / ``rows`` / 10x), text-cls through onnxruntime (reports), image-cls on a
    DICOM folder (torch and onnxruntime; ``files`` / 10x), fusion tables (text + image + tabular; torch and
    onnxruntime). One small run per task, exported; unlabelled inputs except the folders (sub-folder labels)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medmm-predict-paths-") as tmp_s:
        tmp = Path(tmp_s)
        # tabular-risk, onnxruntime
        if "tabular" in paths:
            run = tmp / "tab"
            proc = _medmm("run", "tabular-risk", "--data", str(table(tmp / "t1000.csv", 1000)), "--out", str(run),
                          *_sets("data.target=y", "engine.epochs=1", "engine.bootstrap=0", "engine.baseline=none",
                                 "model.backbone=linear", "engine.device=cpu"), "--quiet")
            if proc.returncode == 0 and _medmm("export", str(run), "--out", str(tmp / "tab-export")).returncode == 0:
                out["tabular onnxruntime"] = _predict_rss(tmp / "tab-export", lambda n: table(tmp / f"p{n}.csv", n, label=False),
                                                          (1000, rows, rows * 10), "tabular-risk onnxruntime", "rows")
            else:
                print(f"tabular-risk run / export failed: {proc.stderr[-800:]}")
        # text-cls (TextCNN), onnxruntime
        if "text" in paths:
            run = tmp / "txt"
            proc = _medmm("run", "text-cls", "--data", str(reports(tmp / "r500.csv", 500)), "--out", str(run),
                          *_sets("data.text_column=text", "data.label_column=label", "data.id_column=report_id",
                                 "model.backbone=textcnn", "engine.epochs=1", "engine.bootstrap=0", "engine.baseline=none",
                                 "engine.device=cpu"), "--quiet")
            if proc.returncode == 0 and _medmm("export", str(run), "--out", str(tmp / "txt-export")).returncode == 0:
                def notes(n: int) -> Path:
                    import pandas as pd

                    path = reports(tmp / f"r{n}.csv", n)
                    pd.read_csv(path).drop(columns=["label"]).to_csv(path, index=False)
                    return path

                def labelled(n: int) -> Path:
                    return reports(tmp / f"l{n}.csv", n)

                sizes = (500, reports_n, reports_n * 10)
                out["text onnxruntime"] = _predict_rss(tmp / "txt-export", notes, sizes, "text-cls onnxruntime", "reports")
                out["text torch"] = _predict_rss(run, notes, sizes, "text-cls torch", "reports")
                out["text torch labelled"] = _predict_rss(run, labelled, sizes, "text-cls torch, labelled", "reports")
            else:
                print(f"text-cls run / export failed: {proc.stderr[-800:]}")
        # image-cls on a DICOM folder, torch and onnxruntime
        if "image" in paths:
            run = tmp / "img"
            proc = _medmm("run", "image-cls", "--data", str(dicom_folder(tmp / "d100", 100)), "--out", str(run),
                          *_sets("model.backbone=resnet18", "model.pretrained=none", "data.size=64", "engine.epochs=1",
                                 "engine.bootstrap=0", "engine.baseline=none", "engine.device=cpu"), "--quiet")
            if proc.returncode == 0 and _medmm("export", str(run), "--out", str(tmp / "img-export"),
                                               "--exporter", "torchscript").returncode == 0:
                def folder(n: int) -> Path:
                    return tmp / f"d{n}" if (tmp / f"d{n}").is_dir() else dicom_folder(tmp / f"d{n}", n)

                for model in (run, tmp / "img-export"):
                    kind = "torch" if model == run else "onnxruntime"
                    out[f"image {kind}"] = _predict_rss(model, folder, (100, files, files * 10), f"image-cls {kind}", "files")
            else:
                print(f"image-cls run / export failed: {proc.stderr[-800:]}")
        # fusion (text + image + tabular), torch and onnxruntime
        if "fusion" in paths:
            from medmm.demos.fusion import build_fusion_demo

            pairs = build_fusion_demo(tmp / "fusion", n_patients=24)
            run = tmp / "fus"
            proc = _medmm("run", "fusion", "--data", str(pairs), "--out", str(run),
                          *_sets("model.mode=finetune", "model.text_backbone=bert-tiny", "model.image_backbone=resnet18",
                                 "model.image_pretrained=none", "model.head=attention", "data.tabular_columns=[age,sex]",
                                 "data.label_column=label", "data.classes=[no_malignancy,malignant]", "data.id_column=id",
                                 "data.group_column=patient", "data.size=32", "engine.epochs=1", "engine.max_steps=2",
                                 "engine.bootstrap=0", "engine.baseline=none", "engine.device=cpu"), "--quiet")
            if proc.returncode == 0 and _medmm("export", str(run), "--out", str(tmp / "fus-export"),
                                               "--exporter", "torchscript").returncode == 0:
                import pandas as pd

                base = pd.read_csv(pairs, dtype=str, keep_default_na=False)

                def rows_of(n: int) -> Path:  # next to the demo: image paths are relative to the table
                    path = pairs.with_name(f"f{n}.csv")
                    reps = -(-n // len(base))
                    df = pd.concat([base.assign(id=base["id"] + f"-{k}") for k in range(reps)]).head(n)
                    df.drop(columns=[c for c in ("label",) if c in df.columns]).to_csv(path, index=False)
                    return path

                for model in (run, tmp / "fus-export"):
                    kind = "torch" if model == run else "onnxruntime"
                    out[f"fusion {kind}"] = _predict_rss(model, rows_of, (100, files, files * 10), f"fusion {kind}", "rows")
            else:
                print(f"fusion run / export failed: {proc.stderr[-800:]}")
    return out


def reports(path: Path, n: int) -> Path:
    """``n`` rows of the Indiana University reports (read from the torchxrayvision wheel), repeated
    with new ids past the 3,9xx real ones."""
    import pandas as pd

    from medmm.demos.reports import build_reports_csv

    base = pd.read_csv(build_reports_csv(path.with_name("reports-source.csv")))
    reps = -(-n // len(base))
    df = pd.concat([base.assign(report_id=base.report_id.astype(str) + f"-{k}") for k in range(reps)]).head(n)
    df[["report_id", "text", "label"]].to_csv(path, index=False)
    return path


def bench_text(sizes: tuple[int, int], epochs: int) -> dict[str, Any]:
    """text-cls (TextCNN from scratch + the TF-IDF baseline) at two sizes: time and peak RSS."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medmm-scale-") as tmp:
        for n in sizes:
            data = reports(Path(tmp) / f"r{n}.csv", n)
            sets = ["data.text_column=text", "data.label_column=label", "data.id_column=report_id",
                    "model.backbone=textcnn", f"engine.epochs={epochs}", "engine.bootstrap=0", "engine.device=cpu"]
            cmd = [sys.executable, "-m", "medmm", "run", "text-cls", "--data", str(data), "--out", str(Path(tmp) / f"run{n}"),
                   *[a for s in sets for a in ("--set", s)]]
            secs, rss, proc = peak_rss_of(cmd)
            if proc.returncode:
                print(f"text-cls {n:,} reports failed: {proc.stderr[-800:]}")
                continue
            out[n] = {"train_s": secs, "train_mb": rss}
            print(f"text-cls (textcnn) {n:,} reports: run {secs:.1f} s, peak RSS {rss:.0f} MB")
    if len(out) == 2:
        a, b = sizes
        print(ratio_line("text-cls run", a, b, out[a]["train_s"], out[b]["train_s"], "reports"))
        print(f"text-cls peak RSS ratio: {out[b]['train_mb'] / out[a]['train_mb']:.1f}x (size ratio {b / a:.0f}x)")
    return out


def bench_text_predict(n: int, repeats: int) -> dict[str, Any]:
    """text-cls predict of ``n`` reports with one TextCNN run (2,000 reports, 1 epoch), in-process:
    evaluation batches in file order (as before) vs length-sorted inside fixed windows (now), interleaved
    ``repeats`` times; ms per document, padded / real tokens, and the largest difference of a score."""
    import dataclasses

    from medmm.engine import Trainer
    from medmm.engine.sampling import eval_batches
    from medmm.run import Run

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medmm-scale-") as tmp_s:
        tmp = Path(tmp_s)
        sets = ["data.text_column=text", "data.label_column=label", "data.id_column=report_id",
                "model.backbone=textcnn", "engine.epochs=1", "engine.bootstrap=0", "engine.baseline=none",
                "engine.device=cpu"]
        proc = subprocess.run([sys.executable, "-m", "medmm", "run", "text-cls", "--data",
                               str(reports(tmp / "train.csv", 2000)), "--out", str(tmp / "run"),
                               *[a for s in sets for a in ("--set", s)]], check=False, capture_output=True, text=True)
        if proc.returncode:
            print(f"text-cls run failed: {proc.stderr[-800:]}")
            return out
        run = Run.open(tmp / "run")
        task = run.task()
        model = run.model(task, "best")
        split, collate = run.predict_data(task, reports(tmp / "predict.csv", n))
        trainer = Trainer(task, run.cfg, run.path, quiet=True)
        model.to(trainer.device)
        lengths = np.asarray(split.lengths)
        batch = trainer.e.eval_batch_size
        variants = {"file order": dataclasses.replace(split, lengths=None), "length windows": split}
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        scores: dict[str, np.ndarray] = {}
        for _ in range(repeats):
            for name, s in variants.items():
                start = time.perf_counter()
                scores[name] = trainer.evaluate(model, s, collate).scores
                seconds[name].append(time.perf_counter() - start)
        real = int(lengths.sum())
        for name, s in variants.items():
            padded = sum(len(b) * int(lengths[b].max()) for b in eval_batches(len(lengths), batch, lengths=s.lengths))
            best = min(seconds[name])
            out[name] = {"ms_per_doc": 1000 * best / n, "padding": padded / real}
            print(f"text-cls predict, {n:,} reports, {name}: {1000 * best / n:.2f} ms/doc (best of {repeats}), "
                  f"padded tokens {padded / real:.2f}x the real ones")
        diff = float(np.abs(scores["file order"] - scores["length windows"]).max())
        a, b = (out[k]["ms_per_doc"] for k in variants)
        print(f"text-cls predict: {a / b:.2f}x faster per document; largest score difference {diff:.1e}")
        out["max_abs_diff"] = diff
    return out


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small sizes; counts of work for the fast-tier test")
    ap.add_argument("--parts", default="split,dicom,table,text",
                    help="comma-separated: split, dicom (ingest, then image-cls run and predict), dicomrun (only "
                         "those), table, predict, predictpaths, text, textpredict")
    ap.add_argument("--reports", type=int, default=10_000, help="the smaller text-cls table (the larger is 10x)")
    ap.add_argument("--rows", type=int, default=100_000, help="the smaller table (the larger is 10x)")
    ap.add_argument("--split-rows", type=int, default=1_000_000, help="the smaller split (the larger is 10x)")
    ap.add_argument("--files", type=int, default=2_000, help="the smaller DICOM folder (the larger is 10x)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="textpredict: interleaved repeats (best kept)")
    ap.add_argument("--paths", default="tabular,text,image,fusion",
                    help="predictpaths: which paths (tabular through onnxruntime; text, image, fusion: torch and onnxruntime)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.tiny:
        args.split_rows, args.files, args.workers = 2_000, 5, 0
        parts -= {"table", "predict", "predictpaths", "text", "textpredict"}  # end-to-end runs are the slow tier's
    results: dict[str, Any] = {}
    if "split" in parts:
        results["split"] = bench_split(args.split_rows, args.tiny)
    if "dicom" in parts:
        results["dicom"] = bench_dicom((args.files, args.files * 10), args.tiny, args.workers)
    if "dicom" in parts and args.tiny:
        results["imagework"] = bench_image_work((4, 24, 124))
    if parts & {"dicom", "dicomrun"} and not args.tiny:
        results["dicomrun"] = bench_image_run((args.files, args.files * 10), max(args.files // 10, 20), args.workers)
    if "table" in parts:
        results["table"] = bench_table((args.rows, args.rows * 10), args.epochs)
    if "predict" in parts:
        results["predict"] = bench_predict((args.rows, args.rows * 10))
    if "predictpaths" in parts:
        results["predictpaths"] = bench_predict_paths(args.rows, args.reports, args.files,
                                                      tuple(args.paths.split(",")))
    if "text" in parts:
        results["text"] = bench_text((args.reports, args.reports * 10), args.epochs)
    if "textpredict" in parts:
        results["textpredict"] = bench_text_predict(args.reports, args.repeats)
    if "inputs" in parts and not args.tiny:  # predict / evaluate / explain per input format (bench/scale_inputs.py)
        from scale_inputs import bench_inputs

        results["inputs"] = bench_inputs(args.rows, ("csv", "jsonl", "parquet"), ("predict", "evaluate", "explain"),
                                         False)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if sys.argv[1:2] == ["--dicom-child"]:
        _dicom_child(*sys.argv[2:6])
    elif sys.argv[1:2] == ["--image-child"]:
        _image_child(*sys.argv[2:])
    else:
        main()
