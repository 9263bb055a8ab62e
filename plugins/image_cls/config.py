"""The image-cls task's config sections (the engine's live in :mod:`medmm.config.engine`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medmm import Bool, ConfigModel, DataConfig, Float, Fraction, ModelConfig, PosInt, TaskConfig


class ImageClsData(DataConfig):
    labels: str | None = Field(None, description="CSV of labels (keys: path | SOPInstanceUID | SeriesInstanceUID | "
                                                 "StudyInstanceUID); null = the first sub-folder name is the label")
    level: Literal["instance", "series", "study"] = Field(
        "instance", description="instance | series | study (series/study average their instances)")
    window: str | None = Field(None, description='null = first window in the header; lung | bone | brain | soft | '
                                                 'mediastinum | "<c>,<w>"')
    frames: Literal["middle", "all", "stack"] = Field(
        "middle", description="middle | all (each frame an example) | stack (2.5-D: 3 frames as channels)")
    channels: Literal[1, 3] = Field(1, description="1 = grey (first conv adapted) | 3")
    size: PosInt = Field(224, description="input size (resize the long side, pad)")
    val_fraction: Fraction = Field(0.2, description='share of patients held for validation')
    test_fraction: Fraction = Field(0.2, description='share of patients held for the test split')
    cache_dir: str | None = Field(None, description="null = RUN_DIR/cache")
    augment: Bool = Field(True, description="random resized crop + small rotation during training")
    hflip: Bool = Field(False, description="horizontal flips change laterality: off by default")


class ImageClsModel(ModelConfig):
    deprecated_keys = {"backbone_lr_scale": "encoder_lr_scale"}  # the name text-cls and fusion use

    backbone: str = Field("auto", description="auto = vit_base_patch16_224 on a CUDA GPU, pretrained "
                                              "efficientnet_lite0 on CPU; or any name from: medmm backbones "
                                              "--modality image")
    pretrained: Literal["auto", "none", "path", "hub"] = Field(
        "auto", description="auto (packaged weights if any) | none | path (model.weights) | hub (opt-in download "
                            "into the HF cache)")
    weights: str | None = Field(None, description="local timm/HF checkpoint: .safetensors or a .pth state dict")
    mode: Literal["auto", "finetune", "frozen"] = Field(
        "auto", description="finetune the backbone | frozen: run the pretrained backbone once (embeddings cached on "
                            "disk, keyed by data + weights; no augmentation) and train the head only | auto: "
                            "fine-tune on a GPU or when the CPU estimate fits 5 min, else frozen (docs/guide/frozen.md)")
    dropout: Fraction = Field(0.0, description='dropout before the classifier')
    drop_path: Fraction = Field(0.0,
        description='stochastic depth rate (transformers / ConvNeXt-style backbones)')
    encoder_lr_scale: Float = Field(1.0, ge=0, description="backbone lr = engine.lr * this (the head uses "
                                                           "engine.lr); 0 freezes the backbone")
    freeze_bn: Bool = Field(False, description="keep BatchNorm statistics fixed (pretrained CNNs on small data / "
                                               "small batches)")


class ImageClsOutput(ConfigModel):
    include_patient_id: Bool = Field(False, description="add a patient id column to predictions.csv")
    hash_patient_id: Bool = Field(True, description="as a keyed HMAC pseudonym (key: $MEDMM_DEID_KEY_FILE or "
                                                    "~/.config/medmm/deid.key, 0600)")


class ImageClsConfig(TaskConfig):
    """``medmm run image-cls``: classify DICOM images, series or studies from a folder."""

    data: ImageClsData = Field(default_factory=ImageClsData)
    model: ImageClsModel = Field(default_factory=ImageClsModel)
    output: ImageClsOutput = Field(default_factory=ImageClsOutput)
