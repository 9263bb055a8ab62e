"""fusion's torch-free input reader for its exports (``TaskSpec.runtime``).

The run's table reader, its tokenizer (``tokenizers`` alone), the DICOM image choice and pixel
pipeline of the task (``load_row_images``) and the fitted tabular preprocessor; a row with no
modality is skipped with its reason, as the task does. The table, its row ids, text presence and
tokens, labels and the skip list come from the task's own torch-free reader
(:mod:`medmm_plugins.fusion.rows`), so both paths read rows one way. The feeds match the graph of
:mod:`medmm_plugins.fusion.graph`: ``mask`` plus one input per modality of the run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmm import Examples, FastTokenizer, Preprocessor, batch_slices, read_json, require
from medmm_plugins.fusion.config import FusionConfig
from medmm_plugins.fusion.rows import (
    PredictBlocks, label_key, pixel_config, raw_labels, read_fusion_table, read_texts, tabular_present, text_tokens,
    whole_batches, without_modality,
)

EXTRA = "runtime"


class FusionInputs:
    """A table with text, image paths and tabular columns; feeds per batch plus the mask."""

    accepts = "table"  # image cells are paths relative to the table: rows come from a file

    def __init__(self, export_dir: Path, cfg: FusionConfig, batch_size: int, manifest: Mapping[str, Any]) -> None:
        self.cfg, self.d, self.batch_size, self.pad_id = cfg, cfg.data, batch_size, int(manifest["pad_id"])
        art = Path(export_dir) / "artifacts"
        payload = read_json(art / "fusion.json", format="medmm.fusion")
        self.problem, self.label_names = payload["problem"], list(payload["label_names"])
        self.names: list[str] = list(payload["names"])
        self.preprocessor = Preprocessor.from_json(payload["preprocessor"]) if payload.get("preprocessor") else None
        self.tokenizer: Any = None
        if "text" in self.names:
            self.tokenizer = FastTokenizer(art / "text_encoder")
        if "image" in self.names:
            require("pydicom", EXTRA, "fusion prediction with images from an export")

    def read(self, path: Path) -> tuple[Any, list[str], Path]:
        """The table and its row ids, read and checked as the task's predict reads them, and the folder
        its image paths are relative to."""
        trained = list(self.preprocessor.columns) if self.preprocessor is not None else None
        df, ids, _ = read_fusion_table(Path(path), self.d, labelled=False, trained=trained)
        return df, ids, Path(path).resolve().parent

    def blocks(self, path: Path, rows: int) -> Iterator[Examples]:
        """:meth:`examples` of a CSV / TSV table in blocks of about ``rows`` rows (the streamed ``medmm predict
        EXPORT_DIR``): each block's kept rows cut to whole eval batches (the rest comes again with the next
        block), the whole-table checks and the label rule from a first pass (:class:`PredictBlocks`)."""
        trained = list(self.preprocessor.columns) if self.preprocessor is not None else None
        cfg = self.cfg
        if "image" in self.names:  # a block's pixels are held as float32: about 128 MB of them at most
            per_row = 4 * int(np.prod(pixel_config(self.d).shape))
            rows = min(rows, max(self.batch_size, (128 << 20) // per_row // self.batch_size * self.batch_size))
        source = PredictBlocks(Path(path), cfg, self.names, rows, trained=trained, label_names=self.label_names)
        base = Path(path).resolve().parent
        for df, ids, _, last in source.frames():
            ex = self.examples((df, ids, base), last=last, carry=source.carry, labelled=source.labelled)
            yield ex

    def examples(self, source: tuple[Any, list[str], Path], *, last: bool = True, carry: Any = None,
                 labelled: bool = True) -> Any:
        """The feeds of a table's rows with a modality. A block of a streamed prediction (``last`` False) keeps
        whole eval batches of rows and hands the table row where the rest starts to ``carry``; ``labelled``
        False: no targets (the whole table's label rule said so)."""
        df, ids, base = source
        d, names = self.d, self.names
        n = len(df)
        present = np.zeros((n, len(names)), dtype=bool)
        reasons: dict[int, str] = {}
        tokens: list[np.ndarray] = []
        images: np.ndarray | None = None
        tabular: np.ndarray | None = None
        if "text" in names:
            texts, present[:, names.index("text")] = read_texts(df[d.text_column])
            tokens = text_tokens(texts, present[:, names.index("text")], self.tokenizer,
                                 max_length=self.d.max_length, cache_dir=None)
        if "image" in names:
            images, ok, problems = self._images(df[d.image_column], base)
            for r, why in problems:
                reasons.setdefault(r, why)
            present[:, names.index("image")] = ok
        if "tabular" in names:
            assert self.preprocessor is not None
            table = df[self.preprocessor.columns]
            present[:, names.index("tabular")] = tabular_present(table)
            tabular = np.ascontiguousarray(self.preprocessor.transform(table), dtype=np.float32)
        kept, skipped = without_modality(ids, present, reasons)
        keep = np.flatnonzero(kept)
        n, cut = whole_batches(kept, self.batch_size, last)
        if cut < len(df):  # the rest of this block comes again at the start of the next one
            carry(cut)
            keep, skipped = keep[:n], skipped[:cut - n]
        batches = []
        for s in batch_slices(len(keep), self.batch_size):
            rows = keep[s]
            feeds: dict[str, np.ndarray] = {"mask": present[rows]}
            if "text" in names:
                width = max(1, max(len(tokens[r]) for r in rows))
                ids_ = np.full((len(rows), width), self.pad_id, dtype=np.int64)
                att = np.zeros((len(rows), width), dtype=np.int64)
                for i, r in enumerate(rows):
                    ids_[i, :len(tokens[r])], att[i, :len(tokens[r])] = tokens[r], 1
                feeds.update(input_ids=ids_, attention_mask=att)
            if images is not None:
                feeds["image"] = images[rows]
            if tabular is not None:
                feeds["tabular"] = tabular[rows]
            batches.append(feeds)
        return Examples(batches, [ids[r] for r in keep], self._targets(df, keep) if labelled else None, skipped=skipped)

    def _images(self, cells: Any, base: Path) -> tuple[np.ndarray, list[bool], list[tuple[int, str]]]:
        """``[N, C, H, W]`` pixels in ``[0, 1]`` (zeros where a row has no usable image), presence, failures."""
        from medmm import load_row_images

        pixels = pixel_config(self.d)
        with tempfile.TemporaryDirectory(prefix="medmm-pixels-") as tmp:
            _, keys, cache, problems = load_row_images(cells, base, pixels, Path(tmp), workers=0)
            out = np.zeros((len(keys), *pixels.shape), dtype=np.float32)
            if cache is not None:
                for r, k in enumerate(keys):
                    if k:
                        out[r] = cache.image(k)
                cache._array = None  # release the memory map before the folder goes
        return out, [bool(k) for k in keys], problems

    def _targets(self, df: Any, rows: np.ndarray) -> np.ndarray | None:
        """Class indices when every kept row has a known label (metrics), as the task's predict reader."""
        col = self.d.label_column
        if not col or col not in df.columns:
            return None
        index = {label_key(n): i for i, n in enumerate(self.label_names)}
        raw = raw_labels(df[col])
        if not all(label_key(raw[r]) in index for r in rows):
            return None
        return np.asarray([index[label_key(raw[r])] for r in rows], dtype=np.float32)
