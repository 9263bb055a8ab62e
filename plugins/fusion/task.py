"""fusion: one model over report text, a DICOM image and tabular features per row.

Input is a table (CSV, TSV, JSONL, Parquet) with one row per unit (study or patient). Each row
may lack a modality: an empty text cell, an empty / missing / unreadable image path, or all
tabular cells empty. The row is kept and the model gets a presence mask; a row with no modality
at all, or without a label, is listed in ``skipped.csv`` (row id and reason, no cell contents).

The encoders are the registered backbones of the single-modality tasks (``medmm backbones``).
``model.mode=frozen`` computes the text and image embeddings once, caches them on disk keyed by
data + encoder (:mod:`medmm.data.embedding_cache`) and trains the head (and the small tabular
encoder) only; ``model.mode=finetune`` trains everything end to end, the encoders at
``engine.lr * model.encoder_lr_scale``.

An image cell names a DICOM file, a series folder or a study folder (relative to the table):
the row's image is the middle instance (in file order) of its largest series.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmm.data.dicom.pixels import PixelConfig
from medmm.data.dicom.series import load_row_images
from medmm.data.embedding_cache import EmbeddingCache, fingerprint_files, fingerprint_module, fingerprint_texts
from medmm.data.leakage import warn_leaky_features
from medmm.data.multimodal import MultimodalRows, RowCollate, pad_tokens
from medmm.data.readers import is_missing, read_table
from medmm.data.tabular.preprocess import Preprocessor, fit_preprocessor, infer_column_types, select_features
from medmm.errors import ConfigError, DataError
from medmm.io import read_json, write_json_atomic, write_text_atomic
from medmm.models.fusion_heads import modality_dropout
from medmm.models.multimodal import FusionModel, ImageEncoder, TabularEncoder
from medmm.plugins import get_registry
from medmm.report import html_table
from medmm.task import BaselineInputs, DataBundle, Split, Task, pad_id_of, read_split_column
from medmm_plugins.fusion.config import FusionConfig, FusionDataConfig, FusionModelConfig

__all__ = ["FusionTask"]

log = logging.getLogger("medmm.fusion")
ARTIFACT = "fusion.json"
TEXT_DIR = "text_encoder"
FROZEN_FILE = "frozen_encoders.safetensors"
_FORMAT = "medmm.fusion"


def _label_key(value: str) -> str:
    """A label's canonical text: ``"1"``, ``"1.0"`` and ``" 1 "`` are one class."""
    value = str(value).strip()
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


class FusionTask(Task):
    """Text + image (+ tabular) classification through one fusion head."""

    problem = "binary"
    cfg: FusionConfig  # read by attribute (medmm.config)

    def __init__(self, cfg: FusionConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self.d: FusionDataConfig = self.cfg.data
        self.m: FusionModelConfig = self.cfg.model
        self.names = self._modalities()
        get_registry().get("fusion_head", self.m.head)  # fail before any data is read
        for name, key in (("text", "text_backbone"), ("image", "image_backbone"), ("tabular", "tabular_backbone")):
            if name in self.names:
                self._backbone(key, name)
        self.hidden_modalities: set[str] = set()  # masked at evaluation (per-modality report)
        self.tokenizer: Any = None
        self.preprocessor: Preprocessor | None = None
        self.embed_dims: dict[str, int] = {}
        self._encoders: dict[str, nn.Module] | None = None
        self._artifacts: Path | None = None
        self._artifact_frozen: list[str] = []  # predict: encoders frozen in training (weights in artifacts)

    # ------------------------------------------------------------------ config
    def _modalities(self) -> list[str]:
        names = [n for n, key in (("text", "text_column"), ("image", "image_column")) if getattr(self.d, key)]
        if self.d.tabular_columns:
            names.append("tabular")
        if not names:
            raise ConfigError("fusion needs at least one of data.text_column, data.image_column, "
                              "data.tabular_columns")
        return names

    def _tabular_columns(self, columns: list[str]) -> list[str]:
        """``data.tabular_columns`` (``all``: every column no other role uses) minus ``data.exclude``."""
        if self.preprocessor is not None:  # predict: the columns the model was trained on
            return self.preprocessor.columns
        d, listed = self.d, self.d.tabular_columns
        if getattr(self, "_tab_columns", (None,))[0] != columns:  # resolved once per table (one warning)
            reserved = [getattr(d, k) for k in ("text_column", "image_column", "label_column", "id_column",
                                                "group_column", "split_column")]
            self._tab_columns = (columns, select_features(columns, None if listed == "all" else listed,
                                                          d.exclude, reserved))
        return list(self._tab_columns[1])

    def _pixel_config(self) -> PixelConfig:
        d = self.d
        return PixelConfig(size=d.size, channels=d.channels, window=d.window, frames="middle")

    def _frozen(self) -> set[str]:
        """Modalities whose (pretrained) encoder is frozen and read from the embedding cache."""
        return {"text", "image"} & set(self.names) if self.m.mode == "frozen" else set()

    # ------------------------------------------------------------------ encoders
    def _backbone(self, key: str, modality: str) -> Any:
        return self.backbone(getattr(self.m, key), modality, key=f"model.{key}")

    def _text_encoder(self) -> tuple[nn.Module, Any]:
        from medmm.models.text import load_text_backbone

        if self._artifacts is not None:
            return load_text_backbone(self._artifacts / TEXT_DIR)
        comp = self._backbone("text_backbone", "text")
        factory = comp.load()
        if isinstance(factory, type):
            raise ConfigError(f"model.text_backbone {self.m.text_backbone!r} trains from a vocabulary; "
                              "fusion needs a pretrained encoder (minilm-l6, hf-local, ...)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return factory(comp.name, name_or_path=self.m.text_name_or_path, pooling=self.m.pooling)

    def _image_encoder(self) -> nn.Module:
        comp = self._backbone("image_backbone", "image")
        predict = self._artifacts is not None  # weights come from the run's checkpoint
        torch.manual_seed(self.cfg.seed)
        backbone = comp.build(timm_name=comp.extra.get("timm_name", comp.name), in_chans=self.d.channels,
                              img_size=self.d.size, pretrained="none" if predict else self.m.image_pretrained,
                              weights=None if predict else self.m.image_weights)
        return ImageEncoder(backbone)

    def _tabular_encoder(self, in_dim: int) -> nn.Module:
        factory = self._backbone("tabular_backbone", "tabular").load()
        accepted = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in {"hidden": self.m.hidden, "dropout": self.m.dropout}.items()
                  if k in accepted}
        torch.manual_seed(self.cfg.seed)
        return TabularEncoder(factory(in_dim, 1, **kwargs))

    def _build_encoders(self) -> dict[str, nn.Module]:
        encoders: dict[str, nn.Module] = {}
        if "text" in self.names:
            encoders["text"], self.tokenizer = self._text_encoder()
        if "image" in self.names:
            encoders["image"] = self._image_encoder()
        if "tabular" in self.names:
            assert self.preprocessor is not None
            encoders["tabular"] = self._tabular_encoder(self.preprocessor.n_features)
        self.embed_dims = {n: int(e.embed_dim) for n, e in encoders.items()}
        return encoders

    # ------------------------------------------------------------------ reading
    def _read(self, data_path: Path, *, labelled: bool) -> tuple[Any, list[str]]:
        d = self.d
        path = Path(data_path)
        if path.is_dir():
            raise DataError(f"fusion reads a table (CSV, TSV, JSONL, Parquet) with one row per unit, got a folder: "
                            f"{path}")
        df = read_table(path, string_columns=[c for c in (d.id_column, d.group_column, d.text_column,
                                                          d.image_column, d.label_column) if c],
                        decimal=d.decimal)
        needed = [c for c in (d.text_column, d.image_column, d.id_column, d.group_column) if c]
        if labelled and d.split_column:
            needed.append(d.split_column)
        needed += self._tabular_columns(list(df.columns)) if self.d.tabular_columns else []
        if labelled:
            needed.append(d.label_column)
        absent = [c for c in needed if c not in df.columns]
        if absent:
            raise DataError(f"{path.name}: no column(s) {absent}; the table has {list(df.columns)[:20]}")
        ids = [str(v) for v in df[d.id_column]] if d.id_column else [str(i) for i in range(len(df))]
        if len(set(ids)) != len(ids):
            raise DataError(f"{path.name}: data.id_column {d.id_column!r} has duplicate values")
        return df.reset_index(drop=True), ids

    def _load(self, data_path: Path, *, labelled: bool) -> dict[str, Any]:
        """Read the table and every modality; returns row-aligned arrays and the skip list."""
        d = self.d
        df, ids = self._read(data_path, labelled=labelled)
        base = Path(data_path).resolve().parent
        n = len(df)
        present = np.zeros((n, len(self.names)), dtype=bool)
        reasons: dict[int, str] = {}
        out: dict[str, Any] = {"ids": ids, "names": self.names, "emb": {}, "n": n}
        if "text" in self.names:
            texts = ["" if is_missing(v) else str(v) for v in df[d.text_column]]
            out["texts"] = texts
            present[:, self.names.index("text")] = [bool(t.strip()) for t in texts]
        if "image" in self.names:
            workers = max(1, min(4, self.cfg.engine.num_workers or (os.cpu_count() or 1)))
            root, keys, pixels, problems = load_row_images(df[d.image_column], base, self._pixel_config(),
                                                           self.cache_dir, workers=workers)
            for r, why in problems:
                reasons.setdefault(r, why)
            out.update(image_keys=keys, pixels=pixels, image_root=root)
            present[:, self.names.index("image")] = [bool(k) for k in keys]
        if "tabular" in self.names:
            cols = self._tabular_columns(list(df.columns))
            out["table"] = df[cols]
            present[:, self.names.index("tabular")] = df[cols].notna().any(axis=1).to_numpy()
        out["mask"] = present
        keep = present.any(axis=1)
        skipped = [(ids[r], "no modality present" + (f" ({reasons[r]})" if r in reasons else ""))
                   for r in np.flatnonzero(~keep)]
        out["partial"] = [(ids[r], f"kept without its image: {reasons[r]}") for r in sorted(reasons) if keep[r]]
        if d.label_column in df.columns:  # predict: labels, when given, yield metrics
            labels = df[d.label_column]
            out["labels_raw"] = ["" if is_missing(v) else str(v).strip() for v in labels]
        if labelled:
            has_label = np.asarray([bool(v) for v in out["labels_raw"]])
            skipped += [(ids[r], "missing label") for r in np.flatnonzero(keep & ~has_label)]
            keep &= has_label
        if labelled and d.split_column:
            out["splits"], unusable = read_split_column(ids, df[d.split_column].tolist())  # the one split rule
            why = dict(unusable)
            bad = [r for r in np.flatnonzero(keep) if out["splits"][r] is None]
            skipped += [(ids[r], why[ids[r]]) for r in bad]
            keep[bad] = False
        if d.group_column:
            out["groups"] = ["" if is_missing(v) else str(v) for v in df[d.group_column]]
        out["keep"], out["skipped"] = keep, skipped
        return out

    # ------------------------------------------------------------------ training
    def _set_labels(self, raw: list[str]) -> np.ndarray:
        found = sorted(set(raw))
        given = self.d.classes
        if given:
            given = [str(c) for c in given]
            unknown = sorted(set(found) - set(given))
            if unknown:
                raise DataError(f"labels {unknown[:5]} are not in data.classes {given}")
            found = given
        if len(found) < 2:
            raise DataError(f"fusion needs at least two classes; the labels hold only {found}")
        self.label_names = found
        self.problem = "binary" if len(found) == 2 else "multiclass"
        index = {c: i for i, c in enumerate(found)}
        return np.asarray([index[c] for c in raw], dtype=np.int64)

    def build_data(self, data_path: Path) -> DataBundle:
        data = self._load(Path(data_path), labelled=True)
        rows = np.flatnonzero(data["keep"])
        if len(rows) == 0:
            raise DataError("no usable row: every row lacks a label or all of its modalities (see skipped.csv)")
        self.write_skipped([*data["skipped"], *data["partial"]])
        y = self._set_labels([data["labels_raw"][r] for r in rows])
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
        self._prepare_inputs(data)
        if self._frozen():
            self._cache_embeddings(data)

        def split(name: str) -> Split | None:
            sel = splits == name
            if not sel.any():
                return None
            return Split(MultimodalRows(rows[sel], data, y[sel]), [data["ids"][r] for r in rows[sel]], y[sel])

        desc = self._describe(data, rows, splits)  # the runner prints and logs it
        self._data = data
        self._raw = {name: (data, rows[splits == name], y[splits == name]) for name in ("train", "val", "test")}
        return DataBundle(split("train"), split("val"), split("test"), collate_fn=self._collate(),
                          meta={"description": desc})

    def _prepare_inputs(self, data: dict[str, Any]) -> None:
        """Tokenise texts and transform tabular features (the raw inputs of the encoders)."""
        if "text" in self.names and "text" not in self._frozen():
            data["tokens"] = self._tokenize(data["texts"], data["mask"][:, self.names.index("text")])
        if "tabular" in self.names:
            assert self.preprocessor is not None
            data["tabular"] = self.preprocessor.transform(data["table"])

    def _tokenize(self, texts: list[str], present: np.ndarray) -> list[np.ndarray]:
        from medmm.data.text.tokenize import tokenize_cached

        idx = np.flatnonzero(present)
        corpus = tokenize_cached([texts[i] for i in idx], self.tokenizer, max_length=self.d.max_length,
                                 cache_dir=self.cache_dir)
        tokens = [np.zeros(0, dtype=np.int64)] * len(texts)
        for k, i in enumerate(idx):
            tokens[i] = np.asarray(corpus[k], dtype=np.int64)
        return tokens

    def _cache_embeddings(self, data: dict[str, Any]) -> None:
        """Frozen encoders: embeddings of every present row, computed once and cached on disk."""
        assert self._encoders is not None
        cache = EmbeddingCache(self.cache_dir / "embeddings")
        for name in sorted(self._frozen()):
            encoder = self._encoders[name]
            col = data["mask"][:, self.names.index(name)]
            idx = np.flatnonzero(col)
            if name == "text":
                data_fp = fingerprint_texts([data["texts"][i] for i in idx])
                extra = f"max_length={self.d.max_length};pooling={self.m.pooling}"
            else:
                data_fp = fingerprint_files([data["image_keys"][i] for i in idx], data["image_root"])
                extra = json.dumps(self._pixel_config().to_dict(), sort_keys=True)
            key = cache.key(data_fp, fingerprint_module(encoder, extra=extra))
            emb = cache.load(key)
            if emb is None or emb.shape[0] != len(idx):
                emb = self._encode_all(name, encoder, data, idx)
                cache.save(key, emb)
                log.info("%s embeddings: %d rows encoded and cached", name, len(idx))
            else:
                log.info("%s embeddings: %d rows from the cache", name, len(idx))
            full = np.zeros((data["n"], emb.shape[1]), dtype=np.float32)
            full[idx] = emb
            data["emb"][name] = full

    def _encode_all(self, name: str, encoder: nn.Module, data: dict[str, Any], idx: np.ndarray) -> np.ndarray:
        """Embeddings of rows ``idx`` (in that order) on the engine's device and precision."""
        from medmm.engine.inference import run_module

        e, forward, order = self.cfg.engine, None, np.arange(len(idx))
        if name == "text":  # shortest first: batches with little padding
            tokens = self._tokenize(data["texts"], data["mask"][:, self.names.index("text")])
            order = np.argsort([len(tokens[i]) for i in idx], kind="stable")
            pad = pad_id_of(self.tokenizer)
            forward = lambda m, b: m(*b)  # (ids, attention) -> encoder(ids, attention)
        parts = [idx[order[s : s + e.eval_batch_size]] for s in range(0, len(idx), e.eval_batch_size)]
        if name == "text":
            batches: Any = (pad_tokens([tokens[i] for i in part], pad) for part in parts)
        else:
            pixels, keys = data["pixels"], data["image_keys"]
            batches = (torch.from_numpy(np.stack([pixels.image(keys[i]) for i in part])) for part in parts)
        outputs = run_module(encoder, batches, device=e.device, precision=e.precision, forward=forward)
        if not outputs:
            return np.zeros((0, self.embed_dims[name]), dtype=np.float32)
        emb = np.empty((len(idx), outputs[0].shape[1]), dtype=np.float32)
        emb[order] = torch.cat(outputs).numpy()  # back to the order of idx
        return emb

    def _collate(self) -> RowCollate:
        pad = pad_id_of(self.tokenizer)
        return RowCollate(pad, self._pixel_config().shape)

    def _describe(self, data: dict[str, Any], rows: np.ndarray, splits: np.ndarray) -> str:
        mask = data["mask"][rows]
        have = ", ".join(f"{name} {int(mask[:, i].sum())}" for i, name in enumerate(self.names))
        sizes = ", ".join(f"{s} {int((splits == s).sum())}" for s in ("train", "val", "test"))
        missing, unusable = int((~mask).any(axis=1).sum()), len(data["partial"])
        kept = f"{missing} kept with a modality missing" + (f" ({unusable} of them with an image that could not be "
                                                            "used)" if unusable else "")
        listed = "skipped.csv lists them" if unusable else "skipped.csv"
        return (f"{len(rows)} rows ({sizes}); modalities present: {have}; {len(data['skipped'])} rows skipped, "
                f"{kept} ({listed}); classes {self.label_names}; head {self.m.head}, mode {self.m.mode}, "
                f"encoders {self._encoder_names()}")

    def _encoder_names(self) -> str:
        keys = {"text": "text_backbone", "image": "image_backbone", "tabular": "tabular_backbone"}
        return ", ".join(f"{n}={getattr(self.m, keys[n])}" for n in self.names)

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
            self._load_frozen(model)
        return model

    def _load_frozen(self, model: FusionModel) -> None:
        from safetensors.torch import load_file

        path = self._artifacts / FROZEN_FILE
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any read failure is the same user-facing error
            raise DataError(f"cannot read the frozen encoder weights {path}: {exc}") from None
        missing, unexpected = model.encoders.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if k.split(".")[0] in self._artifact_frozen]
        if missing or unexpected:
            raise DataError(f"{path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")

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
            write_text_atomic(self.run_dir / "modality_ablation.json", json.dumps(dict(rows), indent=1) + "\n")
        return [("Per-modality contribution", note + table)]

    # ------------------------------------------------------------------ predict
    def save_artifacts(self, directory: Path) -> None:
        from medmm.models.text import save_text_backbone

        directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": _FORMAT, "version": 1, "problem": self.problem, "label_names": self.label_names,
                   "names": self.names, "embed_dims": self.embed_dims,
                   "preprocessor": self.preprocessor.to_json() if self.preprocessor else None}
        frozen = sorted(self._frozen())
        payload["frozen"] = frozen
        if frozen:
            from safetensors.torch import save_file

            from medmm.engine.checkpoint import model_state

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
            _, self.tokenizer = self._text_encoder()
        self._prepare_inputs(data)
        rows = np.flatnonzero(data["keep"])
        labels = None
        values = data.get("labels_raw")
        index = {_label_key(n): i for i, n in enumerate(self.label_names or [])}  # '1' names 1, 1.0 and '1'
        if values is not None and all(_label_key(values[r]) in index for r in rows):
            labels = np.asarray([index[_label_key(values[r])] for r in rows], dtype=np.int64)
        split = Split(MultimodalRows(rows, data, labels), [data["ids"][r] for r in rows], labels)
        split.skipped = list(data["skipped"])
        self._raw = {**getattr(self, "_raw", {}), "predict": (data, rows, labels)}
        return split, self._collate()

    def baseline_inputs(self, split: str) -> BaselineInputs | None:
        """Each modality's raw input per row (text, preprocessed table, 32 px pixels) and presence."""
        from medmm.classic import small_pixels

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
            zeros = np.zeros(self._pixel_config().shape, np.float32)
            out.image = small_pixels(data["pixels"].image(data["image_keys"][r]) if data["image_keys"][r] else zeros
                                     for r in rows)
        return out

    def explain_spec(self, model: nn.Module) -> Any:
        """Each modality masked per row, then attributions inside each modality (``medmm explain``)."""
        from medmm.explain.image import image_input
        from medmm.explain.spec import ExplainSpec, InputSpec
        from medmm.explain.tabular import feature_input
        from medmm.explain.text import token_input

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
