"""Run orchestration: run directory, training, test evaluation, predictions and report."""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from medmm import __version__
from medmm.config import TaskConfig, as_config, resolve, run_config
from medmm.errors import MedmmError
from medmm.task import TaskSpec

log = logging.getLogger("medmm")
MIN_FREE_BYTES = 200 * 1024**2


def default_run_dir(task: str) -> Path:
    """``runs/<task>-<YYYYmmdd-HHMMSS>`` under the current directory."""
    return Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: Path, *, resume: bool) -> Path:
    """Create (or check) the run directory: writable, enough free space, not clobbering a run."""
    from medmm import rundir

    run_dir = Path(run_dir)
    if resume:
        rundir.check_resume(run_dir)
    else:
        rundir.check_new(run_dir)  # never into a folder of other files; a failed run is replaced
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


def resume_config(run_dir: Path, spec: TaskSpec, overrides: Sequence[str]) -> TaskConfig:
    """The run's saved config (plus ``--set`` overrides, e.g. more epochs), re-validated."""
    from medmm.rundir import read_info

    info = read_info(run_dir)
    if info.get("task") != spec.name:
        raise MedmmError(f"{run_dir} is a {info['task']!r} run, not {spec.name!r}")
    return run_config(spec, run_dir, overrides)


def task_defaults(spec: TaskSpec) -> Any:
    """Every default of the task: the engine's and the task's models, the task's YAML on top."""
    from medmm.config import task_defaults as defaults

    return defaults(spec)


def resolved_config(spec: TaskSpec, user_file: Path | None, overrides: Sequence[str]) -> TaskConfig:
    """Defaults, the user's YAML and ``--set`` overrides, validated; then the backbone's recipe
    for every key the user did not set (:mod:`medmm.recipes`)."""
    from medmm.recipes import apply_recipe, user_keys

    cfg = resolve(task_defaults(spec), user_file, overrides)
    return apply_recipe(cfg, spec, user_keys(user_file, overrides))


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
    if main:  # warnings on the console too; Python warnings into train.log as well
        from medmm.runlog import attach_console

        attach_console(next((h for h in logger.handlers if isinstance(h, logging.FileHandler)), None))


def run_task(spec: TaskSpec, cfg: TaskConfig, data: Path, out: Path | None, *, resume: bool = False,
             quiet: bool = False, prepared: bool = False, started: float | None = None) -> dict[str, Any]:
    """Train, evaluate on the test split and write every output of a run; returns the summary.

    ``prepared``: the caller already checked and created ``out`` (e.g. a demo wrote its data there).
    ``started``: ``time.perf_counter()`` when the command started (``engine.time_limit`` counts from there).
    """
    import tempfile

    from medmm import fingerprint, rundir
    from medmm.engine import Trainer
    from medmm.recipes import annotated_yaml, apply_min_steps
    from medmm.recipes import describe as describe_recipe
    from medmm.engine.checkpoint import load_weights
    from medmm.engine.distributed import shutdown
    from medmm.engine.interrupt import handle_signals

    cfg = as_config(cfg)
    from medmm.engine.budget import Budget, SwitchRecipe, activate

    budget = Budget(cfg.engine.time_limit, started=started, cheaper=None if resume else _cheaper_recipe(spec, cfg))
    run_dir = out or default_run_dir(spec.name)
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    if main and not prepared:
        prepare_run_dir(run_dir, resume=resume)
    # Under torchrun only rank 0 writes the run directory; other ranks keep their scratch
    # files (data reports, caches) in a temporary folder, removed at the end.
    task_dir = run_dir if main else Path(tempfile.mkdtemp(prefix=f"medmm-rank{rank}-"))
    try:
        task = spec.load()(cfg, task_dir)
        trainer = Trainer(task, cfg, run_dir, quiet=quiet, callbacks=_plugin_callbacks(cfg, run_dir))
    except BaseException:
        if not main:
            shutil.rmtree(task_dir, ignore_errors=True)
        raise
    _setup_logging(run_dir, main)
    started = False  # run.json says "running": from here on a failure is recorded there
    signals = handle_signals()  # SIGTERM / SIGINT: run.json says interrupted, exit 128 + signal
    signals.__enter__()
    budget_scope = activate(budget)  # every Trainer of this run (also a task's own fits) plans within it
    budget_scope.__enter__()
    try:
        if main and not resume:
            (run_dir / "config.yaml").write_text(annotated_yaml(cfg))  # recipe / auto choices commented
            rundir.start(run_dir, {"task": spec.name, "medmm": __version__, "data": str(data), "created": time.time()})
            started = True
            fingerprint.save(run_dir, Path(data), fingerprint.fingerprint(data, exclude=run_dir))
        elif main:
            if not fingerprint.check_same_data(run_dir, Path(data)):
                log.warning("%s has no data fingerprint (made by an older medmm): cannot check that %s is "
                            "the data it started with", run_dir, data)
            rundir.start(run_dir)
        started = True
        if main:
            from medmm.runlog import config_changes

            log.info("medmm %s %s: data %s, run %s%s; device %s, precision %s; config (non-default): %s", spec.name,
                     __version__, data, run_dir, " (resumed)" if resume else "", trainer.device, trainer.precision,
                     ", ".join(config_changes(cfg, task_defaults(spec))) or "all defaults")
        from medmm.evaluation import check_subgroup_columns

        check_subgroup_columns(Path(data), cfg)  # a typo must not cost a whole training run
        phases: dict[str, float] = {}  # seconds per phase (summary.json, train.log): where a large run's time goes
        lap = time.perf_counter()
        memory = {"before_data": _rss_mb()}  # MB: the libraries, before any row is read (summary.json, #30)
        chosen_before = dict(cfg.provenance)
        bundle = task.build_data(Path(data))
        lap = _lap(phases, "data (read, split, preprocess)", lap)
        memory["peak_after_data"] = _peak_rss_mb()
        from medmm.io import release_free_memory

        release_free_memory()  # what reading the table freed (its frame, the parser's blocks): not kept resident
        if main and cfg.provenance != chosen_before:  # e.g. model.mode=auto decided on the data, and its recipe
            (run_dir / "config.yaml").write_text(annotated_yaml(cfg))
        if main and bundle.meta.description:
            from medmm.runlog import echo

            if quiet:
                log.info("medmm %s: %s", spec.name, bundle.meta.description)
            else:
                echo(f"medmm {spec.name}: {bundle.meta.description}")
        if main and not quiet and describe_recipe(cfg):
            click.echo(f"medmm {spec.name}: {describe_recipe(cfg)}", err=True)
        accum = cfg.engine.grad_accum
        if apply_min_steps(cfg, math.ceil(len(trainer.epoch_plan(bundle, 0)) / accum)) and main:
            (run_dir / "config.yaml").write_text(annotated_yaml(cfg))  # the epochs the run really uses
        if main and not (resume and (run_dir / "artifacts").exists()):  # a run's artifacts are never rewritten
            task.save_artifacts(run_dir / "artifacts")
        lap = _lap(phases, "setup", lap)
        prefit = None  # the classic baseline, fitted before training: its cost is then known to the ETA, not guessed
        if main:
            from medmm.classic import prefit_baseline
            from medmm.report import figures_drawn

            has_test = bundle.test is not None and len(bundle.test.dataset)
            prefit = prefit_baseline(task, cfg, "test" if has_test else "val")
            release_free_memory()  # the baseline's float64 sample and per-block temporaries, not kept resident
            budget.baseline_done = prefit is not None
            budget.figures = figures_drawn(task.problem)  # timed by a probe figure before the first steps
            lap = _lap(phases, "baseline", lap)
        prefit_s = phases.get("baseline", 0.0)
        why = task.choose_backbone(bundle)  # model.backbone=auto decided on val (#14); None: nothing chosen
        lap = _lap(phases, "backbone choice (auto)" if why else "setup", lap)
        if why and main:
            log.info("medmm %s: %s", spec.name, why)
            if not quiet:
                click.echo(f"medmm {spec.name}: {why}", err=True)
            (run_dir / "config.yaml").write_text(annotated_yaml(cfg))  # predict rebuilds the chosen backbone
        model = task.build_model()
        if main:
            rundir.record_files(run_dir)  # the manifest of what this run wrote so far (replace removes only those)
        trained = bundle.meta.trained_in_run_dir  # e.g. auto's winner: resume it, never train twice
        lap = _lap(phases, "setup", lap)
        if main:
            trainer.callbacks.append(_PlanWriter(run_dir, cfg))  # a plan of the time limit goes into config.yaml
        try:
            fit = trainer.fit(model, bundle, resume=resume or trained)
        except SwitchRecipe as switch:  # the time limit fits too few steps: the task's cheaper recipe, from scratch
            task, trainer, bundle, model = _switch_recipe(spec, cfg, run_dir, task_dir, Path(data), switch, main,
                                                          quiet=quiet)
            fit = trainer.fit(model, bundle, resume=bundle.meta.trained_in_run_dir)
            prefit = None  # fitted on the first recipe's task: the finish fits it again
        lap = _lap(phases, "train", lap)
        best = run_dir / "checkpoints" / "best"
        load_weights(best, model)
        split_name, split = ("test", bundle.test) if bundle.test is not None and len(bundle.test.dataset) else ("val", bundle.val)
        summary: dict[str, Any] = {"task": spec.name, "problem": task.problem, "run_dir": str(run_dir),
                                   "best_checkpoint": _best_at(fit.history, fit.state.best_step),
                                   "best_step": fit.state.best_step,
                                   "monitor": fit.monitor, "best_value": fit.state.best_value}
        if split is not None:
            out_eval = trainer.evaluate(model, split, bundle.collate_fn)
            sections = task.report_sections(lambda: trainer.metrics_of(trainer.evaluate(model, split, bundle.collate_fn)))
            bundle.meta.report_sections = [*bundle.meta.report_sections, *sections]
            from medmm.evaluation import training_evaluation  # operating point on val, subgroup audit (#16)

            trust = training_evaluation(task, trainer, model, bundle, out_eval, split_name, Path(data), cfg, run_dir,
                                        main=main)
            bundle.meta.report_sections = [*bundle.meta.report_sections, *trust["sections"]]
            meta = bundle.meta
            meta.operating_point, meta.subgroups_card = trust["operating_point"], trust["card"]
            meta.conformal, meta.conformal_set_groups = trust.get("conformal"), trust.get("conformal_set_groups")
            if trust.get("conformal_card"):  # prediction sets and referral (#32)
                bundle.meta.card_sections = [*bundle.meta.card_sections,
                                              "## Prediction sets and referral\n\n" + trust["conformal_card"]]
            if trust.get("decision_curve_card"):  # net benefit vs treat-all / treat-none (#32)
                bundle.meta.card_sections = [*bundle.meta.card_sections,
                                              "## Decision curves\n\n" + trust["decision_curve_card"]]
            summary.update(trust["summary"])
            from medmm.privacy.membership import privacy_outputs  # ε spent, membership audit (#18)

            summary.update(privacy_outputs(trainer, model, bundle, out_eval, split_name, cfg, run_dir, main=main))
            lap = _lap(phases, "evaluate", lap)
            if main:
                summary.update(_finish(task, trainer, fit, out_eval, split_name, run_dir, cfg, spec, bundle,
                                       phases=phases, prefit=prefit))
        if main:
            from medmm.io import write_json_atomic

            _lap(phases, "report", lap)
            phases["report"] -= phases.get("baseline", 0.0) - prefit_s  # its finish part, timed inside _finish
            summary["phase_seconds"] = {k: round(v, 3) for k, v in phases.items()}
            summary["memory_mb"] = {**memory, "peak": _peak_rss_mb()}
            total = sum(phases.values()) or 1.0
            log.info("phases (seconds, share): %s", ", ".join(f"{k} {v:.1f} ({v / total:.0%})" for k, v in phases.items()))

            summary["time_budget"] = {"limit_s": budget.limit_s, "stopped": budget.stopped, "notes": budget.notes}
            summary["eta_check"] = budget.eta_check()  # each printed estimate against the real time it had left
            write_json_atomic(run_dir / "summary.json", summary, default=str)  # strict JSON: undefined figures are null
            _mark_stopped(run_dir, budget.stopped)
            rundir.finish(run_dir)
            _print_summary(summary)
        return summary
    except BaseException as exc:
        if main and started:
            rundir.finish(run_dir, exc)
        raise
    finally:
        budget_scope.__exit__(None, None, None)
        signals.__exit__(None, None, None)
        shutdown(trainer.dist)
        if not main:
            shutil.rmtree(task_dir, ignore_errors=True)


def _cheaper_recipe(spec: TaskSpec, cfg: TaskConfig) -> dict[str, Any] | None:
    """The task's declared cheaper recipe (``TaskSpec.cheaper_recipe``), unless the user set one of its keys
    or the run already uses it."""
    from medmm.recipes import get_key, has_key

    recipe = dict(spec.cheaper_recipe or {})
    user = cfg.user or set()
    if not recipe or user & set(recipe) or not all(has_key(cfg, k) for k in recipe):
        return None
    if all(get_key(cfg, k) == v for k, v in recipe.items()):
        return None
    return recipe


class _PlanWriter:
    """Engine callback: the time limit lowered ``engine.max_steps``; config.yaml says so (resume keeps the plan)."""

    def __init__(self, run_dir: Path, cfg: TaskConfig) -> None:
        self.run_dir, self.cfg = run_dir, cfg

    def on_plan(self, trainer: Any, total: int) -> None:
        from medmm.recipes import annotated_yaml

        self.cfg.provenance["engine.max_steps"] = f"planned to fit engine.time_limit ({total} steps)"
        (self.run_dir / "config.yaml").write_text(annotated_yaml(self.cfg))


def _switch_recipe(spec: TaskSpec, cfg: TaskConfig, run_dir: Path, task_dir: Path, data: Path, switch: Any,
                   main: bool, *, quiet: bool) -> tuple[Any, Any, Any, Any]:
    """Restart the run on the task's cheaper recipe (``switch.overrides``): says so, drops the first
    attempt's checkpoints and metrics, rewrites config.yaml; the new task, trainer, data and model."""
    from medmm.config import set_key
    from medmm.engine import Trainer
    from medmm.recipes import annotated_yaml
    from medmm.runlog import echo

    log.warning("%s", switch.reason)
    if main and not quiet:
        echo(f"medmm {spec.name}: {switch.reason}")
    for key, value in switch.overrides.items():
        set_key(cfg, key, value)
        cfg.provenance[key] = "cheaper recipe: fine-tuning did not fit engine.time_limit"
    if main:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        for name in ("metrics.jsonl", "metrics.csv"):
            (run_dir / name).unlink(missing_ok=True)
        (run_dir / "config.yaml").write_text(annotated_yaml(cfg))
    from medmm.engine.budget import current

    budget = current()
    if budget is not None:
        budget.cheaper = None  # one switch per run
        budget.notes.append(switch.reason)
    task = spec.load()(cfg, task_dir)
    trainer = Trainer(task, cfg, run_dir, quiet=quiet, callbacks=_plugin_callbacks(cfg, run_dir))
    bundle = task.build_data(data)
    task.choose_backbone(bundle)
    model = task.build_model()
    if main:
        trainer.callbacks.append(_PlanWriter(run_dir, cfg))
        from medmm import rundir

        rundir.record_files(run_dir)
    return task, trainer, bundle, model


def _mark_stopped(run_dir: Path, stopped: str | None) -> None:
    """``run.json``: ``stopped: time limit`` when training stopped at the limit (removed when a resume finished)."""
    from medmm import rundir

    try:
        info = rundir.read_info(run_dir)
    except MedmmError:
        return
    if stopped:
        info["stopped"] = stopped
    else:
        info.pop("stopped", None)
    rundir.write_info(run_dir, info)


def _plugin_callbacks(cfg: TaskConfig, run_dir: Path) -> list[Any]:
    """TensorBoard (when asked) plus every callback registered by plugins."""
    from medmm.engine.callbacks import tensorboard_logger
    from medmm.plugins import get_registry

    out: list[Any] = []
    if cfg.engine.tensorboard:
        tb = tensorboard_logger(run_dir)
        if tb is not None:
            out.append(tb)
    for _, comp in get_registry().items("callback"):
        out.append(comp.build(cfg, run_dir))
    return out


def _rss_mb() -> float | None:
    """This process's resident memory now, in MB (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (``None`` where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _lap(phases: dict[str, float], name: str, since: float) -> float:
    """Add the seconds since ``since`` to ``phases[name]``; the time now (the next phase's start)."""
    now = time.perf_counter()
    phases[name] = phases.get(name, 0.0) + now - since
    return now


def _finish(task: Any, trainer: Any, fit: Any, ev: Any, split_name: str, run_dir: Path, cfg: TaskConfig,
            spec: TaskSpec, bundle: Any, phases: dict[str, float] | None = None, prefit: Any = None) -> dict[str, Any]:
    """Metrics with CIs, predictions.csv, report.html and the model card (``phases``: the baseline's seconds;
    ``prefit``: the baseline fitted before training, :func:`medmm.classic.prefit_baseline`)."""
    from medmm.classic import baseline_for_run
    from medmm.metrics import bootstrap_cis
    from medmm.model_card import write_model_card
    from medmm.predictions import write_predictions
    from medmm.report import write_report

    metrics = trainer.metrics_of(ev)
    ci: dict[str, tuple[float, float]] = {}
    n_boot = cfg.engine.bootstrap
    if metrics and n_boot:
        (y_true, y_score), kw = trainer.metric_inputs(ev)
        ci = bootstrap_cis(task.problem, y_true, y_score, n_boot=n_boot, seed=cfg.seed, **kw)
    write_predictions(run_dir / "predictions.csv", ev, task.problem, task.label_names, bundle.meta.unit_columns,
                      operating_point=bundle.meta.operating_point,
                      conformal=bundle.meta.conformal, set_groups=bundle.meta.conformal_set_groups)
    started = time.perf_counter()
    base = baseline_for_run(task, cfg, ev, split_name, metrics, ci, run_dir, bundle.meta.unit_columns, prefit=prefit)
    if phases is not None:  # counted apart from the report phase the caller times around this call
        phases["baseline"] = phases.get("baseline", 0.0) + time.perf_counter() - started
    record = {"epoch": fit.state.epoch, "step": fit.state.global_step, "split": split_name, "loss": ev.loss, **metrics,
              "final": True}
    _write_final_record(run_dir / "metrics.jsonl", record)
    sizes = {name: len(s.dataset) for name, s in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
             if s is not None}
    model_name = _model_name(cfg)
    y_true, y_score = (ev.targets, ev.scores)
    kw: dict[str, Any] = {}
    if task.problem == "survival" and ev.targets is not None:
        kw = {"time": ev.targets[:, 0], "event": ev.targets[:, 1].astype(bool)}
        y_true = None
    write_report(run_dir / "report.html", title=f"medmm {spec.name}", problem=task.problem, history=fit.history,
                 y_true=y_true, y_score=y_score, label_names=task.label_names, metrics=metrics, ci=ci,
                 extra_sections=[*base.report, *bundle.meta.report_sections],
                 summary={"task": spec.name, "model": model_name, "device": str(trainer.device),
                          "precision": trainer.precision, "examples": sizes,
                          "best checkpoint": _best_at(fit.history, fit.state.best_step),
                          f"best val {fit.monitor}": fit.state.best_value,
                          "evaluated on": split_name}, **kw)
    write_model_card(run_dir / "model_card.md", task=spec.name, model=model_name,
                     data_description=bundle.meta.description or f"examples per split: {sizes}",
                     metrics=metrics, ci=ci, label_names=task.label_names, config=cfg, sections=[*base.card, *bundle.meta.card_sections],
                     subgroups=bundle.meta.subgroups_card)
    units = {name: len(dict.fromkeys(s.units)) for name, s in (("train", bundle.train), ("val", bundle.val),
                                                                ("test", bundle.test)) if s is not None}
    return {"split": split_name, "metrics": metrics, "ci": ci, "sizes": sizes, "units": units,
            "unit_name": bundle.meta.unit_name, "example_name": bundle.meta.example_name,
            **base.summary}


def _write_final_record(path: Path, record: dict[str, Any]) -> None:
    """Append the final evaluation to metrics.jsonl and metrics.csv, replacing the one of an earlier finish
    (a resumed run)."""
    from medmm.engine.callbacks import read_jsonl, write_metrics_csv
    from medmm.io import write_text_atomic

    rows = [r for r in read_jsonl(path) if not r.get("final") and r.get("split") != "test"]
    rows.append({k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()})
    from medmm.io import dumps_json

    write_text_atomic(path, "".join(dumps_json(r, indent=None) + "\n" for r in rows))
    write_metrics_csv(path.with_name("metrics.csv"), rows)


def _fmt(v: Any) -> str:
    from medmm.metrics import format_estimate

    return format_estimate(v) if isinstance(v, float) else str(v)


def _model_name(cfg: TaskConfig) -> str:
    """The model a run trained: ``model.backbone`` / ``model.name``, or its ``*_backbone`` keys (fusion)
    with its head."""
    model = cfg.model
    for key in ("backbone", "name"):
        if model.get(key):
            return str(model.get(key))
    keys = [k for k in ("text_backbone", "image_backbone", "tabular_backbone") if model.get(k)]
    parts = " + ".join(str(model.get(k)) for k in keys)
    head = f"{model.get('head')} head" if model.get("head") else ""
    return f"{head} over {parts}" if head and parts else parts or head or "task default"


def _best_at(history: list[dict[str, Any]], step: int) -> str:
    """``epoch 3 (step 9)``: where the kept best checkpoint was taken, in the units the report's plots use."""
    epoch = next((r.get("epoch") for r in history if r.get("split") == "val" and r.get("step") == step), None)
    return f"epoch {epoch:g} (step {step})" if isinstance(epoch, (int, float)) else f"step {step}"


def _print_summary(summary: dict[str, Any]) -> None:
    from medmm.classic import summary_lines as baseline_summary_lines

    from medmm.evaluation.threshold import stat_text
    from medmm.metrics import format_estimate
    from medmm.report import decision_rule

    run_dir = Path(summary["run_dir"])
    lines = [f"medmm {summary['task']}: done"]
    if "metrics" in summary:
        lines.append(f"  {_split_size(summary)}:")
        for k, v in summary["metrics"].items():
            ci = summary["ci"].get(k)
            lines.append(f"    {k:<10} " + format_estimate(v, ci, style=" (95% CI {lo}-{hi})"))
        lines += baseline_summary_lines(summary.get("baseline"))
        for cls, op in (summary.get("operating_point") or {}).items():  # chosen on val (#16)
            lines.append(f"  operating point {cls} >= {op['threshold']:.4f} (threshold chosen on val, not the "
                         f"{decision_rule(summary.get('problem', ''))} of 'predicted'): sensitivity "
                         f"{stat_text(op, 'sensitivity')}, specificity {stat_text(op, 'specificity')}")
        if summary.get("operating_point_f1"):  # multilabel: F1 at the per-label thresholds (#14)
            from medmm.evaluation import f1_line

            lines.append("  " + f1_line(summary["operating_point_f1"], summary["split"]))
        if summary.get("conformal"):  # prediction sets / intervals and referral (#32)
            from medmm.evaluation.conformal import summary_line

            lines.append("  " + summary_line(summary["conformal"], summary["split"]))
    from medmm.privacy.membership import summary_lines as privacy_summary_lines

    lines += privacy_summary_lines(summary)  # ε spent, membership audit (#18)
    for note in (summary.get("time_budget") or {}).get("notes", []):
        lines.append(f"  time limit: {note}")
    if (summary.get("time_budget") or {}).get("stopped"):
        lines.append(f"  stopped at the time limit: the best checkpoint so far is reported (continue with "
                     f"--resume {run_dir} --time-limit <more>)")
    lines.append(f"  best {summary['monitor']} on val: {_fmt(summary['best_value'])} at "
                 f"{summary.get('best_checkpoint') or 'step ' + str(summary['best_step'])}")
    for name in ("report.html", "predictions.csv", "metrics.jsonl", "model_card.md", "checkpoints/best"):
        lines.append(f"  {name:<16} {run_dir / name}")
    skipped = run_dir / "skipped.csv"
    if skipped.exists():
        lines.append(f"  {'skipped.csv':<16} {skipped}")
    from medmm.runlog import echo

    echo("\n".join(lines), err=False)


def _split_size(summary: dict[str, Any]) -> str:
    """``test split (60 examples)``, or ``test split (9 series from 22 instances)`` when units pool examples."""
    split = summary["split"]
    n, units = summary["sizes"].get(split, "?"), summary.get("units", {}).get(split)
    if units is None or units == n:
        return f"{split} split ({n} examples)"
    return f"{split} split ({units} {summary.get('unit_name', 'units')} from {n} {summary.get('example_name', 'examples')})"


def predict_run(run_dir: Path, data: Path, out: Path, *, checkpoint: str = "best", registry: Any,
                baseline: bool = False, cache_dir: Path | None = None, overwrite: bool = False,
                shard: tuple[int, int] | None = None) -> Path:
    """Predict ``data`` with a trained run (or its classic ``baseline``); writes one CSV row per unit.
    ``shard=(i, n)``: only block ``i`` of ``n`` of the units, in order (:mod:`medmm.data.shards`).

    An existing ``out`` is refused unless ``overwrite`` (``--overwrite``)."""
    from medmm.rundir import check_output_file

    check_output_file(Path(out), overwrite=overwrite)  # before any work: a refused --out must not cost a prediction
    from medmm.engine import Trainer
    from medmm.io import write_skipped
    from medmm.predictions import write_predictions

    from medmm.run import Run

    run = Run.open(run_dir, registry=registry)
    run_dir, cfg = run.path, run.cfg
    from medmm.data.cache_dirs import predict_cache
    from medmm.runlog import attach_console

    attach_console(None)  # warnings about the new data print as "medmm: warning: ..."
    _cache = predict_cache(cfg, cache_dir)  # the new data's caches, never in the run dir; a temp one goes on return
    task = run.task()
    model = run.model(task, checkpoint)
    _view = None  # --shard i/n of a folder: read only this shard's files (a temporary view, gone on return)
    if shard is not None:
        from medmm.data.shards import FolderShard, shard_split

        if baseline:
            raise MedmmError("--shard predicts with the run's model; it cannot be combined with --baseline")
        _view = FolderShard(Path(data), shard) if Path(data).is_dir() else None
    trainer = Trainer(task, cfg, run_dir, quiet=True)
    from medmm.predict_stream import stream_predict

    # a table the task reads in blocks: predicted and written block by block (memory flat in its rows)
    streamed = None if baseline or shard is not None else stream_predict(task, Path(data), run_dir, trainer, model,
                                                                         Path(out))
    if streamed is None:
        split, collate = run.predict_data(task, _view.path if _view is not None else data)
        keep = None
        if shard is not None and _view is None and split.lengths is not None:  # length-sorted windows (text):
            from medmm.batching import eval_window
            from medmm.data.shards import keep_units, shard_windows

            split, keep = shard_windows(split, shard, eval_window(cfg.engine.eval_batch_size))  # whole windows
        elif shard is not None and _view is None:  # a table: every row is read (ids kept), this block predicted
            split = shard_split(split, shard)
        if baseline:
            from medmm.classic import predict_baseline

            ev, _ = predict_baseline(task, run_dir)
        else:
            model.to(trainer.device)
            ev = trainer.evaluate(model, split, collate)
            if keep is not None:  # the whole windows were predicted: this shard's block of units is written
                ev = keep_units(ev, keep)
        from medmm.evaluation.calibration import apply_stored_calibration
        from medmm.evaluation.threshold import load_operating_point

        op = None if baseline else load_operating_point(run_dir)  # thresholded decision next to the probabilities
        ev = ev if baseline else apply_stored_calibration(run_dir, task.problem, ev)  # a recalibrated run (evaluate)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        from medmm.evaluation.conformal import load_conformal, set_groups_of

        conf = None if baseline else load_conformal(run_dir)  # prediction set + refer flag (#32)
        write_predictions(out, ev, task.problem, task.label_names, task.unit_columns, operating_point=op,
                          conformal=conf, set_groups=set_groups_of(conf, Path(data), cfg, ev.units))
    else:
        from medmm.evaluation.conformal import load_conformal, set_groups_of

        split, ev, conf, out = None, streamed.ev, load_conformal(run_dir), Path(out)
    count = streamed.n if streamed is not None else len(ev.scores)  # streamed unlabelled input keeps no scores
    msg = f"medmm predict: {count} {'classic baseline ' if baseline else ''}predictions -> {out}"
    from medmm.evaluation.conformal import referred_line

    msg += (streamed.referral if streamed is not None  # (#32); counted block by block when streamed
            else referred_line(conf, ev.scores, set_groups_of(conf, Path(data), cfg, ev.units)))
    skipped, key = (streamed.skipped, streamed.skipped_key) if streamed is not None else (
        getattr(split, "skipped", None), getattr(split, "skipped_key", "id"))
    if skipped:
        report = write_skipped(out.with_name(out.stem + ".skipped.csv"), skipped, key=key)
        msg += f"\n  {len(skipped)} inputs skipped -> {report}"
    if ev.targets is not None:
        from medmm.evaluation.overlap import caveat, seen_splits

        metrics = trainer.metrics_of(ev)
        if streamed is not None:  # counted block by block for the run's own data (no ids kept)
            seen = streamed.seen or {}
        else:
            seen = seen_splits(run_dir, ev.units, Path(data)) if len(ev.units) else {}
        note = caveat(seen, count)  # the rows the run trained on
        msg += "\n" + "\n".join([*([f"  {note}"] if note else []), *(f"  {k:<10} {_fmt(v)}" for k, v in metrics.items())])
    click.echo(msg)
    return out


def run_demo(spec: TaskSpec, out: Path | None, overrides: Sequence[str], *, quiet: bool = False) -> dict[str, Any]:
    """Build the task's demo data inside the run directory, then train on it."""
    from medmm.registry import resolve_object

    if spec.demo is None:
        raise MedmmError(f"task {spec.name!r} has no bundled demo")
    from medmm.engine.budget import process_started

    started = process_started()  # engine.time_limit counts the command's start and the demo data's building
    run_dir = prepare_run_dir(out or Path("runs") / f"demo-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", resume=False)
    click.echo(f"medmm demo {spec.name}: building demo data in {run_dir / 'demo-data'} ...", err=True)
    data, demo_overrides = resolve_object(spec.demo)(run_dir / "demo-data")
    cfg = resolved_config(spec, None, [*demo_overrides, *overrides])
    return run_task(spec, cfg, Path(data), run_dir, resume=False, quiet=quiet, prepared=True, started=started)
