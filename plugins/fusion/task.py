"""fusion: one model over report text, a DICOM image and tabular features per row.

Input is a table (CSV, TSV, JSONL, Parquet) with one row per unit (study or patient). Each row
may lack a modality: an empty text cell, an empty / missing / unreadable image path, or all
tabular cells empty. The row is kept and the model gets a presence mask; a row with no modality
at all, or without a label, is listed in ``skipped.csv`` (row id and reason, no cell contents).
Reading the table: :mod:`medmm_plugins.fusion.rows`.

The encoders are the registered backbones of the single-modality tasks (``medmm backbones``).
``model.mode=frozen`` computes the text and image embeddings once, caches them on disk keyed by
data + encoder (:mod:`medmm.data.embedding_cache`) and trains the head (and the small tabular
encoder) only; ``model.mode=finetune`` trains everything end to end, the encoders at
``engine.lr * model.encoder_lr_scale``. Encoders and their inputs: :mod:`medmm_plugins.fusion.encoders`.

An image cell names a DICOM file, a series folder or a study folder (relative to the table):
the row's image is the middle instance (in file order) of its largest series.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmm import (
    BaselineInputs, BundleMeta, collate_rows, ConfigError, DataBundle, DataError, fit_preprocessor, FusionModel,
    get_registry, html_table, infer_column_types, modality_dropout, MultimodalRows, pad_id_of,
    Preprocessor, read_json, Split, Task, warn_leaky_features, write_json_atomic,
)
from medmm_plugins.fusion.config import FusionConfig, FusionDataConfig, FusionModelConfig
from medmm_plugins.fusion.encoders import (
    FROZEN_FILE, TEXT_DIR, EncoderInputs, backbone_of, build_encoders, frozen_modalities, load_frozen, text_encoder,
)
from medmm_plugins.fusion.rows import describe, encode_labels, label_key, load_rows, modalities, pixel_config

__all__ = ["FusionTask"]

ARTIFACT = "fusion.json"
_FORMAT = "medmm.fusion"


class FusionTask(Task):
    """Text + image (+ tabular) classification through one fusion head."""

    problem = "binary"
    cfg: FusionConfig  # read by attribute (medmm.config)

    def __init__(self, cfg: FusionConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self.d: FusionDataConfig = self.cfg.data
        self.m: FusionModelConfig = self.cfg.model
        self.names = modalities(self.d)
        get_registry().get("fusion_head", self.m.head)  # fail before any data is read
        for name in self.names:
            backbone_of(self.backbone, self.m, name)
        self.hidden_modalities: set[str] = set()  # masked at evaluation (per-modality report)
        self.tokenizer: Any = None
        self.preprocessor: Preprocessor | None = None
        self.embed_dims: dict[str, int] = {}
        self._encoders: dict[str, nn.Module] | None = None
        self._artifacts: Path | None = None
        self._artifact_frozen: list[str] = []  # predict: encoders frozen in training (weights in artifacts)

    # ------------------------------------------------------------------ helpers
    def _frozen(self) -> set[str]:
        """Modalities read from the embedding cache (``model.mode=frozen``)."""
        return frozen_modalities(self.m, self.names)

    def _load(self, data_path: Path, *, labelled: bool) -> dict[str, Any]:
        """The table as row-aligned modality arrays (:func:`load_rows`)."""
        columns = self.preprocessor.columns if self.preprocessor is not None else None  # predict: trained ones
        return load_rows(data_path, self.cfg, self.names, labelled=labelled, cache_dir=self.cache_dir,
                         trained_columns=columns)

    def _inputs(self) -> EncoderInputs:
        """Tokens, tabular features and frozen embeddings for the current tokenizer."""
        return EncoderInputs(self.cfg, self.names, self.tokenizer, self.cache_dir)

    def _build_encoders(self) -> dict[str, nn.Module]:
        """One encoder per modality; sets the tokenizer and the embedding widths."""
        encoders, self.tokenizer = build_encoders(self.cfg, self.names, self.backbone, artifacts=self._artifacts,
                                                  preprocessor=self.preprocessor)
        self.embed_dims = {n: int(e.embed_dim) for n, e in encoders.items()}
        return encoders

    def _collate(self) -> functools.partial:
        return functools.partial(collate_rows, pad_id=pad_id_of(self.tokenizer),
                                 image_shape=pixel_config(self.d).shape)

    # ------------------------------------------------------------------ training
    def build_data(self, data_path: Path) -> DataBundle:
        data = self._load(Path(data_path), labelled=True)
        rows = np.flatnonzero(data["keep"])
        if len(rows) == 0:
            raise DataError("no usable row: every row lacks a label or all of its modalities (see skipped.csv)")
        self.write_skipped([*data["skipped"], *data["partial"]])
        self.label_names, y = encode_labels([data["labels_raw"][r] for r in rows], self.d.classes)
        self.problem = "binary" if len(self.label_names) == 2 else "multiclass"
        splits = self.assign_splits([data["ids"][r] for r in rows],  # an empty group cell: the row alone
                                    given=[data["splits"][r] for r in rows] if "splits" in data else None,
                                    groups=[data["groups"][r] for r in rows] if "groups" in data else None, labels=y)
        train_rows = rows[splits == "train"]
        if "tabular" in self.names:
            table = data["table"]
            types = infer_column_types(table.iloc[train_rows], list(table.columns))
            self.preprocessor = fit_preprocessor(table.iloc[train_rows], types)
            warn_leaky_features(table.iloc[train_rows], types, self.problem, y[splits == "train"])
        self._encoders = self._build_encoders()
        inputs = self._inputs()
        inputs.prepare(data, frozen=self._frozen(), preprocessor=self.preprocessor)
        if self._frozen():
            inputs.cache_embeddings(data, self._encoders, self._frozen())

        def split(name: str) -> Split | None:
            sel = splits == name
            if not sel.any():
                return None
            return Split(MultimodalRows(rows[sel], data, y[sel]), [data["ids"][r] for r in rows[sel]], y[sel])

        desc = describe(data, rows, splits, self.names, self.label_names, self.m)  # the runner prints and logs it
        self._raw = {name: (data, rows[splits == name], y[splits == name]) for name in ("train", "val", "test")}
        return DataBundle(split("train"), split("val"), split("test"), collate_fn=self._collate(),
                          meta=BundleMeta(description=desc))

    # ------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        if self.label_names is None:
            raise ConfigError("build_data or load_artifacts must run before build_model")
        encoders = self._encoders if self._encoders is not None else self._build_encoders()
        self._encoders = None  # a second model gets its own encoders
        head_cls = get_registry().get("fusion_head", self.m.head).load()
        torch.manual_seed(self.cfg.seed)
        out_dim = 1 if self.problem == "binary" else len(self.label_names)
        head = head_cls({n: self.embed_dims[n] for n in self.names}, out_dim, hidden=self.m.hidden,
                        dropout=self.m.dropout)
        model = FusionModel(encoders, head, self.names)
        frozen = self._frozen() or set(self._artifact_frozen)
        for name in frozen:
            model.encoders[name].requires_grad_(False)
        # Frozen encoders never change: stored once with the artifacts, not in every checkpoint.
        model.checkpoint_exclude = tuple(f"encoders.{n}." for n in sorted(frozen))
        if self._artifacts is not None and frozen:
            load_frozen(model, self._artifacts / FROZEN_FILE, self._artifact_frozen)
        return model

    def param_groups(self, model: nn.Module) -> list[tuple[str, list[Any], float]]:
        """Pretrained encoders at ``engine.lr * model.encoder_lr_scale`` (frozen: not trained)."""
        inner = getattr(model, "module", model)
        frozen, scale = self._frozen(), self.m.encoder_lr_scale
        groups = [("head", list(inner.head.parameters()), 1.0)]
        for name, enc in inner.encoders.items():
            if name in frozen:
                continue
            groups.append((f"{name}_encoder", list(enc.parameters()), 1.0 if name == "tabular" else scale))
        return groups

    def step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        mask = batch["mask"]
        if model.training and self.m.modality_dropout > 0:
            mask = modality_dropout(mask, self.m.modality_dropout)
        if self.hidden_modalities:
            keep = torch.tensor([n not in self.hidden_modalities for n in self.names], device=mask.device)
            mask = mask & keep
        out = model({**batch, "mask": mask})
        if self.problem == "binary":
            out = out.squeeze(-1)
        return {"output": out, "target": batch.get("label"), "index": batch["index"]}

    def report_sections(self, evaluate: Any) -> list[tuple[str, str]]:
        """Test metrics with each modality hidden, and with only one modality shown."""
        if len(self.names) < 2:
            return []
        rows: list[tuple[str, dict[str, float]]] = [("all modalities", evaluate())]
        for name in self.names:
            self.hidden_modalities = {name}
            rows.append((f"without {name}", evaluate()))
        for name in self.names:
            self.hidden_modalities = set(self.names) - {name}
            rows.append((f"{name} only", evaluate()))
        self.hidden_modalities = set()
        keys = [k for k in rows[0][1]][:4]
        table = html_table(["test rows shown", *keys], [(label, *(m.get(k, float("nan")) for k in keys))
                                                        for label, m in rows])
        note = ("<p>The same trained model evaluated on the same rows with modalities masked out (the head sees them "
                "as missing, exactly as for a row that lacks them). A large drop means the model relies on that "
                "modality; rows left with no modality get the head's constant output.</p>")
        if self.is_main:
            write_json_atomic(self.run_dir / "modality_ablation.json", dict(rows))  # strict JSON (null, never NaN)
        return [("Per-modality contribution", note + table)]

    # ------------------------------------------------------------------ predict
    def save_artifacts(self, directory: Path) -> None:
        from medmm import save_text_backbone

        directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": _FORMAT, "version": 1, "problem": self.problem, "label_names": self.label_names,
                   "names": self.names, "embed_dims": self.embed_dims,
                   "preprocessor": self.preprocessor.to_json() if self.preprocessor else None}
        frozen = sorted(self._frozen())
        payload["frozen"] = frozen
        if frozen:
            from safetensors.torch import save_file

            from medmm import model_state

            assert self._encoders is not None
            state = {f"{n}.{k}": v for n in frozen for k, v in model_state(self._encoders[n]).items()}
            save_file(state, str(directory / FROZEN_FILE))
        if "text" in self.names:
            encoder = self._encoders["text"] if self._encoders else None
            if encoder is None or not hasattr(encoder, "save_pretrained"):
                raise ConfigError(f"text backbone {self.m.text_backbone!r} cannot be saved for prediction")
            save_text_backbone(directory / TEXT_DIR, encoder, self.tokenizer)
        write_json_atomic(directory / ARTIFACT, payload)

    def load_artifacts(self, directory: Path) -> None:
        payload = read_json(directory / ARTIFACT, format=_FORMAT)
        self.problem, self.label_names = payload["problem"], list(payload["label_names"])
        self.names = list(payload["names"])
        self._artifact_frozen = list(payload.get("frozen", []))
        if payload["preprocessor"]:
            self.preprocessor = Preprocessor.from_json(payload["preprocessor"])
        self._artifacts = directory
        self.m = self.m.model_copy(update={"mode": "finetune"})  # predict encodes raw inputs with the checkpoint's encoders

    def build_predict_data(self, data_path: Path) -> tuple[Split, Any]:
        """Every row with at least one modality; labels, when every kept row has a known one, give metrics."""
        data = self._load(Path(data_path), labelled=False)
        if "text" in self.names and self.tokenizer is None:
            _, self.tokenizer = text_encoder(self.cfg, self.backbone, self._artifacts)
        self._inputs().prepare(data, frozen=self._frozen(), preprocessor=self.preprocessor)
        rows = np.flatnonzero(data["keep"])
        labels = None
        values = data.get("labels_raw")
        index = {label_key(n): i for i, n in enumerate(self.label_names or [])}  # '1' names 1, 1.0 and '1'
        if values is not None and all(label_key(values[r]) in index for r in rows):
            labels = np.asarray([index[label_key(values[r])] for r in rows], dtype=np.int64)
        split = Split(MultimodalRows(rows, data, labels), [data["ids"][r] for r in rows], labels)
        split.skipped = list(data["skipped"])
        self._raw = {**getattr(self, "_raw", {}), "predict": (data, rows, labels)}
        return split, self._collate()

    def predict_chunks(self, data_path: Path, rows: int) -> Any:
        """:meth:`build_predict_data` block by block (``medmm predict`` of a CSV / TSV table): one block of rows,
        its images, tokens and scores at a time. Each block's kept rows are cut to whole eval batches (the model
        sees one pass's batches; the rest comes again with the next block); repeated ids and the label rule
        are answered by a first pass (:class:`~medmm_plugins.fusion.rows.PredictBlocks`)."""
        from medmm_plugins.fusion.rows import PredictBlocks, frame_rows, whole_batches

        if "text" in self.names and self.tokenizer is None:
            _, self.tokenizer = text_encoder(self.cfg, self.backbone, self._artifacts)
        trained = self.preprocessor.columns if self.preprocessor is not None else None
        source = PredictBlocks(Path(data_path), self.cfg, self.names, rows, trained=trained,
                               label_names=self.label_names)
        base, batch = Path(data_path).resolve().parent, max(int(self.cfg.engine.eval_batch_size), 1)
        index = {label_key(n): i for i, n in enumerate(self.label_names or [])}
        for df, ids, tab, last in source.frames():
            data = frame_rows(df, ids, tab, base, self.cfg, self.names, labelled=False, cache_dir=self.cache_dir,
                              trained_columns=trained)
            n, cut = whole_batches(data["keep"], batch, last)
            if cut < len(df):
                source.carry(cut)
            rows_ = np.flatnonzero(data["keep"])[:n]
            self._inputs().prepare(data, frozen=self._frozen(), preprocessor=self.preprocessor)
            values = data.get("labels_raw")
            labels = (np.asarray([index[label_key(values[r])] for r in rows_], dtype=np.int64)
                      if source.labelled and values is not None else None)
            split = Split(MultimodalRows(rows_, data, labels), [ids[r] for r in rows_], labels)
            split.skipped = list(data["skipped"])[:cut - n]
            yield split, self._collate()

    def baseline_inputs(self, split: str) -> BaselineInputs | None:
        """Each modality's raw input per row (text, preprocessed table, 32 px pixels) and presence."""
        from medmm import small_pixels

        part = getattr(self, "_raw", {}).get(split)
        if part is None or not len(part[1]):
            return None
        data, rows, y = part
        mask = data["mask"][rows]
        out = BaselineInputs([data["ids"][r] for r in rows], y,
                             present={n: mask[:, i] for i, n in enumerate(self.names)})
        if "text" in self.names:
            out.text = [data["texts"][r] for r in rows]
        if "tabular" in self.names:
            out.tabular = data["tabular"][rows]
        if "image" in self.names:
            zeros = np.zeros(pixel_config(self.d).shape, np.float32)
            out.image = small_pixels(data["pixels"].image(data["image_keys"][r]) if data["image_keys"][r] else zeros
                                     for r in rows)
        return out

    def explain_spec(self, model: nn.Module) -> Any:
        """Each modality masked per row, then attributions inside each modality (``medmm explain``)."""
        from medmm import ExplainSpec, feature_input, image_input, InputSpec, token_input

        inner = getattr(model, "module", model)
        names = list(self.names)

        def present(name: str) -> Any:
            return lambda b: b["mask"][:, names.index(name)]

        inputs = [InputSpec("modalities", "modalities", get=lambda b: b["mask"], put=lambda b, x: {**b, "mask": x},
                            baseline=False, baseline_doc="the modality hidden, as for a row that lacks it",
                            item_names=names)]
        if "text" in names:
            inputs.append(token_input("text", inner.encoders["text"], self.tokenizer, get=lambda b: b["text"][0],
                                      put=lambda b, x: {**b, "text": (x, b["text"][1])},
                                      valid=lambda b: b["text"][1], present=present("text")))
        if "image" in names:
            inputs.append(image_input("image", inner.encoders["image"].backbone.model, get=lambda b: b["image"],
                                      put=lambda b, x: {**b, "image": x}, present=present("image")))
        if "tabular" in names and self.preprocessor is not None:
            inputs.append(feature_input("tabular", self.preprocessor, get=lambda b: b["tabular"],
                                        put=lambda b, x: {**b, "tabular": x}, present=present("tabular")))
        return ExplainSpec(inputs)

    def deploy_spec(self, model: nn.Module) -> Any:
        """The presence mask plus one input per modality of the run, through every encoder and the
        head (:mod:`medmm_plugins.fusion.graph`); image cells are paths relative to the table."""
        from medmm import DeploySpec, pad_id_of
        from medmm_plugins.fusion.graph import graph_inputs, graph_module

        d = self.cfg.data.model_dump(mode="json")
        return DeploySpec(
            inputs=graph_inputs(list(self.names)), graph=graph_module(self, model), pad_id=pad_id_of(self.tokenizer),
            path_columns=tuple(c for c in [self.cfg.data.image_column] if c),
            preprocessing={**{k: d[k] for k in ("text_column", "image_column", "max_length", "size", "channels",
                                                "window") if k in d},
                           "modalities": "artifacts/fusion.json (names, tabular preprocessor)",
                           "tokenizer": "artifacts/text_encoder/tokenizer.json",
                           "missing": "mask input: False where a row lacks the modality (its input is ignored)"})
