"""Disk cache for frozen-encoder embeddings, keyed by (data, encoder) fingerprints.

With frozen encoders the fusion task computes each modality's embeddings once::

    cache = EmbeddingCache(run_cache_dir)
    key = cache.key(fingerprint_texts(texts), fingerprint_module(encoder, extra="max_length=128"))
    emb = cache.load(key)
    if emb is None:
        emb = encode_all(texts)            # float array, one row per item, in input order
        cache.save(key, emb)

Arrays are stored as plain ``.npy`` files, written atomically (:func:`medmm.io.atomic_write`)
and read back memory-mapped with ``allow_pickle=False``: a cache file can never execute code.
Fingerprints are order-sensitive because row ``i`` of the array belongs to item ``i``.
The cache folder is tagged with ``CACHEDIR.TAG`` so backup tools and medmm's DICOM scanner
skip it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medmm.errors import DataError
from medmm.io import atomic_write

if TYPE_CHECKING:
    from torch import nn

__all__ = ["EmbeddingCache", "EmbeddingRows", "cached_embeddings", "collate_embeddings", "fingerprint_files",
           "fingerprint_module", "fingerprint_texts"]

logger = logging.getLogger(__name__)

_FORMAT = b"medmm-embeddings-v1"
_KEY = re.compile(r"[0-9a-f]{64}")
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by medmm (embedding cache).\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


class EmbeddingCache:
    """A folder of ``<key>.npy`` arrays; see the module docstring."""

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.cache_dir = Path(cache_dir)

    @staticmethod
    def key(data_fingerprint: str, encoder_fingerprint: str) -> str:
        """The cache key (sha256 hex) of one data set encoded by one encoder."""
        h = hashlib.sha256(_FORMAT)
        for part in (data_fingerprint, encoder_fingerprint):
            _update(h, part.encode("utf-8"))
        return h.hexdigest()

    def path(self, key: str) -> Path:
        """Where the array for ``key`` lives (whether or not it exists)."""
        if not _KEY.fullmatch(key):
            raise ValueError(f"not an embedding cache key (64 lowercase hex digits): {key!r}")
        return self.cache_dir / f"{key}.npy"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> np.ndarray | None:
        """The cached array (read-only, memory-mapped), or ``None`` on a miss.

        An unreadable or corrupt file counts as a miss (logged) and is overwritten by the
        next :meth:`save`. Copy the result (``np.array(a)``) before handing it to code that
        writes into it, e.g. ``torch.from_numpy``.
        """
        path = self.path(key)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as exc:  # truncated, not .npy, object dtype
            logger.warning("ignoring unreadable embedding cache file %s: %s", path.name, exc)
            return None
        if not isinstance(array, np.ndarray):  # e.g. a zip archive (.npz) under our name
            getattr(array, "close", lambda: None)()
            logger.warning("ignoring embedding cache file %s: not a .npy array", path.name)
            return None
        return array

    def save(self, key: str, array: np.ndarray) -> Path:
        """Store ``array`` under ``key`` atomically and return its path."""
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise DataError("embeddings must be a numeric array; object arrays would need pickle")
        path = self.path(key)
        self._ensure_dir()
        with atomic_write(path, "wb") as f:
            np.save(f, array, allow_pickle=False)
        return path

    def _ensure_dir(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tag = self.cache_dir / "CACHEDIR.TAG"
        if not tag.exists():
            tag.write_text(_CACHEDIR_TAG, encoding="utf-8")


def cached_embeddings(cache_dir: str | os.PathLike[str], data_fingerprint: str, encoder: nn.Module, extra: str,
                      encode: Callable[[], np.ndarray], *, rows: int, what: str = "embeddings") -> np.ndarray:
    """The embeddings of one data set by one frozen ``encoder``: from ``cache_dir/embeddings`` when
    present (same data fingerprint, same weights and ``extra`` settings), else ``encode()`` once and
    cached. ``rows`` is the expected row count (a cached array of another length is a miss)."""
    cache = EmbeddingCache(Path(cache_dir) / "embeddings")
    key = cache.key(data_fingerprint, fingerprint_module(encoder, extra=extra))
    emb = cache.load(key)
    if emb is not None and emb.shape[0] == rows:
        logger.info("%s: %d rows from the cache", what, rows)
        return emb
    emb = np.asarray(encode(), dtype=np.float32)
    cache.save(key, emb)
    logger.info("%s: %d rows encoded and cached", what, rows)
    return emb


class EmbeddingRows:
    """A map-style dataset over precomputed embedding rows: ``{"emb", "labels"?, "index"}`` per item
    (item ``i`` is ``embeddings[rows[i]]``); batch it with :func:`collate_embeddings`."""

    def __init__(self, embeddings: np.ndarray, rows: Sequence[int], labels: np.ndarray | None = None) -> None:
        self.embeddings, self.rows = embeddings, np.asarray(rows, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and len(self.labels) != len(self.rows):
            raise ValueError(f"{len(self.rows)} embedding rows but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, object]:
        item: dict[str, object] = {"emb": self.embeddings[self.rows[i]], "index": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def collate_embeddings(batch: Sequence[dict[str, object]]) -> dict[str, object]:
    """``emb`` float32 ``[B, D]``, ``index`` int64 ``[B]`` and ``labels`` (int64 ``[B]`` or float32 ``[B, K]``)."""
    import torch

    out: dict[str, object] = {
        "emb": torch.from_numpy(np.stack([np.asarray(item["emb"], dtype=np.float32) for item in batch])),
        "index": torch.tensor([int(item["index"]) for item in batch], dtype=torch.long)}  # type: ignore[call-overload]
    if batch and "labels" in batch[0]:
        labels = np.stack([np.asarray(item["labels"]) for item in batch])
        out["labels"] = torch.from_numpy(labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64, copy=False))
    return out


def fingerprint_texts(texts: Iterable[str | None]) -> str:
    """sha256 of a sequence of texts, in order; ``None`` / NaN (missing) differs from ``""``."""
    h = hashlib.sha256(b"texts")
    count = 0
    for text in texts:
        count += 1
        if text is None or (isinstance(text, float) and math.isnan(text)):
            h.update(b"\x00")
        else:
            h.update(b"\x01")
            _update(h, str(text).encode("utf-8"))
    h.update(count.to_bytes(8, "little"))
    return h.hexdigest()


def fingerprint_files(
    paths: Iterable[str | os.PathLike[str] | None], root: str | os.PathLike[str] | None = None
) -> str:
    """sha256 over (path, size, mtime_ns) of each path, in order, without reading file contents.

    A folder (e.g. a DICOM series) contributes every regular file below it, sorted. Paths are
    hashed relative to ``root`` when given (so moving the whole data set keeps the key), as
    given otherwise. ``None`` / ``""`` (no file for this item) and paths that do not exist are
    hashed as such, so creating the file later changes the fingerprint.
    """
    base = Path(root) if root is not None else None
    h = hashlib.sha256(b"files")
    count = 0
    for item in paths:
        count += 1
        if item is None or item == "" or (isinstance(item, float) and math.isnan(item)):
            h.update(b"\x00")
            continue
        given = Path(item)
        full = base / given if base is not None and not given.is_absolute() else given
        h.update(b"\x01")
        _update(h, _relative(full, base).encode("utf-8"))
        if full.is_dir():
            files = sorted(p for p in full.rglob("*") if p.is_file())
            h.update(b"D" + len(files).to_bytes(8, "little"))
            for file in files:
                _update(h, file.relative_to(full).as_posix().encode("utf-8"))
                _update_stat(h, file)
        elif full.is_file():
            h.update(b"F")
            _update_stat(h, full)
        else:
            h.update(b"?")
    h.update(count.to_bytes(8, "little"))
    return h.hexdigest()


def fingerprint_module(module: nn.Module, extra: str = "") -> str:
    """sha256 of a module's class, state dict (names, dtypes, shapes, bytes) and ``extra``.

    ``extra`` should name every setting that changes the embeddings but is not a weight
    (tokenizer max length, image size, windowing, pooling, ...).
    """
    import torch

    h = hashlib.sha256(b"module")
    cls = type(module)
    _update(h, f"{cls.__module__}.{cls.__qualname__}".encode())
    _update(h, extra.encode("utf-8"))
    for name, value in module.state_dict().items():
        _update(h, name.encode("utf-8"))
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            _update(h, f"{t.dtype}{tuple(t.shape)}".encode())
            _update(h, t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # get_extra_state() payloads
            _update(h, repr(value).encode("utf-8"))
    return h.hexdigest()


def _update(h: hashlib._Hash, data: bytes) -> None:
    """Length-prefixed update, so that ("ab", "c") and ("a", "bc") hash differently."""
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _update_stat(h: hashlib._Hash, path: Path) -> None:
    st = path.stat()
    h.update(st.st_size.to_bytes(8, "little") + st.st_mtime_ns.to_bytes(8, "little", signed=True))


def _relative(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return path.as_posix()
