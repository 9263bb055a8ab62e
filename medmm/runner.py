"""Run orchestration: run directory, training, test evaluation, predictions and report."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from medmm import __version__
from medmm.config import dump_yaml, load_yaml, resolve
from medmm.errors import ConfigError, MedmmError
from medmm.task import TaskSpec

log = logging.getLogger("medmm")
ENGINE_CHOICES = {
    "engine.precision": ["auto", "fp32", "bf16", "fp16"],
    "engine.schedule": ["constant", "linear", "cosine"],
    "engine.class_weights": ["none", "balanced"],
    "engine.sampler": ["shuffle", "weighted", "bucket"],
    "engine.monitor_mode": ["auto", "max", "min"],
    "engine.nan_policy": ["stop", "skip"],
}
MIN_FREE_BYTES = 200 * 1024**2


def default_run_dir(task: str) -> Path:
    """``runs/<task>-<YYYYmmdd-HHMMSS>`` under the current directory."""
    return Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: Path, *, resume: bool) -> Path:
    """Create (or check) the run directory: writable, enough free space, not clobbering a run."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "run.json").exists():
            raise MedmmError(f"--resume {run_dir}: not a medmm run directory (no run.json)")
    elif (run_dir / "run.json").exists():
        raise MedmmError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as exc:
        raise MedmmError(f"run directory {run_dir} is not writable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise MedmmError(f"only {free / 1024**2:.0f} MiB free under {run_dir}; need at least "
                         f"{MIN_FREE_BYTES / 1024**2:.0f} MiB for checkpoints")
    return run_dir


def resume_config(run_dir: Path, spec: TaskSpec, overrides: Sequence[str]) -> dict[str, Any]:
    """The run's saved config (plus ``--set`` overrides, e.g. more epochs), re-validated."""
    info = _run_info(run_dir)
    if info["task"] != spec.name:
        raise MedmmError(f"{run_dir} is a {info['task']!r} run, not {spec.name!r}")
    return resolve(task_defaults(spec), run_dir / "config.yaml", overrides, choices(spec))


def task_defaults(spec: TaskSpec) -> dict[str, Any]:
    """The task's YAML defaults on top of the shared engine defaults."""
    from medmm_configs import path as config_path

    engine = load_yaml(config_path("engine"))
    task = load_yaml(spec.config)
    for key in task.get("engine", {}):
        if key not in engine["engine"]:
            raise ConfigError(f"{spec.config}: unknown engine key {key!r}")
    merged = {**engine, **task}
    merged["engine"] = {**engine["engine"], **task.get("engine", {})}
    return merged


def choices(spec: TaskSpec) -> dict[str, Any]:
    """Allowed values: the engine's and the task's."""
    return {**ENGINE_CHOICES, **spec.choices}


def resolved_config(spec: TaskSpec, user_file: Path | None, overrides: Sequence[str]) -> dict[str, Any]:
    """Defaults, the user's YAML and ``--set`` overrides, validated."""
    return resolve(task_defaults(spec), user_file, overrides, choices(spec))


def _run_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text())
    except FileNotFoundError:
        raise MedmmError(f"{run_dir} is not a medmm run directory (no run.json)") from None
    except ValueError as exc:
        raise MedmmError(f"{run_dir}/run.json is corrupt: {exc}") from None


def _setup_logging(run_dir: Path, main: bool) -> None:
    logger = logging.getLogger("medmm")
    logger.setLevel(logging.INFO)
    target = str((run_dir / "train.log").resolve())
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        if h.baseFilename != target:  # an earlier run in this process: stop writing its log
            logger.removeHandler(h)
            h.close()
    if main and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def run_task(spec: TaskSpec, cfg: dict[str, Any], data: Path, out: Path | None, *, resume: bool = False,
             quiet: bool = False) -> dict[str, Any]:
    """Train, evaluate on the test split and write every output of a run; returns the summary."""
    from medmm.engine import Trainer
    from medmm.engine.checkpoint import load_weights
    from medmm.engine.distributed import shutdown

    run_dir = out or default_run_dir(spec.name)
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    if main:
        prepare_run_dir(run_dir, resume=resume)
    # Under torchrun only rank 0 writes the run directory; other ranks keep their scratch
    # files (data reports, caches) apart so no two processes write one file.
    task_dir = run_dir if main else run_dir / ".ranks" / str(rank)
    task = spec.load()(cfg, task_dir)
    trainer = Trainer(task, cfg, run_dir, quiet=quiet, callbacks=_plugin_callbacks(cfg, run_dir))
    if not main:
        task_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir, main)
    try:
        if main and not resume:
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
            (run_dir / "run.json").write_text(json.dumps(
                {"task": spec.name, "medmm": __version__, "data": str(data), "created": time.time()}, indent=1))
        bundle = task.build_data(Path(data))
        if main and not quiet and bundle.meta.get("description"):
            click.echo(f"medmm {spec.name}: {bundle.meta['description']}", err=True)
        if main:
            task.save_artifacts(run_dir / "artifacts")
        model = task.build_model()
        fit = trainer.fit(model, bundle, resume=resume)
        best = run_dir / "checkpoints" / "best"
        load_weights(best, model)
        split_name, split = ("test", bundle.test) if bundle.test is not None and len(bundle.test.dataset) else ("val", bundle.val)
        summary: dict[str, Any] = {"task": spec.name, "run_dir": str(run_dir), "best_step": fit.state.best_step,
                                   "monitor": fit.monitor, "best_value": fit.state.best_value}
        if split is not None:
            out_eval = trainer.evaluate(model, split, bundle.collate_fn)
            sections = task.report_sections(lambda: trainer.metrics_of(trainer.evaluate(model, split, bundle.collate_fn)))
            bundle.meta["report_sections"] = [*bundle.meta.get("report_sections", []), *sections]
            if main:
                summary.update(_finish(task, trainer, fit, out_eval, split_name, run_dir, cfg, spec, bundle))
        if main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
            _print_summary(summary)
        return summary
    finally:
        shutdown(trainer.dist)


def _plugin_callbacks(cfg: dict[str, Any], run_dir: Path) -> list[Any]:
    """TensorBoard (when asked) plus every callback registered by plugins."""
    from medmm.engine.callbacks import tensorboard_logger
    from medmm.plugins import get_registry

    out: list[Any] = []
    if cfg["engine"].get("tensorboard"):
        tb = tensorboard_logger(run_dir)
        if tb is not None:
            out.append(tb)
    for _, comp in get_registry().items("callback"):
        out.append(comp.build(cfg, run_dir))
    return out


def _finish(task: Any, trainer: Any, fit: Any, ev: Any, split_name: str, run_dir: Path, cfg: dict[str, Any],
            spec: TaskSpec, bundle: Any) -> dict[str, Any]:
    """Metrics with CIs, predictions.csv, report.html and the model card."""
    from medmm.metrics import bootstrap_cis
    from medmm.model_card import write_model_card
    from medmm.predictions import write_predictions
    from medmm.report import write_report

    metrics = trainer.metrics_of(ev)
    ci: dict[str, tuple[float, float]] = {}
    n_boot = int(cfg["engine"]["bootstrap"])
    if metrics and n_boot:
        (y_true, y_score), kw = trainer.metric_inputs(ev)
        ci = bootstrap_cis(task.problem, y_true, y_score, n_boot=n_boot, seed=int(cfg.get("seed", 0)), **kw)
    write_predictions(run_dir / "predictions.csv", ev, task.problem, task.label_names, bundle.meta.get("unit_columns"))
    record = {"epoch": fit.state.epoch, "step": fit.state.global_step, "split": split_name, "loss": ev.loss, **metrics}
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}) + "\n")
    sizes = {name: len(s.dataset) for name, s in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
             if s is not None}
    model_name = str(cfg.get("model", {}).get("backbone", cfg.get("model", {}).get("name", "?")))
    y_true, y_score = (ev.targets, ev.scores)
    kw: dict[str, Any] = {}
    if task.problem == "survival" and ev.targets is not None:
        kw = {"time": ev.targets[:, 0], "event": ev.targets[:, 1].astype(bool)}
        y_true = None
    write_report(run_dir / "report.html", title=f"medmm {spec.name}", problem=task.problem, history=fit.history,
                 y_true=y_true, y_score=y_score, label_names=task.label_names, metrics=metrics, ci=ci,
                 extra_sections=bundle.meta.get("report_sections"),
                 summary={"task": spec.name, "model": model_name, "device": str(trainer.device),
                          "precision": trainer.precision, "examples": json.dumps(sizes),
                          "best step": str(fit.state.best_step), f"monitored ({fit.monitor})": f"{fit.state.best_value}",
                          "evaluated on": split_name}, **kw)
    write_model_card(run_dir / "model_card.md", task=spec.name, model=model_name,
                     data_description=bundle.meta.get("description", f"examples per split: {sizes}"),
                     metrics=metrics, ci=ci, label_names=task.label_names, config=cfg)
    return {"split": split_name, "metrics": metrics, "ci": ci, "sizes": sizes}


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _print_summary(summary: dict[str, Any]) -> None:
    run_dir = Path(summary["run_dir"])
    lines = [f"medmm {summary['task']}: done"]
    if "metrics" in summary:
        lines.append(f"  {summary['split']} split ({summary['sizes'].get(summary['split'], '?')} examples):")
        for k, v in summary["metrics"].items():
            ci = summary["ci"].get(k)
            lines.append(f"    {k:<10} {_fmt(v)}" + (f"  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""))
    lines.append(f"  best {summary['monitor']} on val: {_fmt(summary['best_value'])} at step {summary['best_step']}")
    for name in ("report.html", "predictions.csv", "metrics.jsonl", "model_card.md", "checkpoints/best"):
        lines.append(f"  {name:<16} {run_dir / name}")
    skipped = run_dir / "skipped.csv"
    if skipped.exists():
        lines.append(f"  {'skipped.csv':<16} {skipped}")
    click.echo("\n".join(lines))


def predict_run(run_dir: Path, data: Path, out: Path, *, checkpoint: str = "best", registry: Any) -> Path:
    """Predict ``data`` with a trained run; writes one CSV row per unit."""
    from medmm.engine import Trainer
    from medmm.engine.checkpoint import load_weights
    from medmm.io import write_skipped
    from medmm.predictions import write_predictions

    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    spec = registry.get("task", info["task"])
    cfg = resolve(task_defaults(spec), run_dir / "config.yaml", (), choices(spec))
    task = spec.load()(cfg, run_dir)
    task.load_artifacts(run_dir / "artifacts")
    model = task.build_model()
    load_weights(run_dir / "checkpoints" / checkpoint, model)
    split, collate = task.build_predict_data(Path(data))
    trainer = Trainer(task, cfg, run_dir, quiet=True)
    model.to(trainer.device)
    ev = trainer.evaluate(model, split, collate)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, ev, task.problem, task.label_names, getattr(task, "unit_columns", None))
    msg = f"medmm predict: {len(ev.units)} predictions -> {out}"
    skipped = getattr(split, "skipped", None)
    if skipped:
        report = write_skipped(out.with_name(out.stem + ".skipped.csv"), skipped, key="path")
        msg += f"\n  {len(skipped)} inputs skipped -> {report}"
    if ev.targets is not None:
        metrics = trainer.metrics_of(ev)
        msg += "\n" + "\n".join(f"  {k:<10} {_fmt(v)}" for k, v in metrics.items())
    click.echo(msg)
    return out


def run_demo(spec: TaskSpec, out: Path | None, overrides: Sequence[str], *, quiet: bool = False) -> dict[str, Any]:
    """Build the task's demo data inside the run directory, then train on it."""
    from medmm.registry import resolve_object

    if spec.demo is None:
        raise MedmmError(f"task {spec.name!r} has no bundled demo")
    run_dir = prepare_run_dir(out or Path("runs") / f"demo-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", resume=False)
    click.echo(f"medmm demo {spec.name}: building demo data in {run_dir / 'demo-data'} ...", err=True)
    data, demo_overrides = resolve_object(spec.demo)(run_dir / "demo-data")
    cfg = resolved_config(spec, None, [*demo_overrides, *overrides])
    return run_task(spec, cfg, Path(data), run_dir, resume=False, quiet=quiet)
