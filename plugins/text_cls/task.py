"""text-cls: classify clinical free text with a fine-tuned encoder or a from-scratch baseline.

Two kinds of text backbone come out of the registry (``medmm backbones --modality text``):

* a **pretrained-encoder factory** ``(name, *, name_or_path, pooling, pretrained) ->
  (encoder, tokenizer)``, e.g. :func:`medmm.models.text.load_hf_encoder` (``minilm-l6``,
  ``bert-tiny``, ``hf-local``); the tokenizer comes with the model;
* an **encoder class** built from a vocabulary, ``cls(vocab_size, embedding_dim=..., **extra)``,
  e.g. :class:`~medmm.models.text_baselines.TextCNN`; the vocabulary is built on the training
  split (:class:`~medmm.data.text.tokenize.SimpleVocab`).

Documents are tokenised once (cached on disk), batched by the engine (shuffled by default) and
padded per batch; a pretrained BERT-family encoder trains each batch packed, on its real tokens
only (``model.packed``, :mod:`medmm.models.packed`), any other as length-sorted micro-batches
(``model.length_groups``, :mod:`medmm.models.length_groups`). With ``data.long_text=chunk`` a
document becomes several overlapping windows whose :attr:`~medmm.task.Split.units` entry is the
document's row id, so the engine averages the window probabilities back into one prediction
per document.

With ``model.mode=frozen`` a pretrained encoder runs once over every document (embeddings cached
on disk keyed by data + weights, :func:`medmm.cached_embeddings`) and only the head trains on the
cached embeddings; the model is still encoder + head, so predict, explain and export read raw text
as in a fine-tuned run. ``model.mode=auto`` picks between the two (:func:`medmm.choose_mode`).

``RUN_DIR/artifacts`` holds the label map, the tokenizer (or vocabulary) and the encoder
definition, so ``medmm predict`` rebuilds the model from the run directory alone.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmm import (
    BaselineInputs, BundleMeta, Component, ConfigError, DataBundle, DataError, load_text_backbone,
    load_text_examples, pad_collate, pad_id_of, read_json, read_table, save_text_backbone, SimpleVocab, Split,
    Task, TextClassifier, TextExamples, tokenize_cached, TokenizedCorpus, TokenizedTextDataset,
    write_json_atomic,
)
from medmm import (  # model.mode=frozen / auto
    apply_defaults, cached_embeddings, choose_mode, collate_embeddings, EmbeddingRows, fingerprint_texts,
    load_module_weights, model_state, pad_tokens, run_module, set_key,
)
from medmm_plugins.text_cls.blocks import columns as _columns
from medmm_plugins.text_cls.config import TextClsConfig, TextClsData, TextClsModel

__all__ = ["TextClsTask"]

logger = logging.getLogger("medmm.text_cls")

ARTIFACT = "text_cls.json"
ENCODER_DIR = "encoder"
VOCAB_FILE = "vocab.json"
FROZEN_FILE = "frozen_encoder.safetensors"  # model.mode=frozen: the encoder's weights, once
_FORMAT = "medmm.text-cls"
# Head-only training on cached embeddings: steps cost microseconds, so a larger rate and more epochs
# (early stopping on val decides); measured on the IU and PadChest sets (bench/frozen_vs_finetune.py).
FROZEN_RECIPE = {"engine.lr": 0.003, "engine.epochs": 60, "engine.patience": 8, "engine.warmup_ratio": 0.0,
                 "engine.batch_size": 32, "model.dropout": 0.1}
# Fine-tuning cost on a CPU, seconds per training token per million encoder parameters (MiniLM-L6, 22.7M
# parameters, packed steps, 2-core VM: see docs/guide/frozen.md); used by model.mode=auto's estimate.
CPU_FINETUNE_S_PER_TOKEN_MPARAM = 3.5e-5
# What the speed hints quote (bench/frozen_vs_finetune.py, 2-core VM; docs/guide/frozen.md).
MEASURED = {
    "frozen": ("measured (MiniLM): IU 5-class reports macro-F1 0.84 (fine-tuned 0.96, TF-IDF 0.83), PadChest 8-class "
               "0.90 (fine-tuned 0.96, TF-IDF 0.94); encoding once at 0.1-0.5 s per document on a loaded 2-core CPU, "
               "then seconds"),
    "tfidf": ("seconds; measured macro-F1 0.83 on IU 5-class reports (fine-tuned MiniLM 0.96), 0.94 on PadChest "
              "8-class (fine-tuned MiniLM 0.96)"),
}


def _is_vocab_backbone(factory: Any) -> bool:
    """An encoder class trained from a vocabulary (vs a factory returning encoder + tokenizer)."""
    return isinstance(factory, type) and issubclass(factory, nn.Module)


@dataclass
class _Docs:
    """Tokenised documents of one split."""

    examples: TextExamples
    dataset: TokenizedTextDataset
    units: list[str]  # row id per example (window)
    targets: np.ndarray | None  # label per example (window)
    lengths: np.ndarray  # tokens per example


class TextClsTask(Task):
    """Fine-tune a text encoder (or train a TextCNN / BiGRU baseline) on labelled documents."""

    cfg: TextClsConfig  # read by attribute (medmm.config)

    def __init__(self, cfg: TextClsConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self.data_cfg: TextClsData = self.cfg.data
        self.model_cfg: TextClsModel = self.cfg.model
        self.tokenizer: Any = None
        self.multilabel = False
        self._encoder: nn.Module | None = None  # built with its tokenizer; handed to build_model once
        self._encoder_kwargs: dict[str, Any] = {}  # vocabulary baselines: constructor arguments
        self._artifacts: Path | None = None

    # ------------------------------------------------------------------ backbone
    def _component(self) -> Component:
        return self.backbone(self.model_cfg.backbone, "text")

    def _uses_vocab(self) -> bool:
        return _is_vocab_backbone(self._component().load())

    def _pretrained_encoder(self) -> tuple[nn.Module, Any]:
        """``(encoder, tokenizer)`` from a pretrained-encoder factory, with a seeded init."""
        m = self.model_cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)  # randomly initialised parts (bert-tiny)
            return self._component().load()(m.backbone, name_or_path=m.name_or_path,
                                             pooling=m.pooling)

    def _vocab_encoder(self) -> nn.Module:
        comp = self._component()
        factory = comp.load()
        kwargs = dict(self._encoder_kwargs)
        vocab_size = kwargs.pop("vocab_size")
        accepted = inspect.signature(factory).parameters
        extra = {k: v for k, v in comp.extra.items() if k != "recipe"}  # recipe: config defaults (medmm.recipes)
        return factory(vocab_size, **{k: v for k, v in kwargs.items() if k in accepted}, **extra)

    # ------------------------------------------------------------------ reading
    def _read(self, data_path: Path, *, labels: bool, for_predict: bool = False) -> TextExamples:
        d = self.data_cfg
        text_cols, label_cols = _columns(d.text_column), _columns(d.label_column)
        id_col = d.id_column
        df = read_table(data_path, string_columns=[c for c in (id_col, d.group_column) if c])
        if for_predict and id_col and id_col not in df.columns:
            logger.warning("id column %r is not in %s; predictions are keyed by row number",
                           id_col, Path(data_path).name)
            id_col = None
        common = {"text_columns": text_cols, "id_column": id_col, "separator": d.separator,
                  "max_chars": d.max_chars}
        if for_predict:
            return load_text_examples(df, label_columns=label_cols if labels else [],
                                      label_delimiter=d.label_delimiter if labels else None,
                                      label_names=self.label_names, **common)
        if not label_cols:
            raise ConfigError("text-cls needs data.label_column: one column of classes, or a list "
                              "of 0/1 columns (multi-label)")
        return load_text_examples(df, label_columns=label_cols, label_delimiter=d.label_delimiter,
                                  group_column=d.group_column, split_column=d.split_column, **common)

    def _set_problem(self, ex: TextExamples) -> None:
        k = len(ex.label_names)
        if ex.multilabel:
            self.problem = "multilabel"
        elif k == 2:
            self.problem = "binary"
        elif k > 2:
            self.problem = "multiclass"
        else:
            raise DataError(f"text-cls needs at least two classes; the labels hold only {ex.label_names}")
        self.label_names, self.multilabel = list(ex.label_names), ex.multilabel

    def _tokenize(self, ex: TextExamples, cache_dir: Path | None, *, by_length: bool = False) -> _Docs:
        """Tokenise one split; ``by_length`` orders its sequences shortest first."""
        d = self.data_cfg
        corpus = tokenize_cached(ex.texts, self.tokenizer, max_length=d.max_length,
                                 cache_dir=cache_dir, long_text=d.long_text, stride=d.stride)
        if by_length:
            order = np.argsort(corpus.lengths, kind="stable")
            corpus = TokenizedCorpus.from_lists([corpus[i] for i in order], corpus.doc_index[order],
                                                corpus.num_docs, corpus.mode)
        doc = corpus.doc_index
        targets = None if ex.labels is None else ex.labels[doc]
        return _Docs(ex, TokenizedTextDataset(corpus, ex.labels), [ex.row_ids[i] for i in doc],
                     targets, corpus.lengths)

    def _collate(self) -> functools.partial:
        return functools.partial(pad_collate, pad_id=pad_id_of(self.tokenizer))

    # ------------------------------------------------------------------ training
    def build_data(self, data_path: Path) -> DataBundle:
        ex = self._read(data_path, labels=True)  # the reader skips rows without a usable split / group cell
        self._set_problem(ex)
        self._write_skipped(ex)
        splits = self.assign_splits(ex.row_ids, given=ex.splits, groups=ex.groups,
                                    labels=None if ex.multilabel else ex.labels)

        parts = {name: ex.subset(np.flatnonzero(splits == name)) for name in ("train", "val", "test")}
        self._raw = dict(parts)  # documents per split, for the classic baseline
        if not len(parts["train"]):
            raise DataError("the training split is empty; check data.split_column or the split fractions")

        if self._uses_vocab():
            m = self.model_cfg
            self.tokenizer = SimpleVocab.build(parts["train"].texts, min_freq=m.vocab_min_freq,
                                               max_size=m.vocab_size)
            self._encoder_kwargs = {"vocab_size": len(self.tokenizer), "embedding_dim": m.embed_dim}
            logger.info("vocabulary: %d words from the training split", len(self.tokenizer))
        else:
            self._encoder, self.tokenizer = self._pretrained_encoder()

        cache = self.cache_dir
        pretrained = self._encoder is not None and bool(self._component().extra.get("pretrained"))
        if self.model_cfg.mode == "frozen" and not pretrained and "model.mode" not in (self.cfg.user or {"model.mode"}):
            # the task's cheaper recipe (--time-limit) freezes only pretrained encoders
            set_key(self.cfg, "model.mode", "finetune")
            self.cfg.provenance["model.mode"] = "the encoder has no pretrained weights: it must train"
        if self.model_cfg.mode == "frozen" and self._encoder is None:
            raise ConfigError(f"model.mode=frozen needs a pretrained encoder; {self.model_cfg.backbone!r} trains "
                              "from a vocabulary (model.backbone=minilm-l6, hf-local, ...)")
        if self._encoder is not None and self._resolve_mode(parts["train"], cache) == "frozen":
            return self._frozen_bundle(ex, splits, parts, cache)
        # val is evaluated every epoch in sequential batches: in length order they hold
        # almost no padding.
        docs = {name: self._tokenize(part, cache, by_length=name == "val") if len(part) else None
                for name, part in parts.items()}
        if self.cfg.engine.num_workers > 0:
            # Tokenising is done; forked DataLoader workers never call the tokenizer.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

        def split(name: str) -> Split | None:
            part = docs[name]
            return None if part is None else Split(part.dataset, part.units, part.targets, lengths=part.lengths)

        train = docs["train"]
        assert train is not None
        return DataBundle(split("train"), split("val"), split("test"), collate_fn=self._collate(),
                          lengths=train.lengths.tolist(), meta=BundleMeta(description=self._describe(ex, docs)))

    # ------------------------------------------------------------------ frozen encoder
    def _resolve_mode(self, train: TextExamples, cache: Path) -> str:
        """``model.mode`` for this run (``auto`` decided from the fine-tuning estimate; a vocabulary
        baseline always trains); the decision is recorded in the config's provenance."""
        m, e = self.model_cfg, self.cfg.engine
        if m.mode != "auto":
            return m.mode
        pretrained = bool(self._component().extra.get("pretrained"))
        estimate = None
        if pretrained:
            d = self.data_cfg
            lengths = tokenize_cached(train.texts, self.tokenizer, max_length=d.max_length, cache_dir=cache,
                                      long_text=d.long_text, stride=d.stride).lengths
            estimate = self.finetune_seconds(lengths)
        mode, why = choose_mode(e.device, pretrained=pretrained, finetune_s=estimate)
        set_key(self.cfg, "model.mode", mode)
        self.cfg.provenance["model.mode"] = f"auto: {why}"
        logger.info("model.mode=%s: %s", mode, why)
        return mode

    def speed_hints(self, n_train: int) -> list[str]:
        """Options measured good for text classification on a CPU (docs/guide/frozen.md), with their cost;
        a TextCNN is not among them (it lost to TF-IDF on every real set tried)."""
        hints = []
        if self.model_cfg.mode != "frozen":
            pretrained = bool(self._component().extra.get("pretrained"))
            switch = "model.mode=frozen" if pretrained else "model.backbone=minilm-l6 model.mode=frozen"
            hints.append(f"{switch}: the encoder runs once over the documents (cached) and a head trains on its "
                         f"embeddings; {MEASURED['frozen']}")
        hints.append(f"the TF-IDF + logistic regression baseline this run also fits (engine.baseline): "
                     f"{MEASURED['tfidf']}")
        hints.append("fewer passes over the data: engine.epochs or engine.max_steps (early stopping keeps the best)")
        return hints

    def finetune_seconds(self, lengths: np.ndarray) -> float:
        """Estimated CPU seconds to fine-tune on training sequences of these token ``lengths``: the
        optimizer steps the run takes (``engine.min_steps`` included) x tokens per step x the measured
        cost per token and encoder parameter."""
        e, n = self.cfg.engine, len(lengths)
        steps_per_epoch = max(1, -(-n // (e.batch_size * e.grad_accum)))
        steps = steps_per_epoch * e.epochs
        if e.min_steps and not {"engine.epochs", "engine.max_steps"} & set(getattr(self.cfg, "user", None) or ()):
            steps = max(steps, e.min_steps)
        if e.max_steps:
            steps = min(steps, e.max_steps)
        tokens_per_step = float(np.mean(lengths)) * min(n, e.batch_size * e.grad_accum) if n else 0.0
        params = sum(p.numel() for p in self._encoder.parameters()) / 1e6 if self._encoder is not None else 22.7
        return steps * tokens_per_step * params * CPU_FINETUNE_S_PER_TOKEN_MPARAM

    def _frozen_bundle(self, ex: TextExamples, splits: np.ndarray, parts: dict[str, TextExamples],
                       cache: Path) -> DataBundle:
        """Every document (window) embedded once by the frozen encoder, cached on disk keyed by the
        whole data set's texts + the encoder's weights (so other seeds / splits reuse it)."""
        apply_defaults(self.cfg, FROZEN_RECIPE, "model.mode=frozen recipe")
        d, m = self.data_cfg, self.model_cfg
        corpus = tokenize_cached(ex.texts, self.tokenizer, max_length=d.max_length, cache_dir=cache,
                                 long_text=d.long_text, stride=d.stride)
        assert self._encoder is not None
        extra = (f"text-cls;max_length={d.max_length};long_text={d.long_text};stride={d.stride};"
                 f"pooling={m.pooling}")
        emb = cached_embeddings(cache, fingerprint_texts(ex.texts), self._encoder, extra,
                                lambda: self._encode(corpus), rows=len(corpus), what="text embeddings")
        windows: dict[int, list[int]] = {}
        for row, doc in enumerate(corpus.doc_index):
            windows.setdefault(int(doc), []).append(row)

        def split(name: str) -> Split | None:
            docs = np.flatnonzero(splits == name)
            rows = [r for i in docs for r in windows.get(int(i), [])]
            if not rows:
                return None
            doc_of = corpus.doc_index[rows]
            targets = None if ex.labels is None else ex.labels[doc_of]
            return Split(EmbeddingRows(emb, rows, targets), [ex.row_ids[i] for i in doc_of], targets)

        sizes = ", ".join(f"{name} {len(part)}" for name, part in parts.items() if len(part))
        desc = (f"{len(ex)} documents ({sizes}); {self.problem} over {len(self.label_names or [])} labels; "
                f"backbone {m.backbone} frozen: {len(corpus)} embeddings ({emb.shape[1]}-d, cached), head trained "
                f"on them; max_length {d.max_length}, long_text {d.long_text}")
        if ex.skipped:
            desc += f"; {len(ex.skipped)} rows skipped (skipped.csv)"
        return DataBundle(split("train"), split("val"), split("test"), collate_fn=collate_embeddings,
                          meta=BundleMeta(description=desc))

    def _encode(self, corpus: TokenizedCorpus) -> np.ndarray:
        """The encoder's pooled embedding of each sequence, shortest first in batches (little padding)."""
        assert self._encoder is not None
        e = self.cfg.engine
        order = np.argsort(corpus.lengths, kind="stable")
        pad = pad_id_of(self.tokenizer)
        parts = [order[s : s + e.eval_batch_size] for s in range(0, len(order), e.eval_batch_size)]
        batches = (pad_tokens([np.asarray(corpus[int(i)]) for i in part], pad) for part in parts)
        outputs = run_module(self._encoder, batches, device=e.device, precision=e.precision, forward=lambda mod, b: mod(*b))
        emb = np.zeros((len(corpus), int(self._encoder.embed_dim)), dtype=np.float32)
        if outputs:
            emb[order] = torch.cat(outputs).numpy()
        return emb

    def _describe(self, ex: TextExamples, docs: dict[str, _Docs | None]) -> str:
        d = self.data_cfg
        sizes = ", ".join(f"{name} {len(part.examples)}" for name, part in docs.items() if part is not None)
        text = (f"{len(ex)} documents ({sizes}); {self.problem} over {len(self.label_names or [])} labels; "
                f"backbone {self.model_cfg.backbone}, max_length {d.max_length}, long_text {d.long_text}")
        if d.long_text == "chunk":
            windows = sum(len(part.units) for part in docs.values() if part is not None)
            text += f" ({windows} windows)"
        else:
            cut = sum(int((part.lengths >= d.max_length).sum()) for part in docs.values() if part is not None)
            if cut:
                text += f"; {cut} documents cut at max_length (data.long_text=chunk reads them whole)"
                logger.info("%d documents reach max_length=%s tokens and are truncated", cut, d.max_length)
        if ex.skipped:
            text += f"; {len(ex.skipped)} rows skipped (skipped.csv)"
        return text

    def _write_skipped(self, ex: TextExamples) -> None:
        """``skipped.csv``: row id and a fixed reason phrase (never cell contents)."""
        truncated = [(rid, f"truncated to data.max_chars={self.data_cfg.max_chars} characters (kept)")
                     for rid in ex.truncated]
        self.write_skipped([*ex.skipped, *truncated])

    def build_model(self) -> nn.Module:
        seed = self.cfg.seed
        if self.label_names is None:
            raise ConfigError("build_data or load_artifacts must run before build_model")
        num_outputs = 1 if self.problem == "binary" else len(self.label_names)
        if self._encoder_kwargs:  # vocabulary baseline
            torch.manual_seed(seed)
            return TextClassifier(self._vocab_encoder(), num_outputs, dropout=0.0)
        encoder, self._encoder = self._encoder, None  # a second model gets its own encoder
        if encoder is None:
            if self._artifacts is not None:
                encoder, _ = load_text_backbone(self._artifacts / ENCODER_DIR)
            else:
                encoder, _ = self._pretrained_encoder()
        torch.manual_seed(seed)
        model = TextClassifier(encoder, num_outputs, dropout=self.model_cfg.dropout,
                               length_groups=self.model_cfg.length_groups, packed=self.model_cfg.packed)
        if self.model_cfg.mode == "frozen":
            # the pretrained encoder never changes: its weights are stored once with the artifacts
            # (FROZEN_FILE), not in every checkpoint
            model.encoder.requires_grad_(False)
            model.checkpoint_exclude = ("encoder.",)
            if self._artifacts is not None:
                load_module_weights(model.encoder, self._artifacts / FROZEN_FILE)
        return model

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        if "emb" in batch:  # model.mode=frozen: the head on cached embeddings
            inner = getattr(model, "module", model)
            logits = inner.head(inner.dropout(batch["emb"]))
            return {"output": logits, "target": batch.get("labels"), "index": batch["index"]}
        logits = model(batch["input_ids"], batch["attention_mask"])
        return {"output": logits, "target": batch.get("labels"), "index": batch["index"]}

    def param_groups(self, model: nn.Module) -> list[tuple[str, list[Any], float]]:
        """Encoder at ``engine.lr * model.encoder_lr_scale``; the head at ``engine.lr``."""
        inner = getattr(model, "module", model)
        if self.model_cfg.mode == "frozen":
            return [("head", list(inner.head.parameters()), 1.0)]
        return [("encoder", list(inner.encoder.parameters()), self.model_cfg.encoder_lr_scale),
                ("head", list(inner.head.parameters()), 1.0)]

    def baseline_inputs(self, split: str) -> BaselineInputs | None:
        """One document per row (whole, not windows) for the TF-IDF baseline."""
        ex = getattr(self, "_raw", {}).get(split)
        if ex is None or not len(ex):
            return None
        return BaselineInputs(list(ex.row_ids), ex.labels, text=list(ex.texts))

    # ------------------------------------------------------------------ prediction
    def save_artifacts(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {"format": _FORMAT, "version": 1, "problem": self.problem,
                                   "label_names": self.label_names, "multilabel": self.multilabel,
                                   "backbone": self.model_cfg.backbone, "mode": self.model_cfg.mode}
        if self._encoder_kwargs:
            self.tokenizer.save(directory / VOCAB_FILE)
            payload["vocab_encoder"] = self._encoder_kwargs
        else:
            if self._encoder is None or not hasattr(self._encoder, "save_pretrained"):
                raise ConfigError(f"backbone {self.model_cfg.backbone!r}: the encoder cannot be saved "
                                  "for prediction (it needs a save_pretrained method)")
            save_text_backbone(directory / ENCODER_DIR, self._encoder, self.tokenizer)
            if self.model_cfg.mode == "frozen":
                from safetensors.torch import save_file

                save_file(model_state(self._encoder), str(directory / FROZEN_FILE))
        write_json_atomic(directory / ARTIFACT, payload)

    def load_artifacts(self, directory: Path) -> None:
        payload = read_json(directory / ARTIFACT, format=_FORMAT)
        self.problem, self.label_names = payload["problem"], list(payload["label_names"])
        self.multilabel = bool(payload["multilabel"])
        self._artifacts = directory
        # frozen: the checkpoints hold the head, artifacts/encoder the encoder; predict reads raw text
        set_key(self.cfg, "model.mode", "frozen" if payload.get("mode") == "frozen" else "finetune")
        if "vocab_encoder" in payload:
            self.tokenizer = SimpleVocab.load(directory / VOCAB_FILE)
            self._encoder_kwargs = dict(payload["vocab_encoder"])
        else:
            self._encoder, self.tokenizer = load_text_backbone(directory / ENCODER_DIR)

    def build_predict_data(self, data_path: Path) -> tuple[Split, Any]:
        """Every row with text is predicted; labels, when the file has them all, give metrics."""
        ex = self._read(data_path, labels=False, for_predict=True)
        if ex.skipped:
            logger.warning("not predicted: %s", ex.skip_summary())
        labels = None
        if _columns(self.data_cfg.label_column):
            try:
                labelled = self._read(data_path, labels=True, for_predict=True)
            except DataError:
                labelled = None  # no label columns, or no usable label
            if labelled is not None and labelled.row_ids == ex.row_ids:
                labels = labelled.labels
            elif labelled is not None:
                logger.warning("some rows have missing or unknown labels: predictions only, no metrics")
        ex.labels = labels
        self._raw = {**getattr(self, "_raw", {}), "predict": ex}
        docs = self._tokenize(ex, cache_dir=None)
        return Split(docs.dataset, docs.units, docs.targets, lengths=docs.lengths), self._collate()

    def predict_chunks(self, data_path: Path, rows: int) -> Any:
        """:meth:`build_predict_data` block by block (``medmm predict`` of a CSV / TSV of notes): one
        block of the table, its tokens and its scores at a time.

        Ids are unique across blocks and rows keep their table numbers; a first pass (only when a label
        column is configured) decides, as the one-pass read does, whether every predicted row has a
        usable label. Blocks hold ``rows`` token sequences rounded up to whole length-sorted windows of
        evaluation batches (:func:`medmm.eval_window`: the model sees the batches of one pass) and end
        between documents (a long note's windows stay in one block)."""
        from medmm_plugins.text_cls.blocks import note_blocks

        d = self.data_cfg
        rows, use_labels, blocks = note_blocks(data_path, d, self.label_names, rows,
                                               self.cfg.engine.eval_batch_size)
        n_rows, skipped, truncated, done = 0, [], [], 0
        seqs: list[np.ndarray] = []
        docs: list[int] = []  # per sequence: its document (numbered over the table)
        units: list[str] = []
        targets: list[Any] = []  # per document

        mode: Any = "truncate"

        def cut(size: int) -> tuple[Split, Any]:
            nonlocal seqs, docs, units, targets
            first, last = docs[0], docs[size - 1]
            corpus = TokenizedCorpus.from_lists(seqs[:size], [k - first for k in docs[:size]], last - first + 1, mode)
            y = np.asarray(targets[: last - first + 1]) if use_labels else None
            split = Split(TokenizedTextDataset(corpus, y), units[:size],
                          None if y is None else y[corpus.doc_index], lengths=corpus.lengths)
            seqs, docs, units, targets = seqs[size:], docs[size:], units[size:], targets[last - first + 1:]
            return split, self._collate()

        for n, ex, lab in blocks(use_labels):
            n_rows, skipped, truncated = n_rows + n, skipped + ex.skipped, truncated + ex.truncated
            if not ex.texts:
                continue
            ex.labels = lab.labels if lab is not None else None
            tok = self._tokenize(ex, cache_dir=None)
            corpus = tok.dataset.corpus
            mode = corpus.mode
            seqs += [corpus[i] for i in range(len(corpus))]
            docs += [done + int(k) for k in corpus.doc_index]
            units += tok.units
            if use_labels:
                targets += list(ex.labels)
            done += len(ex.texts)
            ends = [k for k in range(rows, len(seqs) + 1, rows)  # whole batches, between two documents
                    if k == len(seqs) or docs[k] != docs[k - 1]]
            if ends:
                yield cut(ends[-1])
        if not done:
            from collections import Counter

            reasons = ", ".join(f"{r}: {k}" for r, k in Counter(r for _, r in skipped).items())
            raise DataError(f"no usable rows among {n_rows} ({reasons or 'the table is empty'})")
        if seqs:
            yield cut(len(seqs))
        if skipped:
            summary = TextExamples([], None, [], False, [], skipped=skipped).skip_summary()
            logger.warning("skipped %d of %d rows: %s", len(skipped), n_rows, summary)
            logger.warning("not predicted: %s", summary)
        if truncated:
            logger.warning("truncated %d document(s) longer than %d characters", len(truncated), d.max_chars)

    def explain_spec(self, model: nn.Module) -> Any:
        """Integrated Gradients on the encoder's token embeddings (``medmm explain``)."""
        from medmm import ExplainSpec, token_input

        inner = getattr(model, "module", model)
        overlap = self.data_cfg.stride if self.data_cfg.long_text == "chunk" else 0
        return ExplainSpec([token_input(
            "text", inner.encoder, self.tokenizer, get=lambda b: b["input_ids"],
            put=lambda b, x: {**b, "input_ids": x}, valid=lambda b: b["attention_mask"], window_overlap=overlap)])

    def deploy_spec(self, model: nn.Module) -> Any:
        """Token ids and attention mask ``[batch, sequence]``, padded with the tokenizer's id."""
        from medmm import DeploySpec, GraphInput, pad_id_of

        axes = {0: "batch", 1: "sequence"}
        d = self.cfg.data.model_dump(mode="json")
        return DeploySpec(
            inputs=(GraphInput("input_ids", axes), GraphInput("attention_mask", axes)),
            batch=lambda ids, mask: {"input_ids": ids, "attention_mask": mask.bool(), "index": None},
            pad_id=pad_id_of(self.tokenizer),
            preprocessing={**{k: d[k] for k in ("text_column", "max_length", "long_text", "stride") if k in d},
                           "tokenizer": "artifacts/encoder/tokenizer.json or artifacts/vocab.json"})
