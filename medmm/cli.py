"""The ``medmm`` command line. Heavy libraries are imported only inside commands that train."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from medmm import __version__
from medmm.errors import MedmmError


def plugins() -> Any:
    """This process's plugins, loaded once."""
    from medmm.plugins import default_plugins

    return default_plugins()


def _registry() -> Any:
    return plugins().registry


def _task_spec(name: str) -> Any:
    return _registry().get("task", name)


def _resolved_config(spec: Any, config_file: Path | None, overrides: tuple[str, ...]) -> dict[str, Any]:
    from medmm.runner import resolved_config

    return resolved_config(spec, config_file, overrides)


def _deid_profile_options(f: Any) -> Any:
    """The PS3.15 profile options ``medmm deid`` and ``medmm pull`` share (flags, or a YAML of them)."""
    for option in reversed([
        click.option("--retain-dates/--no-retain-dates", default=None,
                     help="Shift dates per patient (keyed) instead of removing them."),
        click.option("--retain-device-identity/--no-retain-device-identity", default=None,
                     help="Keep device serial numbers and station names."),
        click.option("--clean-descriptors/--no-clean-descriptors", default=None,
                     help="Keep descriptions and comments, scrubbed, instead of removing them."),
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="YAML with those three options."),
    ]):
        f = option(f)
    return f


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class DataParam(click.ParamType):
    """``--data``: a local path, or a DICOMweb source ``dicomweb+https://host/dicom-web?Keyword=value``
    (kept as text; checked here, one-line error)."""

    name = "PATH|dicomweb+URL"

    def convert(self, value: Any, param: Any, ctx: Any) -> Path | str:
        from medmm.data.sources.dicomweb import is_dicomweb, parse_dicomweb

        if isinstance(value, str) and is_dicomweb(value):
            parse_dicomweb(value)
            return value
        return Path(value)


DATA = DataParam()


def _local_data(data: Path | str, **kwargs: Any) -> Any:
    """``--data`` as a local folder: a DICOMweb source is pulled, de-identified, into a temporary one."""
    from medmm.pacs.local import local_data

    return local_data(data, echo=lambda m: click.echo(m, err=True), **kwargs)


def _local_run_data(run_dir: Path, data: Path | str, **kwargs: Any) -> Any:
    """``_local_data`` for a command on a trained run: a table of a run trained with ``data.image_source``
    has its image cells pulled from that source, de-identified, as ``predict`` does."""
    from medmm.pacs.local import local_run_data

    return local_run_data(run_dir, data, echo=lambda m: click.echo(m, err=True), **kwargs)


def _check_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--time-limit``: checked before any work (a demo would build its data first)."""
    from medmm.config.engine import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(f"must be {exc}") from None
    return value


def _check_data(path: Path | str) -> Path | str:
    if isinstance(path, str):
        return path  # a DICOMweb source, validated by DataParam
    if not path.exists():
        raise MedmmError(f"--data path does not exist: {path}")
    if path.is_file() and not os.access(path, os.R_OK):
        raise MedmmError(f"--data file is not readable: {path}")
    return path


class TaskGroupHelp(click.Command):
    """``medmm run --help`` lists the registered tasks (loaded only when help is asked for)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        try:
            rows = [(name, spec.summary) for name, spec in _registry().items("task")]
        except MedmmError as exc:
            rows = [("(plugins failed)", str(exc))]
        with formatter.section("Tasks"):
            formatter.write_dl(rows)


def make_cli() -> click.Group:
    """Build the click application (a factory, so tests get a fresh one)."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="medmm")
    @click.option("--debug", is_flag=True, help="Show full tracebacks (also MEDMM_DEBUG=1).")
    def cli(debug: bool) -> None:
        """Multimodal clinical machine learning: text, DICOM images, tables and their fusion."""
        if debug:
            os.environ["MEDMM_DEBUG"] = "1"

    @cli.command()
    def tasks() -> None:
        """List registered tasks."""
        for name, spec in _registry().items("task"):
            click.echo(f"{name:<16} {spec.modality:<11} {spec.summary}")

    @cli.command()
    @click.argument("pattern", default="*")
    @click.option("--modality", help="Only text, image, tabular, ...")
    def backbones(pattern: str, modality: str | None) -> None:
        """List registered backbones, optionally filtered by a glob PATTERN."""
        reg = _registry()
        for name in reg.names("backbone", pattern):
            comp = reg.get("backbone", name)
            if modality and comp.modality != modality:
                continue
            click.echo(f"{name:<24} {comp.modality:<8} {comp.summary}")

    @cli.command("plugins")
    def plugins_cmd() -> None:
        """List plugins, the hooks they implement, and those that failed to load."""
        for info in plugins().infos:
            status = "disabled" if info.disabled else ("FAILED" if info.error else "ok")
            hooks = ", ".join(info.hooks) or "-"
            click.echo(f"{info.name:<20} {info.dist} {info.version:<10} {status:<8} {hooks}")
            if info.error:
                click.echo(f"    error: {info.error}")

    @cli.command("config")
    @click.argument("task")
    @click.option("--config", "config_file", type=click.Path(path_type=Path), help="User YAML to merge.")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key.")
    @click.option("--schema", is_flag=True, help="Print the JSON Schema of TASK's config instead (for an editor's "
                                                 "YAML extension: completes and checks keys).")
    def config_cmd(task: str, config_file: Path | None, overrides: tuple[str, ...], schema: bool) -> None:
        """Print the fully resolved config of TASK as YAML (recipe / auto values commented)."""
        if schema:
            import json

            from medmm.config import json_schema

            if config_file is not None or overrides:
                raise click.UsageError("--schema takes no --config / --set")
            click.echo(json.dumps(json_schema(_task_spec(task)), indent=2))
            return
        from medmm.recipes import annotated_yaml

        click.echo(annotated_yaml(_resolved_config(_task_spec(task), config_file, overrides)), nl=False)

    @cli.command(cls=TaskGroupHelp)
    @click.argument("task")
    @click.option("--data", "data", required=True, type=DATA,
                  help="Data file or folder, or a DICOMweb source dicomweb+https://host/dicom-web?Modality=CR "
                       "(pulled de-identified; labels from data.labels).")
    @click.option("--config", "config_file", type=click.Path(path_type=Path), help="User YAML to merge.")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
    @click.option("--out", "out", type=click.Path(path_type=Path), help="Run directory (default runs/<task>-<time>).")
    @click.option("--resume", "resume", type=click.Path(path_type=Path), help="Continue the run in this directory.")
    @click.option("--time-limit", "time_limit", metavar="DURATION", callback=_check_duration,
                  help="Wall-clock budget of the whole run (600, 90s, 10m, 1h): planned to fit, stopped at the limit "
                       "with its report written (engine.time_limit).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def run(task: str, data: Path, config_file: Path | None, overrides: tuple[str, ...],
            out: Path | None, resume: Path | None, time_limit: str | None, quiet: bool) -> None:
        """Train and evaluate TASK on --data."""
        from medmm.engine.budget import process_started
        from medmm.runner import run_task

        started = process_started()  # --time-limit counts from the command's start
        overrides = (*overrides, *([f"engine.time_limit={time_limit}"] if time_limit is not None else []))
        spec = _task_spec(task)
        _check_data(data)
        if resume is not None:
            from medmm.runner import resume_config

            cfg = resume_config(resume, spec, overrides)
            out = resume
        else:
            cfg = _resolved_config(spec, config_file, overrides)
        if isinstance(data, str) and spec.modality != "image":
            raise MedmmError(f"a DICOMweb --data source holds images; {task} is a {spec.modality} task")
        data_cfg = getattr(cfg, "data", None)
        labels = getattr(data_cfg, "labels", None)
        image_source = getattr(data_cfg, "image_source", None)  # a table's image column read from a PACS
        if image_source and isinstance(data, str):
            raise MedmmError("data.image_source goes with a table as --data (its image column names the studies)")
        if image_source:
            from medmm.pacs.local import local_table

            opened = local_table(data, data_cfg.image_column, image_source, progress=not quiet,
                                 echo=lambda m: click.echo(m, err=True))
        else:
            opened = _local_data(data, labels=labels, need_labels=hasattr(data_cfg, "labels"), progress=not quiet)
        with opened as local:
            if local.pulled is not None and local.labels is not None:
                data_cfg.labels = str(local.labels)  # rewritten to the pulled files' keyed UIDs
            run_task(spec, cfg, local.path, out, resume=resume is not None, quiet=quiet, started=started)

    @cli.command()
    @click.argument("run_dir", type=click.Path(path_type=Path))
    @click.option("--data", "data", required=True, type=DATA,
                  help="Data to predict: a file, a folder, or a DICOMweb source dicomweb+https://...")
    @click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                  help="Predictions CSV to write (a new file unless --overwrite).")
    @click.option("--overwrite", is_flag=True, help="Replace --out (and its .skipped.csv) if it exists.")
    @click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
    @click.option("--baseline", is_flag=True, help="Use the run's classic baseline instead of its model.")
    @click.option("--cache-dir", "cache_dir", type=click.Path(path_type=Path),
                  help="Keep the pixel/token cache of --data here (default: the run's data.cache_dir if set, "
                       "else a temporary folder removed afterwards; never the run directory).")
    @click.option("--dicom-sr", "dicom_sr", type=click.Path(path_type=Path),
                  help="Also write one DICOM Structured Report per study into this folder (tasks that read DICOM).")
    @click.option("--push", "push", metavar="dicomweb+URL",
                  help="Store the DICOM SR reports on this DICOMweb server (STOW-RS), referencing the source "
                       "studies; credentials from MEDMM_DICOMWEB_* (see docs/dicomweb.md).")
    @click.option("--push-gradcam", "push_gradcam", is_flag=True,
                  help="With --push: also store medmm explain's Grad-CAM overlay of each predicted image "
                       "(identical images once) as a secondary capture in its source study.")
    @click.option("--shard", "shard", metavar="I/N",
                  help="Predict only block I of N (0-based) of the units, in order: the N outputs concatenated "
                       "in shard order equal one process's (see docs/scale.md).")
    def predict(run_dir: Path, data: Path | str, out: Path, overwrite: bool, checkpoint: str, baseline: bool,
                cache_dir: Path | None, dicom_sr: Path | None, push: str | None, shard: str | None,
                push_gradcam: bool = False) -> None:
        """Predict with a trained RUN_DIR (or a `medmm export` folder) on new --data; one CSV row per unit."""
        _check_data(data)
        if push_gradcam and push is None:
            raise MedmmError("--push-gradcam goes with --push dicomweb+https://...")
        if push is None:
            _predict(run_dir, data, out, checkpoint, baseline, cache_dir, dicom_sr, overwrite, shard=shard)
            return
        import tempfile

        from medmm.data.sources.dicomweb import parse_dicomweb
        from medmm.pacs.push import check_target, push_reports

        parse_dicomweb(push)  # a bad target fails before any work
        with _local_data(data) as local, tempfile.TemporaryDirectory(prefix="medmm-sr-") as tmp:
            check_target(push, local.path, pulled=local.pulled)
            sr_dir = dicom_sr if dicom_sr is not None else Path(tmp)
            before = set(sr_dir.glob("*.dcm")) if sr_dir.is_dir() else set()
            _predict(run_dir, local.path, out, checkpoint, baseline, cache_dir, sr_dir, overwrite)
            files = sorted(set(sr_dir.glob("*.dcm")) - before)
            if push_gradcam:  # medmm explain's Grad-CAM overlays, as secondary captures in the source studies
                from medmm.explain.run import explain_run
                from medmm.pacs.push import gradcam_captures

                units = sum(1 for _ in Path(local.path).rglob("*.dcm")) if Path(local.path).is_dir() else 1
                explained = explain_run(run_dir, local.path, Path(tmp) / "explain", registry=_registry(),
                                        limit=max(1, units), method="gradcam", checkpoint=checkpoint, split_name="all")
                files += gradcam_captures(explained, local.path, Path(tmp) / "gradcam", model_name=Path(run_dir).name)
            push_reports(files, push, pulled=local.pulled, echo=click.echo)

    def _predict(run_dir: Path, data: Path | str, out: Path, checkpoint: str, baseline: bool,
                 cache_dir: Path | None, dicom_sr: Path | None, overwrite: bool = False, shard: str | None = None,
                 image_source_done: bool = False) -> None:
        from medmm.deploy.manifest import is_export_dir

        if isinstance(data, str):
            with _local_data(data) as local:
                return _predict(run_dir, local.path, out, checkpoint, baseline, cache_dir, dicom_sr, overwrite, shard)
        from medmm.pacs.local import local_table, run_image_source

        image_source = run_image_source(run_dir) if not image_source_done and Path(data).is_file() else None
        if image_source:  # a run trained with data.image_source: the table's image cells name PACS studies
            with local_table(data, image_source[1], image_source[0], echo=lambda m: click.echo(m, err=True)) as local:
                return _predict(run_dir, local.path, out, checkpoint, baseline, cache_dir, dicom_sr, overwrite, shard,
                                image_source_done=True)
        if shard is not None and is_export_dir(run_dir):
            raise MedmmError("--shard needs the run directory (an export folder predicts every input)")
        if is_export_dir(run_dir):  # an export: onnxruntime, no torch
            from medmm.deploy.runtime import predict_export

            if baseline:
                raise MedmmError("--baseline needs the run directory; an export holds only the model")
            predict_export(run_dir, data, out, dicom_sr=dicom_sr, overwrite=overwrite)
            return
        from medmm.runner import predict_run

        from medmm.data.shards import parse_shard

        predict_run(run_dir, data, out, checkpoint=checkpoint, registry=_registry(), baseline=baseline,
                    cache_dir=cache_dir, overwrite=overwrite, shard=None if shard is None else parse_shard(shard))
        if dicom_sr is not None:
            from medmm.deploy.sr import echo_reports, reports_for_run

            echo_reports(dicom_sr, *reports_for_run(run_dir, out, data, dicom_sr))

    @cli.command()
    @click.argument("task")
    @click.option("--out", "out", type=click.Path(path_type=Path), help="Run directory (default runs/demo-<task>).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
    @click.option("--time-limit", "time_limit", metavar="DURATION", callback=_check_duration,
                  help="Wall-clock budget of the whole run (600, 90s, 10m, 1h): planned to fit, stopped at the limit "
                       "with its report written (engine.time_limit).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def demo(task: str, out: Path | None, overrides: tuple[str, ...], time_limit: str | None, quiet: bool) -> None:
        """Build TASK's bundled demo data inside the run directory and train on it."""
        from medmm.runner import run_demo

        overrides = (*overrides, *([f"engine.time_limit={time_limit}"] if time_limit is not None else []))
        run_demo(_task_spec(task), out, overrides, quiet=quiet)

    @cli.command()
    @click.argument("run_dir", type=click.Path(path_type=Path))
    @click.option("--data", "data", required=True, type=DATA,
                  help="Labelled data: a table or a DICOM folder, read as the run's task reads it; or a DICOMweb "
                       "source with --labels.")
    @click.option("--labels", "dicomweb_labels", type=click.Path(path_type=Path),
                  help="DICOMweb --data: CSV of one label column keyed by StudyInstanceUID / SeriesInstanceUID / "
                       "SOPInstanceUID / AccessionNumber (instances are pulled into one folder per label).")
    @click.option("--out", "out", type=click.Path(path_type=Path),
                  help="Output folder, new or empty (default RUN_DIR/evaluations/<data>-<time>).")
    @click.option("--subgroups", help="Comma-separated subgroup columns (default: the run's data.subgroup_columns).")
    @click.option("--site", help="Site label recorded in the report and the model card.")
    @click.option("--date-column", help="Column whose date range is recorded as provenance.")
    @click.option("--recalibrate", type=click.Choice(["temperature", "isotonic", "conformal"]),
                  help="Fit a recalibration (probabilities: temperature / isotonic; prediction sets: conformal, "
                       "plus a covariate-shift-weighted check when the shift check fires) on part of the data; "
                       "writes a new run dir under --out.")
    @click.option("--calibration-fraction", type=float, default=0.5, show_default=True,
                  help="Share of the units the recalibration is fitted on (the rest checks it).")
    @click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
    @click.option("--no-card", is_flag=True, help="Do not append a Validation entry to the run's model card.")
    @click.option("--overwrite", is_flag=True, help="Replace an earlier evaluation in --out (nothing else is replaced).")
    @click.option("--membership-audit", is_flag=True,
                  help="Also run the membership-inference audit: the run's own train vs test units (its training data).")
    def evaluate(run_dir: Path, data: Path, out: Path | None, subgroups: str | None, site: str | None,
                 date_column: str | None, recalibrate: str | None, calibration_fraction: float, checkpoint: str,
                 no_card: bool, membership_audit: bool, overwrite: bool, dicomweb_labels: Path | None = None) -> None:
        """Validate a trained RUN_DIR on new labelled --data: metrics, operating point, subgroups, shift."""
        from medmm.evaluation.external import evaluate_run

        _check_data(data)
        if dicomweb_labels is not None and not isinstance(data, str):
            raise MedmmError("--labels goes with a DICOMweb --data (a folder's labels are its sub-folder names)")
        if isinstance(data, str) and dicomweb_labels is None:
            raise MedmmError("a DICOMweb --data needs --labels (CSV keyed by StudyInstanceUID / ... / AccessionNumber)")
        columns = None if subgroups is None else [c.strip() for c in subgroups.split(",") if c.strip()]
        with _local_run_data(run_dir, data, labels=dicomweb_labels, layout="label") as local:
            evaluate_run(run_dir, local.path, registry=_registry(), out=out, subgroups=columns, site=site,
                         date_column=date_column, recalibrate=recalibrate, calibration_fraction=calibration_fraction,
                         checkpoint=checkpoint, card=not no_card, overwrite=overwrite)
        if membership_audit:
            from medmm.privacy.membership import audit_command

            audit_command(run_dir, checkpoint=checkpoint, registry=_registry())

    @cli.command()
    @click.argument("run_dir", type=click.Path(path_type=Path))
    @click.option("--tripod-ai", "tripod_ai", is_flag=True, required=True,
                  help="The TRIPOD+AI checklist filled from the run, each item citing its artefact (Markdown + JSON).")
    @click.option("--out", "out", type=click.Path(path_type=Path),
                  help="Output folder, new or empty (default RUN_DIR/tripod-ai).")
    def report(run_dir: Path, tripod_ai: bool, out: Path | None) -> None:
        """Reporting-guideline documents of a finished RUN_DIR (--tripod-ai)."""
        from medmm.evaluation.tripod import SUPPLY, write_tripod_ai

        if not tripod_ai:
            raise click.UsageError("name the document: --tripod-ai")
        import json

        md, js = write_tripod_ai(run_dir, out)
        counts = json.loads(js.read_text())["counts"]
        click.echo(f"medmm report: TRIPOD+AI checklist, {counts.get('filled', 0)} items filled from the run, "
                   f"{counts.get('partly', 0)} partly, {counts.get(SUPPLY, 0)} {SUPPLY}\n  {md}\n  {js}")

    @cli.command()
    @click.argument("run_dir", type=click.Path(path_type=Path))
    @click.option("--data", "data", required=True, type=DATA,
                  help="Data to explain, read as the run's task reads it for predict (or a DICOMweb source).")
    @click.option("--out", "out", type=click.Path(path_type=Path),
                  help="Output folder, new or empty (default RUN_DIR/explain-<time>).")
    @click.option("--limit", type=int, default=20, show_default=True, help="Units (rows, studies, documents) explained.")
    @click.option("--method", type=click.Choice(["auto", "ig", "gradcam", "occlusion", "shap"]), default="auto",
                  show_default=True, help="auto: IG for text and tables, Grad-CAM for images, masking for modalities.")
    @click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
    @click.option("--split", "split_name", type=click.Choice(["test", "val", "train", "all"]), default=None,
                  help="Units of the run's split to explain (its splits.csv). Default: the held-out test units when "
                       "--data is the run's own data, else all.")
    def explain(run_dir: Path, data: Path, out: Path | None, limit: int, method: str, checkpoint: str,
                split_name: str | None) -> None:
        """Explain a trained RUN_DIR's predictions on --data, with faithfulness checks."""
        from medmm.explain.run import explain_run

        _check_data(data)
        with _local_run_data(run_dir, data) as local:
            explain_run(run_dir, local.path, out, registry=_registry(), limit=limit, method=method,
                        checkpoint=checkpoint, split_name=split_name)

    @cli.command()
    @click.argument("input_path", metavar="INPUT", type=DATA)
    @click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                  help="New or empty folder (DICOM input) or new CSV file (notes input). A DICOMweb INPUT "
                       "(dicomweb+https://...) is `medmm pull`: see its --help.")
    @click.option("--key-file", type=click.Path(path_type=Path),
                  help="HMAC key (must exist unless --create-key; default ~/.config/medmm/deid.key).")
    @click.option("--create-key", is_flag=True, help="Create --key-file (0600) if it does not exist.")
    @click.option("--labels", type=click.Path(path_type=Path),
                  help="Labels CSV to pseudonymise alongside (DICOM input).")
    @click.option("--id-column", help="Patient id column of --labels or of the notes CSV.")
    @click.option("--text-column", help="Notes CSV: the free-text column to scrub.")
    @click.option("--name-columns", default="",
                  help="Notes CSV: comma-separated name columns (used, then dropped).")
    @click.option("--names-file", type=click.Path(path_type=Path), help="Names to remove, one per line.")
    @click.option("--drop-columns", default="", help="Notes CSV: comma-separated columns not to copy.")
    @_deid_profile_options
    @click.option("--pixels", type=click.Choice(["blank", "skip", "keep", "scan-all"]), default="blank",
                  show_default=True, help="Burned-in text (OCR) in US / SC / XA / ES / OT... files: blank it, skip "
                                          "files with text, keep pixels unscanned, or blank in every file.")
    @click.option("--skipped-report", type=click.Path(path_type=Path),
                  help="New CSV outside --out listing skipped files by their real names (inside --out they "
                       "are keyed tokens).")
    def deid(input_path: Path, out: Path, key_file: Path | None, create_key: bool, labels: Path | None,
             id_column: str | None, text_column: str | None, name_columns: str, names_file: Path | None,
             drop_columns: str, retain_dates: bool | None, retain_device_identity: bool | None,
             clean_descriptors: bool | None, config_file: Path | None, pixels: str = "blank",
             skipped_report: Path | None = None) -> None:
        """De-identify a DICOM folder (PS3.15 Basic profile) or a notes CSV into --out, then verify it."""
        from medmm.deid import deidentify

        if isinstance(input_path, str):  # a DICOMweb source: the same as `medmm pull`
            if text_column or name_columns or names_file or drop_columns:
                raise MedmmError("--text-column / --name-columns / --names-file / --drop-columns are for a notes "
                                 "CSV, not a DICOMweb source")
            from medmm.pacs.cli import pull_command

            if skipped_report is not None:
                raise MedmmError("--skipped-report is for a DICOM folder; a pull lists skipped instances by "
                                 "keyed UID in --out/skipped.csv")
            pull_command(input_path, out, key_file=key_file, create_key=create_key, labels=labels,
                         id_column=id_column, config=config_file, retain_dates=retain_dates,
                         retain_device_identity=retain_device_identity, clean_descriptors=clean_descriptors,
                         pixels=pixels, echo=click.echo)
            return

        deidentify(input_path, out, key_file=key_file, create_key=create_key, config=config_file,
                   retain_dates=retain_dates, retain_device_identity=retain_device_identity,
                   clean_descriptors=clean_descriptors, labels=labels, id_column=id_column,
                   text_column=text_column, name_columns=_csv_list(name_columns), names_file=names_file,
                   drop_columns=_csv_list(drop_columns), echo=click.echo, pixels=pixels, skipped_report=skipped_report)

    @cli.command()
    @click.argument("source", metavar="dicomweb+URL")
    @click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                  help="New or empty folder, or an earlier pull's folder (fetches only what is missing).")
    @click.option("--key-file", type=click.Path(path_type=Path),
                  help="HMAC key (must exist unless --create-key; default ~/.config/medmm/deid.key).")
    @click.option("--create-key", is_flag=True, help="Create --key-file (0600) if it does not exist.")
    @click.option("--labels", type=click.Path(path_type=Path),
                  help="Labels CSV keyed by SOPInstanceUID / SeriesInstanceUID / StudyInstanceUID / AccessionNumber; "
                       "rewritten to the pulled files' keyed UIDs.")
    @click.option("--label-attribute", metavar="KEYWORD",
                  help="Write labels.csv from this study attribute instead (read before de-identification).")
    @click.option("--id-column", help="Patient id column of --labels (becomes the keyed pseudonym).")
    @click.option("--layout", type=click.Choice(["uid", "label"]), default="uid", show_default=True,
                  help="uid: STUDY/SERIES/INSTANCE.dcm (keyed UIDs); label: LABEL/STUDY/... (one label column: the "
                       "folder readers take the class from the sub-folder).")
    @click.option("--identified", is_flag=True, help="Do not de-identify (files hold PHI; for protected storage).")
    @click.option("--workers", type=int, default=4, show_default=True, help="Parallel connections.")
    @click.option("--retries", type=int, default=4, show_default=True,
                  help="Tries after the first, with backoff, on timeouts / 429 / 5xx.")
    @click.option("--limit", type=int, help="At most this many instances (a trial pull).")
    @click.option("--token-file", type=click.Path(path_type=Path), help="Bearer token file (or MEDMM_DICOMWEB_TOKEN_FILE).")
    @click.option("--user", help="Basic auth user (or MEDMM_DICOMWEB_USER); password from --password-file.")
    @click.option("--password-file", type=click.Path(path_type=Path),
                  help="Basic auth password file (or MEDMM_DICOMWEB_PASSWORD_FILE).")
    @click.option("--ca-bundle", type=click.Path(path_type=Path),
                  help="CA certificates to verify the server with (or MEDMM_DICOMWEB_CA_BUNDLE).")
    @_deid_profile_options
    @click.option("--pixels", type=click.Choice(["blank", "skip", "keep", "scan-all"]), default="blank",
                  show_default=True, help="Burned-in text (OCR), as medmm deid: blank it, skip instances with text, "
                                          "keep pixels unscanned, or blank in every instance.")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    def pull(source: str, out: Path, key_file: Path | None, create_key: bool, labels: Path | None,
             label_attribute: str | None, id_column: str | None, layout: str, identified: bool, workers: int,
             retries: int,
             limit: int | None, token_file: Path | None, user: str | None, password_file: Path | None,
             ca_bundle: Path | None, retain_dates: bool | None, retain_device_identity: bool | None,
             clean_descriptors: bool | None, config_file: Path | None, pixels: str, quiet: bool) -> None:
        """Retrieve DICOM instances from a PACS over DICOMweb into --out, de-identified in memory (QIDO-RS +
        WADO-RS; resumable; failures listed in skipped.csv)."""
        from medmm.pacs.cli import pull_command

        pull_command(source, out, key_file=key_file, create_key=create_key, identified=identified, labels=labels,
                     label_attribute=label_attribute, id_column=id_column, config=config_file,
                     retain_dates=retain_dates, retain_device_identity=retain_device_identity,
                     clean_descriptors=clean_descriptors, workers=workers, retries=retries, limit=limit,
                     token_file=token_file, user=user, password_file=password_file, ca_bundle=ca_bundle,
                     pixels=pixels, layout=layout, quiet=quiet, echo=click.echo)

    @cli.command("export")
    @click.argument("run_dir", type=click.Path(path_type=Path))
    @click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
    @click.option("--out", "out", type=click.Path(path_type=Path), help="New or empty folder (default RUN_DIR/export).")
    @click.option("--data", "data", type=click.Path(path_type=Path),
                  help="Data to check parity on (default: a sample of the run's test split).")
    @click.option("--quantize", is_flag=True, help="Also write a dynamic int8 model; reports its parity and speed.")
    @click.option("--opset", type=int, default=18, show_default=True)
    @click.option("--sample", type=int, default=256, show_default=True, help="Test units checked for parity.")
    @click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto",
                  show_default=True, help="torch.onnx exporter (auto: dynamo, else the TorchScript one).")
    @click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
    def export_cmd(run_dir: Path, fmt: str, out: Path | None, data: Path | None, quantize: bool, opset: int,
                   sample: int, exporter: str, checkpoint: str) -> None:
        """Export a trained RUN_DIR for deployment (ONNX + preprocessing + manifest), parity-checked."""
        from medmm.deploy.export import export_run

        if data is not None:
            _check_data(data)
        export_run(run_dir, out, registry=_registry(), data=data, quantize=quantize, opset=opset, sample=sample,
                   exporter=exporter, checkpoint=checkpoint)

    @cli.command()
    @click.argument("source", type=click.Path(path_type=Path))
    @click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0 = every one).")
    @click.option("--port", type=int, default=8000, show_default=True)
    @click.option("--max-body-mb", type=float, default=32.0, show_default=True, help="Larger requests get 413.")
    @click.option("--max-rows", type=int, default=1000, show_default=True, help="Rows per JSON request.")
    @click.option("--threads", type=int, default=0, help="onnxruntime threads (0 = its default).")
    @click.option("--quantized", is_flag=True, help="Serve the export's int8 model.")
    def serve(source: Path, host: str, port: int, max_body_mb: float, max_rows: int, threads: int,
              quantized: bool) -> None:
        """Serve an export folder (or a run, exported on the fly) over HTTP: /predict, /health, /model."""
        from medmm.deploy.service import serve_source

        serve_source(source, host=host, port=port, max_body=int(max_body_mb * 1024 * 1024), max_rows=max_rows,
                     threads=threads, quantized=quantized, registry=_registry)

    _add_plugin_commands(cli)
    return cli


def _add_plugin_commands(cli: click.Group) -> None:
    """Let plugins add commands; only when a command name is not a built-in one."""
    builtin = set(cli.commands)
    argv = sys.argv[1:]
    wanted = next((a for a in argv if not a.startswith("-")), None)
    if wanted in builtin:
        return  # do not load plugins for built-in commands that do not need them
    from medmm.plugins import user_interrupts

    with user_interrupts() as ctrl_c:
        try:
            plugins().pm.hook.register_commands(cli=cli)
        except MedmmError:
            raise
        except BaseException as exc:  # a plugin's command hook (even sys.exit, KeyboardInterrupt) must not kill the CLI
            if ctrl_c and isinstance(exc, KeyboardInterrupt):  # the user's own Ctrl-C
                raise
            click.echo(f"medmm: warning: a plugin's register_commands failed: {type(exc).__name__}: {exc}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors are one line on stderr and exit code 2."""
    debug = os.environ.get("MEDMM_DEBUG", "").lower() in {"1", "true", "yes"} or "--debug" in (argv or sys.argv)
    from medmm.runlog import guard_root_logger

    guard_root_logger()  # before any library import: opacus' logging.basicConfig() would double every line
    try:
        cli = make_cli()
        cli.main(args=argv, prog_name="medmm", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort as exc:
        stop = exc.__cause__
        if isinstance(stop, KeyboardInterrupt) and hasattr(stop, "signum"):  # medmm.engine.interrupt.Interrupted
            click.echo(f"medmm: {stop}", err=True)
            return 128 + int(stop.signum)
        click.echo("medmm: aborted", err=True)
        return 130
    except MedmmError as exc:
        if debug:
            raise
        click.echo(f"medmm: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("medmm: interrupted", err=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
