"""``medmm explain RUN_DIR --data PATH``: attributions for a trained run, checked for faithfulness.

The run is rebuilt exactly as ``medmm predict`` rebuilds it (config, task, artifacts, verified
weights) and the data is read through the task's own ``build_predict_data``. Every input the
task's :class:`~medmm.explain.spec.ExplainSpec` names is explained for the first ``--limit``
units; deletion and model-randomisation checks run on the same examples. Everything is
written into a temporary folder that is renamed to ``--out`` at the end: a failure leaves
nothing half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

from medmm.errors import MedmmError

log = logging.getLogger("medmm.explain")
METHODS = ("auto", "ig", "gradcam", "occlusion", "shap")
_APPLIES = {  # method -> input kinds it can explain
    "ig": {"tokens", "image", "features"},
    "gradcam": {"image"},
    "occlusion": {"tokens", "image", "features", "tensor"},
    "shap": {"features"},
}
_AUTO = {"tokens": "ig", "image": "gradcam", "features": "ig", "tensor": "occlusion", "modalities": "masking"}
_NAMES = {"ig": "integrated gradients", "gradcam": "Grad-CAM", "occlusion": "occlusion",
          "shap": "Shapley value sampling", "masking": "modality masking"}
RANDOMISED_EXAMPLES = 16
RANDOMISED_BATCHES = 8


def require_captum() -> None:
    try:
        import captum  # noqa: F401
    except ImportError:
        raise MedmmError("medmm explain needs captum: pip install 'medmm[explain]'") from None


def _method_for(kind: str, method: str, has_layer: bool) -> str:
    if kind == "modalities":
        return "masking"
    if method != "auto" and kind in _APPLIES[method]:
        return method
    chosen = _AUTO[kind]
    if chosen == "gradcam" and not has_layer:
        return "occlusion"
    if chosen == "ig" and kind == "tokens" and not has_layer:
        return "occlusion"
    return chosen


@dataclasses.dataclass
class Example:
    unit: str
    position: int  # the example's position in the split (a window, an instance)
    predicted: str
    prob: float
    attrs: dict[str, Any]  # input name -> Attribution


def explain_run(run_dir: Path, data: Path, out: Path | None = None, *, registry: Any, limit: int = 20,
                method: str = "auto", checkpoint: str = "best", top_k: int = 10, steps: int = 32,
                internal_batch_size: int = 256, batch_size: int = 16, seed: int = 0,
                split_name: str | None = None) -> Path:
    """Explain the first ``limit`` distinct units of ``data`` with the trained run; returns the output folder.

    ``split_name`` (``test`` / ``val`` / ``train`` / ``all``) picks units by the run's ``splits.csv``; by
    default the held-out test units when ``data`` holds the run's own units (else all of them). Units whose
    model input is identical to an earlier unit's (one image stored in several transfer syntaxes) are skipped.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from medmm.engine.checkpoint import read_state
    from medmm.engine.device import move_to
    from medmm.engine.losses import scores_from_output
    from medmm.explain.core import Scorer
    from medmm.explain.faithfulness import deletion, randomized_copy, rank_correlation, same_layer
    from medmm.explain.occlusion import fallback_spec
    from medmm.pooling import pool_by_unit
    from medmm.rundir import read_info

    if method not in METHODS:
        raise MedmmError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if limit < 1:
        raise MedmmError(f"--limit must be at least 1, got {limit}")
    if split_name not in (None, *SPLITS):
        raise MedmmError(f"--split must be one of {', '.join(SPLITS)}, got {split_name!r}")
    run_dir = Path(run_dir)
    read_info(run_dir)  # a medmm run directory
    read_state(run_dir / "checkpoints" / checkpoint)  # weights present and intact, before any work
    out = Path(out) if out is not None else run_dir / f"explain-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedmmError(f"{out} already exists; medmm explain never overwrites files: pass another --out")
    require_captum()  # after the cheap checks: importing captum takes seconds

    spec, task, model, device, _cache, run = _open(run_dir, registry=registry, checkpoint=checkpoint)
    picked = streamed_pick(task, run_dir, Path(data), split_name, limit)  # a table: read in blocks until --limit
    if picked is None:  # a folder, a task without predict_chunks: the whole input
        split, collate = run.predict_data(task, data)
        if len(split.dataset) == 0:
            raise MedmmError(f"no example to explain in {data}")
        candidates, selection = _candidates(run_dir, split.units, split_name, Path(data))
        chosen, duplicates = _distinct(split, candidates, limit)
        positions = where = [i for i, u in enumerate(split.units) if u in chosen]
    else:
        split, collate, positions, where, selection, duplicates = picked
    where_of = dict(zip(positions, where))  # an example's position in the whole input (attributions.csv)
    selection += f"; {duplicates} duplicate unit(s) skipped (model input identical to an earlier unit's)" \
        if duplicates else ""
    loader = DataLoader(Subset(split.dataset, positions), batch_size=batch_size, shuffle=False, collate_fn=collate)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    espec = task.explain_spec(model)
    probe = move_to(next(iter(loader)), device)
    fallback = espec is None
    if fallback:
        espec = fallback_spec(spec.name, probe)
    kinds = [s.kind for s in espec.inputs]
    if method != "auto" and not any(k in _APPLIES[method] for k in kinds):
        raise MedmmError(f"--method {method} does not apply to this task's inputs ({', '.join(sorted(set(kinds)))}); "
                         "use --method auto")
    used = {s.name: ("occlusion" if fallback else _method_for(s.kind, method, s.layer is not None))
            for s in espec.inputs}
    scorer = Scorer(task, model)

    # pass 1: the prediction of each unit (windows / instances pooled as the engine pools them)
    idx_all, scores_all = [], []
    with torch.no_grad():
        for batch in loader:
            o = task.step(model, move_to(batch, device))
            idx_all.append(o["index"].cpu().numpy())
            scores_all.append(scores_from_output(task.problem, o["output"]).float().cpu().numpy())
    index = np.concatenate(idx_all)
    units, pooled, _ = pool_by_unit([split.units[i] for i in np.sort(index)],
                                    np.concatenate(scores_all)[np.argsort(index)], None)
    unit_pred = {u: _predicted(task.problem, s) for u, s in zip(units, pooled)}

    rand_model = randomized_copy(model, seed)
    rand_scorer = Scorer(task, rand_model)
    rand_specs = {s.name: dataclasses.replace(s, layer=same_layer(model, rand_model, s.layer)) for s in espec.inputs}
    examples: list[Example] = []
    faith: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    started, attr_seconds = time.perf_counter(), 0.0
    randomised: dict[str, int] = defaultdict(int)  # batches explained with the randomised model
    for batch in _explain_loader(split.dataset, positions, espec, batch_size, collate, seed):
        batch = move_to(batch, device)
        with torch.no_grad():
            o = task.step(model, batch)
        pos = o["index"].cpu().numpy()
        target = torch.tensor([unit_pred[split.units[p]][0] for p in pos], device=device)
        probs = scorer.prob(scorer.output(batch), target).detach().cpu().numpy()
        batch_ex = [Example(split.units[p], where_of[int(p)], _label(task, unit_pred[split.units[p]][0]), float(pr), {})
                    for p, pr in zip(pos, probs)]
        for s in espec.inputs:
            m = used[s.name]
            t0 = time.perf_counter()
            attrs = attribute(scorer, s, batch, target, m, steps, internal_batch_size)
            attr_seconds += time.perf_counter() - t0
            _annotate(s, batch, attrs)  # blank maps flagged; each feature's own value
            checked = [None if a is not None and a.extra.get("degenerate") else a for a in attrs]
            faith[s.name]["degenerate"].append(sum(1 for a in attrs if a is not None and a.extra.get("degenerate")))
            pixels = s.get(batch).detach().float().cpu().numpy() if s.kind == "image" else None
            for i, (ex, a) in enumerate(zip(batch_ex, attrs)):
                if a is not None:
                    ex.attrs[s.name] = a
                    if pixels is not None:
                        a.extra["pixels"] = pixels[i]  # what the model saw, for the overlay
            top, rand = deletion(scorer, s, batch, checked, target, rng)  # blank maps left out
            faith[s.name]["top"] += top
            faith[s.name]["random"] += rand
            faith[s.name]["delta"] += [a.extra["delta"] for a in attrs if a is not None and "delta" in a.extra]
            # until RANDOMISED_EXAMPLES examples have a defined correlation (bounded in batches)
            if len(faith[s.name]["spearman"]) < RANDOMISED_EXAMPLES and randomised[s.name] < RANDOMISED_BATCHES:
                r_attrs = attribute(rand_scorer, rand_specs[s.name], batch, target, m, steps, internal_batch_size)
                faith[s.name]["spearman"] += rank_correlation(checked, r_attrs)
                randomised[s.name] += 1
        examples.extend(batch_ex)
    examples.sort(key=lambda e: e.position)  # the data's order (a chunked document's windows in order)
    seconds = time.perf_counter() - started

    from medmm.explain.outputs import build_outputs

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        extras = {**_global_tables(task, scorer, espec, split, positions, collate, device, unit_pred, seed),
                  "selection": selection}
        summary = build_outputs(tmp, task=task, task_name=spec.name, run_dir=run_dir, espec=espec, used=used,
                                methods=_NAMES, examples=examples, faith=faith, extras=extras, top_k=top_k,
                                seconds=seconds, attr_seconds=attr_seconds, fallback=fallback)
        if out.exists():
            out.rmdir()  # an empty folder the user made for us
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _print(out, summary)
    return out


SPLITS = ("test", "val", "train", "all")


def _candidates(run_dir: Path, units: list[str], split_name: str | None,
                data: Path | None = None) -> tuple[list[str], str]:
    """The data's units in the asked split of the run (default: test when the data is the run's own), in
    data order, and that choice in words. ``data`` that is not the run's own (:func:`own_data`) has no split."""
    from medmm.evaluation.overlap import own_data, run_splits

    assigned = run_splits(run_dir) if data is None or own_data(run_dir, data) else {}
    distinct = list(dict.fromkeys(units))
    own = [u for u in distinct if u in assigned]
    if split_name is None:
        split_name = "all" if not own else "test"
        if split_name == "test" and not any(assigned[u] == "test" for u in own):
            split_name = "val"  # a run without a test split: its held-out units are val
    if split_name == "all":
        why = f"all {len(distinct)} units of the data" + (f" ({len(own)} of them used by the run: train / val / test)"
                                                         if own else " (none was used by the run)")
        return distinct, why
    if not own:
        raise MedmmError(f"--split {split_name}: this is not the data the run was trained on (another path and "
                         "fingerprint), so it has no train / val / test split: use --split all")
    picked = [u for u in own if assigned[u] == split_name]
    if not picked:
        raise MedmmError(f"--split {split_name}: the data holds no unit of the run's {split_name} split")
    held = "held-out " if split_name in ("test", "val") else "training "
    return picked, f"{held}units of the run's {split_name} split ({len(picked)} in the data)"


def _distinct(split: Any, candidates: list[str], limit: int) -> tuple[dict[str, None], int]:
    """The first ``limit`` candidates whose first example's model input is new, and how many were skipped."""
    first = {}
    for i, u in enumerate(split.units):
        first.setdefault(u, i)
    chosen: dict[str, None] = {}
    seen: set[str] = set()
    skipped = 0
    for u in candidates:  # bounded by the candidates
        if len(chosen) >= limit:
            break
        key = _content_hash(split.dataset[first[u]])
        if key in seen:
            skipped += 1
            continue
        seen.add(key)
        chosen[u] = None
    return chosen, skipped


def _content_hash(item: Any) -> str:
    """A hash of the tensors / arrays (at least 1-D) of one dataset item: identical inputs, identical hash."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif hasattr(x, "detach") or isinstance(x, np.ndarray):
            a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
            if a.ndim >= 1:
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())

    walk(item)
    return h.hexdigest()


def streamed_pick(task: Any, run_dir: Path, data: Path, split_name: str | None, limit: int,
                  rows: int | None = None) -> tuple[Any, Any, list[int], list[int], str, int] | None:
    """The units :func:`explain_run` explains, from a table read block by block (the task's ``predict_chunks``)
    and no further than the block where ``limit`` distinct units were found: ``(split, collate, positions,
    where, selection, duplicates)``: the chosen examples' ``positions`` in ``split`` (the one block that holds
    them, or :class:`PickedExamples` of several) and ``where`` they are in the whole input. The same units as a whole read (:func:`_candidates`, :func:`_distinct`); ``None`` when
    the input does not stream (the caller reads it whole). Memory: the blocks read (a set of their unit ids)
    and the blocks that hold a chosen unit (at most ``limit``).

    The selection's count is the whole data's when every block was read; when the read stopped early, a
    split's count is that of the run's ``splits.csv`` (the same for the run's own data) and ``all`` says how
    many units were read."""
    from medmm.data.readers import chunk_rows, streams
    from medmm.evaluation.overlap import own_data, run_splits

    chunks = getattr(task, "predict_chunks", None)
    if chunks is None or not streams(data):
        return None
    assigned = run_splits(run_dir) if own_data(run_dir, data) else {}
    if split_name not in (None, "all") and not assigned:
        raise MedmmError(f"--split {split_name}: this is not the data the run was trained on (another path and "
                         "fingerprint), so it has no train / val / test split: use --split all")
    name = split_name or ("all" if not assigned else "test" if "test" in assigned.values() else "val")
    rows = rows or chunk_rows()
    got = _pick(iter(chunks(data, rows)), rows, assigned, name, limit)
    if got is not None and got.complete and split_name is None:  # every block read: the whole read's rule
        right = "all" if not got.own else "test" if got.own_test else "val"
        if right != name:
            name, got = right, _pick(iter(chunks(data, rows)), rows, assigned, right, limit)
    if got is None:
        return None
    if not got.examples:
        if name != "all" and not got.own:
            raise MedmmError(f"--split {name}: this is not the data the run was trained on (another path and "
                             "fingerprint), so it has no train / val / test split: use --split all")
        if name != "all":
            raise MedmmError(f"--split {name}: the data holds no unit of the run's {name} split")
        raise MedmmError(f"no example to explain in {data}")
    if name == "all":
        used = f" ({got.own} of them used by the run: train / val / test)" if got.own else " (none was used by the run)"
        why = (f"all {got.distinct} units of the data" if got.complete else
               f"the first {got.distinct} units of the data (read in blocks until {limit} were found)") + used
    else:
        count = got.picked if got.complete else sum(1 for v in assigned.values() if v == name)
        held = "held-out " if name in ("test", "val") else "training "
        why = f"{held}units of the run's {name} split ({count} in the data)"
    return got.split, got.collate, got.positions, got.where, why, got.duplicates


@dataclasses.dataclass
class _Picked:
    split: Any = None
    collate: Any = None
    positions: list[int] = dataclasses.field(default_factory=list)  # in ``split``
    where: list[int] = dataclasses.field(default_factory=list)  # in the whole input
    examples: int = 0
    distinct: int = 0
    own: int = 0
    own_test: int = 0
    picked: int = 0
    duplicates: int = 0
    complete: bool = True


def _pick(blocks: Iterator[Any], rows: int, assigned: dict[str, str], name: str, limit: int) -> _Picked | None:
    """:func:`_candidates` and :func:`_distinct` over ``blocks`` (``(split, collate)`` in input order, of up to
    ``rows`` units), stopping after the block where ``limit`` units were chosen (``complete`` when that was the
    last: a block of fewer units is followed by a look for one more); ``None`` when the chosen examples of several blocks cannot
    be put under one index (:class:`PickedExamples`)."""
    from medmm.task import Split

    got = _Picked()
    seen: set[str] = set()
    chosen: dict[str, None] = {}
    hashes: set[str] = set()
    entries: list[tuple[Any, int]] = []
    units: list[str] = []
    offset = 0
    for split, collate in blocks:
        for p, u in enumerate(split.units):
            if u in seen:
                continue
            seen.add(u)
            got.distinct += 1
            s = assigned.get(u)
            if s is not None:
                got.own += 1
                got.own_test += s == "test"
            if name == "all" or s == name:
                got.picked += 1
                if len(chosen) < limit:
                    key = _content_hash(split.dataset[p])
                    if key in hashes:
                        got.duplicates += 1
                    else:
                        hashes.add(key)
                        chosen[u] = None
        for p, u in enumerate(split.units):
            if u in chosen:
                entries.append((split, p))
                units.append(u)
                got.where.append(offset + p)
                got.collate = collate
        offset += len(split.units)
        if len(chosen) >= limit:  # done; a short block is most likely the last: then the counts are the whole's
            got.complete = len(set(split.units)) < rows and next(blocks, None) is None
            break
    got.examples = len(entries)
    if not entries:
        return got
    if len({id(sp) for sp, _ in entries}) == 1:  # one block (the usual case): its split, its example indexes
        got.split, got.positions = entries[0][0], [p for _, p in entries]
        return got
    data = PickedExamples([(sp.dataset, p) for sp, p in entries])
    try:
        data.check()
    except LookupError:  # items whose example index is not recognisable: the caller reads the input whole
        return None
    got.split, got.positions = Split(data, units, None), list(range(len(entries)))
    return got


class PickedExamples:
    """Examples of several blocks' datasets as one dataset ``0..k-1`` (the blocks that hold a chosen unit are
    kept, never the others). Each item's (and batch's) example index is renumbered: a dict's ``"index"`` or a
    tuple's last member, checked to be the index asked for (:meth:`check`); ``__getitems__`` (batched
    reads) when the blocks' datasets have it."""

    def __init__(self, entries: list[tuple[Any, int]]) -> None:
        self.entries = entries
        if all(callable(getattr(ds, "__getitems__", None)) for ds, _ in entries):
            self.__getitems__ = self._many

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, k: int) -> Any:
        ds, p = self.entries[k]
        return _renumber(ds[p], [p], [k], one=True)

    def _many(self, ks: list[int]) -> Any:
        parts, start = [], 0
        while start < len(ks):  # runs of one block's dataset
            ds = self.entries[ks[start]][0]
            stop = start
            while stop < len(ks) and self.entries[ks[stop]][0] is ds:
                stop += 1
            run = ks[start:stop]
            parts.append(_renumber(ds.__getitems__([self.entries[k][1] for k in run]), [self.entries[k][1] for k in run],
                                   run, one=False))
            start = stop
        return parts[0] if len(parts) == 1 else _join(parts)

    def check(self) -> None:
        """A :class:`LookupError` when an item's example index is not where this class renumbers it."""
        self[0]
        if callable(getattr(self, "__getitems__", None)):
            self._many(list(range(min(len(self), 3))))


def _renumber(item: Any, old: list[int], new: list[int], *, one: bool) -> Any:
    import torch

    def same(v: Any) -> bool:
        if one and isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v) == old[0]
        if isinstance(v, torch.Tensor) and v.ndim == (0 if one else 1):
            return v.reshape(-1).tolist() == old
        return False

    def like(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return torch.as_tensor(new[0] if one else new, dtype=v.dtype)
        return int(new[0])

    if isinstance(item, dict) and "index" in item and same(item["index"]):
        return {**item, "index": like(item["index"])}
    if isinstance(item, tuple) and item and same(item[-1]):
        return (*item[:-1], like(item[-1]))
    if not one and isinstance(item, list) and len(item) == len(old):  # items fetched one by one
        return [_renumber(it, [o], [n], one=True) for it, o, n in zip(item, old, new)]
    raise LookupError("an example index that cannot be renumbered")


def _join(parts: list[Any]) -> Any:
    """Batched reads of several blocks as one (tensors concatenated; lists of items joined)."""
    import torch

    if all(isinstance(p, list) for p in parts):
        return [it for p in parts for it in p]
    if all(isinstance(p, tuple) for p in parts) and all(isinstance(v, torch.Tensor) for p in parts for v in p):
        return tuple(torch.cat(vs) for vs in zip(*parts))
    raise LookupError("batches of several blocks that cannot be joined")


def _annotate(s: Any, batch: Any, attrs: list[Any]) -> None:
    """Image maps with nothing above zero or one value everywhere get ``extra['degenerate']``; feature
    attributions get each feature's value in the example (``extra['values']``, from ``s.describe``)."""
    values = None
    if s.kind == "features" and s.describe is not None:
        values = s.get(batch).detach().float().cpu().numpy()
    for i, a in enumerate(attrs):
        if a is None:
            continue
        cam = a.extra.get("cam")
        if s.kind == "image" and (np.ptp(a.scores) == 0 or (cam is not None and float(np.max(cam)) <= 0)):
            a.extra["degenerate"] = True
        if values is not None:
            a.extra["values"] = s.describe(values[i])


def load_run(run_dir: Path, data: Path, *, registry: Any, checkpoint: str = "best") -> tuple[Any, ...]:
    """``(spec, task, model, split, collate, device, cache)``: the run rebuilt as ``medmm predict``
    rebuilds it (saved config, artifacts, verified weights), its model in eval mode with gradients
    on, and ``data`` read by the task's own reader. Keep ``cache`` alive while explaining: the new
    data's caches live there, never in the run directory."""
    spec, task, model, device, cache, run = _open(run_dir, registry=registry, checkpoint=checkpoint)
    split, collate = run.predict_data(task, data)
    if len(split.dataset) == 0:
        raise MedmmError(f"no example to explain in {data}")
    return spec, task, model, split, collate, device, cache


def _open(run_dir: Path, *, registry: Any, checkpoint: str) -> tuple[Any, ...]:
    """``(spec, task, model, device, cache, run)``: :func:`load_run` before the data is read."""
    from medmm.data.cache_dirs import predict_cache
    from medmm.engine.device import select_device
    from medmm.run import Run

    run = Run.open(run_dir, registry=registry)
    spec, cfg = run.spec, run.cfg
    cache = predict_cache(cfg, None)
    task = run.task()
    model = run.model(task, checkpoint)
    device = select_device(str(cfg.engine.device))
    model.to(device).eval()
    model.requires_grad_(True)  # gradients reach every layer (frozen encoders included)
    return spec, task, model, device, cache, run


def _explain_loader(dataset: Any, positions: list[int], espec: Any, batch_size: int, collate: Any, seed: int) -> Any:
    """Batches for the attribution pass. Token inputs are padded per batch, so text is batched in
    length order (the same attributions, about half the work on reports of mixed length); the
    batches then come in a seeded random order, so the randomisation check's first batches are
    not just the shortest documents."""
    from torch.utils.data import DataLoader, Subset

    order = list(positions)
    if all(s.kind == "tokens" for s in espec.inputs):
        try:
            lengths = [len(dataset[p]["input_ids"]) for p in positions]
        except (KeyError, TypeError, IndexError):
            lengths = None
        if lengths is not None:
            order = [p for _, p in sorted(zip(lengths, positions))]
    chunks = [list(range(i, min(i + batch_size, len(order)))) for i in range(0, len(order), batch_size)]
    if order != positions:
        chunks = [chunks[i] for i in np.random.default_rng(seed).permutation(len(chunks))]
    return DataLoader(Subset(dataset, order), batch_sampler=chunks, collate_fn=collate)


def _predicted(problem: str, score: Any) -> tuple[int, float]:
    s = np.asarray(score, dtype=np.float64)
    if problem == "binary":
        return int(s.ravel()[0] > 0.5), float(s.ravel()[0])
    if problem in ("multiclass", "multilabel"):
        return int(np.argmax(s)), float(np.max(s))
    return 0, float(s.ravel()[0])


def _label(task: Any, k: int) -> str:
    if task.problem in ("regression", "survival"):
        return "log hazard" if task.problem == "survival" else "prediction"
    names = task.label_names or []
    return str(names[k]) if k < len(names) else str(k)


def _items(s: Any, batch: Any, grid: tuple[int, int] | None = None) -> list[Any]:
    from medmm.explain.image import DEFAULT_GRID, image_items
    from medmm.explain.occlusion import modality_items, tensor_items
    from medmm.explain.tabular import feature_items
    from medmm.explain.text import token_items

    if s.kind == "tokens":
        return token_items(s, batch)
    if s.kind == "image":
        return image_items(s, batch, grid or s.patch_grid or DEFAULT_GRID)
    if s.kind == "features":
        return feature_items(s, batch)
    if s.kind == "modalities":
        return modality_items(s, batch)
    return tensor_items(s, batch)


def attribute(scorer: Any, s: Any, batch: Any, target: Any, method: str, steps: int, ibs: int) -> list[Any]:
    """Item attributions of one input for one batch with one method."""
    from medmm.explain import image, tabular, text
    from medmm.explain.core import Attribution, ablate

    if s.kind == "image" and method == "gradcam":
        maps = image.gradcam(scorer, s, batch, target)
        x = s.get(batch)
        items = _items(s, batch, tuple(maps.shape[-2:]))
        return image.from_maps(maps, items, tuple(x.shape[-2:]), pooled=False)
    if s.kind == "image" and method == "ig":
        maps, delta = image.pixel_ig(scorer, s, batch, target, steps=steps, internal_batch_size=ibs)
        return image.from_maps(maps, _items(s, batch), tuple(maps.shape[-2:]), pooled=True, delta=delta)
    items = _items(s, batch)
    if method == "ig" and s.kind == "tokens":
        return text.integrated_gradients(scorer, s, batch, items, target, steps=steps, internal_batch_size=ibs)
    if method == "ig" and s.kind == "features":
        return tabular.integrated_gradients(scorer, s, batch, items, target, steps=steps, internal_batch_size=ibs)
    if method == "shap":
        return tabular.shapley(scorer, s, batch, items, target)
    scores = ablate(scorer, s, batch, items, target)  # occlusion, modality masking
    out = [None if it is None else Attribution(it, sc) for it, sc in zip(items, scores)]
    if s.kind == "image":  # a map for the overlay: each cell's drop painted over the cell
        x = s.get(batch)
        for a in out:
            if a is not None:
                cam = np.zeros(int(np.prod(x.shape[1:])))
                for idx, v in zip(a.items.index, a.scores):
                    cam[idx] = v
                cam = cam.reshape(tuple(x.shape[1:])).mean(0) if x.ndim == 4 else cam.reshape(tuple(x.shape[1:]))
                a.extra["cam"] = cam
                a.extra["peak"] = tuple(int(v) for v in np.unravel_index(int(np.argmax(cam)), cam.shape))
    return out


def _global_tables(task: Any, scorer: Any, espec: Any, split: Any, positions: list[int], collate: Any,
                   device: Any, unit_pred: dict[str, tuple[int, float]], seed: int) -> dict[str, Any]:
    """Permutation importance (with bootstrap CIs) of the headline tabular input."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from medmm.engine.device import move_to
    from medmm.explain.tabular import feature_items, permutation_importance

    s = espec.inputs[0]
    if s.kind != "features" or len(positions) < 2 or len(positions) > 100_000:
        return {}
    batch = move_to(next(iter(DataLoader(Subset(split.dataset, positions), batch_size=len(positions),
                                         collate_fn=collate))), device)
    with torch.no_grad():
        pos = task.step(scorer.model, batch)["index"].cpu().numpy()
    target = torch.tensor([unit_pred[split.units[p]][0] for p in pos], device=device)
    items = next(it for it in feature_items(s, batch) if it is not None)
    return {"permutation": permutation_importance(scorer, s, batch, items, target, seed=seed)}


def _print(out: Path, summary: dict[str, Any]) -> None:
    lines = [(f"medmm explain: {summary['examples']} examples of {summary['units']} units "
              f"({summary['attribution_seconds_per_example']:.3f} s/example for attributions, "
              f"{summary['seconds_per_example']:.3f} s/example with the checks)")]
    if summary.get("selection"):
        lines.append(f"  units: {summary['selection']}")
    for name, f in summary["faithfulness"].items():
        lines.append(f"  {name:<10} {f['method']}, deletion: {f['deletion_verdict'].split(' (rule:')[0]}")
        lines.append(f"  {'':<10} model randomisation: {f['randomisation_verdict'].split(' (rule:')[0]}")
        if f.get("degenerate"):
            lines.append(f"  {'':<10} {f['degenerate']} blank map(s) flagged and left out of both checks")
    for name in ("explanations.html", "attributions.csv", "summary.json"):
        lines.append(f"  {name:<18} {out / name}")
    if summary.get("overlays"):
        lines.append(f"  {'overlays/':<18} {out / 'overlays'} ({summary['overlays']} PNG)")
    click.echo("\n".join(lines))


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"
