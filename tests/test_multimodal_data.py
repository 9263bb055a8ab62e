"""medmm.data.multimodal: rows with missing modalities, embeddings instead of inputs, collation."""

from __future__ import annotations

import functools
import pickle
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medmm.data.multimodal import MultimodalRows, collate_rows, pad_tokens


class Pixels:
    def image(self, key: str) -> np.ndarray:
        return np.full((1, 2, 2), float(key), dtype=np.float32)


def _data(emb: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    return {"names": ["text", "image", "tabular"],
            "mask": np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1]], dtype=bool),
            "emb": emb or {},
            "tokens": [np.array([5, 6, 7]), np.zeros(0, np.int64), np.array([8])],
            "image_keys": ["1", "2", ""], "pixels": Pixels(),
            "tabular": np.arange(6, dtype=np.float32).reshape(3, 2)}


def test_rows_collate_with_padding_zero_images_and_labels() -> None:
    rows = MultimodalRows(np.array([2, 0]), _data(), np.array([1, 0]))  # a subset, in its own order
    collate = functools.partial(collate_rows, pad_id=0, image_shape=(1, 2, 2))
    batch = next(iter(DataLoader(rows, batch_size=2, collate_fn=collate)))
    assert batch["index"].tolist() == [0, 1] and batch["label"].tolist() == [1, 0]
    assert batch["mask"].tolist() == [[True, False, True], [True, True, True]]
    ids, att = batch["text"]
    assert ids.tolist() == [[8, 0, 0], [5, 6, 7]] and att.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch["image"][0].abs().sum() == 0 and torch.all(batch["image"][1] == 1.0)
    assert batch["tabular"].tolist() == [[4.0, 5.0], [0.0, 1.0]]


def test_embeddings_replace_inputs_and_unlabelled_rows_have_no_label() -> None:
    emb = {"text": np.array([[0.5], [1.5], [2.5]], dtype=np.float32)}
    rows = MultimodalRows(np.array([1]), _data(emb), None)
    item = rows[0]
    assert "text" not in item and item["emb_text"].tolist() == [1.5]
    batch = pickle.loads(pickle.dumps(functools.partial(collate_rows, pad_id=0, image_shape=(1, 2, 2))))([item])
    assert "label" not in batch and batch["emb_text"].dtype == torch.float32


def test_pad_tokens_keeps_width_one_for_empty_rows() -> None:
    ids, att = pad_tokens([np.zeros(0, np.int64), np.zeros(0, np.int64)], pad_id=3)
    assert ids.tolist() == [[3], [3]] and att.sum() == 0
