"""``medmm demo image-cls``: modality routing (CR / CT / MR / US) on real DICOM files from pip packages."""

from __future__ import annotations

from pathlib import Path


def build(out_dir: Path) -> tuple[Path, list[str]]:
    """Build the demo DICOM folder; train a pretrained EfficientNet-Lite0 at 128 px (CPU-friendly)."""
    from medmm.data.dicom_demo import build_demo

    folder = build_demo(out_dir)
    return folder, ["model.backbone=efficientnet_lite0", "data.size=128", "engine.epochs=8",
                    "engine.batch_size=16", "engine.lr=0.001", "engine.patience=4"]
