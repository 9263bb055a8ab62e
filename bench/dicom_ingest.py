"""DICOM ingest throughput: a plain pydicom loop vs medmm's cold ingest and cached epochs.

    python bench/dicom_ingest.py [--data DIR] [--workers 2] [--size 224] [--epochs 3]

Without ``--data`` the demo folder (``medmm.demos.dicom.build_demo``) is used.
Prints files/s for

  (a) plain loop: ``pydicom.dcmread(p).pixel_array`` + first frame + resize to size
      (torch ``interpolate``, antialiased), one file at a time, errors counted;
  (b) medmm cold ingest: ``scan_folder`` + ``PixelCache.build`` into an empty cache;
  (c) medmm cached epoch: every image through ``DicomImageDataset`` + ``DataLoader``;
  (d) medmm warm start: ``scan_folder`` + ``PixelCache.build`` hitting the cache;

and the ratios (b)/(a) (goal >= 1) and (c)/(a) (goal >= 10). No asserts: timings on a
shared machine are noisy; read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def plain_loop(root: Path, files: list[str], size: int) -> tuple[float, int]:
    """Seconds for the naive loop, and how many files it failed on."""
    import pydicom
    import torch
    import torch.nn.functional as F

    failures = 0
    start = time.perf_counter()
    for rel in files:
        try:
            ds = pydicom.dcmread(root / rel)
            arr = ds.pixel_array
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                arr = arr[0]
            x = torch.from_numpy(arr.astype("float32"))
            x = x.permute(2, 0, 1) if x.ndim == 3 else x[None]
            F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)
        except Exception:  # noqa: BLE001 - a plain loop just counts what it cannot read
            failures += 1
    return time.perf_counter() - start, failures


def medmm_ingest(root: Path, cache_dir: Path, size: int, workers: int):
    from medmm.data.dicom.dataset import PixelCache, PixelConfig, scan_folder

    start = time.perf_counter()
    records, skipped = scan_folder(root, workers=workers)
    cache = PixelCache.build(root, records, PixelConfig(size=size, channels=3), cache_dir, workers=workers)
    return time.perf_counter() - start, cache, skipped


def cached_epoch(cache) -> float:
    from torch.utils.data import DataLoader

    from medmm.data.dicom.dataset import DicomImageDataset

    rows = sorted(cache.index.values())
    loader = DataLoader(DicomImageDataset(cache, rows, [0] * len(rows)), batch_size=32, shuffle=True)
    start = time.perf_counter()
    for images, _ in loader:
        images.sum()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="DICOM folder (default: the demo folder)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch

    from medmm.demos.dicom import build_demo
    from medmm.data.dicom.scan import list_files

    torch.set_num_threads(1)  # the plain loop and our workers each use one core per process
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or build_demo(Path(tmp) / "demo")
        files = list_files(root)
        n = len(files)
        t_plain, plain_failed = plain_loop(root, files, args.size)
        t_cold, cache, skipped = medmm_ingest(root, Path(tmp) / "cache", args.size, args.workers)
        t_warm, warm, _ = medmm_ingest(root, Path(tmp) / "cache", args.size, args.workers)
        assert warm.hit, "second ingest should hit the cache"
        n_images = len(cache.index)
        t_epoch = statistics.median(cached_epoch(cache) for _ in range(args.epochs))

    rows = [
        ("(a) plain dcmread + pixel_array + resize", n, t_plain, f"{plain_failed} files raised"),
        (f"(b) medmm cold: scan + cache build, {args.workers} workers", n, t_cold,
         f"{len(skipped)} skipped at scan, {len(cache.failed)} at decode"),
        (f"(c) medmm cached epoch (median of {args.epochs})", n_images, t_epoch, "DataLoader, batch 32"),
        ("(d) medmm warm start: scan + cache hit", n, t_warm, "no pixel decoding"),
    ]
    print(f"DICOM ingest, {n} files, {n_images} images decoded, size {args.size}, torch threads 1\n")
    print(f"{'path':58s} {'files':>6s} {'seconds':>8s} {'files/s':>9s}  note")
    rate = {}
    for label, count, seconds, note in rows:
        rate[label[:3]] = count / seconds
        print(f"{label:58s} {count:6d} {seconds:8.2f} {count / seconds:9.1f}  {note}")
    print(f"\n(b)/(a) cold ingest vs plain loop:   {rate['(b)'] / rate['(a)']:6.2f}x   (goal >= 1)")
    print(f"(c)/(a) cached epoch vs plain loop:  {rate['(c)'] / rate['(a)']:6.1f}x   (goal >= 10)")


if __name__ == "__main__":
    main()
