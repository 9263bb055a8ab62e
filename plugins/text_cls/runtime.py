"""text-cls's torch-free input reader for its exports (``TaskSpec.runtime``): the run's tokenizer
(``tokenizers`` alone, or the baseline vocabulary), windows and padding per batch, as the task's
predict reader tokenizes; batches in length order inside fixed windows, as ``Trainer.evaluate``
(:mod:`medmm.batching`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmm import (
    DataError, Examples, FastTokenizer, SimpleVocab, batch_slices, length_order, load_text_examples,
    read_json, read_table, tokenize_cached,
)
from medmm_plugins.text_cls.blocks import columns as _columns
from medmm_plugins.text_cls.blocks import note_blocks
from medmm_plugins.text_cls.config import TextClsConfig

log = logging.getLogger("medmm")


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

    def _batches(self, seqs: list[Any]) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """Eval batches of token windows, each padded to its longest window, and the order they hold the
        windows in: length-sorted inside fixed windows of batches, as the torch path batches them."""
        batches = []
        order = length_order([len(q) for q in seqs], self.batch_size)
        for s in batch_slices(len(seqs), self.batch_size):
            part = [seqs[int(i)] for i in order[s]]
            width = max(max((len(q) for q in part), default=0), 1)
            ids = np.full((len(part), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(part), width), dtype=np.int64)
            for row, q in enumerate(part):
                ids[row, :len(q)], mask[row, :len(q)] = q, 1
            batches.append({"input_ids": ids, "attention_mask": mask})
        return batches, order

    def blocks(self, path: Path, rows: int) -> Iterator[Examples]:
        """:meth:`examples` of a CSV / TSV of notes in blocks (the streamed ``medmm predict EXPORT_DIR``), as
        the task's own ``predict_chunks`` cuts them: ids unique across blocks, rows keep their table numbers,
        a first pass (when a label column is configured) decides whether every predicted row has a usable
        label; each block holds ``rows`` token windows rounded up to whole length-sorted windows of eval
        batches (:func:`medmm.eval_window`: the graph sees one pass's batches) and ends between documents."""
        d = self.d
        rows, use_labels, read = note_blocks(path, d, self.label_names, rows, self.batch_size,
                                             warn_unlabelled=False)  # as examples() of one pass
        seqs: list[Any] = []  # token windows not yet predicted, their units and targets
        units: list[str] = []
        targets: list[Any] = []
        docs: list[int] = []
        done, n_rows, skipped, truncated = 0, 0, [], 0

        def cut(size: int) -> Examples:
            nonlocal seqs, units, targets, docs
            batches, order = self._batches(seqs[:size])
            ex = Examples(batches, units[:size], np.asarray(targets[:size]) if use_labels else None, order=order)
            seqs, units, targets, docs = seqs[size:], units[size:], targets[size:], docs[size:]
            return ex

        for n, ex, lab in read(use_labels):
            n_rows += n
            skipped += [(str(r), str(why)) for r, why in getattr(ex, "skipped", [])]
            truncated += len(getattr(ex, "truncated", []))
            if not ex.texts:
                continue
            corpus = tokenize_cached(ex.texts, self.tokenizer, max_length=d.max_length, cache_dir=None,
                                     long_text=d.long_text, stride=d.stride)
            doc = corpus.doc_index
            seqs += [corpus[i] for i in range(len(corpus))]
            units += [ex.row_ids[i] for i in doc]
            docs += [done + int(i) for i in doc]
            if use_labels:
                targets += list(lab.labels[doc])
            done += len(ex.texts)
            ends = [k for k in range(rows, len(seqs) + 1, rows) if k == len(seqs) or docs[k] != docs[k - 1]]
            if ends:
                yield cut(ends[-1])
        reasons = dict(Counter(r for _, r in skipped))
        if not done:
            raise DataError(f"no usable rows among {n_rows} ({', '.join(f'{r}: {k}' for r, k in reasons.items()) or 'the table is empty'})")
        if skipped:  # once, as one pass words it
            log.warning("skipped %d of %d rows: %s", len(skipped), n_rows, reasons)
        if truncated:
            log.warning("truncated %d document(s) longer than %d characters", truncated, d.max_chars)
        last = cut(len(seqs))
        last.skipped = skipped  # the skip report, once
        yield last

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
        batches, order = self._batches([corpus[i] for i in range(len(corpus))])
        doc = corpus.doc_index
        skipped = [(str(r), str(why)) for r, why in getattr(ex, "skipped", [])]
        return Examples(batches, [ex.row_ids[i] for i in doc], None if labels is None else labels[doc],
                        skipped=skipped, order=order)
