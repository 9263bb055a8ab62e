"""``check_task``: the conformance kit a task plugin runs in its own tests.

In the spirit of scikit-learn's ``check_estimator``: given a registered task's name and a tiny
data builder, it takes the task through everything medmm does with a built-in task and reports
each check::

    from medmm import check_task

    def tiny(folder):                      # -> data path, or (data path, --set overrides)
        ...write 60 rows to folder / "rows.csv"...
        return folder / "rows.csv", ["data.time=time", "data.event=event"]

    def test_my_task_honours_the_contract(tmp_path):
        report = check_task("my-task", tiny, tmp_path, overrides=["engine.epochs=2"])
        assert report.ok, report

The checks, in order (a failed check is reported with its reason; later checks that need its
output are reported as skipped):

``run``       ``medmm run``: the run finishes (``run.json`` done) with predictions, report and card;
``resume``    a second run is killed (SIGKILL, in a child process) right after its first checkpoint
              and resumed: its final weights and test metrics equal the uninterrupted run's;
``predict``   ``medmm predict RUN_DIR``: one finite score per unit of the data;
``evaluate``  ``medmm evaluate``: metrics on the labelled data, written to ``evaluation.json``;
``explain``   ``medmm explain``: deleting the top-attributed items moves predictions more than
              deleting random ones (faithfulness beats random) for at least one input, and no
              less for any (an input the model ignores ties);
``export``    ``medmm export``: ONNX parity <= 1e-4, then ``medmm predict EXPORT_DIR`` in a process
              where torch cannot be imported gives the torch path's scores (<= 1e-4);
``serve``     the FastAPI app of ``medmm serve`` answers one ``POST /predict`` (rows or DICOM files);
``bad-input`` a malformed input and a bad ``--set`` fail with one-line medmm errors; the data
              error does not repeat the data's values, the config error names the key.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmm.errors import MedmmError

CHECKS = ("run", "resume", "predict", "evaluate", "explain", "export", "serve", "bad-input")
TOLERANCE = 1e-4
SECRET = "zz-planted-value-7731"  # written into the bad input; no error may repeat it
_BASE = ("engine.device=cpu", "engine.precision=fp32", "engine.bootstrap=0", "engine.min_steps=0",
         "engine.num_workers=0")
_KILL_AT = "engine.checkpoint_every_steps=1"  # the killed child only: a checkpoint after its first step


@dataclass
class Check:
    """One check's outcome: ``ok`` True / False, or None when skipped."""

    name: str
    ok: bool | None
    detail: str = ""
    seconds: float = 0.0  # wall time of the check (0 when skipped)

    def __str__(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[self.ok]
        took = f" [{self.seconds:.0f} s]" if self.seconds >= 0.5 else ""
        return f"{mark}  {self.name:<10} {self.detail}{took}"


@dataclass
class CheckReport:
    """Every check of one task; ``ok`` when none failed (skipped checks are named as such)."""

    task: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def __getitem__(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def __str__(self) -> str:
        return "\n".join([f"check_task {self.task}: {'passed' if self.ok else 'FAILED'}", *map(str, self.checks)])


class _Skip(Exception):
    """A check that does not apply to this task (reported as skipped, with the reason)."""


def check_task(task_name: str, build_data: Callable[[Path], Any], workdir: str | Path, *,
               overrides: Sequence[str] = (), checks: Sequence[str] = CHECKS, registry: Any = None,
               env: dict[str, str] | None = None, exporter: str = "auto") -> CheckReport:
    """Run the conformance checks of task ``task_name`` in ``workdir`` (a new or empty folder).

    ``build_data(folder)`` writes a tiny labelled data set into ``folder`` and returns its path, or
    ``(path, overrides)`` (``--set`` items the data needs); ``overrides`` are added after those
    (keep training to a few steps). ``env``: extra environment of the child processes (e.g.
    ``PYTHONPATH`` of a plugin that is not installed). ``exporter``: ``medmm export --exporter``
    (``torchscript`` is the quicker one in tests). Returns the report; nothing raises for a
    failed check.
    """
    from medmm.plugins import get_registry

    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise MedmmError(f"check_task: unknown check(s) {unknown}; known: {', '.join(CHECKS)}")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    registry = registry if registry is not None else get_registry()
    spec = registry.get("task", task_name)
    built = build_data(work / "data")
    data, extra = (built if isinstance(built, tuple) else (built, []))
    ctx = _Context(spec, registry, Path(data), [*_BASE, *extra, *overrides], work, dict(env or {}), exporter)
    report = CheckReport(task_name)
    needs = {"resume": "run", "predict": "run", "evaluate": "run", "explain": "run", "export": "run",
             "serve": "export", "bad-input": "run"}
    for name in CHECKS:
        if name not in checks:
            continue
        dep = needs.get(name)
        if dep is not None and not ctx.passed.get(dep):
            report.checks.append(Check(name, None, f"needs the {dep} check"))
            continue
        started = time.perf_counter()
        try:
            detail = getattr(ctx, name.replace("-", "_"))()
            ctx.passed[name] = True
            report.checks.append(Check(name, True, detail, time.perf_counter() - started))
        except _Skip as exc:
            report.checks.append(Check(name, None, str(exc), time.perf_counter() - started))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, with where it happened
            where = traceback.extract_tb(exc.__traceback__)[-1]
            report.checks.append(Check(name, False, f"{type(exc).__name__}: {str(exc).strip()[:400]} "
                                                    f"({Path(where.filename).name}:{where.lineno})",
                                       time.perf_counter() - started))
    return report


class _Context:
    """State shared by the checks of one task (the trained run, its export)."""

    def __init__(self, spec: Any, registry: Any, data: Path, overrides: list[str], work: Path,
                 env: dict[str, str], exporter: str) -> None:
        self.spec, self.registry, self.data, self.overrides, self.work = spec, registry, data, overrides, work
        self.exporter = exporter
        self.env = {**os.environ, **env}
        self.run_dir, self.export_dir = work / "run", work / "export"
        self.passed: dict[str, bool] = {}

    def _config(self) -> Any:
        from medmm.runner import resolved_config

        return resolved_config(self.spec, None, self.overrides)

    # ------------------------------------------------------------------------------ checks
    def run(self) -> str:
        from medmm.rundir import read_info
        from medmm.runner import run_task

        summary = _quiet_call(run_task, self.spec, self._config(), self.data, self.run_dir, quiet=True)
        missing = [f for f in ("predictions.csv", "report.html", "model_card.md", "checkpoints/best",
                               "config.yaml", "artifacts") if not (self.run_dir / f).exists()]
        assert not missing, f"the run wrote no {missing}"
        assert read_info(self.run_dir).get("status") == "done", "run.json does not say done"
        metrics = summary.get("metrics") or {}
        return f"{summary.get('split')} split: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                             if isinstance(v, float))

    def resume(self) -> str:
        """Kill a second run after its first checkpoint (SIGKILL in a child), resume it here."""
        from medmm.runner import resume_config, run_task

        killed = self.work / "killed"
        code = ("import os, signal, sys\n"
                "from pathlib import Path\n"
                "from medmm.plugins import get_registry\n"
                "from medmm.registry import Component\n"
                "from medmm.runner import resolved_config, run_task\n"
                "class Kill:\n"
                "    def on_checkpoint(self, trainer, path, kind):\n"
                "        os.kill(os.getpid(), signal.SIGKILL)\n"
                "reg = get_registry()\n"
                "reg.add('callback', Component('check-task-kill', lambda cfg, run_dir: Kill()), owner='check_task')\n"
                "spec = reg.get('task', sys.argv[1])\n"
                "run_task(spec, resolved_config(spec, None, sys.argv[4:]), Path(sys.argv[2]), Path(sys.argv[3]), "
                "quiet=True)\n")
        proc = subprocess.run([sys.executable, "-c", code, self.spec.name, str(self.data), str(killed),
                               *self.overrides, _KILL_AT], capture_output=True, text=True, env=self.env, timeout=1800,
                              check=False)
        assert proc.returncode == -9, (f"the child was not killed at its first checkpoint (exit {proc.returncode}): "
                                       f"{proc.stderr.strip()[-300:]}")
        # resumed with the uninterrupted run's checkpoint cadence: a checkpoint every step only where it was killed
        cadence = f"engine.checkpoint_every_steps={self._config().engine.checkpoint_every_steps}"
        _quiet_call(run_task, self.spec, resume_config(killed, self.spec, [cadence]), self.data, killed, resume=True,
                    quiet=True)
        worst = _weights_diff(self.run_dir / "checkpoints" / "last", killed / "checkpoints" / "last")
        assert worst == 0.0, f"resumed weights differ from the uninterrupted run's (max |delta| {worst:.3g})"
        a = json.loads((self.run_dir / "summary.json").read_text())["metrics"]
        b = json.loads((killed / "summary.json").read_text())["metrics"]
        assert _same(a, b), f"resumed test metrics {b} differ from the uninterrupted run's {a}"
        return "killed after the first checkpoint; resumed weights and test metrics equal the uninterrupted run's"

    def predict(self) -> str:
        import numpy as np

        from medmm.runner import predict_run

        out = self.work / "predict" / "predictions.csv"
        _quiet_call(predict_run, self.run_dir, self.data, out, registry=self.registry)
        header, rows = _read_csv(out)
        scores = _score_columns(header)
        assert rows and scores, f"{out} holds no scored row"
        values = np.asarray([[float(r[c]) for c in scores] for r in rows])
        assert np.isfinite(values).all(), "a predicted score is not finite"
        self.torch_predictions = out
        return f"{len(rows)} units, columns {', '.join(scores)}"

    def evaluate(self) -> str:
        from medmm.evaluation.external import evaluate_run

        out = self.work / "evaluate"
        result = _quiet_call(evaluate_run, self.run_dir, self.data, registry=self.registry, out=out, card=False,
                             echo=False)
        metrics = {k: v for k, v in (result.get("metrics") or {}).items() if isinstance(v, float)}
        assert metrics and (out / "evaluation.json").is_file(), "no metrics written"
        return ", ".join(f"{k} {v:.3f}" for k, v in list(metrics.items())[:4])

    def explain(self) -> str:
        from medmm.explain.run import explain_run

        out = _quiet_call(explain_run, self.run_dir, self.data, self.work / "explain", registry=self.registry,
                          limit=12)
        faith = json.loads((Path(out) / "summary.json").read_text())["faithfulness"]
        assert faith, "no explanation set"
        parts, beats = [], 0
        for name, f in faith.items():
            top, rand = f.get("deletion_top"), f.get("deletion_random")
            assert top is not None and rand is not None, (  # explain's own reason (e.g. a one-cell Grad-CAM map)
                f"{name}: no deletion figures: {f.get('deletion_verdict') or 'none computed'}")
            # an input the model ignores (e.g. an uninformative modality) moves nothing either way: a tie
            # passes; an input whose top items move the output less than random ones does not
            assert top >= rand, (f"{name}: deleting the top-attributed items moves the output by {top:.4g}, less "
                                 f"than deleting random ones ({rand:.4g})")
            beats += top > rand
            parts.append(f"{name} ({f['method']}): top-k deletion {top:.3g} {'>' if top > rand else '='} "
                         f"random {rand:.3g}")
        assert beats, "no input's top-attributed items move the output more than random ones"
        return "; ".join(parts)

    def export(self) -> str:
        import numpy as np

        from medmm.deploy.export import export_run

        try:
            from medmm.deploy.runtime import runtime_reader

            runtime_reader(self.spec)
        except MedmmError as exc:
            raise _Skip(f"not exportable: {exc}") from None
        _quiet_call(export_run, self.run_dir, self.export_dir, registry=self.registry, quiet=True,
                    exporter=self.exporter)
        manifest = json.loads((self.export_dir / "manifest.json").read_text())
        diff = manifest["parity"]["max_abs_diff"]
        assert diff <= TOLERANCE, f"parity {diff} > {TOLERANCE}"
        out = self.work / "predict-export.csv"
        proc = subprocess.run([sys.executable, "-c", _NO_TORCH, "predict", str(self.export_dir), "--data",
                               str(self.data), "--out", str(out)], capture_output=True, text=True, env=self.env,
                              timeout=600, check=False)
        assert proc.returncode == 0, f"torch-free predict failed: {proc.stderr.strip()[-400:]}"
        ha, a = _read_csv(self.torch_predictions) if hasattr(self, "torch_predictions") else _read_csv(
            self.run_dir / "predictions.csv")
        hb, b = _read_csv(out)
        cols = _score_columns(ha)
        assert [r["id"] for r in a] == [r["id"] for r in b], "the torch-free predictor scored other units"
        worst = float(np.max(np.abs(np.asarray([[float(r[c]) for c in cols] for r in a]) -
                                    np.asarray([[float(r[c]) for c in cols] for r in b])))) if a else 0.0
        assert worst <= TOLERANCE, f"torch-free predictions differ from torch's by {worst:.3g} > {TOLERANCE}"
        return (f"parity {diff:.1e} ({manifest['parity']['units']} units); torch-free predict of {len(b)} units "
                f"within {worst:.1e} of torch")

    def serve(self) -> str:
        from fastapi.testclient import TestClient

        from medmm.deploy.runtime import ExportedModel
        from medmm.deploy.service import create_app

        model = ExportedModel(self.export_dir)
        if model.inputs.accepts not in ("rows", "dicom"):
            raise _Skip(f"a {self.spec.name} export predicts a table file (accepts={model.inputs.accepts!r}); "
                        "medmm serve refuses it by design")
        client = TestClient(create_app(model))
        if model.inputs.accepts == "rows":
            from medmm.data.readers import read_table

            df = read_table(self.data).head(3)
            rows = json.loads(df.to_json(orient="records", force_ascii=False))
            resp = client.post("/predict", json={"rows": rows})
        else:
            files = sorted(p for p in self.data.rglob("*") if p.is_file())[:1]
            resp = client.post("/predict", files=[("files", (f.name, f.read_bytes(), "application/dicom"))
                                                  for f in files])
        assert resp.status_code == 200, f"POST /predict answered {resp.status_code}: {resp.text[:300]}"
        preds = resp.json()["predictions"]
        assert preds, "POST /predict returned no prediction"
        return f"POST /predict -> 200, {len(preds)} prediction(s)"

    def bad_input(self) -> str:
        from medmm.errors import ConfigError
        from medmm.runner import predict_run, resolved_config

        bad = self.work / "bad-input"
        bad.mkdir(exist_ok=True)
        if self.data.is_dir():
            target = bad / "folder"
            target.mkdir(exist_ok=True)
            (target / "note.dcm").write_text(f"not DICOM {SECRET}\n")
        else:
            target = bad / f"bad{self.data.suffix or '.csv'}"
            target.write_text(f"unrelated_column\n{SECRET}\n")
        messages = []
        for what, call in (("malformed data", lambda: predict_run(self.run_dir, target, bad / "p.csv",
                                                                   registry=self.registry)),
                           ("bad --set", lambda: resolved_config(self.spec, None,
                                                                 [*self.overrides, f"engine.lr={SECRET}"]))):
            try:
                _quiet_call(call)
            except MedmmError as exc:
                text = str(exc)
                assert "\n" not in text.strip(), f"{what}: the error is more than one line"
                if what == "bad --set":  # the user's own --set value may be quoted back; the key must be named
                    assert isinstance(exc, ConfigError), f"{what}: {type(exc).__name__}, not a ConfigError"
                    assert "engine.lr" in text, f"{what}: the error does not name the key"
                else:  # data: a cell's value is never repeated (it may be patient data)
                    assert SECRET not in text, f"{what}: the error repeats a value of the data"
                messages.append(f"{what}: {text.strip()[:90]}")
            else:
                raise AssertionError(f"{what} was accepted")
        return "; ".join(messages)


# ---------------------------------------------------------------------------------- helpers
_NO_TORCH = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "timm", "torchvision"}:
            raise ImportError(name + " is hidden by check_task")
        return None
sys.meta_path.insert(0, _Hide())
from medmm.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "timm", "torchvision"})
assert not leaked, leaked
sys.exit(code)
"""


def _quiet_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with its console output swallowed (click.echo to stdout / stderr)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    import csv

    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _score_columns(header: Sequence[str]) -> list[str]:
    return [c for c in header if c.startswith("prob_") or c in ("prediction", "risk")]


def _weights_diff(a: Path, b: Path) -> float:
    """Largest |difference| between the tensors of two checkpoints (inf when their keys differ)."""
    import numpy as np
    from safetensors.numpy import load_file

    worst = 0.0
    files = sorted(p.name for p in a.glob("*.safetensors"))
    if files != sorted(p.name for p in b.glob("*.safetensors")) or not files:
        return math.inf
    for name in files:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        if x.keys() != y.keys():
            return math.inf
        for k in x:
            if x[k].shape != y[k].shape:
                return math.inf
            if x[k].size:
                worst = max(worst, float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)))))
    return worst


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True
