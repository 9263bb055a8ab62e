"""Tokenisation with an on-disk cache, and dynamic padding for text.

The pieces fit together like this::

    corpus = tokenize_cached(examples.texts, tokenizer, max_length=256, cache_dir=run / "cache")
    dataset = TokenizedTextDataset(corpus, examples.labels)
    collate = functools.partial(pad_collate, pad_id=pad_id_of(tokenizer))  # medmm.task.pad_id_of

Batching is the engine's job: the task hands it ``corpus.lengths`` for length-bucketed batches
(``engine.sampler=bucket``) and, in chunk mode, one unit per window (the document's row id), so
the engine averages window probabilities back into one prediction per document.

``tokenizer`` is either a Hugging Face fast tokenizer or a :class:`SimpleVocab` (word-level
vocabulary for the CNN / RNN baselines); both are called the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

try:  # the tokenisation half of this module also serves the torch-free ONNX runtime
    import torch
    from torch.utils.data import Dataset
except ImportError:  # medmm[runtime] without torch
    torch = None  # type: ignore[assignment]
    Dataset = object  # type: ignore[assignment,misc]

from medmm.errors import ConfigError, DataError
from medmm.io import atomic_write, write_bytes_atomic

__all__ = [
    "SimpleVocab",
    "TokenizedCorpus",
    "TokenizedTextDataset",
    "pad_collate",
    "tokenize_cached",
    "tokenizer_fingerprint",
]

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1
LongText = Literal["truncate", "chunk"]


# --------------------------------------------------------------------------- vocabulary


class SimpleVocab:
    """Word-level vocabulary for the baseline models: lowercase + regex word split.

    Callable like a Hugging Face tokenizer (the subset :func:`tokenize_cached` uses), and saved
    as plain JSON. Index 0 is ``<pad>``, 1 is ``<unk>``.
    """

    PAD, UNK = "<pad>", "<unk>"
    pad_token_id, unk_token_id = 0, 1
    name_or_path = "medmm-simple-vocab"
    _PATTERN = re.compile(r"\w+|[^\w\s]")

    def __init__(self, tokens: Sequence[str], *, lowercase: bool = True):
        tokens = list(tokens)
        if tokens[:2] != [self.PAD, self.UNK]:
            raise ValueError(f"a vocabulary must start with {self.PAD!r}, {self.UNK!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in vocabulary")
        self.tokens = tokens
        self.lowercase = lowercase
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], *, min_freq: int = 2, max_size: int = 30_000,
              lowercase: bool = True) -> SimpleVocab:
        """Most frequent words of ``texts`` seen at least ``min_freq`` times (ties: alphabetical).

        ``max_size`` counts the two special tokens.
        """
        if max_size < 3:
            raise ConfigError(f"vocabulary max_size must be at least 3, got {max_size}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(cls._split(text, lowercase))
        words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        return cls([cls.PAD, cls.UNK, *words[: max_size - 2]], lowercase=lowercase)

    @classmethod
    def _split(cls, text: str, lowercase: bool) -> list[str]:
        return cls._PATTERN.findall(text.lower() if lowercase else text)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (never empty: a text with no words gives ``[<unk>]``)."""
        unk = self.unk_token_id
        return [self.index.get(w, unk) for w in self._split(text, self.lowercase)] or [unk]

    def __call__(self, texts: str | Sequence[str], *, truncation: bool = True,
                 max_length: int | None = None, **_: Any) -> dict[str, list]:
        """Encode ``texts`` (first ``max_length`` ids of each when truncating).

        Like a Hugging Face tokenizer, one string gives a flat ``input_ids`` list. Options it
        does not use (``padding``, ``add_special_tokens``...) are ignored; long documents are
        windowed by :func:`tokenize_cached`, not here.
        """
        limit = max_length if truncation else None
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts)[:limit]}
        return {"input_ids": [self.encode(text)[:limit] for text in texts]}

    def fingerprint(self) -> str:
        """Stable hash of the vocabulary and its options (used in cache keys)."""
        blob = json.dumps({"tokens": self.tokens, "lowercase": self.lowercase}).encode()
        return hashlib.sha256(blob).hexdigest()

    def save(self, path: Path | str) -> Path:
        """Write the vocabulary as JSON (atomically)."""
        path = Path(path)
        payload = {"format": "medmm.SimpleVocab", "version": 1, "lowercase": self.lowercase,
                   "pattern": self._PATTERN.pattern, "tokens": self.tokens}
        write_bytes_atomic(path, json.dumps(payload, ensure_ascii=False).encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: Path | str) -> SimpleVocab:
        """Read a vocabulary written by :meth:`save`."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("format") != "medmm.SimpleVocab":
                raise ValueError("not a medmm vocabulary file")
            return cls(payload["tokens"], lowercase=bool(payload["lowercase"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read vocabulary {path}: {exc}") from None


# --------------------------------------------------------------------------- corpus + cache


@dataclass(frozen=True)
class TokenizedCorpus:
    """Unpadded token sequences stored flat: sequence ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    In ``chunk`` mode a document may yield several overlapping windows; ``doc_index[i]`` is the
    document window ``i`` came from (the identity in ``truncate`` mode).
    """

    ids: np.ndarray  # int32 [total_tokens]
    offsets: np.ndarray  # int64 [num_sequences + 1]
    doc_index: np.ndarray  # int64 [num_sequences]
    num_docs: int
    mode: LongText = "truncate"

    def __len__(self) -> int:
        return len(self.doc_index)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each sequence (the engine's length-bucketed batching reads these)."""
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, input_ids: Sequence[Sequence[int]], doc_index: Sequence[int] | None,
                   num_docs: int, mode: LongText) -> TokenizedCorpus:
        lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
        offsets = np.zeros(len(input_ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(itertools.chain.from_iterable(input_ids), dtype=np.int32,
                          count=int(offsets[-1]))
        doc = np.arange(len(input_ids), dtype=np.int64) if doc_index is None else np.asarray(
            doc_index, dtype=np.int64)
        return cls(ids=ids, offsets=offsets, doc_index=doc, num_docs=num_docs, mode=mode)

    def save(self, path: Path | str, key: str = "") -> None:
        """Write the corpus as an uncompressed ``.npz`` (no pickled objects), atomically."""
        with atomic_write(path, "wb") as fh:
            np.savez(fh, ids=self.ids, offsets=self.offsets, doc_index=self.doc_index,
                     num_docs=np.int64(self.num_docs), mode=np.str_(self.mode),
                     key=np.str_(key), version=np.int64(_CACHE_VERSION))

    @classmethod
    def load(cls, path: Path | str, key: str | None = None) -> TokenizedCorpus:
        """Read a corpus written by :meth:`save`; ``ValueError`` if it is corrupt or stale."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["version"]) != _CACHE_VERSION or (key is not None and str(z["key"]) != key):
                    raise ValueError("cache entry written for other inputs")
                corpus = cls(ids=z["ids"], offsets=z["offsets"], doc_index=z["doc_index"],
                             num_docs=int(z["num_docs"]), mode=str(z["mode"]))  # type: ignore[arg-type]
        except (OSError, KeyError, EOFError) as exc:
            raise ValueError(f"unreadable cache entry: {exc}") from None
        n = len(corpus.doc_index)
        if (corpus.offsets.shape != (n + 1,) or corpus.offsets[0] != 0
                or corpus.offsets[-1] != len(corpus.ids) or np.any(np.diff(corpus.offsets) < 0)):
            raise ValueError("inconsistent cache entry")
        return corpus


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a tokenizer for cache keys: class, name_or_path, size, and its full definition.

    Hashing the backend definition (not just the name) means a tokenizer retrained in place
    never reuses stale token ids.
    """
    own = getattr(tokenizer, "fingerprint", None)
    if callable(own):
        return f"{type(tokenizer).__qualname__}:{own()}"
    parts = [f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
             str(getattr(tokenizer, "name_or_path", "")), str(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # call-time state set by the last encode call
        spec.pop("padding", None)
        parts.append(hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest())
    return "|".join(parts)


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        b = text.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _windows(ids: Sequence[int], size: int, stride: int) -> list[Sequence[int]]:
    """Windows of at most ``size`` tokens, each starting ``size - stride`` after the previous
    one, until the end of ``ids`` is covered (a short sequence is one window)."""
    windows, start = [ids[:size]], 0
    while start + size < len(ids):
        start += size - stride
        windows.append(ids[start:start + size])
    return windows


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Special token ids a tokenizer puts before / after a single sequence (``[CLS]`` / ``[SEP]``)."""
    if isinstance(tokenizer, SimpleVocab):
        return [], []
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    raise ConfigError(f"cannot tell where {type(tokenizer).__name__} puts its special tokens; "
                      "use long_text=truncate")


def tokenize_cached(
    texts: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int,
    cache_dir: Path | str | None = None,
    long_text: LongText = "truncate",
    stride: int = 64,
) -> TokenizedCorpus:
    """Tokenize ``texts`` in one batched call (no padding), reusing an on-disk cache.

    Args:
        texts: documents.
        tokenizer: a Hugging Face fast tokenizer or a :class:`SimpleVocab`.
        max_length: tokens per sequence, special tokens included.
        cache_dir: where to keep ``tok-<hash>.npz``; the key covers the texts, the tokenizer
            (:func:`tokenizer_fingerprint`), ``max_length``, ``long_text`` and ``stride``.
            ``None`` disables caching.
        long_text: ``"truncate"`` keeps the first ``max_length`` tokens; ``"chunk"`` splits a
            long document into windows overlapping by ``stride`` tokens, and
            :attr:`TokenizedCorpus.doc_index` maps each window back to its document.
        stride: overlap between consecutive windows in chunk mode.
    """
    if long_text not in ("truncate", "chunk"):
        raise ConfigError(f"long_text must be 'truncate' or 'chunk', got {long_text!r}")
    chunk = long_text == "chunk"
    texts = list(texts)
    path = key = None
    if cache_dir is not None:
        key_src = json.dumps({"v": _CACHE_VERSION, "tok": tokenizer_fingerprint(tokenizer),
                              "max_length": max_length, "mode": long_text,
                              "stride": stride if chunk else None, "texts": _texts_digest(texts)})
        key = hashlib.sha256(key_src.encode()).hexdigest()
        path = Path(cache_dir) / f"tok-{key[:32]}.npz"
        if path.exists():
            try:
                corpus = TokenizedCorpus.load(path, key=key)
                if corpus.num_docs == len(texts):
                    logger.debug("tokenization cache hit: %s", path.name)
                    return corpus
            except ValueError as exc:
                logger.warning("ignoring tokenization cache %s: %s", path.name, exc)

    # Checked on a cache miss only: a hit was written by a call with these same arguments,
    # and the probe below is a tokenizer call the cached path should not make.
    prefix, suffix = _special_affixes(tokenizer)
    specials = len(prefix) + len(suffix)
    if max_length <= specials:
        raise ConfigError(f"max_length must exceed the {specials} special tokens, got {max_length}")
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000 and max_length > model_max:
        raise ConfigError(f"max_length {max_length} exceeds the tokenizer's limit of {model_max}")
    if chunk and not 0 <= stride < max_length - specials:
        raise ConfigError(
            f"stride must be in [0, {max_length - specials}) for max_length {max_length}, got {stride}")

    input_ids: list[Sequence[int]] = []
    doc_index: list[int] | None = None
    if texts:
        kwargs: dict[str, Any] = {}
        if not isinstance(tokenizer, SimpleVocab):
            kwargs.update(padding=False, return_attention_mask=False, return_token_type_ids=False)
        if chunk:
            # Windowed here rather than with return_overflowing_tokens, whose output has
            # changed across transformers releases (some 5.x versions drop later windows).
            full = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False,
                             **kwargs)["input_ids"]
            doc_index = []
            for doc, ids in enumerate(full):
                for window in _windows(ids, max_length - specials, stride):
                    input_ids.append([*prefix, *window, *suffix])
                    doc_index.append(doc)
        else:
            input_ids = tokenizer(texts, truncation=True, max_length=max_length, **kwargs)["input_ids"]
    corpus = TokenizedCorpus.from_lists(input_ids, doc_index, len(texts), long_text)
    if path is not None and key is not None:
        try:
            corpus.save(path, key=key)
        except OSError as exc:  # a read-only cache must not stop training
            logger.warning("could not write tokenization cache %s: %s", path, exc)
    return corpus


# --------------------------------------------------------------------------- dataset + collate


class TokenizedTextDataset(Dataset):
    """Items ``{"input_ids", "index", ["labels"]}`` over a :class:`TokenizedCorpus`.

    ``index`` is the sequence's position (a window in chunk mode); ``labels`` are per document
    and repeated for each of its windows.
    """

    def __init__(self, corpus: TokenizedCorpus, labels: np.ndarray | None = None):
        if labels is not None and len(labels) != corpus.num_docs:
            raise ValueError(f"{len(labels)} labels for {corpus.num_docs} documents")
        self.corpus, self.labels = corpus, labels

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"input_ids": self.corpus[i], "index": int(i)}
        if self.labels is not None:
            item["labels"] = self.labels[int(self.corpus.doc_index[i])]
        return item


def pad_collate(batch: Sequence[Mapping[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of items to the longest sequence in the batch.

    Returns ``input_ids`` (int64 ``[B, L]``), ``attention_mask`` (bool ``[B, L]``), ``index``
    (int64 ``[B]``) and, when the items have them, ``labels`` (int64 ``[B]`` or float32
    ``[B, K]``).
    """
    from medmm.task import pad_sequences

    ids, mask = pad_sequences([item["input_ids"] for item in batch], pad_id)
    out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
           "index": torch.tensor([int(item["index"]) for item in batch], dtype=torch.long)}
    if batch and "labels" in batch[0]:
        labels = np.stack([np.asarray(item["labels"]) for item in batch])
        out["labels"] = torch.from_numpy(labels.astype(
            np.float32 if labels.dtype.kind == "f" else np.int64, copy=False))
    return out
