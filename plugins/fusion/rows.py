"""The fusion table read into row-aligned modality arrays (the dict :mod:`medmm.data.multimodal` indexes).

A row may lack a modality (empty text, missing / unreadable image, all tabular cells empty): it is
kept with a presence mask. A row with no modality, without a label or with an unusable split cell
goes to the skip list (row id and reason, never cell contents).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medmm import (
    ConfigError, DataError, decode_workers, is_missing, load_row_images, PixelConfig, read_split_column,
    read_table, read_table_chunks, select_features,
)
from medmm_plugins.fusion.config import FusionConfig, FusionDataConfig, FusionModelConfig

__all__ = ["PredictBlocks", "check_frame", "describe", "encode_labels", "frame_rows", "label_key", "load_rows",
           "modalities", "pixel_config", "raw_labels", "read_fusion_table", "read_texts", "tabular_columns",
           "tabular_present", "text_tokens", "whole_batches", "without_modality"]

BACKBONE_KEYS = {"text": "text_backbone", "image": "image_backbone", "tabular": "tabular_backbone"}


def modalities(d: FusionDataConfig) -> list[str]:
    """The configured modalities, in model order: text, image, tabular."""
    names = [n for n, key in (("text", "text_column"), ("image", "image_column")) if getattr(d, key)]
    if d.tabular_columns:
        names.append("tabular")
    if not names:
        raise ConfigError("fusion needs at least one of data.text_column, data.image_column, "
                          "data.tabular_columns")
    return names


def pixel_config(d: FusionDataConfig) -> PixelConfig:
    """The pixel pipeline of the image modality (the middle frame of the chosen instance)."""
    return PixelConfig(size=d.size, channels=d.channels, window=d.window, frames="middle")


def tabular_columns(d: FusionDataConfig, columns: list[str], trained: list[str] | None = None) -> list[str]:
    """``data.tabular_columns`` (``all``: every column no other role uses) minus ``data.exclude``;
    ``trained`` (predict: the fitted preprocessor's columns) when given."""
    if trained is not None:
        return list(trained)
    listed = d.tabular_columns
    reserved = [getattr(d, k) for k in ("text_column", "image_column", "label_column", "id_column",
                                        "group_column", "split_column")]
    return list(select_features(columns, None if listed == "all" else listed, d.exclude, reserved))


def read_fusion_table(path: Path, d: FusionDataConfig, *, labelled: bool, trained: list[str] | None = None
                      ) -> tuple[Any, list[str], list[str] | None]:
    """The table (identifier, text, image and label cells read as strings), its row ids (``data.id_column``,
    else the row numbers) and its tabular columns (``None`` without ``data.tabular_columns``).

    The text, image, id and tabular columns must be there; the split, label and group columns when
    ``labelled`` (they serve training's split only): prediction (the task's and the exported
    predictor's) needs no group column. A folder, an absent column or a duplicate id is a
    :class:`DataError`.
    """
    if path.is_dir():
        raise DataError(f"fusion reads a table (CSV, TSV, JSONL, Parquet) with one row per unit, got a folder: "
                        f"{path}")
    df = read_table(path, string_columns=_string_columns(d), decimal=d.decimal)
    return check_frame(df, path.name, d, labelled=labelled, trained=trained)


def _string_columns(d: FusionDataConfig) -> list[str]:
    return [c for c in (d.id_column, d.group_column, d.text_column, d.image_column, d.label_column) if c]


def check_frame(df: Any, name: str, d: FusionDataConfig, *, labelled: bool, trained: list[str] | None = None,
                first_row: int = 0) -> tuple[Any, list[str], list[str] | None]:
    """:func:`read_fusion_table`'s checks of a table (or of a block of it whose first row is ``first_row``:
    row-number ids count from there): the frame (index reset), its row ids and tabular columns."""
    group = d.group_column if labelled else None
    needed = [c for c in (d.text_column, d.image_column, d.id_column, group) if c]
    if labelled and d.split_column:
        needed.append(d.split_column)
    tab = tabular_columns(d, list(df.columns), trained) if d.tabular_columns else None
    needed += tab or []
    if labelled:
        needed.append(d.label_column)
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise DataError(f"{name}: no column(s) {absent}; the table has {list(df.columns)[:20]}")
    ids = [str(v) for v in df[d.id_column]] if d.id_column else [str(i) for i in range(first_row, first_row + len(df))]
    if len(set(ids)) != len(ids):
        raise DataError(f"{name}: data.id_column {d.id_column!r} has duplicate values")
    return df.reset_index(drop=True), ids, tab


def read_texts(cells: Any) -> tuple[list[str], np.ndarray]:
    """Each row's text (``""`` when missing) and whether it is present (holds a non-blank character)."""
    texts = ["" if is_missing(v) else str(v) for v in cells]
    return texts, np.asarray([bool(t.strip()) for t in texts], dtype=bool)


def text_tokens(texts: list[str], present: np.ndarray, tokenizer: Any, *, max_length: int,
                cache_dir: Path | None) -> list[np.ndarray]:
    """Per row the int64 token ids of its text (:func:`medmm.data.text.tokenize.tokenize_cached`, cached
    under ``cache_dir`` when given), an empty array where ``present`` is False."""
    from medmm import tokenize_cached

    idx = np.flatnonzero(present)
    corpus = tokenize_cached([texts[i] for i in idx], tokenizer, max_length=max_length, cache_dir=cache_dir)
    tokens = [np.zeros(0, dtype=np.int64)] * len(texts)
    for k, i in enumerate(idx):
        tokens[i] = np.asarray(corpus[k], dtype=np.int64)
    return tokens


def tabular_present(table: Any) -> np.ndarray:
    """Whether each row of the tabular columns has at least one non-empty cell."""
    return table.notna().any(axis=1).to_numpy()


def raw_labels(cells: Any) -> list[str]:
    """Each row's label text, stripped (``""`` when missing)."""
    return ["" if is_missing(v) else str(v).strip() for v in cells]


def without_modality(ids: list[str], present: np.ndarray,
                     reasons: dict[int, str]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The rows to keep (any modality present) and the skip list of the others (row id, reason with the
    image's failure when there was one)."""
    keep = present.any(axis=1)
    skipped = [(ids[r], "no modality present" + (f" ({reasons[r]})" if r in reasons else ""))
               for r in np.flatnonzero(~keep)]
    return keep, skipped


def load_rows(data_path: Path, cfg: FusionConfig, names: list[str], *, labelled: bool, cache_dir: Path,
              trained_columns: list[str] | None = None) -> dict[str, Any]:
    """Read the table and every modality in ``names``: row-aligned arrays, presence ``mask``, ``keep``
    and the ``skipped`` / ``partial`` lists. ``trained_columns``: predict's tabular columns."""
    df, ids, tab = read_fusion_table(Path(data_path), cfg.data, labelled=labelled, trained=trained_columns)
    return frame_rows(df, ids, tab, Path(data_path).resolve().parent, cfg, names, labelled=labelled,
                      cache_dir=cache_dir, trained_columns=trained_columns)


def frame_rows(df: Any, ids: list[str], tab: list[str] | None, base: Path, cfg: FusionConfig, names: list[str], *,
               labelled: bool, cache_dir: Path, trained_columns: list[str] | None = None) -> dict[str, Any]:
    """:func:`load_rows` of a checked frame (:func:`check_frame`) whose image paths are relative to ``base``."""
    d = cfg.data
    n = len(df)
    present = np.zeros((n, len(names)), dtype=bool)
    reasons: dict[int, str] = {}
    out: dict[str, Any] = {"ids": ids, "names": names, "emb": {}, "n": n}
    if "text" in names:
        out["texts"], present[:, names.index("text")] = read_texts(df[d.text_column])
    if "image" in names:
        root, keys, pixels, problems = load_row_images(df[d.image_column], base, pixel_config(d), cache_dir,
                                                       workers=decode_workers(cfg.engine.num_workers))
        for r, why in problems:
            reasons.setdefault(r, why)
        out.update(image_keys=keys, pixels=pixels, image_root=root)
        present[:, names.index("image")] = [bool(k) for k in keys]
    if "tabular" in names:
        cols = tab if tab is not None else tabular_columns(d, list(df.columns), trained_columns)
        out["table"] = df[cols]
        present[:, names.index("tabular")] = tabular_present(df[cols])
    out["mask"] = present
    keep, skipped = without_modality(ids, present, reasons)
    out["partial"] = [(ids[r], f"kept without its image: {reasons[r]}") for r in sorted(reasons) if keep[r]]
    if d.label_column in df.columns:  # predict: labels, when given, yield metrics
        out["labels_raw"] = raw_labels(df[d.label_column])
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
    if labelled and d.group_column:  # for the split; prediction needs no patient column
        out["groups"] = ["" if is_missing(v) else str(v) for v in df[d.group_column]]
    out["keep"], out["skipped"] = keep, skipped
    return out


def whole_batches(keep: np.ndarray, batch: int, last: bool) -> tuple[int, int]:
    """How much of a block of a streamed prediction to predict now: ``(kept rows, table rows)``. Not the last
    block: the kept rows are cut to whole eval batches, so the model sees one pass's batches; the table rows
    from the first kept row left over come again at the start of the next block (:meth:`PredictBlocks.carry`)."""
    kept = np.flatnonzero(keep)
    n = len(kept) if last else len(kept) // batch * batch
    return n, (len(keep) if n == len(kept) else int(kept[n]))


class PredictBlocks:
    """A fusion table for a streamed ``medmm predict`` (torch and onnxruntime), read in blocks of about ``rows``
    table rows, with the whole-table answers of a first pass that reads only the id, label, text and tabular
    columns: repeated ids (the one-pass error), and whether every predicted row has a known label (metrics and
    the ``true`` column, as one pass decides; a row with only an image cell and no known label has its image
    checked, since a row whose image does not decode is not predicted).

    :meth:`frames` yields ``(frame, ids, tabular columns, last)``, checked as :func:`read_fusion_table` checks the
    whole table; the caller predicts a block's rows up to a cut and :meth:`carry` s the rest into the next one."""

    def __init__(self, path: Path, cfg: FusionConfig, names: list[str], rows: int, *,
                 trained: list[str] | None, label_names: list[str] | None) -> None:
        import pandas as pd

        self.path, self.cfg, self.d, self.names, self.rows, self.trained = Path(path), cfg, cfg.data, names, rows, trained
        if self.path.is_dir():
            read_fusion_table(self.path, self.d, labelled=False)  # the one-line error
        d = self.d
        index = {label_key(n) for n in label_names or []}
        labels = bool(d.label_column)
        hashes, image_only, present = [], [], False
        for block in self._chunks():
            df, ids, tab = check_frame(block, self.path.name, d, labelled=False, trained=trained,
                                       first_row=int(block.index[0]) if len(block) else 0)
            hashes.append(pd.util.hash_pandas_object(pd.Series(ids, dtype=object), index=False).to_numpy())
            if not labels or d.label_column not in df.columns:
                labels = False
                continue
            unknown = np.asarray([label_key(v) not in index for v in raw_labels(df[d.label_column])], dtype=bool)
            if not unknown.any():
                continue
            if "text" in names:
                present = present or bool(read_texts(df[d.text_column])[1][unknown].any())
            if "tabular" in names and tab:
                present = present or bool(tabular_present(df[tab])[unknown].any())
            if "image" in names:
                image_only += [v for v, u in zip(df[d.image_column], unknown) if u and not is_missing(v)]
            if present:
                labels = False
        every = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        if d.id_column and len(np.unique(every)) < len(every):  # a repeated id (or a hash collision): exactly
            seen: set[str] = set()
            for block in self._chunks(columns=[d.id_column]):
                for v in block[d.id_column]:
                    if str(v) in seen:
                        raise DataError(f"{self.path.name}: data.id_column {d.id_column!r} has duplicate values")
                    seen.add(str(v))
        if labels and image_only:  # unlabelled rows with only an image cell: predicted when the image decodes
            import tempfile

            with tempfile.TemporaryDirectory(prefix="medmm-pixels-") as tmp:
                keys = load_row_images(image_only, self.path.resolve().parent, pixel_config(d), Path(tmp),
                                       workers=0).keys
            labels = not any(keys)
        self.labelled = labels
        self._pending: Any = None
        self._current: Any = None

    def _chunks(self, columns: list[str] | None = None) -> Iterator[Any]:
        return read_table_chunks(self.path, self.rows, columns=columns, string_columns=_string_columns(self.d),
                                 decimal=self.d.decimal)

    def frames(self) -> Iterator[tuple[Any, list[str], list[str] | None, bool]]:
        import pandas as pd

        chunks = self._chunks()
        nxt = next(chunks, None)
        while nxt is not None:
            cur = nxt if self._pending is None else pd.concat([self._pending, nxt])
            self._pending, nxt = None, next(chunks, None)
            self._current = cur
            df, ids, tab = check_frame(cur, self.path.name, self.d, labelled=False, trained=self.trained,
                                       first_row=int(cur.index[0]) if len(cur) else 0)
            yield df, ids, tab, nxt is None
        if self._pending is not None:  # carried past the last block: never (the last block is predicted whole)
            raise DataError(f"{self.path.name}: rows left after the last block")

    def carry(self, row: int) -> None:
        """The current block's table rows from ``row`` on come again at the start of the next block."""
        self._pending = self._current.iloc[row:] if row < len(self._current) else None


def label_key(value: str) -> str:
    """A label's canonical text: ``"1"``, ``"1.0"`` and ``" 1 "`` are one class."""
    value = str(value).strip()
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def encode_labels(raw: list[str], classes: list[Any] | None) -> tuple[list[str], np.ndarray]:
    """The class names (``data.classes`` when given, else the sorted labels) and each label's index."""
    found = sorted(set(raw))
    if classes:
        given = [str(c) for c in classes]
        unknown = sorted(set(found) - set(given))
        if unknown:
            raise DataError(f"labels {unknown[:5]} are not in data.classes {given}")
        found = given
    if len(found) < 2:
        raise DataError(f"fusion needs at least two classes; the labels hold only {found}")
    index = {c: i for i, c in enumerate(found)}
    return found, np.asarray([index[c] for c in raw], dtype=np.int64)


def describe(data: dict[str, Any], rows: np.ndarray, splits: np.ndarray, names: list[str],
             label_names: list[str] | None, m: FusionModelConfig) -> str:
    """The run summary line: rows per split, modalities present, skipped / partial rows, head and encoders."""
    mask = data["mask"][rows]
    have = ", ".join(f"{name} {int(mask[:, i].sum())}" for i, name in enumerate(names))
    sizes = ", ".join(f"{s} {int((splits == s).sum())}" for s in ("train", "val", "test"))
    missing, unusable = int((~mask).any(axis=1).sum()), len(data["partial"])
    kept = f"{missing} kept with a modality missing" + (f" ({unusable} of them with an image that could not be "
                                                        "used)" if unusable else "")
    listed = "skipped.csv lists them" if unusable else "skipped.csv"
    encoders = ", ".join(f"{n}={getattr(m, BACKBONE_KEYS[n])}" for n in names)
    return (f"{len(rows)} rows ({sizes}); modalities present: {have}; {len(data['skipped'])} rows skipped, "
            f"{kept} ({listed}); classes {', '.join(map(str, label_names or [])) or 'n/a'}; head {m.head}, mode {m.mode}, encoders {encoders}")
