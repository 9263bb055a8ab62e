"""Fusion runs as ONNX: one graph over the raw modality inputs plus the presence mask.

The graph takes ``mask`` ``[B, M]`` (bool, columns in the run's modality order) and each
modality's raw input — ``input_ids`` / ``attention_mask`` ``[B, L]``, ``image`` ``[B, C, H, W]``
in ``[0, 1]``, ``tabular`` ``[B, D]`` (the fitted preprocessor's output) — runs every encoder on
every row, and hands the embeddings and the mask to the head, which replaces the rows of missing
modalities by zeros before anything reads them (:class:`medmm.models.fusion_heads.FusionHead`). The
torch path encodes only the present rows; heads never mix rows, so both give the same scores
(the export's parity check measures it). Frozen-mode runs are exported the same way: their
encoders' weights are in the run's artifacts, which predict loads as the torch path does.

:class:`FusionInputs` is the torch-free reader of the onnxruntime path: the run's table reader,
its tokenizer (``tokenizers`` alone), the DICOM image choice and pixel pipeline of the task
(:func:`medmm.data.dicom.series.load_row_images`) and the fitted tabular preprocessor; a row with
no modality is skipped with its reason, as the task does. The table, its row ids, text presence
and tokens, labels and the skip list come from the task's own torch-free reader
(:mod:`medmm_plugins.fusion.rows`), so both paths read rows one way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmm.deploy.manifest import require

if TYPE_CHECKING:
    from medmm_plugins.fusion.config import FusionConfig

EXTRA = "runtime"
TEXT_INPUTS = ("input_ids", "attention_mask")


def graph_inputs(names: list[str]) -> tuple[tuple[str, ...], dict[str, dict[int, str]]]:
    """The graph's input names and dynamic axes for a run with modalities ``names``."""
    inputs: list[str] = ["mask"]
    dynamic: dict[str, dict[int, str]] = {"mask": {0: "batch"}}
    for name in names:
        if name == "text":
            inputs += TEXT_INPUTS
            dynamic.update({k: {0: "batch", 1: "sequence"} for k in TEXT_INPUTS})
        else:
            inputs.append(name)
            dynamic[name] = {0: "batch"}
    return tuple(inputs), dynamic


def graph_module(task: Any, model: Any) -> Any:
    """``nn.Module`` whose ``forward`` takes the named inputs of :func:`graph_inputs` and returns scores."""
    import torch

    from medmm.engine.losses import scores_from_output

    names = list(model.names)
    inputs, _ = graph_inputs(names)
    problem = task.problem

    class FusionScores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def scores(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            embeddings = {}
            for name in names:  # every row; the head zeroes the rows whose modality is missing
                encoder = self.model.encoders[name]
                x = encoder(feeds["input_ids"], feeds["attention_mask"]) if name == "text" else encoder(feeds[name])
                embeddings[name] = x.float()
            out = self.model.head(embeddings, feeds["mask"].bool())
            return scores_from_output(problem, out.squeeze(-1) if problem == "binary" else out)

    # exporters read the input names from forward's signature: one named parameter per graph input
    params = ", ".join(inputs)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {params}):\n    return self.scores(dict(zip({inputs!r}, ({params},))))",  # noqa: S102
         namespace)
    cls = type("FusionGraph", (FusionScores,), {"forward": namespace["forward"]})
    return cls().eval()


class FusionInputs:
    """fusion: a table with text, image paths and tabular columns; feeds per batch plus the mask."""

    accepts = "table"  # image cells are paths relative to the table: rows come from a file

    def __init__(self, export_dir: Path, cfg: FusionConfig, batch_size: int, pad_id: int) -> None:
        from medmm.data.tabular.preprocess import Preprocessor
        from medmm.io import read_json

        self.cfg, self.d, self.batch_size, self.pad_id = cfg, cfg.data, batch_size, pad_id
        art = Path(export_dir) / "artifacts"
        payload = read_json(art / "fusion.json", format="medmm.fusion")
        self.problem, self.label_names = payload["problem"], list(payload["label_names"])
        self.names: list[str] = list(payload["names"])
        self.preprocessor = Preprocessor.from_json(payload["preprocessor"]) if payload.get("preprocessor") else None
        self.tokenizer: Any = None
        if "text" in self.names:
            from medmm.deploy.runtime import FastTokenizer

            self.tokenizer = FastTokenizer(art / "text_encoder")
        if "image" in self.names:
            require("pydicom", EXTRA, "fusion prediction with images from an export")

    def read(self, path: Path) -> tuple[Any, list[str], Path]:
        """The table and its row ids, read and checked as the task's predict reads them, and the folder
        its image paths are relative to."""
        from medmm_plugins.fusion.rows import read_fusion_table

        trained = list(self.preprocessor.columns) if self.preprocessor is not None else None
        df, ids, _ = read_fusion_table(Path(path), self.d, labelled=False, trained=trained)
        return df, ids, Path(path).resolve().parent

    def examples(self, source: tuple[Any, list[str], Path]) -> Any:
        from medmm.deploy.runtime import Examples, _chunks
        from medmm_plugins.fusion.rows import read_texts, tabular_present, text_tokens, without_modality

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
        batches = []
        for s in _chunks(len(keep), self.batch_size):
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
        return Examples(batches, [ids[r] for r in keep], self._targets(df, keep), skipped=skipped)

    def _images(self, cells: Any, base: Path) -> tuple[np.ndarray, list[bool], list[tuple[int, str]]]:
        """``[N, C, H, W]`` pixels in ``[0, 1]`` (zeros where a row has no usable image), presence, failures."""
        from medmm.data.dicom.series import load_row_images
        from medmm_plugins.fusion.rows import pixel_config

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
        from medmm_plugins.fusion.rows import label_key, raw_labels

        col = self.d.label_column
        if not col or col not in df.columns:
            return None
        index = {label_key(n): i for i, n in enumerate(self.label_names)}
        raw = raw_labels(df[col])
        if not all(label_key(raw[r]) in index for r in rows):
            return None
        return np.asarray([index[label_key(raw[r])] for r in rows], dtype=np.float32)
