"""Run one padded text batch as a few length-sorted micro-batches: same examples, less padding.

A random (shuffled) batch of clinical reports mixes 20- and 128-token documents; padded to the
longest, most of its tokens are padding. :func:`grouped_embed` sorts the batch's rows by length,
cuts them into contiguous groups (:func:`plan_groups`: the cut that minimises padded tokens plus a
fixed per-call cost), runs the encoder once per group trimmed to that group's longest row, and
puts the embeddings back in the batch's row order. The loss is still computed once over the
whole batch, so the batch composition, the loss and its gradient are the padded batch's (up to
floating-point summation order) for any encoder whose output for a row does not depend on the
padding width (``tests/test_text_models.py`` checks this for every medmm text encoder), unlike
length buckets, which change which examples share a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["GROUP_OVERHEAD_TOKENS", "grouped_embed", "plan_groups"]

# One extra encoder call costs about as much as this many padded tokens (forward + backward).
# CPU: measured on MiniLM-L6, 2 cores (README design notes). CUDA: not measured; a small
# encoder's step there is bound by kernel launches, so only strongly uneven batches are split.
GROUP_OVERHEAD_TOKENS = {"cpu": 48, "cuda": 1024}


def plan_groups(lengths: Sequence[int], overhead: int) -> list[tuple[int, int, int]]:
    """Cut lengths sorted in decreasing order into ``(start, stop, width)`` groups.

    Minimises ``sum(rows * width) + overhead * groups`` exactly (O(n²) dynamic programme over
    the cut points; n is the batch size). ``width`` is the group's first (longest) length.
    """
    n = len(lengths)
    if n == 0:
        return []
    best = [0.0] + [float("inf")] * n  # best[j]: cost of rows [0, j)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[i] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        i = cut[j]
        groups.append((i, j, int(lengths[i])))
        j = i
    return groups[::-1]


def grouped_embed(encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, overhead: int | None = None) -> torch.Tensor:
    """``encoder(input_ids, attention_mask)`` computed group by group; rows in the input order.

    Right padding is assumed (as :func:`medmm.data.text.tokenize.pad_collate` writes it): row
    ``i`` is ``input_ids[i, :length_i]``. A batch the plan keeps whole is passed through as it is.
    """
    if overhead is None:
        overhead = GROUP_OVERHEAD_TOKENS.get(input_ids.device.type, GROUP_OVERHEAD_TOKENS["cuda"])
    lengths = attention_mask.sum(dim=1).cpu()  # one small copy (a sync on a GPU), B integers
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    groups = plan_groups(sorted_lengths, overhead)
    if len(groups) == 1:
        return encoder(input_ids, attention_mask)
    order = order.to(input_ids.device)
    ids, mask = input_ids.index_select(0, order), attention_mask.index_select(0, order)
    parts = [encoder(ids[a:b, :max(width, 1)], mask[a:b, :max(width, 1)]) for a, b, width in groups]
    embedded = torch.cat(parts)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return embedded.index_select(0, inverse)
