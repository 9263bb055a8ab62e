"""The example plugin's modules; they follow medmm's backbone and fusion-head interfaces."""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfNormalizingNet(nn.Module):
    """SELU MLP: ``forward(x) -> [B, out_dim]``, ``embed(x) -> [B, hidden]`` (tabular backbone API)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, blocks: int = 2, dropout: float = 0.05) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(max(1, blocks)):
            linear = nn.Linear(width, hidden)
            nn.init.normal_(linear.weight, std=1.0 / math.sqrt(width))  # LeCun normal, as SELU needs
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.SELU(), nn.AlphaDropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, out_dim)
        self.embed_dim = hidden

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class MaxFusion(nn.Module):
    """Project each modality to ``hidden``, take the max over present ones, classify."""

    def __init__(self, embed_dims: dict[str, int], out_dim: int, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.names = list(embed_dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in embed_dims.items()})
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, embeddings: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        z = torch.stack([self.proj[m](embeddings[m]) for m in self.names], dim=1)  # [B, M, H]
        z = z.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
        return self.head(torch.nan_to_num(z, neginf=0.0))
