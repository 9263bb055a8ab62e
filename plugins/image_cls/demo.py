"""``medmm demo image-cls``: modality routing (CR / CT / MR / US) on real DICOM files from pip packages."""

from __future__ import annotations

from pathlib import Path

import click


def build(out_dir: Path) -> tuple[Path, list[str]]:
    """Build the demo DICOM folder; the packaged ImageNet EfficientNet-Lite0 with the task's defaults.

    The folder holds ~60 images of ~20 patients. On a CPU ``model.mode=auto`` freezes the backbone
    and trains a head on its cached embeddings (docs/guide/frozen.md); ``--set model.mode=finetune``
    fine-tunes it with the task's small-data recipe (BatchNorm statistics frozen, backbone at a
    tenth of the head's learning rate, 8 epochs of 16 images).
    """
    from medmm import build_demo

    folder = build_demo(out_dir)
    counts = {d.name: sum(f.suffix == ".dcm" for f in d.iterdir()) for d in sorted(folder.iterdir()) if d.is_dir()}
    per_class = ", ".join(f"{k} {v}" for k, v in counts.items())
    click.echo(f"  {sum(counts.values())} sample DICOM files from pydicom and pydicom-data ({per_class}); many are "
               "one image in several transfer syntaxes, so the patient-level test split holds only a few "
               "patients: its metrics check the pipeline, they are not an accuracy estimate.", err=True)
    return folder, ["model.backbone=efficientnet_lite0", "data.size=224"]
