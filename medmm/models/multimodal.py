"""Encoders + a fusion head as one model: what the fusion task trains and predicts with.

The encoders are the registered backbones the single-modality tasks use (an
:class:`~medmm.models.text.HFTextEncoder`, an :class:`~medmm.models.image.ImageBackbone`, a
tabular network), wrapped so that each maps its raw input to ``[B, embed_dim]``. The head is
any registered fusion head (:mod:`medmm.models.fusion_heads`).

A batch is a dict. ``mask`` ``[B, M]`` says which modality each row has (columns in
:attr:`FusionModel.names` order). A modality enters either as raw input (``text`` =
``(input_ids, attention_mask)``, ``image`` ``[B, C, H, W]``, ``tabular`` ``[B, D]``) or as a
precomputed embedding under ``emb_<name>`` (frozen encoders, see the fusion task's cache).
Encoders only ever see the rows that have their modality; the other rows are zeros that the
head masks out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FusionModel", "ImageEncoder", "TabularEncoder"]


class ImageEncoder(nn.Module):
    """Normalises ``[0, 1]`` images with the backbone's mean / std, then embeds them."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(backbone.embed_dim)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone((x - self.mean) / self.std)


class TabularEncoder(nn.Module):
    """A tabular backbone's :meth:`embed` (its output layer is dropped: fusion has its own)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if hasattr(net, "head"):
            net.head = nn.Identity()  # unused parameters would break DDP
        self.net = net
        self.embed_dim = int(net.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.embed(x)


class FusionModel(nn.Module):
    """Per-modality encoders and one fusion head; see the module docstring for the batch."""

    def __init__(self, encoders: Mapping[str, nn.Module], head: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.head = head

    def embeddings(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """``{name: [B, D]}``: precomputed where the batch has them, else encoded (present rows only)."""
        mask = batch["mask"].bool()
        out: dict[str, Tensor] = {}
        for i, name in enumerate(self.names):
            cached = batch.get(f"emb_{name}")
            if cached is not None:
                out[name] = cached.float()
                continue
            encoder = self.encoders[name]
            present = mask[:, i]
            emb = torch.zeros(mask.shape[0], encoder.embed_dim, device=mask.device)
            if present.any():
                emb = emb.index_put((present,), _encode(encoder, name, batch[name], present).to(emb.dtype))
            out[name] = emb
        return out

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        return self.head(self.embeddings(batch), batch["mask"])


def _encode(encoder: nn.Module, name: str, x: Any, present: Tensor) -> Tensor:
    if name == "text":
        ids, attention = x[0][present], x[1][present]
        width = int(attention.sum(1).max())  # the batch was padded for all rows; trim to the present ones
        return encoder(ids[:, :width], attention[:, :width])
    return encoder(x[present])
