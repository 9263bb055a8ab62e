"""Learning curve of the image classic baseline (#30): what fitting on fewer training images costs.

    python bench/baseline_image_curve.py                       # 1k / 2k / 4k / 8k / 16k, 3 seeds
    python bench/baseline_image_curve.py --sizes 1000,4000 --seeds 1

The data: random square crops (64 to 256 px, area-averaged to 32 px as the baseline does) of 13 real
DICOM images of pydicom and pydicom-data (read from the installed packages by exact name, decoded and
windowed by medmm's pixel pipeline at 512 px), labelled by the source image's modality (CT, MR, CR, US:
a known answer). Each seed draws its own crops; val (2,000 crops) picks the regularisation as a run's
baseline does, test (4,000 crops) scores it. The fit is medmm's own (``fit_baseline``), with the
row cap lifted so that each size is fitted on all of its rows. Prints the test macro-F1, accuracy and
AUROC, mean +- sd over the seeds, and the seconds per fit (noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SOURCES = {  # (package folder, file name) -> modality; every file is installed with pydicom / pydicom-data
    ("pydicom", "693_UNCI.dcm"): "CT", ("pydicom", "eCT_Supplemental.dcm"): "CT",
    ("pydicom-test", "J2K_pixelrep_mismatch.dcm"): "CT", ("pydicom-test", "CT_small.dcm"): "CT",
    ("pydicom", "MR2_UNCI.dcm"): "MR", ("pydicom", "MR-SIEMENS-DICOM-WithOverlays.dcm"): "MR",
    ("pydicom-test", "examples_overlay.dcm"): "MR", ("pydicom", "emri_small.dcm"): "MR",
    ("pydicom", "RG1_UNCI.dcm"): "CR", ("pydicom", "RG3_UNCI.dcm"): "CR",
    ("pydicom", "US1_UNCI.dcm"): "US", ("pydicom", "gdcm-US-ALOKA-16.dcm"): "US",
    ("pydicom", "OBXXXX1A.dcm"): "US",
}
CLASSES = ["CR", "CT", "MR", "US"]
SIZE = 512


def _folders() -> dict[str, Path]:
    import importlib.util

    import pydicom

    spec = importlib.util.find_spec("data_store")  # pydicom-data's package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pydicom-data is not installed: pip install --no-deps -r requirements-data.txt")
    return {"pydicom": Path(next(iter(spec.submodule_search_locations))) / "data",
            "pydicom-test": Path(pydicom.__file__).parent / "data" / "test_files"}


def load_images() -> tuple[list[np.ndarray], list[int]]:
    """Each source image as ``[512, 512]`` float32 in [0, 1] (medmm's pixel pipeline) and its class."""
    from medmm.data.dicom.pixels import PixelConfig, load_pixels

    folders, cfg = _folders(), PixelConfig(size=SIZE, channels=1)
    images, labels = [], []
    for (where, name), modality in SOURCES.items():
        images.append(load_pixels(folders[where] / name, cfg)[0])
        labels.append(CLASSES.index(modality))
    return images, labels


def crops(images: list[np.ndarray], labels: list[int], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops, classes balanced, each a random image of its class, side 32 x f (f in 2..8), area-averaged
    to 32 x 32; crops with almost no contrast (the letterbox padding) are drawn again."""
    by_class = [[i for i, lab in enumerate(labels) if lab == c] for c in range(len(CLASSES))]
    x = np.empty((n, 32 * 32), np.float32)
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    for k in range(n):
        while True:
            im = images[by_class[y[k]][rng.integers(len(by_class[y[k]]))]]
            f = int(rng.integers(2, 9))
            side = 32 * f
            r, c = rng.integers(0, SIZE - side + 1, size=2)
            crop = im[r:r + side, c:c + side].reshape(32, f, 32, f).mean(axis=(1, 3))
            if crop.std() > 0.02:
                break
        x[k] = crop.reshape(-1)
    return x, y.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,2000,4000,8000,16000")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--grid", default="0.001,0.01",
                    help="the strengths C searched on val (the baseline's full grid, 0.001,0.01,0.1,1, picked 0.001 at "
                         "1k and 4k crops, and its weak end costs minutes per fit on 2 cores)")
    args = ap.parse_args()
    from medmm import classic
    from medmm.classic import fit_baseline
    from medmm.metrics import compute_metrics
    from medmm.task import BaselineInputs

    classic.FIT_ROWS = 10**9  # every size fitted on all of its rows
    if hasattr(classic, "IMAGE_FIT_CELLS"):
        classic.IMAGE_FIT_CELLS = 10**12
    classic.GRIDS = {**classic.GRIDS, "image": tuple(float(c) for c in args.grid.split(","))}
    sizes = [int(s) for s in args.sizes.split(",")]
    images, labels = load_images()
    rows: dict[int, list[tuple[float, float, float, float, float]]] = {n: [] for n in sizes}
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        xtr, ytr = crops(images, labels, max(sizes), rng)
        xva, yva = crops(images, labels, 2000, rng)
        xte, yte = crops(images, labels, 4000, rng)
        val = BaselineInputs([f"v{i}" for i in range(len(yva))], yva, image=xva)
        test = BaselineInputs([f"t{i}" for i in range(len(yte))], yte, image=xte)
        for n in sizes:
            train = BaselineInputs([f"r{i}" for i in range(n)], ytr[:n], image=xtr[:n])
            t0 = time.perf_counter()
            base = fit_baseline("multiclass", CLASSES, train, val)
            secs = time.perf_counter() - t0
            m = compute_metrics("multiclass", yte, base.predict(test))
            rows[n].append((m["macro_f1"], m.get("accuracy", float("nan")), m.get("auroc", float("nan")),
                            base.params["strength"], secs))
            print(f"seed {seed} n {n:>6}: macro-F1 {m['macro_f1']:.4f} accuracy {m.get('accuracy', float('nan')):.4f} "
                  f"AUROC {m.get('auroc', float('nan')):.4f} C={base.params['strength']:g} fit {secs:.1f} s", flush=True)
    print("\n| training crops | test macro-F1 | accuracy | AUROC | C picked | fit s |\n|---|---|---|---|---|---|")
    for n in sizes:
        a = np.asarray(rows[n])
        cell = [f"{a[:, j].mean():.4f} ± {a[:, j].std(ddof=1) if len(a) > 1 else 0:.4f}" for j in range(3)]
        print(f"| {n:,} | {' | '.join(cell)} | {', '.join(f'{c:g}' for c in a[:, 3])} | {a[:, 4].mean():.1f} |")


if __name__ == "__main__":
    main()
