"""``medmm demo image-cls``: modality routing (CR / CT / MR / US) on real DICOM files from pip packages."""

from __future__ import annotations

from pathlib import Path

import click


def build(out_dir: Path) -> tuple[Path, list[str]]:
    """Build the demo DICOM folder; fine-tune the packaged ImageNet EfficientNet-Lite0.

    The folder holds ~60 images of ~20 patients: the recipe is the small-data one (BatchNorm
    statistics frozen, backbone at a tenth of the head's learning rate).
    """
    from medmm import build_demo

    folder = build_demo(out_dir)
    counts = {d.name: sum(f.suffix == ".dcm" for f in d.iterdir()) for d in sorted(folder.iterdir()) if d.is_dir()}
    per_class = ", ".join(f"{k} {v}" for k, v in counts.items())
    click.echo(f"  {sum(counts.values())} sample DICOM files from pydicom and pydicom-data ({per_class}); many are "
               "one image in several transfer syntaxes, so the patient-level test split holds only a few "
               "patients: its metrics check the pipeline, they are not an accuracy estimate.", err=True)
    return folder, ["model.backbone=efficientnet_lite0", "model.freeze_bn=true",
                    "model.encoder_lr_scale=0.1", "data.size=224", "engine.epochs=8",
                    "engine.batch_size=16", "engine.lr=0.001", "engine.patience=4"]
