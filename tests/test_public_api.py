"""The public API (``medmm`` top level): what plugins import, and that it stays cheap to import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import medmm

ROOT = Path(__file__).resolve().parents[1]


def _plugin_files() -> list[Path]:
    return sorted([*(ROOT / "plugins").rglob("*.py"), *(ROOT / "examples").rglob("*.py")])


def _medmm_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import of medmm or a medmm submodule in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name == "medmm" or a.name.startswith("medmm.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "medmm" or node.module.startswith("medmm."):
                out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def test_plugins_and_examples_import_only_the_public_api() -> None:
    files = _plugin_files()
    assert len(files) > 20  # the walk found the built-in plugins and the example package
    bad = []
    for path in files:
        for line, module, names in _medmm_imports(path):
            rel = f"{path.relative_to(ROOT)}:{line}"
            if module != "medmm" or not names:
                bad.append(f"{rel} imports {module} (use `from medmm import ...`)")
            bad += [f"{rel} imports medmm.{n}, which is not in medmm.__all__" for n in names if n not in medmm.__all__]
    assert not bad, "\n".join(bad)


def test_the_walk_catches_a_submodule_import(tmp_path: Path) -> None:
    bad = tmp_path / "p.py"
    bad.write_text("from medmm.task import Task\nimport medmm.io\nfrom medmm import Task as T\n", encoding="utf-8")
    assert [(m, n) for _, m, n in _medmm_imports(bad)] == [("medmm.task", ["Task"]), ("medmm.io", []),
                                                          ("medmm", ["Task"])]


def test_every_public_name_resolves_to_its_home() -> None:
    import importlib

    for name in medmm.__all__:
        value = getattr(medmm, name)
        home = medmm._API.get(name)  # noqa: SLF001 - the table under test
        if home is not None:
            assert getattr(importlib.import_module(home), name) is value
        assert not name.startswith("_") or name == "__version__"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        medmm.nope  # noqa: B018


def test_import_medmm_is_cheap() -> None:
    code = ("import sys, medmm; from medmm import TaskSpec, hookimpl, Component, DataError; "
            "heavy = [m for m in ('torch', 'pandas', 'numpy', 'transformers', 'pydicom') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_the_core_names_no_built_in_task_and_imports_no_built_in_plugin() -> None:
    """``medmm/`` knows tasks only through the contract: no built-in task name, no ``medmm_plugins``."""
    from medmm.plugins import get_registry

    builtin = [name for name, spec in get_registry().items("task") if str(spec.impl).startswith("medmm_plugins.")]
    assert {"tabular-risk", "text-cls", "image-cls", "fusion"} <= set(builtin)
    words = [n for n in builtin if "-" in n] + ["medmm_plugins"]  # "fusion" alone is also a plain word
    found = [f"{path.relative_to(ROOT)}:{i}: {w}" for path in sorted((ROOT / "medmm").rglob("*.py"))
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) for w in words if w in line]
    assert not found, "\n".join(found)
