"""Opt-in pretrained weights from the Hugging Face hub, through the standard HF cache.

medmm stays offline by default. ``model.pretrained=hub`` (image: timm's own ``pretrained=True``)
or the ``hf-hub`` text backbone (``model.name_or_path=<hub id>``) download once into the
standard cache (``HF_HUB_CACHE`` / ``HF_HOME``, default ``~/.cache/huggingface/hub``) and say so
in the log; with ``HF_HUB_OFFLINE=1`` they resolve from that cache, and a missing entry is a
one-line error naming the cache folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from medmm.errors import ConfigError

__all__ = ["cache_dir", "hub_text_folder", "timm_hub_model"]

log = logging.getLogger("medmm")

TEXT_FILES = ["config.json", "*.safetensors", "tokenizer*", "vocab*", "special_tokens_map.json", "merges.txt",
              "*.model"]
BIN_FILES = ["pytorch_model.bin"]  # older repos only: read by transformers with torch.load(weights_only=True)


def cache_dir() -> str:
    """The Hugging Face hub cache in use."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _missing(what: str, exc: Exception) -> ConfigError:
    where = "HF_HUB_OFFLINE=1 and it is not in the cache" if _offline() else f"download failed ({exc})"
    return ConfigError(f"{what}: {where} ({cache_dir()}); run once with network access, or use local weights")


def hub_text_folder(repo_id: str) -> Path:
    """Local snapshot folder of a hub text model (config, safetensors weights, tokenizer)."""
    from huggingface_hub import snapshot_download

    if not repo_id or Path(repo_id).expanduser().exists():
        raise ConfigError(f"backbone hf-hub needs model.name_or_path=<hub id>, e.g. emilyalsentzer/Bio_ClinicalBERT "
                          f"(got {repo_id!r}; a local folder is backbone hf-local)")
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=TEXT_FILES))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=[*TEXT_FILES, *BIN_FILES]))
    except Exception as exc:  # noqa: BLE001 - offline miss, network error, unknown repo: one line
        raise _missing(f"hub model {repo_id!r}", exc) from None
    if not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").exists():
        raise ConfigError(f"hub model {repo_id!r} has no weights file (model.safetensors or pytorch_model.bin)")
    log.warning("text backbone %s: pretrained weights from the Hugging Face hub (cache %s)%s", repo_id, cache_dir(),
                " - offline, from the cache" if _offline() else "")
    return folder


def timm_hub_model(arch: str, **kwargs: Any) -> Any:
    """``timm.create_model(arch, pretrained=True, **kwargs)``: weights from the hub cache, announced."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ConfigError(f"timm has no hub weights for {arch!r}; use model.pretrained=path with model.weights")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        model = timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _missing(f"timm weights {hub_id!r} for {arch}", exc) from None
    log.warning("image backbone %s: pretrained weights from the Hugging Face hub (%s, cache %s)%s", arch, hub_id,
                cache_dir(), " - offline, from the cache" if _offline() else "")
    return model
