"""Fusion heads: per-modality embeddings + a presence mask -> logits.

Every head follows one interface (third-party heads registered through
``register_fusion_heads`` implement the same)::

    head = Head(embed_dims={"text": 384, "image": 512}, out_dim=2, hidden=128, dropout=0.1)
    logits = head(embeddings, mask)  # {name: [B, D_m]}, [B, M] bool or 0/1 -> [B, out_dim]

``mask[:, i]`` says whether modality ``i`` (in the order of ``embed_dims``) is present.
A missing modality has no influence on the output: its embedding row is replaced by zeros
before anything else touches it (so it may hold garbage, even NaN) and no gradient reaches
it. Rows with a single present modality are fine; a row with none gets a finite,
input-independent output (the task is expected to drop such rows before training).

Heads never mix rows (no batch norm), so each row's output depends on that row only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medmm.errors import ConfigError

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "FusionHead",
    "GatedFusion",
    "LateFusion",
    "masked_softmax",
    "modality_dropout",
]


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax of ``scores`` over the entries where ``mask`` is true; exactly 0 elsewhere.

    ``mask`` broadcasts against ``scores``. A slice with no true entry gives all zeros
    (never NaN, and no NaN gradient).
    """
    mask = mask.bool()
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask


def modality_dropout(mask: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Randomly hide present modalities (training-time augmentation).

    Each present modality of each row is hidden with probability ``p``; when that would
    hide every present modality of a row, one of them, chosen uniformly, is kept. A present
    modality of a row with ``k`` present ones is therefore hidden with probability
    ``p - p**k / k`` (and never when ``k == 1``). Absent modalities stay absent.

    Args:
        mask: ``[B, M]`` presence mask (bool or 0/1).
        p: hiding probability in ``[0, 1]``.
        generator: optional ``torch.Generator`` for reproducible draws (on any device).

    Returns:
        A new mask of the same shape, dtype and device as ``mask``.
    """
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ConfigError(f"modality dropout probability must be in [0, 1], got {p}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be [batch, modalities], got shape {tuple(mask.shape)}")
    present = mask.bool()
    if p == 0.0 or mask.numel() == 0:
        return mask.clone()
    device = generator.device if generator is not None else mask.device
    draws = torch.rand((2, *mask.shape), generator=generator, device=device).to(mask.device)
    kept = present & (draws[0] >= p)
    emptied = present.any(dim=1) & ~kept.any(dim=1)
    rescue = draws[1].masked_fill(~present, -1.0).argmax(dim=1)  # uniform among present ones
    rescued = nn.functional.one_hot(rescue, mask.shape[1]).bool() & emptied.unsqueeze(1)
    return (kept | rescued).to(mask.dtype)


class FusionHead(nn.Module):
    """Base class: validates the arguments and sanitises inputs for the concrete heads."""

    def __init__(self, embed_dims: Mapping[str, int], out_dim: int, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        if not embed_dims:
            raise ConfigError("a fusion head needs at least one modality")
        bad = {name: dim for name, dim in embed_dims.items() if not isinstance(dim, int) or dim < 1}
        if bad:
            raise ConfigError(f"embedding sizes must be positive integers, got {bad}")
        if out_dim < 1 or hidden < 1:
            raise ConfigError(f"out_dim and hidden must be >= 1, got out_dim={out_dim}, hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.names = list(embed_dims)
        self.embed_dims = dict(embed_dims)
        self.out_dim = out_dim
        self.hidden = hidden

    def _inputs(self, embeddings: Mapping[str, Tensor], mask: Tensor) -> tuple[list[Tensor], Tensor]:
        """Embeddings in ``names`` order with missing rows zeroed, and the mask as ``[B, M]`` bool."""
        missing = [name for name in self.names if name not in embeddings]
        if missing:
            raise ValueError(f"no embeddings for modalities {missing} (head expects {self.names})")
        if mask.ndim != 2 or mask.shape[1] != len(self.names):
            raise ValueError(f"mask must be [batch, {len(self.names)}] (columns {self.names}), "
                             f"got shape {tuple(mask.shape)}")
        present = mask.bool()
        xs = []
        for i, name in enumerate(self.names):
            x = embeddings[name]
            if x.ndim != 2 or x.shape != (mask.shape[0], self.embed_dims[name]):
                raise ValueError(f"embeddings[{name!r}] must be [{mask.shape[0]}, {self.embed_dims[name]}], "
                                 f"got {tuple(x.shape)}")
            # where(), not multiplication: 0 * NaN would leak garbage into the output and gradients
            xs.append(torch.where(present[:, i : i + 1], x, torch.zeros((), dtype=x.dtype, device=x.device)))
        return xs, present


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))


class ConcatFusion(FusionHead):
    """Project each modality to ``hidden``, zero the missing ones, append the mask, then an MLP.

    ``MLP([GELU(LayerNorm(W_1 x_1)) * m_1, ..., GELU(LayerNorm(W_M x_M)) * m_M, m])``; the mask
    itself is an input, so the MLP can tell "missing" from "present but near zero".
    """

    def __init__(self, embed_dims: Mapping[str, int], out_dim: int, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__(embed_dims, out_dim, hidden, dropout)
        self.proj = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU())
            for name, dim in self.embed_dims.items()
        })
        self.mlp = _mlp(len(self.names) * (hidden + 1), hidden, out_dim, dropout)

    def forward(self, embeddings: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        xs, present = self._inputs(embeddings, mask)
        zs = [self.proj[name](x) * present[:, i : i + 1] for i, (name, x) in enumerate(zip(self.names, xs))]
        return self.mlp(torch.cat([*zs, present.to(zs[0].dtype)], dim=1))


class GatedFusion(FusionHead):
    """Gated multimodal unit (Arevalo et al., 2017, arXiv:1702.01992), with masking.

    ``h_m = tanh(W_m x_m)``; per-unit gate scores come from all present ``h`` and the mask;
    ``z = softmax`` of those scores over the present modalities only, ``fused = sum_m z_m * h_m``
    -> MLP. (The paper's gates read the raw inputs; reading the projections keeps the gate
    small for wide encoders.)
    """

    def __init__(self, embed_dims: Mapping[str, int], out_dim: int, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__(embed_dims, out_dim, hidden, dropout)
        n = len(self.names)
        self.proj = nn.ModuleDict({name: nn.Linear(dim, hidden) for name, dim in self.embed_dims.items()})
        self.gate = nn.Linear(n * (hidden + 1), n * hidden)
        self.mlp = _mlp(hidden, hidden, out_dim, dropout)

    def gates(self, embeddings: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        """Gate values ``[B, M, hidden]``: per unit, they sum to 1 over the present modalities."""
        return self._fuse(embeddings, mask)[1]

    def _fuse(self, embeddings: Mapping[str, Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        xs, present = self._inputs(embeddings, mask)
        h = torch.stack([torch.tanh(self.proj[name](x)) for name, x in zip(self.names, xs)], dim=1)
        h = h * present.unsqueeze(-1)  # [B, M, H]
        scores = self.gate(torch.cat([h.flatten(1), present.to(h.dtype)], dim=1)).view_as(h)
        z = masked_softmax(scores, present.unsqueeze(-1), dim=1)
        return (z * h).sum(dim=1), z

    def forward(self, embeddings: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        return self.mlp(self._fuse(embeddings, mask)[0])


class AttentionFusion(FusionHead):
    """One token per modality plus a learned CLS token through a small transformer encoder.

    Token ``m`` is ``W_m x_m + e_m`` (a learned modality embedding); missing modalities are
    masked out of attention with ``src_key_padding_mask``; the CLS output -> LayerNorm ->
    Linear gives the logits. ``heads`` must divide ``hidden``.
    """

    def __init__(
        self,
        embed_dims: Mapping[str, int],
        out_dim: int,
        hidden: int = 128,
        dropout: float = 0.1,
        layers: int = 1,
        heads: int = 4,
    ) -> None:
        super().__init__(embed_dims, out_dim, hidden, dropout)
        if layers < 1 or heads < 1 or hidden % heads:
            raise ConfigError(f"attention fusion needs layers >= 1 and heads dividing hidden={hidden}, "
                              f"got layers={layers}, heads={heads}")
        self.proj = nn.ModuleDict({name: nn.Linear(dim, hidden) for name, dim in self.embed_dims.items()})
        self.modality_embed = nn.Parameter(torch.zeros(len(self.names), hidden))
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, embeddings: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        xs, present = self._inputs(embeddings, mask)
        tokens = torch.stack([self.proj[name](x) for name, x in zip(self.names, xs)], dim=1) + self.modality_embed
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        padding = torch.cat([present.new_zeros(present.shape[0], 1), ~present], dim=1)  # True = ignore
        return self.out(self.encoder(tokens, src_key_padding_mask=padding)[:, 0])


class LateFusion(FusionHead):
    """Per-modality linear heads; logits averaged over the present modalities.

    The weights are ``softmax(w)`` renormalised over the present modalities; ``w`` is learned
    (``learn_weights=True``) or fixed at zero, i.e. a plain mean. ``hidden`` is not used: each
    modality's head is ``Dropout -> Linear(D_m, out_dim)``.
    """

    def __init__(
        self,
        embed_dims: Mapping[str, int],
        out_dim: int,
        hidden: int = 128,
        dropout: float = 0.1,
        learn_weights: bool = True,
    ) -> None:
        super().__init__(embed_dims, out_dim, hidden, dropout)
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, out_dim)) for name, dim in self.embed_dims.items()
        })
        self.weight_logits = nn.Parameter(torch.zeros(len(self.names)), requires_grad=learn_weights)

    def weights(self, mask: Tensor) -> Tensor:
        """Per-row modality weights ``[B, M]``: sum to 1 over the present ones, 0 for missing."""
        present = mask.bool()
        return masked_softmax(self.weight_logits.expand(present.shape), present, dim=1)

    def forward(self, embeddings: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        xs, present = self._inputs(embeddings, mask)
        logits = torch.stack([self.heads[name](x) for name, x in zip(self.names, xs)], dim=1)  # [B, M, C]
        return (self.weights(present).to(logits.dtype).unsqueeze(-1) * logits).sum(dim=1)
