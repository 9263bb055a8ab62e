"""The README and the documentation site: every shell example is classified, and run.

A fenced ``bash`` / ``sh`` / ``shell`` / ``console`` block in README.md or docs/ must sit under a
marker on the line before it:

* ``<!-- doctest -->`` — run by this test, in order with the page's other marked blocks, in one
  temporary folder per page (``bash -euo pipefail``; a failing command fails the test);
* ``<!-- not-run: REASON -->`` — shown only (it needs a PACS, a GPU, your own data, ...).

Illustrative command lines with placeholders (``/pacs-export/``, ``RUN_DIR``) are ``text`` blocks.
A page whose blocks train a model is run in the slow tier.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"^<!--\s*(doctest|not-run:\s*\S.*?)\s*-->$")
FENCE = re.compile(r"^```\s*([\w+-]*)")
TRAINS = re.compile(r"\bmedmm\s+(run|demo)\b")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    marker: str | None
    code: str


def doc_pages() -> list[Path]:
    """README.md and every Markdown page of the site."""
    pages = [ROOT / "README.md"]
    pages += sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)
    return pages


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one page, with the marker line above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mm = MARKER.match(prev)
        out.append(Block(str(path.relative_to(ROOT)), start + 1, lang, mm.group(1) if mm else None,
                         "\n".join(lines[start + 1:j])))
        i = j + 1
    return out


def runnable_pages() -> list[tuple[str, list[Block]]]:
    pages = []
    for path in doc_pages():
        marked = [b for b in blocks(path) if b.marker == "doctest"]
        if marked:
            pages.append((str(path.relative_to(ROOT)), marked))
    return pages


def test_every_shell_example_is_marked() -> None:
    unmarked = [f"{b.page}:{b.line}" for p in doc_pages() for b in blocks(p)
                if b.lang in SHELL and b.marker is None]
    assert not unmarked, f"shell blocks without <!-- doctest --> or <!-- not-run: why -->: {unmarked}"


def test_markers_sit_on_shell_blocks() -> None:
    wrong = [f"{b.page}:{b.line}" for p in doc_pages() for b in blocks(p) if b.marker and b.lang not in SHELL]
    assert not wrong, f"a doctest / not-run marker above a non-shell block: {wrong}"


def test_readme_shape() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250; the rest belongs in docs/)"
    first = [ln.strip() for ln in lines[:2]]
    assert first[0].startswith("pip install") and "medmm demo" in first[0], first[0]
    assert first[1] == "python -m pytest -q", first[1]
    # the README's test command is the one .ci/run runs
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_no_hand_written_test_counts_or_times() -> None:
    """Test counts and suite times go stale: quote a command instead."""
    pattern = re.compile(r"\b\d[\d,]*\s+tests\b|\b\d[\d,]*\s+passed\b|\btests\s+(?:ran|take|took)\s+\d", re.I)
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in doc_pages()
            for n, ln in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(ln)]
    assert not hits, f"hand-written test counts / times: {hits}"


def test_relative_links_resolve() -> None:
    """Links from README.md into the repository point at files that exist."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [t for t in re.findall(r"\]\(([^)#\s]+)", text)
               if not t.startswith(("http://", "https://", "mailto:")) and not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def _reference_hook():
    import importlib.util

    spec = importlib.util.spec_from_file_location("medmm_docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_complete() -> None:
    """The generated configuration reference lists every key of every task, each described."""
    from medmm.config import iter_leaves, task_defaults
    from medmm.plugins import get_registry

    text = _reference_hook().config_reference()
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    undescribed = sorted({r.split("|")[1].strip() for r in rows if r.rstrip().endswith("|  |")})
    assert not undescribed, f"config keys without a description (add Field(description=...)): {undescribed}"
    for name, spec in get_registry().items("task"):
        section = text.split(f"## `{name}`", 1)[1].split("\n## `", 1)[0]
        keys = {key for key, _ in iter_leaves(task_defaults(spec))}
        missing = sorted(k for k in keys if f"| `{k}` |" not in section)
        assert not missing, f"{name}: keys missing from the reference: {missing}"


def test_cli_reference_lists_every_command() -> None:
    from medmm.cli import make_cli

    text = _reference_hook().cli_reference()
    for name in make_cli().commands:
        assert f"## `medmm {name}`" in text, name


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    home = tmp / "home"  # a new user's home: medmm deid creates its key under ~/.config/medmm/
    home.mkdir(exist_ok=True)
    env.pop("MEDMM_DEID_KEY_FILE", None)
    env.update({"PATH": bindir + os.pathsep + env.get("PATH", ""), "HOME": str(home), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2")})
    return env


def _prepare(tmp: Path) -> None:
    """What README line 1 leaves behind that the tour uses: the image demo's DICOM folder."""
    from medmm.demos.dicom import build_demo

    build_demo(tmp / "runs" / "demo-image-cls" / "demo-data")


def _run_page(page: str, marked: list[Block], tmp: Path) -> None:
    if page == "README.md":
        _prepare(tmp)
    if any("curl " in b.code for b in marked) and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    env = _env(tmp)
    for b in marked:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", b.code], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (f"{b.page}:{b.line} failed (rc {proc.returncode}):\n{b.code}\n"
                                      f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
        assert "Traceback (most recent call last)" not in proc.stderr, f"{b.page}:{b.line}: {proc.stderr[-3000:]}"


_PAGES = runnable_pages()


@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=[pytest.mark.slow] if any(TRAINS.search(b.code) for b in bl) else [])
             for p, bl in _PAGES])
def test_examples_run(page: str, tmp_path: Path) -> None:
    marked = dict(_PAGES)[page]
    _run_page(page, marked, tmp_path)
