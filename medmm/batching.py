"""Evaluation batches in length order inside fixed windows: the rule the engine and the torch-free
runtime share (numpy only).

Evaluation pads each batch to its longest sequence. In file order a batch of notes pads to about
3x their real tokens; sorting the whole input by length would make a block of a streamed
prediction see other batches than one pass. So the examples are sorted by length (stable) only
inside consecutive windows of :data:`WINDOW_BATCHES` evaluation batches, counted from the first
example: a block that starts on a window boundary (:func:`eval_window`) is batched exactly as
inside the whole input, and the outputs are put back in example order before pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["WINDOW_BATCHES", "eval_window", "length_order"]

#: Evaluation batches per length-sorted window (16 x 64 = 1,024 sequences by default).
WINDOW_BATCHES = 16


def eval_window(batch: int) -> int:
    """Examples per length-sorted window for evaluation batches of ``batch``."""
    return max(int(batch), 1) * WINDOW_BATCHES


def length_order(lengths: Sequence[int] | np.ndarray, batch: int) -> np.ndarray:
    """Example positions in the order they are batched: each window of :func:`eval_window` ``(batch)``
    consecutive examples shortest first (ties keep their order); cut it into batches of ``batch``."""
    lengths = np.asarray(lengths)
    window = np.arange(len(lengths)) // eval_window(batch)
    return np.lexsort((lengths, window))
