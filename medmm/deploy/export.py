"""``medmm export RUN_DIR --format onnx``: the trained model as ONNX plus what prediction needs.

The graph is the task's own forward pass (:meth:`Task.step`) followed by the engine's
``scores_from_output``, so it returns probabilities (or values for regression / survival) with
a dynamic batch axis (and sequence axis for text). The folder also holds the run's
``config.yaml``, its ``artifacts/`` (label map, tokenizer files, tabular preprocessor JSON,
pixel pipeline incl. windowing; no weights) and the model card, listed with their SHA-256 in
``manifest.json``.

Parity is checked before anything is written: a sample of the run's test split is predicted
by the torch path (``Task.build_predict_data`` + ``Trainer.evaluate``) and by the onnxruntime
path (:mod:`medmm.deploy.runtime`, torch-free preprocessing), and the export fails with the
figure when they differ by more than 1e-4. The graph is also checked at the edges of every
dynamic axis (size 1 and the largest size prediction feeds, every combination:
:mod:`medmm.deploy.edges`), which a sample of ordinary inputs never reaches.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from medmm import __version__
from medmm.deploy.manifest import FORMAT, MANIFEST, MODEL, MODEL_INT8, VERSION, file_hashes, require
from medmm.errors import MedmmError

TOLERANCE = 1e-4
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".npy")


@dataclass(frozen=True)
class GraphSpec:
    """A task's :class:`medmm.task.DeploySpec` as export uses it: input names, dynamic axes, the
    batch its ``step`` takes, how the parity sample is cut, and the spec itself."""

    inputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]
    batch: Callable[..., Any]
    data: str  # "table" or "files": how a test-split sample is cut from the run's data
    deploy: Any = None


def _spec(task_name: str, task: Any, model: Any) -> GraphSpec:
    """What the trained task declares for export (:meth:`medmm.task.Task.deploy_spec`)."""
    deploy = task.deploy_spec(model)
    if deploy is None:
        raise MedmmError(f"medmm export: task {task_name!r} declares no export (Task.deploy_spec); predict it "
                         "with medmm predict RUN_DIR")
    if deploy.sample not in ("table", "files"):
        raise MedmmError(f"task {task_name!r}: DeploySpec.sample must be 'table' or 'files', got {deploy.sample!r}")
    return GraphSpec(deploy.names, deploy.dynamic, deploy.batch, deploy.sample, deploy)


def _graph_module(task: Any, model: Any, spec: GraphSpec) -> Any:
    """``nn.Module`` with one named parameter per graph input: the task's step, then the problem's
    scores (or the task's own ``DeploySpec.graph``)."""
    import torch

    if spec.deploy is not None and spec.deploy.graph is not None:
        return spec.deploy.graph.eval()

    from medmm.engine.losses import scores_from_output

    task.has_target = False  # no targets in the graph (tasks read this in step)

    class Scores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def scores(self, *inputs: torch.Tensor) -> torch.Tensor:
            out = task.step(self.model, spec.batch(*inputs))["output"]
            return scores_from_output(task.problem, out)

    # exporters read the input names from forward's signature (names are checked identifiers)
    params = ", ".join(spec.inputs)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {params}):\n    return self.scores({params})", namespace)  # noqa: S102
    return type("Graph", (Scores,), {"forward": namespace["forward"]})().eval()


# --------------------------------------------------------------------------- loading a run


def load_run(run_dir: Path, registry: Any, checkpoint: str = "best") -> tuple[Any, Any, Any, dict]:
    """``(cfg, task, model, run_info)`` of a trained run on the CPU in fp32, weights loaded."""
    from medmm.run import Run

    run = Run.open(run_dir, registry=registry)
    run.cfg.engine.device, run.cfg.engine.precision = "cpu", "fp32"
    task = run.task()
    model = run.model(task, checkpoint)  # a DP run's layers, as predict rebuilds them
    return run.cfg, task, model.eval(), run.info


# --------------------------------------------------------------------------- parity sample


def _data_path(run_dir: Path, info: dict[str, Any], data: Path | None) -> Path:
    if data is not None:
        return Path(data)
    path = Path(info.get("data", ""))
    for cand in (path, run_dir / path, run_dir.parent / path):
        if str(path) and cand.exists():
            return cand
    raise MedmmError(f"the run's data ({path}) is not reachable from here; pass --data with rows (or DICOM "
                     "files) of the same kind to check parity on")


def _split_ids(run_dir: Path) -> list[str]:
    """Test ids of the run (val when it has no test split), in file order."""
    path = run_dir / "splits.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for name in ("test", "val"):
        ids = [r["id"] for r in rows if r.get("split") == name]
        if ids:
            return ids
    return []


def parity_sample(run_dir: Path, cfg: Any, spec: GraphSpec, data: Path, n: int, tmp: Path,
                  *, whole: bool) -> Path:
    """A copy of up to ``n`` test units of ``data`` under ``tmp`` (``whole``: the first ``n`` of ``data``)."""
    if spec.data == "files" and not data.is_dir():
        return data  # the task's reader says what is wrong with it
    ids = [] if whole else _split_ids(run_dir)
    if spec.data == "files":
        if ids:
            paths = list(dict.fromkeys(i.split("#")[0] for i in ids))[:n]
            if not all((data / p).is_file() for p in paths):  # ids name identifier folders by keyed token
                from medmm.data.dicom.scan import real_paths

                found = real_paths(data, paths)
                paths = [found.get(p, p) for p in paths]
        else:
            paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())[:n]
        root = tmp / "files"
        for rel in paths:
            src, dst = data / rel, root / rel
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.symlink(src.resolve(), dst)
                except OSError:
                    shutil.copy2(src, dst)
        return root
    import pandas as pd

    from medmm.data.readers import csv_separator  # the separator read_table chooses

    suffix = data.suffix.lower()
    if suffix in (".csv", ".tsv"):  # cells exactly as written, same separator: the readers see the same text
        sep = "\t" if suffix == ".tsv" else csv_separator(data)
        df = pd.read_csv(data, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    elif suffix == ".parquet":
        df = pd.read_parquet(data)
    elif suffix == ".jsonl":
        df = pd.read_json(data, lines=True, dtype=False)
    else:  # other formats (compressed, reader plugins): the whole file
        return data
    id_col = getattr(cfg.data, "id_column", None)
    keys = df[id_col].astype(str) if id_col and id_col in df.columns else pd.Series([str(i) for i in range(len(df))])
    wanted = set(ids)
    rows = df[keys.isin(wanted).to_numpy()] if wanted else df
    rows = (rows if len(rows) else df).head(n)
    for col in (spec.deploy.path_columns if spec.deploy is not None else ()):
        if col in rows.columns:  # the sample lives elsewhere: file paths made absolute
            rows = rows.copy()
            rows[col] = [v if not isinstance(v, str) or not v.strip() or Path(v.strip()).is_absolute()
                         else str(data.resolve().parent / v.strip()) for v in rows[col]]
    out = tmp / f"sample{suffix}"
    if suffix == ".parquet":
        rows.to_parquet(out, index=False)
    elif suffix == ".jsonl":
        rows.to_json(out, orient="records", lines=True, force_ascii=False)
    else:
        rows.to_csv(out, index=False, sep=sep)
    return out


# --------------------------------------------------------------------------- export


def _to_onnx(graph: Any, example: tuple[Any, ...], spec: GraphSpec, path: Path, opset: int, exporter: str) -> str:
    """Write ``graph`` as ONNX; returns the exporter used (``dynamo``, falling back to ``torchscript``)."""
    import warnings

    import torch

    errors = []
    for kind in (["dynamo", "torchscript"] if exporter == "auto" else [exporter]):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    require("onnxscript", "export", "medmm export")
                    shared: dict[str, Any] = {}  # one Dim per axis label, shared across inputs
                    dims = {name: {a: shared.setdefault(label, torch.export.Dim(label)) for a, label in axes.items()}
                            for name, axes in spec.dynamic.items()}
                    torch.onnx.export(graph, example, str(path), input_names=list(spec.inputs), output_names=["scores"],
                                      dynamic_shapes=dims, dynamo=True, opset_version=opset, external_data=False,
                                      verbose=False)
                else:
                    torch.onnx.export(graph, example, str(path), input_names=list(spec.inputs), output_names=["scores"],
                                      dynamic_axes={**spec.dynamic, "scores": {0: "batch"}}, dynamo=False,
                                      opset_version=opset)
            return kind
        except MedmmError:
            raise
        except Exception as exc:  # noqa: BLE001 - try the next exporter, report all if none works
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
            path.unlink(missing_ok=True)
    raise MedmmError("the model could not be exported to ONNX (" + "; ".join(errors) + ")")


def check_edges(graph: Any, run: Callable[[dict[str, np.ndarray]], np.ndarray], spec: GraphSpec, cfg: Any,
                batches: list[dict[str, np.ndarray]], problem: str) -> tuple[float, list[dict[str, Any]]]:
    """Torch ``graph`` against the exported ``run`` at size 1 and the largest size of every dynamic axis."""
    import torch

    from medmm.deploy.edges import axis_edges, edge_cases, edge_parity

    feeds = max(batches, key=lambda b: b[spec.inputs[0]].shape[0])

    def reference(f: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return graph(*(torch.from_numpy(f[name]) for name in spec.inputs)).float().numpy()

    cases = edge_cases(feeds, spec.dynamic, axis_edges(cfg, spec.dynamic, feeds))
    return edge_parity(reference, run, cases, relative=problem in ("regression", "survival"))


def edge_failure(edges: list[dict[str, Any]], tolerance: float) -> str:
    """The first failing edge case in words."""
    from medmm.deploy.edges import describe

    for row in edges:
        if row.get("error"):
            return f"{describe(row)}: the exported graph fails ({row['error']})"
        if not row["max_abs_diff"] <= tolerance:
            return f"{describe(row)}: max |delta| = {row['max_abs_diff']:.3g} > {tolerance:g}"
    return "no failing case"


def _example(batches: list[dict[str, np.ndarray]], spec: GraphSpec) -> tuple[Any, ...]:
    """An example input with every dynamic axis > 1 (size-1 axes would be fixed by the exporter)."""
    import torch

    feeds = max(batches, key=lambda b: b[spec.inputs[0]].shape[0])
    out = []
    for name in spec.inputs:
        a = feeds[name]
        for axis in spec.dynamic[name]:
            if a.shape[axis] < 2:
                a = np.concatenate([a, a], axis=axis)
        out.append(torch.from_numpy(np.ascontiguousarray(a)))
    return tuple(out)


def _compare(problem: str, units_t: list[str], ref: np.ndarray, units_o: list[str], got: np.ndarray) -> float:
    if units_t != units_o:
        raise MedmmError(f"parity check: the onnxruntime path predicted other units than the torch path "
                         f"({len(units_o)} vs {len(units_t)}); the export's preprocessing does not match the task's")
    if not len(ref):
        raise MedmmError("parity check: the sample holds no predictable unit; pass --data with usable rows or files")
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
    if problem in ("regression", "survival"):  # not probabilities: relative to the value's size
        diff = diff / np.maximum(1.0, np.abs(np.asarray(ref, np.float64)))
    return float(diff.max())


def _speed(model: Any, batches: list[dict[str, np.ndarray]], seconds: float = 1.0, passes: int = 20) -> float:
    """Examples per second through ``model.run`` over ``batches`` (``passes`` times, or about ``seconds``)."""
    model.run(batches[0])  # warm-up
    n, start = 0, time.perf_counter()
    for _ in range(passes):
        for b in batches:
            model.run(b)
            n += len(next(iter(b.values())))
        if time.perf_counter() - start > seconds:
            break
    return n / (time.perf_counter() - start)


def _quantize(stage: Path, base: dict[str, Any], examples: Any, ref: Any, problem: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from medmm.deploy.runtime import ExportedModel

    src, dst = stage / MODEL, stage / MODEL_INT8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization advises on the root logger
    try:  # weights of MatMul / Gemm (linear layers, attention): where dynamic int8 pays on CPU
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    except Exception as exc:  # noqa: BLE001
        raise MedmmError(f"--quantize: dynamic int8 quantisation failed: {type(exc).__name__}: {exc}") from None
    finally:
        root.setLevel(level)
    _write_manifest(stage, base)
    fp32 = ExportedModel(stage, verify=False)
    int8 = ExportedModel(stage, quantized=True, verify=False)
    pred = int8.score(examples, calibrate=False)
    diff = _compare(problem, ref.units, ref.scores, pred.units, pred.scores)
    agree = None
    if problem in ("binary", "multiclass"):
        a, b = np.asarray(ref.scores), np.asarray(pred.scores)
        agree = float(np.mean((a >= 0.5) == (b >= 0.5)) if problem == "binary" else np.mean(a.argmax(1) == b.argmax(1)))
    speed32, speed8 = _speed(fp32, examples.batches), _speed(int8, examples.batches)
    return {"file": MODEL_INT8, "max_abs_diff": diff, "label_agreement": agree,
            "speedup_vs_fp32": round(speed8 / speed32, 3), "bytes": dst.stat().st_size,
            "fp32_bytes": src.stat().st_size}


def _write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    """``manifest.json`` with the hashes of every file now in ``stage`` (rewritten as files are added)."""
    from medmm.io import write_json_atomic

    write_json_atomic(stage / MANIFEST, {**manifest, "files": file_hashes(stage)})


def _copy_artifacts(run_dir: Path, stage: Path) -> None:
    """config.yaml, model card and the run's artifacts (minus any weight files) into ``stage``."""
    shutil.copy2(run_dir / "config.yaml", stage / "config.yaml")
    if (run_dir / "model_card.md").is_file():
        shutil.copy2(run_dir / "model_card.md", stage / "model_card.md")
    src = run_dir / "artifacts"
    if src.is_dir():
        shutil.copytree(src, stage / "artifacts", symlinks=False,
                        ignore=lambda d, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES)])


def default_out(run_dir: Path) -> Path:
    return Path(run_dir) / "export"


def export_run(run_dir: Path, out: Path | None = None, *, registry: Any, data: Path | None = None,
               quantize: bool = False, opset: int = 18, sample: int = 256, exporter: str = "auto",
               checkpoint: str = "best", quiet: bool = False) -> Path:
    """Export a run to ``out`` (new or empty folder); returns it. Fails, writing nothing, on a parity miss."""
    from medmm.deploy.runtime import runtime_reader
    from medmm.rundir import read_info

    if registry is None:
        from medmm.plugins import get_registry

        registry = get_registry()
    runtime_reader(registry.get("task", str(read_info(Path(run_dir)).get("task"))))  # before any heavy import
    require("onnx", "export", "medmm export")
    ort = require("onnxruntime", "export", "medmm export")
    import onnx
    import torch

    from medmm.deploy.edges import describe as describe_edge
    from medmm.deploy.runtime import ExportedModel

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else default_out(run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedmmError(f"--out {out} exists and is not empty; give a new folder (an export is never overwritten)")
    cfg, task, model, info = load_run(run_dir, registry, checkpoint)
    spec = _spec(info["task"], task, model)
    data_path = _data_path(run_dir, info, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    scratch = Path(tempfile.mkdtemp(prefix="medmm-export-"))
    try:
        _copy_artifacts(run_dir, stage)
        sample_path = parity_sample(run_dir, cfg, spec, data_path, sample, scratch, whole=data is not None)
        # torch path: the task's own predict reader and the engine's evaluation
        from medmm.data.cache_dirs import predict_cache
        from medmm.engine import Trainer

        predict_cache(cfg, scratch / "cache")  # the sample's caches (removed with scratch), never in the run
        split, collate = task.build_predict_data(Path(sample_path))
        trainer = Trainer(task, cfg, run_dir, quiet=True)
        with torch.no_grad():
            ref = trainer.evaluate(model, split, collate)
        pad_id = int(spec.deploy.pad_id)
        base = {"format": FORMAT, "version": VERSION, "task": info["task"], "pad_id": pad_id}
        _write_manifest(stage, base)
        # onnxruntime path: torch-free preprocessing of the same files
        examples = _runtime_examples(stage, base, sample_path, registry)
        if not examples.batches:
            raise MedmmError("parity check: the sample holds no predictable unit; pass --data with usable rows or files")
        graph = _graph_module(task, model, spec)
        used = _to_onnx(graph, _example(examples.batches, spec), spec, stage / MODEL, opset, exporter)
        onnx.checker.check_model(str(stage / MODEL))
        _write_manifest(stage, base)
        rt = ExportedModel(stage, verify=False)
        pred = rt.score(examples, calibrate=False)  # the model's own scores, as the torch path gives
        diff = _compare(task.problem, ref.units, ref.scores, pred.units, pred.scores)
        edge_diff, edges = check_edges(graph, rt.run, spec, cfg, examples.batches, task.problem)
        if not max(diff, edge_diff) <= TOLERANCE and exporter == "auto" and used == "dynamo":
            # a graph the dynamo exporter got wrong (seen on a fusion run with the attention head): retry
            (stage / MODEL).unlink()
            used = _to_onnx(graph, _example(examples.batches, spec), spec, stage / MODEL, opset, "torchscript")
            onnx.checker.check_model(str(stage / MODEL))
            _write_manifest(stage, base)
            rt = ExportedModel(stage, verify=False)
            pred = rt.score(examples, calibrate=False)
            diff = _compare(task.problem, ref.units, ref.scores, pred.units, pred.scores)
            edge_diff, edges = check_edges(graph, rt.run, spec, cfg, examples.batches, task.problem)
        parity = {"units": len(ref.units), "max_abs_diff": diff, "tolerance": TOLERANCE,
                  "measure": "relative" if task.problem in ("regression", "survival") else "probability",
                  "sample": "--data" if data is not None else "test split", "edges": edges}
        if not diff <= TOLERANCE:
            raise MedmmError(f"parity check failed: max |delta {parity['measure']}| = {diff:.3g} > {TOLERANCE:g} "
                             f"between torch and onnxruntime on {len(ref.units)} units; nothing was written")
        if not edge_diff <= TOLERANCE:
            raise MedmmError(f"parity check failed at the edges of the dynamic axes: {edge_failure(edges, TOLERANCE)}; "
                             "nothing was written")
        quant = _quantize(stage, base, examples, ref, task.problem) if quantize else None
        model_cfg = cfg.model.model_dump()
        manifest = {
            **base,
            "medmm": __version__,
            "problem": task.problem,
            "label_names": task.label_names,
            "model": str(model_cfg.get("backbone", model_cfg.get("name", info["task"]))),
            "run": run_dir.resolve().name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "opset": opset,
            "exporter": used,
            "versions": {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__},
            "inputs": [{"name": i.name, "type": i.type, "shape": i.shape} for i in rt.session.get_inputs()],
            "output": {"name": "scores", "meaning": spec.deploy.output or _meaning(task.problem, task.label_names)},
            "threshold": _threshold(run_dir, task.problem, task.label_names),
            "preprocessing": dict(spec.deploy.preprocessing),
            "parity": parity,
        }
        if quant is not None:
            manifest["quantized"] = quant
        _write_manifest(stage, manifest)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if not quiet:
        lines = [f"medmm export: {info['task']} -> {out}",
                 f"  {MODEL:<16} opset {opset}, {used} exporter, {(out / MODEL).stat().st_size / 1e6:.1f} MB",
                 (f"  parity           max |delta {parity['measure']}| {diff:.2e} on {parity['units']} "
                  f"{parity['sample']} units (limit {TOLERANCE:g})"),
                 (f"  edges            max |delta {parity['measure']}| {edge_diff:.2e} at "
                  + "; ".join(describe_edge(r) for r in edges))]
        if quant is not None:
            agree = "" if quant["label_agreement"] is None else f", label agreement {quant['label_agreement']:.3f}"
            lines.append(f"  {MODEL_INT8:<16} max |delta {parity['measure']}| {quant['max_abs_diff']:.2e}{agree}, "
                         f"{quant['speedup_vs_fp32']:.2f}x fp32 speed, {quant['bytes'] / 1e6:.1f} MB")
        lines.append(f"  predict: medmm predict {out} --data ...   serve: medmm serve {out}")
        click.echo("\n".join(lines))
    return out


def _runtime_examples(stage: Path, manifest: dict[str, Any], data: Path, registry: Any) -> Any:
    """The onnxruntime path's examples for ``data`` (torch-free readers), before the graph exists."""
    from medmm.deploy.runtime import export_config, task_inputs

    inputs = task_inputs(stage, manifest, export_config(stage, manifest["task"], registry), registry)
    return inputs.examples(inputs.read(Path(data)))


def _threshold(run_dir: Path, problem: str, labels: list[str] | None) -> float | None:
    """The positive class's cut-off: the run's stored operating point if any, else 0.5."""
    if problem not in ("binary", "multilabel"):
        return None
    try:
        from medmm.evaluation.threshold import load_operating_point
    except ImportError:
        return 0.5
    op = load_operating_point(run_dir)
    if problem == "binary" and op and labels and str(labels[1]) in op.get("thresholds", {}):
        return float(op["thresholds"][str(labels[1])])
    return 0.5


def _meaning(problem: str, labels: list[str] | None) -> str:
    if problem == "binary":
        return f"probability of {labels[1] if labels else 'class 1'} [batch]"
    if problem in ("multiclass", "multilabel"):
        return f"probability per label {labels} [batch, {len(labels or [])}]"
    if problem == "regression":
        return "prediction in the target's units [batch]"
    return "log hazard (higher = earlier event) [batch]"
