"""Evaluation batches in length order inside fixed windows (#30: text predict padded 3.19x)."""

from __future__ import annotations

import numpy as np
import pytest

from medmm.batching import eval_window, length_order
from medmm.engine.sampling import eval_batches


def _padded(lengths: np.ndarray, batches: list[list[int]]) -> int:
    """Tokens the model runs: each batch padded to its longest sequence."""
    return sum(len(b) * int(lengths[b].max()) for b in batches)


def test_each_window_is_sorted_by_length_and_ties_keep_their_order() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 6, 3 * eval_window(4) + 5)  # many ties, a short last window
    order = length_order(lengths, 4)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    w = eval_window(4)
    for start in range(0, len(lengths), w):
        part = order[start : start + w]
        assert ((part >= start) & (part < start + w)).all()  # never leaves its window
        assert part.tolist() == sorted(part.tolist(), key=lambda i: (lengths[i], i))


def test_a_block_on_a_window_boundary_is_batched_as_inside_the_whole() -> None:
    """What keeps a streamed prediction byte-identical to one pass: the same batches."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 300, 5 * eval_window(8) + 17)
    whole = eval_batches(len(lengths), 8, lengths=lengths)
    start = 2 * eval_window(8)
    block = eval_batches(len(lengths) - start, 8, lengths=lengths[start:])
    assert [[i + start for i in b] for b in block] == whole[start // 8 :]


def test_length_windows_pad_less_than_file_order_and_cover_every_example_once() -> None:
    rng = np.random.default_rng(2)
    lengths = np.minimum(rng.lognormal(3.7, 0.6, 4000).astype(int) + 1, 256)  # notes: median ~40 tokens
    plain = eval_batches(len(lengths), 64)
    windowed = eval_batches(len(lengths), 64, lengths=lengths)
    assert _padded(lengths, windowed) < 0.6 * _padded(lengths, plain)
    assert sorted(i for b in windowed for i in b) == list(range(len(lengths)))
    ranks = [eval_batches(len(lengths), 64, rank, 2, lengths=lengths) for rank in (0, 1)]
    assert sorted(i for r in ranks for b in r for i in b) == list(range(len(lengths)))
    with pytest.raises(ValueError, match="3 lengths for 4 examples"):
        eval_batches(4, 2, lengths=[1, 2, 3])
