"""Shared fixtures: offline environment, fake plugin distributions, running the CLI."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run ``medmm`` in a fresh process, as a user would."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "medmm", *args], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=timeout)


# Python's own warning filters in a fresh process (pytest's differ), so a command run in this process
# shows the warnings a user would see, each time (entering catch_warnings resets the "shown once" memory).
_FRESH_PROCESS_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                          ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                          ("ignore", ResourceWarning, None)]


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``medmm`` in this process: what ``run_cli`` returns (exit code, stdout, stderr), without
    paying Python's start and the torch / torchvision / sklearn imports again (seconds per command).

    For tests about a command's outputs, not about the process: environment variables, plugins
    installed for the test, signals and interpreter start still need ``run_cli``; ``env`` is added
    to the environment for the command only. The loggers start
    without handlers and Python's warning filters are a new process's, so the console shows what a
    user's would; process-wide state a command leaves behind (the run log's file handler, captured
    warnings, ``MEDMM_DEBUG``, the working directory) is put back, as a process exit would.
    """
    from click.testing import CliRunner

    from medmm.cli import main

    loggers = [logging.getLogger(n) for n in ("", "medmm", "py.warnings")]
    kept = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    environ, here = dict(os.environ), Path.cwd()
    try:
        with CliRunner().isolation() as (out, err, _), warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_FRESH_PROCESS_FILTERS):
                warnings.filterwarnings(action, category=category, module=module or "")
            for lg in loggers:  # as in a new process: no handler yet (medmm adds its own)
                lg.handlers[:] = []
            if cwd is not None:
                os.chdir(cwd)
            os.environ.update(env or {})
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001 - as an uncaught exception ends a process: traceback, exit 1
                sys.stderr.write(traceback.format_exc())
                code = 1
            finally:
                logging.captureWarnings(False)
                sys.stdout.flush()
                sys.stderr.flush()
            stdout, stderr = out.getvalue(), err.getvalue()
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environ)
        for lg, handlers, level, propagate in kept:
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
    return subprocess.CompletedProcess(["medmm", *map(str, args)], code, stdout.decode("utf-8", "replace"),
                                       stderr.decode("utf-8", "replace"))


@pytest.fixture
def fake_plugin(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Write an installed-looking distribution with one ``medmm`` entry point; returns its env."""
    site = tmp_path / "site"

    def make(name: str, source: str, dist: str | None = None) -> dict[str, str]:
        dist = dist or f"medmm-{name}"
        site.mkdir(exist_ok=True)
        (site / f"{name}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[medmm]\n{name} = {name}\n")
        return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    return make


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """examples/medmm-example-plugin pip-installed as a user would, once per session (tests only read
    it): the ``--target`` site folder and the copy it was built from (its own tests live there)."""
    root = tmp_path_factory.mktemp("example_plugin")
    target, source = root / "site", root / "medmm-example-plugin"
    # build from a copy: setuptools writes build/ and *.egg-info into the folder it builds
    shutil.copytree(ROOT / "examples" / "medmm-example-plugin", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                          "--target", str(target), str(source)], capture_output=True, text=True, timeout=600,
                         check=False)
    assert pip.returncode == 0, pip.stderr
    return target, source
