"""Multimodal fusion: text + image (+ tabular) embeddings combined by a selectable head."""

from medmm import hookimpl
from medmm.config import Range
from medmm.registry import Component
from medmm.task import TaskSpec
from medmm_configs import path

HEADS = "medmm.models.fusion"


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        name="fusion",
        modality="multimodal",
        summary="combine report text, DICOM images and tabular features; robust to a missing modality",
        config=path("fusion"),
        impl="medmm_plugins.fusion.task:FusionTask",
        choices={"model.mode": ["frozen", "finetune"], "model.pooling": ["mean", "cls"],
                 "data.channels": [1, 3], "model.image_pretrained": ["auto", "none", "path", "hub"]},
        demo="medmm_plugins.fusion.demo:build",
        ranges={"data.val_fraction": Range(0, 1, hi_open=True), "data.test_fraction": Range(0, 1, hi_open=True),
                "data.max_length": Range(1), "data.size": Range(1), "model.hidden": Range(1),
                "model.dropout": Range(0, 1, hi_open=True), "model.modality_dropout": Range(0, 1, hi_open=True),
                "model.encoder_lr_scale": Range(0)},
    ))


@hookimpl
def register_fusion_heads(register):
    register(Component("concat", f"{HEADS}:ConcatFusion", "any", "projected embeddings concatenated -> MLP"))
    register(Component("gated", f"{HEADS}:GatedFusion", "any", "gated multimodal unit (learned per-modality gates)"))
    register(Component("attention", f"{HEADS}:AttentionFusion", "any",
                       "modality tokens + a small transformer encoder, masking missing modalities"))
    register(Component("late", f"{HEADS}:LateFusion", "any", "per-modality heads, logits averaged with learned weights"))
