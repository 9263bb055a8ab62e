"""Shared fixtures: offline environment, fake plugin distributions, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
