"""Multimodal fusion: text + image (+ tabular) embeddings combined by a selectable head."""

from medmm import Component, hookimpl, TaskSpec
from medmm_configs import path

HEADS = "medmm.models.fusion_heads"


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        name="fusion",
        modality="multimodal",
        summary="combine report text, DICOM images and tabular features; robust to a missing modality",
        config=path("fusion"),
        config_model="medmm_plugins.fusion.config:FusionConfig",
        impl="medmm_plugins.fusion.task:FusionTask",
        runtime="medmm_plugins.fusion.runtime:FusionInputs",  # torch-free reader of its exports
        demo="medmm_plugins.fusion.demo:build",
    ))


@hookimpl
def register_fusion_heads(register):
    register(Component("concat", f"{HEADS}:ConcatFusion", "any", "projected embeddings concatenated -> MLP"))
    register(Component("gated", f"{HEADS}:GatedFusion", "any", "gated multimodal unit (learned per-modality gates)"))
    register(Component("attention", f"{HEADS}:AttentionFusion", "any",
                       "modality tokens + a small transformer encoder, masking missing modalities"))
    register(Component("late", f"{HEADS}:LateFusion", "any", "per-modality heads, logits averaged with learned weights"))
