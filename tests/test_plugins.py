"""Plugin discovery through the ``medmm`` entry-point group, as a user's CLI sees it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medmm.errors import PluginError, UnknownNameError
from medmm.plugins import load_plugins
from medmm.registry import Component, Registry
from tests.conftest import ROOT, run_cli

BUILTINS = {"text_cls", "image_cls", "baselines", "tabular_risk", "fusion"}


def test_builtins_come_through_the_entry_point_group() -> None:
    loaded = load_plugins()
    assert BUILTINS <= {i.name for i in loaded.infos if i.dist == "medmm" and not i.error}
    assert set(loaded.registry.names("task")) >= {"text-cls", "image-cls", "tabular-risk", "fusion"}
    assert loaded.registry.owner("backbone", "minilm-l6") == "text_cls"
    assert {"concat", "gated", "attention", "late"} <= set(loaded.registry.names("fusion_head"))


def test_registering_a_task_imports_no_heavy_library() -> None:
    code = ("import sys; from medmm.plugins import load_plugins; load_plugins(); "
            "print(sorted(m for m in ('torch','transformers','timm','pydicom','sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_broken_plugin_is_reported_and_the_cli_keeps_working(fake_plugin) -> None:
    env = fake_plugin("broken", "raise ImportError('needs libfoo 9')")
    out = run_cli("plugins", env=env)
    assert out.returncode == 0
    assert "broken" in out.stdout and "FAILED" in out.stdout and "needs libfoo 9" in out.stdout
    assert "medmm-broken" in out.stdout  # the distribution is named
    tasks = run_cli("tasks", env=env)
    assert tasks.returncode == 0 and "image-cls" in tasks.stdout


def test_strict_mode_makes_a_broken_plugin_fatal(fake_plugin) -> None:
    env = fake_plugin("broken", "raise ImportError('needs libfoo 9')")
    out = run_cli("tasks", env={**env, "MEDMM_STRICT_PLUGINS": "1"})
    assert out.returncode == 2
    assert "plugin 'broken'" in out.stderr and "needs libfoo 9" in out.stderr
    assert "Traceback" not in out.stderr


def test_disabled_plugin_is_not_imported(fake_plugin) -> None:
    env = fake_plugin("broken", "raise ImportError('needs libfoo 9')")
    out = run_cli("plugins", env={**env, "MEDMM_DISABLE_PLUGINS": "broken,fusion"})
    lines = {l.split()[0]: l for l in out.stdout.splitlines() if l and not l.startswith(" ")}
    assert "disabled" in lines["broken"] and "disabled" in lines["fusion"]
    assert "needs libfoo" not in out.stdout
    assert "fusion" not in run_cli("tasks", env={"MEDMM_DISABLE_PLUGINS": "fusion"}).stdout


DUPLICATE = """
from medmm import hookimpl
from medmm.task import TaskSpec

@hookimpl
def register_tasks(register):
    register(TaskSpec("text-cls", "text", "my own text-cls", "x.yaml", "x:Y"){override})
    register(TaskSpec("my-task", "text", "a new task", "x.yaml", "x:Y"))
"""


def test_duplicate_name_names_both_owners_and_registers_nothing(fake_plugin) -> None:
    env = fake_plugin("dupe", DUPLICATE.format(override=""))
    out = run_cli("plugins", env=env)
    assert "FAILED" in out.stdout and "'text_cls' and 'dupe'" in out.stdout
    tasks = run_cli("tasks", env=env).stdout
    assert "my-task" not in tasks  # all-or-nothing: a half-registered plugin would be worse
    assert "BERT-family" in tasks  # the built-in survives


def test_override_replaces_a_builtin_when_asked(fake_plugin) -> None:
    env = fake_plugin("dupe", DUPLICATE.format(override=", override=True"))
    tasks = run_cli("tasks", env=env).stdout
    assert "my own text-cls" in tasks and "my-task" in tasks


def test_misspelled_hook_is_caught_by_check_pending(fake_plugin) -> None:
    env = fake_plugin("typo", """
        from medmm import hookimpl
        @hookimpl
        def register_taskz(register):
            pass
    """)
    out = run_cli("plugins", env=env).stdout
    assert "typo" in out and "FAILED" in out and "register_taskz" in out


def test_registry_unknown_name_lists_known_and_closest() -> None:
    reg = Registry()
    reg.add("backbone", Component("resnet18", "x:y"), owner="a")
    reg.add("backbone", Component("resnet50", "x:y"), owner="a")
    with pytest.raises(UnknownNameError) as err:
        reg.get("backbone", "resnet19")
    assert "Did you mean 'resnet18'" in str(err.value) and "resnet50" in str(err.value)
    with pytest.raises(PluginError, match="both 'a' and 'b'"):
        reg.add("backbone", Component("resnet18", "x:y"), owner="b")


def test_example_package_installs_and_runs_through_the_public_cli(tmp_path: Path) -> None:
    target, source = tmp_path / "site", tmp_path / "medmm-example-plugin"
    # build from a copy: setuptools writes build/ and *.egg-info into the folder it builds
    shutil.copytree(ROOT / "examples" / "medmm-example-plugin", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                          "--target", str(target), str(source)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(target)}
    plugins = run_cli("plugins", env=env).stdout
    assert "medmm-example-plugin" in plugins and "register_backbones, register_fusion_heads" in plugins
    assert "snn" in run_cli("backbones", "--modality", "tabular", env=env).stdout
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(source / "tests")],
                          capture_output=True, text=True, env={**__import__("os").environ, **env}, cwd=tmp_path)
    assert test.returncode == 0, test.stdout[-2000:]
