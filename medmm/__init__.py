"""medmm: multimodal clinical machine learning with pluggy task plugins.

This module is the public API for plugin authors: everything a task plugin needs is importable
from ``medmm`` itself (``from medmm import Task, TaskSpec, hookimpl, read_table``). Names are
resolved lazily on first use, so ``import medmm`` (and ``medmm --help``) imports neither torch nor
pandas. The built-in plugins (``plugins/``) and the example plugin (``examples/``) import nothing
else from medmm; a test keeps it so. The plugin author guide (docs/plugins.md) documents each name.
"""

from __future__ import annotations

import importlib
from typing import Any

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("medmm")
"""Decorator for plugin hook implementations: ``@medmm.hookimpl``."""

# name -> module that defines it (the one home of each name; imported on first attribute access)
_API: dict[str, str] = {
    # the plugin contract
    "Task": "medmm.task", "TaskSpec": "medmm.task", "Split": "medmm.task", "DataBundle": "medmm.task",
    "BundleMeta": "medmm.task", "BaselineInputs": "medmm.task", "DeploySpec": "medmm.task",
    "GraphInput": "medmm.task",
    "read_split_column": "medmm.task", "study_references": "medmm.task", "assign_splits": "medmm.task",
    "pad_sequences": "medmm.task",
    "pad_id_of": "medmm.task",
    "Component": "medmm.registry", "get_registry": "medmm.plugins", "load_plugins": "medmm.plugins",
    "Run": "medmm.run", "check_task": "medmm.testing", "CheckReport": "medmm.testing",
    # errors (one line on the command line, no traceback)
    "MedmmError": "medmm.errors", "ConfigError": "medmm.errors", "DataError": "medmm.errors",
    "PluginError": "medmm.errors", "CheckpointError": "medmm.errors", "UnknownNameError": "medmm.errors",
    # typed config
    "TaskConfig": "medmm.config", "DataConfig": "medmm.config", "ModelConfig": "medmm.config",
    "Range": "medmm.config", "set_key": "medmm.config",
    "ConfigModel": "medmm.config.base", "Bool": "medmm.config.base", "Float": "medmm.config.base",
    "Fraction": "medmm.config.base", "PosInt": "medmm.config.base", "NonNegInt": "medmm.config.base",
    "StrList": "medmm.config.base", "OptStrList": "medmm.config.base",
    "get_key": "medmm.recipes", "has_key": "medmm.recipes", "apply_defaults": "medmm.recipes",
    "choose_mode": "medmm.recipes",
    # files
    "read_json": "medmm.io", "write_json_atomic": "medmm.io", "write_text_atomic": "medmm.io",
    "release_free_memory": "medmm.io",
    # tables
    "read_table": "medmm.data.readers", "read_table_chunks": "medmm.data.readers",
    "read_table_blocks": "medmm.data.readers", "BlockTable": "medmm.data.readers",
    "is_missing": "medmm.data.readers",
    "Preprocessor": "medmm.data.tabular.preprocess", "fit_preprocessor": "medmm.data.tabular.preprocess",
    "infer_column_types": "medmm.data.tabular.preprocess", "prepare_target": "medmm.data.tabular.preprocess",
    "select_features": "medmm.data.tabular.preprocess", "warn_leaky_features": "medmm.data.leakage",
    # text
    "TextExamples": "medmm.data.text.examples", "load_text_examples": "medmm.data.text.examples",
    "SimpleVocab": "medmm.data.text.tokenize", "TokenizedCorpus": "medmm.data.text.tokenize",
    "TokenizedTextDataset": "medmm.data.text.tokenize", "pad_collate": "medmm.data.text.tokenize",
    "tokenize_cached": "medmm.data.text.tokenize",
    "eval_window": "medmm.batching", "length_order": "medmm.batching",
    # DICOM images
    "PixelConfig": "medmm.data.dicom.pixels", "PixelCache": "medmm.data.dicom.cache", "UnitColumns": "medmm.predictions",
    "DicomImageDataset": "medmm.data.dicom.dataset", "Skipped": "medmm.data.dicom.scan",
    "scan_folder": "medmm.data.dicom.scan", "image_items": "medmm.data.dicom.scan",
    "group_key": "medmm.data.dicom.scan", "decode_workers": "medmm.data.dicom.scan",
    "labels_from_csv": "medmm.data.dicom.labels", "labels_from_folders": "medmm.data.dicom.labels",
    "load_row_images": "medmm.data.dicom.series",
    # several modalities
    "MultimodalRows": "medmm.data.multimodal", "collate_rows": "medmm.data.multimodal",
    "pad_tokens": "medmm.data.multimodal", "EmbeddingCache": "medmm.data.embedding_cache",
    "fingerprint_files": "medmm.data.embedding_cache", "fingerprint_module": "medmm.data.embedding_cache",
    "fingerprint_texts": "medmm.data.embedding_cache", "cached_embeddings": "medmm.data.embedding_cache",
    "EmbeddingRows": "medmm.data.embedding_cache", "collate_embeddings": "medmm.data.embedding_cache",
    # models
    "TextClassifier": "medmm.models.text", "load_text_backbone": "medmm.models.text",
    "save_text_backbone": "medmm.models.text", "ImageClassifier": "medmm.models.image",
    "FusionModel": "medmm.models.multimodal", "ImageEncoder": "medmm.models.multimodal",
    "TabularEncoder": "medmm.models.multimodal", "modality_dropout": "medmm.models.fusion_heads",
    # engine
    "Trainer": "medmm.engine", "select_device": "medmm.engine.device",
    "load_weights": "medmm.engine.checkpoint", "load_module_weights": "medmm.engine.checkpoint",
    "model_state": "medmm.engine.checkpoint", "run_module": "medmm.engine.inference",
    # deployment (Task.deploy_spec, TaskSpec.runtime): torch-free pieces of the onnxruntime path
    "Examples": "medmm.deploy.runtime", "FastTokenizer": "medmm.deploy.runtime",
    "batch_slices": "medmm.deploy.runtime", "require": "medmm.deploy.manifest",
    "scores_from_output": "medmm.engine.losses",
    # explanations (Task.explain_spec)
    "ExplainSpec": "medmm.explain.spec", "InputSpec": "medmm.explain.spec",
    "token_input": "medmm.explain.text",
    "image_input": "medmm.explain.image", "feature_input": "medmm.explain.tabular",
    # reports, baselines, pseudonyms, demo data
    "html_table": "medmm.report", "small_pixels": "medmm.classic", "paired_diff_ci": "medmm.classic",
    "LazyRows": "medmm.classic",
    "Pseudonymizer": "medmm.deid.pseudonyms", "load_key": "medmm.deid.pseudonyms",
    "build_demo": "medmm.demos.dicom", "build_fusion_demo": "medmm.demos.fusion",
    "build_reports_csv": "medmm.demos.reports",
}

__all__ = ["__version__", "hookimpl", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'medmm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
