"""The text-cls task's config sections (the engine's live in :mod:`medmm.config.engine`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medmm import DataConfig, Float, Fraction, ModelConfig, NonNegInt, PosInt, StrList, TaskConfig


class TextClsData(DataConfig):
    text_column: StrList = Field(["text"], description="one column, or several joined with data.separator: "
                                                       "[findings, impression]")
    separator: str = Field("\n\n", description='joins several data.text_column columns into one document')
    label_column: StrList = Field(["label"], description="one column of classes, or several 0/1 columns "
                                                         "(multi-label): [edema, effusion]")
    label_delimiter: str | None = Field(None, description='e.g. ";" for a single column holding several labels')
    id_column: str | None = Field(None, description="row ids in predictions.csv (default: row number)")
    group_column: str | None = Field(None, description="patient id: no patient in two splits")
    split_column: str | None = Field(None, description="use the file's own train/val/test assignment")
    val_fraction: Fraction = Field(0.15,
        description='share of documents (patients with data.group_column) held for validation')
    test_fraction: Fraction = Field(0.15,
        description='share of documents (patients with data.group_column) held for the test split')
    max_length: PosInt = Field(256, description="tokens per document (or per window with long_text=chunk)")
    long_text: Literal["truncate", "chunk"] = Field(
        "truncate", description="truncate | chunk (overlapping windows, probabilities pooled)")
    stride: NonNegInt = Field(64, description="token overlap between windows in chunk mode")
    max_chars: PosInt = Field(1_000_000, description="longer documents are cut here (and listed in skipped.csv)")
    cache_dir: str | None = Field(None, description="tokenisation cache (default RUN_DIR/cache); share one across "
                                                    "runs to skip re-tokenising")


class TextClsModel(ModelConfig):
    backbone: str = Field("minilm-l6", description="medmm backbones --modality text")
    name_or_path: str | None = Field(None, description="a local Hugging Face folder (backbone hf-local), or a hub "
                                                        "id (backbone hf-hub: opt-in download)")
    pooling: Literal["mean", "cls"] = Field("mean",
        description='document embedding: mean of token states | the CLS token')
    mode: Literal["auto", "finetune", "frozen"] = Field(
        "auto", description="finetune the encoder | frozen: run the pretrained encoder once (embeddings cached on "
                            "disk, keyed by data + weights) and train the head only | auto: fine-tune on a GPU or "
                            "when the CPU estimate fits 5 min, else frozen (docs/guide/frozen.md)")
    dropout: Fraction = Field(0.1, description='dropout before the classifier')
    encoder_lr_scale: Float = Field(1.0, ge=0, description="encoder lr = engine.lr * this (head uses engine.lr)")
    length_groups: bool = Field(True, description="pretrained encoders: train each batch as length-sorted "
                                                  "micro-batches (same loss and gradient, less padding computed)")
    packed: bool = Field(True, description="with length_groups, BERT-family encoders: run the batch's real tokens "
                                           "packed, without any padding (same loss and gradient; others: groups)")
    vocab_min_freq: PosInt = Field(2, description="baselines (textcnn, bigru, bilstm): vocabulary from the training "
                                                  "split; they train from scratch: use engine.lr=0.001")
    vocab_size: int = Field(30000, ge=2, strict=True,
        description='baselines: largest vocabulary kept (most frequent words)')
    embed_dim: PosInt = Field(128, description='baselines: word embedding size')


class TextClsConfig(TaskConfig):
    """``medmm run text-cls``: classify clinical free text."""

    data: TextClsData = Field(default_factory=TextClsData)
    model: TextClsModel = Field(default_factory=TextClsModel)
