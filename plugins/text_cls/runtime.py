"""text-cls's torch-free input reader for its exports (``TaskSpec.runtime``): the run's tokenizer
(``tokenizers`` alone, or the baseline vocabulary), windows and padding per batch, as the task's
predict reader tokenizes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmm import (
    DataError, Examples, FastTokenizer, SimpleVocab, batch_slices, load_text_examples, read_json, read_table,
    tokenize_cached,
)
from medmm_plugins.text_cls.config import TextClsConfig

log = logging.getLogger("medmm")


def _columns(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


class TextInputs:
    """The run's tokenizer (or baseline vocabulary), windows and padding per batch."""

    accepts = "rows"

    def __init__(self, export_dir: Path, cfg: TextClsConfig, batch_size: int, manifest: Mapping[str, Any]) -> None:
        self.d, self.batch_size, self.pad_id = cfg.data, batch_size, int(manifest["pad_id"])
        self.columns = self.text_columns = _columns(cfg.data.text_column)  # what a served row must hold: text
        art = export_dir / "artifacts"
        payload = read_json(art / "text_cls.json", format="medmm.text-cls")
        self.problem, self.label_names = payload["problem"], list(payload["label_names"])
        if "vocab_encoder" in payload:
            self.tokenizer: Any = SimpleVocab.load(art / "vocab.json")
        else:
            self.tokenizer = FastTokenizer(art / "encoder")

    def read(self, path: Path) -> Any:
        return read_table(path, string_columns=[c for c in (self.d.id_column, self.d.group_column) if c])

    def _load(self, df: Any, labels: bool) -> Any:
        d = self.d
        id_col = d.id_column if d.id_column and d.id_column in df.columns else None
        return load_text_examples(df, text_columns=_columns(d.text_column),
                                  label_columns=_columns(d.label_column) if labels else [],
                                  label_delimiter=d.label_delimiter if labels else None,
                                  id_column=id_col, separator=d.separator, max_chars=d.max_chars,
                                  label_names=self.label_names)

    def examples(self, df: Any) -> Examples:
        d = self.d
        if d.id_column and d.id_column not in df.columns:
            log.warning("id column %r is not in the data; predictions are keyed by row number", d.id_column)
        ex = self._load(df, labels=False)
        labels = None
        if _columns(d.label_column) and all(c in df.columns for c in _columns(d.label_column)):
            try:
                labelled = self._load(df, labels=True)
            except DataError:
                labelled = None
            if labelled is not None and labelled.row_ids == ex.row_ids:
                labels = labelled.labels
        corpus = tokenize_cached(ex.texts, self.tokenizer, max_length=d.max_length, cache_dir=None,
                                 long_text=d.long_text, stride=d.stride)
        batches = []
        for s in batch_slices(len(corpus), self.batch_size):
            seqs = [corpus[i] for i in range(s.start, s.stop)]
            width = max(max((len(q) for q in seqs), default=0), 1)
            ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(seqs), width), dtype=np.int64)
            for row, q in enumerate(seqs):
                ids[row, :len(q)], mask[row, :len(q)] = q, 1
            batches.append({"input_ids": ids, "attention_mask": mask})
        doc = corpus.doc_index
        skipped = [(str(r), str(why)) for r, why in getattr(ex, "skipped", [])]
        return Examples(batches, [ex.row_ids[i] for i in doc], None if labels is None else labels[doc],
                        skipped=skipped)
