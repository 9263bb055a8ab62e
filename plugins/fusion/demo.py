"""``medmm demo fusion``: SYNTHETIC CT phantoms + templated clinical notes whose label needs both.

No public paired report + DICOM data set installs offline, so the demo writes an honest
synthetic one (:mod:`medmm.demos.fusion`): the image shows a lung nodule or not, the note
gives a risk context or not, and the label is "malignant" only when both hold. Nothing in it
comes from a patient.
"""

from __future__ import annotations

from pathlib import Path

import click


def build(out_dir: Path) -> tuple[Path, list[str]]:
    """Write the synthetic studies into ``out_dir``; frozen MiniLM + EfficientNet-Lite0, concat head."""
    from medmm import build_fusion_demo

    pairs = build_fusion_demo(Path(out_dir), n_patients=400)
    click.echo(f"medmm demo fusion: SYNTHETIC data (phantom CT studies + templated notes, no patient data) "
               f"in {out_dir}", err=True)
    return pairs, [
        "data.text_column=text",
        "data.image_column=image",
        "data.label_column=label",
        "data.classes=[no_malignancy,malignant]",
        "data.id_column=id",
        "data.group_column=patient",
        "data.size=128",
        "data.window=lung",
        "model.mode=frozen",
        "model.head=concat",
        "engine.epochs=40",
        "engine.lr=0.001",
        "engine.patience=10",
    ]
