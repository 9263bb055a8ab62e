"""The fusion task's config sections (the engine's live in :mod:`medmm.config.engine`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medmm import DataConfig, Float, Fraction, ModelConfig, OptStrList, PosInt, TaskConfig


class FusionDataConfig(DataConfig):
    text_column: str | None = Field("text", description="report / note text (empty cell = no text for that row); "
                                                        "null = no text modality")
    image_column: str | None = Field("image", description="DICOM file, series or study folder, relative to the "
                                                          "table; null = no image modality")
    image_source: str | None = Field(None, description="DICOMweb source (dicomweb+https://host/dicom-web?Keyword=value): "
                                                       "the image column holds StudyInstanceUID / SeriesInstanceUID / "
                                                       "SOPInstanceUID / AccessionNumber values, pulled de-identified "
                                                       "(docs/dicomweb.md)")
    tabular_columns: Literal["all"] | OptStrList = Field(
        None, description="list of feature columns, all (every column no other key names), or null for none")
    exclude: OptStrList = Field(None, description="columns never used as tabular features (e.g. follow-up time, "
                                                  "outcomes known later)")
    decimal: str = Field(".", description='decimal mark of numbers in text files: "." or "," ("1,5"); thousands '
                                          "separators are read either way")
    label_column: str = Field("label",
        description='the label: classes (binary / multiclass) or a number (regression)')
    classes: list[Any] | None = Field(None, description="class order, e.g. [negative, positive] (binary: the "
                                                        "second is the positive class)")
    group_column: str | None = Field(None, description="patient id: no patient in two splits")
    split_column: str | None = Field(None, description="use the table's own train / val / test assignment")
    id_column: str | None = Field(None, description="row ids in predictions.csv and skipped.csv (default: row "
                                                    "number)")
    val_fraction: Fraction = Field(0.2,
        description='share of units (patients with data.group_column) held for validation')
    test_fraction: Fraction = Field(0.2,
        description='share of units (patients with data.group_column) held for the test split')
    max_length: PosInt = Field(128, description="text tokens per row")
    size: PosInt = Field(224, description="image side in pixels")
    window: str | None = Field(None, description='DICOM window: null (header), minmax, lung, mediastinum, soft, '
                                                 'bone, brain, "C,W"')
    channels: Literal[1, 3] = Field(1, description='1 = grey (first conv adapted) | 3')
    cache_dir: str | None = Field(None, description="pixel / token / embedding caches (default RUN_DIR/cache); "
                                                    "share one across runs")


class FusionModelConfig(ModelConfig):
    head: str = Field("concat", description="medmm fusion heads: concat | gated | attention | late (and plugins')")
    mode: Literal["frozen", "finetune"] = Field(
        "frozen", description="frozen (text + image embeddings cached, head trains) | finetune (end to end)")
    text_backbone: str = Field("minilm-l6", description="medmm backbones --modality text (a pretrained encoder)")
    text_name_or_path: str | None = Field(None, description="local Hugging Face folder for text_backbone=hf-local")
    pooling: Literal["mean", "cls"] = Field("mean",
        description='text embedding: mean of token states | the CLS token')
    image_backbone: str = Field("efficientnet_lite0", description="medmm backbones --modality image")
    image_pretrained: Literal["auto", "none", "path", "hub"] = Field("auto", description="auto | none | path "
                                                                                          "(image_weights)")
    image_weights: str | None = Field(None, description="local .safetensors / .pth for the image backbone")
    tabular_backbone: str = Field("mlp", description="medmm backbones --modality tabular (trained in both modes)")
    hidden: PosInt = Field(128, description="fusion head (and tabular encoder) width")
    dropout: Fraction = Field(0.1, description='dropout in the fusion head')
    modality_dropout: Fraction = Field(0.2, description="training: probability of hiding each present modality of "
                                                        "a row")
    encoder_lr_scale: Float = Field(0.1, ge=0, description="finetune: text / image encoder lr = engine.lr * this")


class FusionConfig(TaskConfig):
    """``medmm run fusion``: text + image (+ tabular) embeddings combined by a fusion head."""

    data: FusionDataConfig = Field(default_factory=FusionDataConfig)
    model: FusionModelConfig = Field(default_factory=FusionModelConfig)
