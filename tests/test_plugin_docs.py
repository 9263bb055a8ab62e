"""The plugin author guide (docs/plugins.md) documents every hook, every TaskSpec / Task /
DeploySpec / BundleMeta member, every check of check_task and every name of the public API."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import medmm
from medmm.task import BundleMeta, DeploySpec, Task, TaskSpec
from medmm.testing import CHECKS

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"


def _documented() -> set[str]:
    """Every name written in backticks in the guide (``name`` and the name before a call's ``(``)."""
    text = GUIDE.read_text(encoding="utf-8")
    return {m.split("(")[0].strip() for m in re.findall(r"`([^`\n]+)`", text)}


def _hooks() -> list[str]:
    tree = ast.parse((ROOT / "medmm" / "hookspecs.py").read_text(encoding="utf-8"))
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
            and any(getattr(d, "id", None) == "hookspec" for d in n.decorator_list)]


def _missing(names: list[str]) -> list[str]:
    documented = _documented()
    return [n for n in names if n not in documented]


def test_every_hook_is_documented() -> None:
    hooks = _hooks()
    assert "register_tasks" in hooks and len(hooks) >= 6
    assert not _missing(hooks)


def test_every_contract_member_is_documented() -> None:
    members = [f.name for f in dataclasses.fields(TaskSpec)] + [f.name for f in dataclasses.fields(DeploySpec)]
    members += [n for n in dir(Task) if not n.startswith("_")] + [f.name for f in dataclasses.fields(BundleMeta)]
    assert {"build_data", "deploy_spec", "runtime", "inputs", "unit_columns", "extra"} <= set(members)
    assert not _missing(members)


def test_every_check_and_public_name_is_documented() -> None:
    assert not _missing(list(CHECKS))
    assert not _missing([n for n in medmm.__all__ if n != "__version__"])


def test_the_check_sees_an_undocumented_name(tmp_path: Path, monkeypatch) -> None:
    guide = tmp_path / "plugins.md"
    guide.write_text("`register_tasks` and `build_data(path)`\n", encoding="utf-8")
    import sys

    monkeypatch.setattr(sys.modules[__name__], "GUIDE", guide)
    assert _missing(["register_tasks", "build_data", "deploy_spec"]) == ["deploy_spec"]
