"""Frozen encoder + head vs fine-tuning vs the classic baseline: test figure and cost per recipe.

Each run goes through ``medmm.runner.run_task`` with the task's defaults plus ``model.mode`` (and
the data's column names and a seed); the classic baseline (TF-IDF + logistic regression for text,
32-px pixels + logistic regression for images) is fitted beside every run on the same split, so its
figure comes with each run. Three seeds = three splits and initialisations; mean ± sd of the test
headline metric, the wall time of each run and its phases (``data`` includes the frozen encoder's
pass over every document; a second seed reuses the cached embeddings: ``data.cache_dir`` is shared).

    python bench/frozen_vs_finetune.py --only iu-multiclass,padchest-8 --modes frozen
    python bench/frozen_vs_finetune.py --only dicom-demo --modes frozen,finetune
    python bench/frozen_vs_finetune.py --only body-region,dicom-demo --modes frozen
    python bench/frozen_vs_finetune.py --only padchest-8 --modes finetune --seeds 0 --set engine.max_steps=60

Data (offline): the IU chest X-ray report tasks of ``bench/accuracy.py`` (normal vs abnormal, the 5
most common single MeSH terms), the DICOM demo, PadChest report labels (not tuned on by this
project: Spanish, stemmed reports from the PadChest label CSV in the torchxrayvision wheel, the 8
most common single-label findings, 60 reports each, split by patient), and body-region (not tuned
on: head-neck / chest / abdomen-pelvis over 13 real pydicom + pydicom-data images of 13 patients,
10 random crops each, written as 8-bit DICOM under the source's patient: 130 images, split by
patient). Fine-tuning cost per token
(``--tokens``) feeds ``model.mode=auto``'s estimate.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = {"iu-binary": "text-cls", "iu-multiclass": "text-cls", "padchest-8": "text-cls", "dicom-demo": "image-cls",
         "body-region": "image-cls"}
PADCHEST = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
SKIP = {"exclude", "unchanged"}  # PadChest's non-finding labels


def padchest(tmp: Path, per_class: int = 60, classes: int = 8) -> tuple[Path, list[str]]:
    """The PadChest single-label report set (read from the installed wheel, never copied)."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("padchest-8 needs: pip install --no-deps torchxrayvision==1.5.7")
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / PADCHEST
    df = pd.read_csv(src, usecols=["ReportID", "PatientID", "Report", "Labels"], dtype=str).dropna()
    df = df.drop_duplicates("ReportID")
    labels = df["Labels"].map(lambda s: [x.strip() for x in ast.literal_eval(s) if x.strip()] if s.startswith("[") else [])
    one = df[labels.map(len) == 1].assign(label=labels[labels.map(len) == 1].str[0])
    one = one[~one["label"].isin(SKIP)]
    top = one["label"].value_counts().index[:classes]
    # (pandas may warn that apply sees the grouping column: kept, it is the sample the figures came from)
    small = (one[one["label"].isin(top)].groupby("label", group_keys=False)
             .apply(lambda g: g.sample(min(per_class, len(g)), random_state=0)))
    path = tmp / "padchest-8.csv"
    small.rename(columns={"ReportID": "report_id", "PatientID": "patient", "Report": "text"})[
        ["report_id", "patient", "text", "label"]].to_csv(path, index=False)
    return path, ["data.text_column=text", "data.label_column=label", "data.id_column=report_id",
                  "data.group_column=patient", "data.max_length=128"]


# body-region: one source image (series) per patient, labelled by the body region it shows (the header's
# BodyPartExamined where set, else what the image plainly shows); re-encodings of one image are left out.
BODY_REGION = {
    "head-neck": ["693_UNCI.dcm",  # CT head (CQ500)
                  "J2K_pixelrep_mismatch.dcm",  # CT skull base (header: HEAD)
                  "eCT_Supplemental.dcm",  # enhanced CT, brain (2 frames)
                  "emri_small.dcm",  # enhanced MR head (10 frames; header: HEAD)
                  "bad_sequence.dcm"],  # CT (header: NECK)
    "chest": ["CT_small.dcm",  # CT, thoracic vertebra and lungs
              "RG1_UNCI.dcm",  # CR chest (header: CHEST)
              "JPGLosslessP14SV1_1s_1f_8b.dcm",  # echocardiogram (aortic root measured)
              "color-pl.dcm"],  # transoesophageal echo (colour Doppler)
    "abdomen-pelvis": ["explicit_VR-UN.dcm",  # CT pancreas (header: PANCREAS)
                       "MR-SIEMENS-DICOM-WithOverlays.dcm",  # MR abdomen (header: ABDOMEN)
                       "OBXXXX1A.dcm",  # obstetric ultrasound
                       "gdcm-US-ALOKA-16.dcm"],  # pelvic ultrasound (annotated "PELVIS")
}
CROPS = 10  # crops per source image


def _display(ds: object) -> list:
    """Every frame of ``ds`` as uint8 (grey: modality LUT, first window or 1-99th percentiles; colour: RGB)."""
    import numpy as np
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space

    arr = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[None]
    pi = str(ds.PhotometricInterpretation)
    out = []
    for f in arr:
        if pi == "PALETTE COLOR":
            f = apply_color_lut(f, ds)
            f = (f / 257).astype(np.uint8) if f.dtype != np.uint8 else f
        elif f.ndim == 3:
            f = convert_color_space(f, pi, "RGB") if pi.startswith("YBR") else f
        else:
            f = apply_modality_lut(f, ds).astype(float)
            if "WindowCenter" in ds:
                f = apply_voi_lut(f, ds).astype(float)
            lo, hi = np.percentile(f, [1, 99])
            f = np.clip((f - lo) / max(hi - lo, 1e-6), 0, 1) * 255
            if pi == "MONOCHROME1":
                f = 255 - f
        out.append(np.ascontiguousarray(f.astype(np.uint8)))
    return out


def body_region(tmp: Path, crops: int = CROPS) -> tuple[Path, list[str]]:
    """Body-region classification (head-neck / chest / abdomen-pelvis) over 13 real installed images.

    Each source image gives ``crops`` random crops (35-100 % of the area, a random frame of a
    multi-frame file), written as 8-bit uncompressed DICOM under ``<region>/``; every crop of a
    source carries that source's own pseudonymous PatientID, so the patient split keeps all of them
    in one split (13 patients: stratified 0.2 / 0.2, about 3 test patients, one per region).
    """
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from medmm.demos.dicom import source_roots

    roots = source_roots()
    root = tmp / "body-region"
    for region, names in BODY_REGION.items():
        (root / region).mkdir(parents=True, exist_ok=True)
        for n, name in enumerate(names):
            src = next((r / name for r in roots if (r / name).is_file()), None)
            if src is None:
                raise SystemExit(f"body-region needs pydicom-data ({name} not installed)")
            frames = _display(pydicom.dcmread(src))
            rng = np.random.default_rng(sum(name.encode()))
            pid, study = f"BR-{region}-{n}", generate_uid(entropy_srcs=[name, "study"])
            for k in range(crops):
                img = frames[int(rng.integers(len(frames)))]
                h, w = img.shape[:2]
                area, aspect = rng.uniform(0.35, 1.0) * h * w, np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
                ch, cw = min(h, int(round((area / aspect) ** 0.5))), min(w, int(round((area * aspect) ** 0.5)))
                y, x = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
                crop = np.ascontiguousarray(img[y:y + ch, x:x + cw])
                meta = FileMetaDataset()
                meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, SecondaryCaptureImageStorage
                meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name, str(k)])
                ds = Dataset()
                ds.file_meta = meta
                ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
                ds.PatientID, ds.StudyInstanceUID = pid, study
                ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, "series"])
                ds.Modality = "OT"
                ds.Rows, ds.Columns = crop.shape[:2]
                ds.SamplesPerPixel = 3 if crop.ndim == 3 else 1
                ds.PhotometricInterpretation = "RGB" if crop.ndim == 3 else "MONOCHROME2"
                if crop.ndim == 3:
                    ds.PlanarConfiguration = 0
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
                ds.PixelData = crop.tobytes()
                ds.save_as(root / region / f"{Path(name).stem}_{k}.dcm", enforce_file_format=True)
    return root, []


def build(name: str, tmp: Path, limit: int) -> tuple[Path, list[str]]:
    if name == "padchest-8":
        return padchest(tmp)
    if name == "body-region":
        return body_region(tmp)
    from accuracy import build_data  # the IU tasks and the DICOM demo, as bench/accuracy.py builds them

    return build_data(name, tmp, limit)


def run_one(name: str, data: Path, overrides: list[str], mode: str, seed: int, out: Path, cache: Path) -> dict:
    import contextlib
    import io

    from medmm.plugins import get_registry
    from medmm.runner import resolved_config, run_task

    spec = get_registry().get("task", TASKS[name])
    extra = ["model.backbone=minilm-l6"] if TASKS[name] == "text-cls" else ["model.backbone=efficientnet_lite0"]
    cfg = resolved_config(spec, None, [*extra, *overrides, f"model.mode={mode}", f"seed={seed}",
                                       "engine.device=cpu", f"data.cache_dir={cache}", "engine.bootstrap=200"])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_task(spec, cfg, data, out, quiet=True)
    wall = time.perf_counter() - t0
    b = summary.get("baseline", {})
    phases = summary.get("phase_seconds", {})
    return {"data": name, "mode": mode, "seed": seed, "metric": b.get("headline"), "model": b.get("model"),
            "baseline": b.get("baseline"), "wall_s": round(wall, 1),
            "data_s": round(phases.get("data (read, split, preprocess)", float("nan")), 1),
            "train_s": round(phases.get("train", float("nan")), 1), "epochs": cfg.engine.epochs,
            "best_step": summary.get("best_step")}


def _ms(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="iu-multiclass,padchest-8,dicom-demo")
    ap.add_argument("--modes", default="frozen,finetune")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--limit", type=int, default=1000, help="documents of iu-binary")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, help="append the rows here (JSON lines)")
    args = ap.parse_args()
    import logging

    logging.getLogger("medmm").setLevel(logging.WARNING)
    print(f"load average {os.getloadavg()[0]:.1f} at start, {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medmm-frozen-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for name in args.only.split(","):
            (tmp / name).mkdir()
            data, overrides = build(name, tmp / name, args.limit)
            for mode in args.modes.split(","):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    row = run_one(name, data, [*overrides, *args.overrides], mode, seed,
                                  tmp / f"{name}-{mode}-{seed}", tmp / f"{name}-cache")
                    row["load"] = round(os.getloadavg()[0], 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with args.json.open("a") as f:
                            f.write(json.dumps(row) + "\n")
    print("\n| data | recipe | test metric | model | classic baseline | wall s (first / mean) | data s | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.only.split(","):
        for mode in args.modes.split(","):
            sel = [r for r in rows if r["data"] == name and r["mode"] == mode]
            if sel:
                print(f"| {name} | {mode} | {sel[0]['metric']} | {_ms([r['model'] for r in sel])} | "
                      f"{_ms([r['baseline'] for r in sel])} | {sel[0]['wall_s']:.0f} / "
                      f"{statistics.mean(r['wall_s'] for r in sel):.0f} | "
                      f"{statistics.mean(r['data_s'] for r in sel):.0f} | {statistics.mean(r['train_s'] for r in sel):.0f} |")


if __name__ == "__main__":
    main()
