"""The fusion task's per-modality encoders and what they read: tokens, tabular features, frozen embeddings.

The encoders are the registered backbones of the single-modality tasks. With ``model.mode=frozen``
the text and image embeddings are computed once and cached on disk keyed by data + encoder
(:mod:`medmm.data.embedding_cache`); the head then reads them instead of the raw inputs.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmm import (
    Component, ConfigError, EmbeddingCache, fingerprint_files, fingerprint_module,
    fingerprint_texts, FusionModel, ImageEncoder, load_module_weights, pad_id_of, pad_tokens, Preprocessor,
    TabularEncoder,
)
from medmm_plugins.fusion.config import FusionConfig, FusionModelConfig
from medmm_plugins.fusion.rows import BACKBONE_KEYS, pixel_config, text_tokens

__all__ = ["FROZEN_FILE", "TEXT_DIR", "EncoderInputs", "backbone_of", "build_encoders", "frozen_modalities",
           "image_encoder", "load_frozen", "tabular_encoder", "text_encoder"]

log = logging.getLogger("medmm.fusion")
TEXT_DIR = "text_encoder"
FROZEN_FILE = "frozen_encoders.safetensors"
BackboneLookup = Callable[..., Component]  # Task.backbone(name, modality, key=...)


def frozen_modalities(m: FusionModelConfig, names: list[str]) -> set[str]:
    """Modalities whose (pretrained) encoder is frozen and read from the embedding cache."""
    return {"text", "image"} & set(names) if m.mode == "frozen" else set()


def backbone_of(lookup: BackboneLookup, m: FusionModelConfig, modality: str) -> Component:
    """The registered backbone ``model.<modality>_backbone`` (a ConfigError if it is of another modality)."""
    key = BACKBONE_KEYS[modality]
    return lookup(getattr(m, key), modality, key=f"model.{key}")


def text_encoder(cfg: FusionConfig, lookup: BackboneLookup, artifacts: Path | None) -> tuple[nn.Module, Any]:
    """The pretrained text encoder and its tokenizer (predict: the run's saved ones in ``artifacts``)."""
    from medmm import load_text_backbone

    if artifacts is not None:
        return load_text_backbone(artifacts / TEXT_DIR)
    m = cfg.model
    comp = backbone_of(lookup, m, "text")
    factory = comp.load()
    if isinstance(factory, type):
        raise ConfigError(f"model.text_backbone {m.text_backbone!r} trains from a vocabulary; "
                          "fusion needs a pretrained encoder (minilm-l6, hf-local, ...)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return factory(comp.name, name_or_path=m.text_name_or_path, pooling=m.pooling)


def image_encoder(cfg: FusionConfig, lookup: BackboneLookup, *, predict: bool) -> nn.Module:
    """The image backbone (``predict``: no pretrained weights, they come from the run's checkpoint)."""
    m, d = cfg.model, cfg.data
    comp = backbone_of(lookup, m, "image")
    torch.manual_seed(cfg.seed)
    backbone = comp.build(timm_name=comp.extra.get("timm_name", comp.name), in_chans=d.channels,
                          img_size=d.size, pretrained="none" if predict else m.image_pretrained,
                          weights=None if predict else m.image_weights)
    return ImageEncoder(backbone)


def tabular_encoder(cfg: FusionConfig, lookup: BackboneLookup, in_dim: int) -> nn.Module:
    """The tabular backbone over ``in_dim`` preprocessed features (trained with the head)."""
    m = cfg.model
    factory = backbone_of(lookup, m, "tabular").load()
    accepted = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in {"hidden": m.hidden, "dropout": m.dropout}.items() if k in accepted}
    torch.manual_seed(cfg.seed)
    return TabularEncoder(factory(in_dim, 1, **kwargs))


def build_encoders(cfg: FusionConfig, names: list[str], lookup: BackboneLookup, *, artifacts: Path | None,
                   preprocessor: Preprocessor | None) -> tuple[dict[str, nn.Module], Any]:
    """One encoder per modality in ``names`` and the text tokenizer (``None`` without text)."""
    encoders: dict[str, nn.Module] = {}
    tokenizer = None
    if "text" in names:
        encoders["text"], tokenizer = text_encoder(cfg, lookup, artifacts)
    if "image" in names:
        encoders["image"] = image_encoder(cfg, lookup, predict=artifacts is not None)
    if "tabular" in names:
        assert preprocessor is not None
        encoders["tabular"] = tabular_encoder(cfg, lookup, preprocessor.n_features)
    return encoders, tokenizer


def load_frozen(model: FusionModel, path: Path, frozen: list[str]) -> None:
    """The weights of the ``frozen`` encoders, saved once with the run's artifacts, into ``model``."""
    load_module_weights(model.encoders, path, only=frozen)


@dataclass(frozen=True)
class EncoderInputs:
    """The encoders' inputs for a rows dict (:func:`medmm_plugins.fusion.rows.load_rows`), added to it in place."""

    cfg: FusionConfig
    names: list[str]
    tokenizer: Any
    cache_dir: Path

    def prepare(self, data: dict[str, Any], *, frozen: set[str], preprocessor: Preprocessor | None) -> None:
        """Tokenise texts (unless frozen) and transform tabular features (the raw inputs of the encoders)."""
        if "text" in self.names and "text" not in frozen:
            data["tokens"] = self.tokenize(data["texts"], data["mask"][:, self.names.index("text")])
        if "tabular" in self.names:
            assert preprocessor is not None
            data["tabular"] = preprocessor.transform(data["table"])

    def tokenize(self, texts: list[str], present: np.ndarray) -> list[np.ndarray]:
        """Token ids of the ``present`` texts (cached), an empty array for the others (:func:`text_tokens`)."""
        return text_tokens(texts, present, self.tokenizer, max_length=self.cfg.data.max_length,
                           cache_dir=self.cache_dir)

    def cache_embeddings(self, data: dict[str, Any], encoders: dict[str, nn.Module], frozen: set[str]) -> None:
        """Frozen encoders: embeddings of every present row (``data["emb"]``), computed once and cached on disk."""
        cache = EmbeddingCache(self.cache_dir / "embeddings")
        for name in sorted(frozen):
            encoder = encoders[name]
            col = data["mask"][:, self.names.index(name)]
            idx = np.flatnonzero(col)
            if name == "text":
                data_fp = fingerprint_texts([data["texts"][i] for i in idx])
                extra = f"max_length={self.cfg.data.max_length};pooling={self.cfg.model.pooling}"
            else:
                data_fp = fingerprint_files([data["image_keys"][i] for i in idx], data["image_root"])
                extra = json.dumps(pixel_config(self.cfg.data).to_dict(), sort_keys=True)
            key = cache.key(data_fp, fingerprint_module(encoder, extra=extra))
            emb = cache.load(key)
            if emb is None or emb.shape[0] != len(idx):
                emb = self.encode(name, encoder, data, idx)
                cache.save(key, emb)
                log.info("%s embeddings: %d rows encoded and cached", name, len(idx))
            else:
                log.info("%s embeddings: %d rows from the cache", name, len(idx))
            full = np.zeros((data["n"], emb.shape[1]), dtype=np.float32)
            full[idx] = emb
            data["emb"][name] = full

    def encode(self, name: str, encoder: nn.Module, data: dict[str, Any], idx: np.ndarray) -> np.ndarray:
        """Embeddings of rows ``idx`` (in that order) on the engine's device and precision."""
        from medmm import run_module

        e, forward, order = self.cfg.engine, None, np.arange(len(idx))
        if name == "text":  # shortest first: batches with little padding
            tokens = self.tokenize(data["texts"], data["mask"][:, self.names.index("text")])
            order = np.argsort([len(tokens[i]) for i in idx], kind="stable")
            pad = pad_id_of(self.tokenizer)
            forward = lambda m, b: m(*b)  # (ids, attention) -> encoder(ids, attention)
        parts = [idx[order[s : s + e.eval_batch_size]] for s in range(0, len(idx), e.eval_batch_size)]
        if name == "text":
            batches: Any = (pad_tokens([tokens[i] for i in part], pad) for part in parts)
        else:
            pixels, keys = data["pixels"], data["image_keys"]
            batches = (torch.from_numpy(np.stack([pixels.image(keys[i]) for i in part])) for part in parts)
        outputs = run_module(encoder, batches, device=e.device, precision=e.precision, forward=forward)
        if not outputs:
            return np.zeros((0, int(encoder.embed_dim)), dtype=np.float32)
        emb = np.empty((len(idx), outputs[0].shape[1]), dtype=np.float32)
        emb[order] = torch.cat(outputs).numpy()  # back to the order of idx
        return emb
