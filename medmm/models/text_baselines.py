"""Small text encoders trained from scratch on a :class:`~medmm.data.text.tokenize.SimpleVocab`.

Both follow the encoder contract of :class:`~medmm.models.text.TextClassifier`:
``forward(input_ids, attention_mask) -> [B, embed_dim]``. Inputs are right-padded (the real
tokens of a row are a prefix, as :func:`~medmm.data.text.tokenize.pad_collate` makes them), and
padding never changes an embedding: however much a batch is padded, each row's output is the
same.

``embedding_dim`` is the size of the word vectors; ``embed_dim`` (the attribute) is the size of
the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from medmm.errors import ConfigError

__all__ = ["BiGRUAttention", "TextCNN"]


class TextCNN(nn.Module):
    """Kim (2014) convolutional sentence encoder: parallel 1-D convolutions of several widths,
    max-pooled over time, ReLU, dropout. ``embed_dim = channels * len(kernel_sizes)``.

    Max-pooling only looks at windows made of real tokens (a sequence shorter than a kernel
    uses its single window, completed with zero vectors). The same graph serves every length, so
    a traced or exported model takes texts of one token as well as long ones.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 128, kernel_sizes: Sequence[int] = (3, 4, 5),
                 channels: int = 100, dropout: float = 0.5, pad_id: int = 0):
        super().__init__()
        if not kernel_sizes or min(kernel_sizes) < 1:
            raise ConfigError(f"kernel_sizes must be positive integers, got {kernel_sizes}")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, channels, k) for k in self.kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.embed_dim = channels * len(self.kernel_sizes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        x = self.embedding(input_ids) * mask.unsqueeze(-1)  # zero vectors on padding, whatever its id
        # always max(k) - 1 zero vectors at the end, never "only when too short": a Python test on the
        # length is frozen by tracing / ONNX export, which then broke on texts shorter than a kernel
        x = F.pad(x, (0, 0, 0, max(self.kernel_sizes) - 1))
        x = x.transpose(1, 2)  # [B, E, L + max(k) - 1]
        lengths = mask.sum(dim=1, keepdim=True)  # [B, 1]
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            y = conv(x)  # [B, C, L - k + 1]; position t covers tokens t .. t+k-1
            pos = torch.arange(y.size(-1), device=y.device).unsqueeze(0)
            valid = (pos + k <= lengths) | (pos == 0)
            y = y.masked_fill(~valid.unsqueeze(1), torch.finfo(y.dtype).min)
            pooled.append(F.relu(y.amax(dim=-1)))
        return self.dropout(torch.cat(pooled, dim=1))


class BiGRUAttention(nn.Module):
    """Bidirectional GRU / LSTM with additive attention pooling (Yang et al., 2016).

    Sequences are packed, so the recurrence never reads padding; attention weights are zero on
    padding. ``embed_dim = 2 * hidden``.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 128, hidden: int = 128, layers: int = 1,
                 dropout: float = 0.3, cell: Literal["gru", "lstm"] = "gru", pad_id: int = 0):
        super().__init__()
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}.get(cell)
        if rnn_cls is None:
            raise ConfigError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.rnn = rnn_cls(embedding_dim, hidden, num_layers=layers, batch_first=True,
                           bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        self.attn_proj = nn.Linear(2 * hidden, 2 * hidden)
        self.attn_score = nn.Linear(2 * hidden, 1, bias=False)
        self.embed_dim = 2 * hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        width = input_ids.size(1)
        lengths = attention_mask.bool().sum(dim=1).clamp(min=1)  # an empty row reads one pad token
        x = self.dropout(self.embedding(input_ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=width)  # zeros past length
        scores = self.attn_score(torch.tanh(self.attn_proj(out))).squeeze(-1).float()  # [B, L]
        valid = torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
        weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=-1)
        return torch.einsum("bl,bld->bd", weights.to(out.dtype), out)
