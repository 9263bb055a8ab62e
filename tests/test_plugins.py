"""Plugin discovery through the ``medmm`` entry-point group, as a user's CLI sees it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from medmm.errors import PluginError, UnknownNameError
from medmm.plugins import load_plugins
from medmm.registry import Component, Registry
from tests.conftest import run_cli

if TYPE_CHECKING:
    import pandas

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


@pytest.mark.slow
def test_example_package_installs_and_runs_through_the_public_cli(tmp_path: Path,
                                                                   example_plugin: tuple[Path, Path]) -> None:
    """pip-install examples/medmm-example-plugin (conftest), then train and predict with its task through ``medmm``."""
    import json

    import pandas as pd

    lifelines = pytest.importorskip("lifelines")
    target, source = example_plugin
    env = {"PYTHONPATH": str(target)}
    plugins = run_cli("plugins", env=env).stdout
    assert "medmm-example-plugin" in plugins and "register_backbones, register_fusion_heads, register_tasks" in plugins
    assert "snn" in run_cli("backbones", "--modality", "tabular", env=env).stdout
    assert "discrete-survival" in run_cli("tasks", env=env).stdout

    # the example's task, on a real table: GBSG2, 686 breast-cancer patients, days to recurrence
    lifelines.datasets.load_gbsg2().to_csv(tmp_path / "gbsg2.csv", index_label="patient")
    run = tmp_path / "run"
    out = run_cli("run", "discrete-survival", "--data", str(tmp_path / "gbsg2.csv"), "--out", str(run), "--quiet",
                  "--set", "data.time=time", "--set", "data.event=cens", "--set", "data.id_column=patient",
                  "--set", "data.horizon=1825", "--set", "engine.epochs=20", "--set", "engine.min_steps=0",
                  "--set", "engine.bootstrap=100", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["c_index"] > 0.63  # Cox PH on GBSG2 scores ~0.66-0.69
    assert "c_index" in summary["baseline"]["metrics"]  # medmm's classic Cox fitted beside it
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == summary["sizes"]["test"] == 137 and preds["id"].is_unique
    assert (preds["risk"] > 0).all()  # a cumulative hazard
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    csv = pd.read_csv(run / "metrics.csv")
    assert csv.iloc[-1]["split"] == "test" and len(csv) == len(jsonl)
    assert (run / "artifacts" / "discrete_survival.json").is_file() and (run / "report.html").is_file()
    predicted = run_cli("predict", str(run), "--data", str(tmp_path / "gbsg2.csv"), "--out", str(tmp_path / "p.csv"),
                        env=env)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "p.csv")) == 686
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(source / "tests")],
                          capture_output=True, text=True, env={**__import__("os").environ, **env}, cwd=tmp_path)
    assert test.returncode == 0, test.stdout[-2000:]


# --------------------------------------------------------------------------- readers (register_readers)
def read_psv(path: Path, string_columns: list[str] = ()) -> "pandas.DataFrame":
    """A plugin reader: pipe-separated values (the PhysioNet/CinC challenge export)."""
    import pandas as pd

    return pd.read_csv(path, sep="|", dtype={c: str for c in string_columns} or None)


def read_sniffed(path: Path, **options: object) -> "pandas.DataFrame":
    import pandas as pd

    return pd.read_csv(path, sep="|", skiprows=1)


def read_broken(path: Path) -> Any:
    if path.read_text().startswith("list"):
        return [1, 2]
    raise KeyError("no column 'x'")


def read_psv_folder(path: Path) -> Any:
    """One ``.psv`` per patient (the PhysioNet sepsis challenge layout) -> one table with a patient column."""
    import pandas as pd

    return pd.concat([read_psv(p).assign(patient=p.stem) for p in sorted(path.glob("*.psv"))], ignore_index=True)


def is_psv_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.psv"))


def is_pipe_export(path: Path) -> bool:
    """Predicate: a suffix-less export whose first line is the magic ``#pipe-export``."""
    return path.is_file() and path.read_bytes()[:12] == b"#pipe-export"


class ReaderPlugin:
    """A plugin object registered in-process (no distribution): two table readers and a callback."""

    @staticmethod
    @__import__("medmm").hookimpl
    def register_readers(register) -> None:
        register(Component("psv", f"{__name__}:read_psv", "tabular", "pipe-separated values", {"suffixes": [".psv"]}))
        register(Component("pipe-export", f"{__name__}:read_sniffed", "tabular", "sniffed pipe export",
                           {"predicate": f"{__name__}:is_pipe_export"}))
        register(Component("psv-folder", f"{__name__}:read_psv_folder", "tabular", "a folder of .psv files",
                           {"predicate": f"{__name__}:is_psv_folder"}))
        register(Component("broken", f"{__name__}:read_broken", "tabular", "a buggy reader", {"suffixes": [".bad"]}))


def _psv_frame() -> str:
    rows = ["id|age|income|label"] + [f"{i:03d}|{40 + i}|\"{i},000\"|{i % 2}" for i in range(1, 7)]
    return "\n".join(rows) + "\n"


@pytest.fixture
def psv_plugin(monkeypatch: pytest.MonkeyPatch) -> Any:
    """This process's plugins plus :class:`ReaderPlugin`, as ``medmm`` would load them."""
    import medmm.plugins as mp

    loaded = load_plugins(extra=[("psv_plugin", ReaderPlugin())])
    monkeypatch.setattr(mp, "default_plugins", lambda: loaded)
    return loaded


def test_plugin_reader_is_the_one_table_reader_for_its_suffix(psv_plugin: Any, tmp_path: Path) -> None:
    import gzip

    from medmm.data.readers import read_table, table_format

    (tmp_path / "t.psv").write_text(_psv_frame().replace('"', ""))
    with gzip.open(tmp_path / "t.PSV.gz", "wt") as f:  # suffixes match case-insensitively, through .gz
        f.write(_psv_frame().replace('"', ""))
    for name in ("t.psv", "t.PSV.gz"):
        assert table_format(tmp_path / name) == "psv"
        df = read_table(tmp_path / name, string_columns=["id"])
        assert df["id"].tolist()[:2] == ["001", "002"]  # string_columns reached the plugin reader
        # the built-in post-processing ran on the plugin's frame: thousands separators parsed
        assert df["income"].tolist()[:2] == [1000.0, 2000.0] and df["age"].sum() == sum(range(41, 47))


def test_plugin_predicate_reads_a_file_without_a_telling_suffix(psv_plugin: Any, tmp_path: Path) -> None:
    from medmm.data.readers import read_table, table_format

    export = tmp_path / "export-2026-11"
    export.write_text("#pipe-export v1\n" + _psv_frame())
    assert read_table(export).shape == (6, 4)
    (tmp_path / "t.csv").write_text("#pipe-export v1\n")  # a built-in suffix is never handed to a predicate
    assert table_format(tmp_path / "t.csv") == "csv"
    folder = tmp_path / "patients"
    folder.mkdir()
    for name in ("p1", "p2"):
        (folder / f"{name}.psv").write_text(_psv_frame().replace('"', ""))
    df = read_table(folder)
    assert df.shape == (12, 5) and df["patient"].tolist().count("p2") == 6


def test_unknown_format_lists_builtin_and_plugin_readers(psv_plugin: Any, tmp_path: Path) -> None:
    from medmm.data.readers import read_table
    from medmm.errors import DataError

    (tmp_path / "t.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError) as err:
        read_table(tmp_path / "t.xlsx")
    msg = str(err.value)
    assert "\n" not in msg and "unknown table format" in msg
    assert ".csv" in msg and ".parquet" in msg and ".psv (psv)" in msg and "'pipe-export'" in msg


def test_a_failing_plugin_reader_is_one_line_naming_it(psv_plugin: Any, tmp_path: Path) -> None:
    from medmm.data.readers import read_table
    from medmm.errors import DataError

    (tmp_path / "a.bad").write_text("raise\n")
    with pytest.raises(DataError, match=r"^cannot read .*a\.bad with reader 'broken': KeyError: \"no column 'x'\"$"):
        read_table(tmp_path / "a.bad")
    (tmp_path / "b.bad").write_text("list\n")
    with pytest.raises(DataError, match=r"reader 'broken' returned a list for .*b\.bad, not a pandas DataFrame"):
        read_table(tmp_path / "b.bad")


def test_without_the_plugin_psv_is_unknown(tmp_path: Path) -> None:
    from medmm.data.readers import read_table
    from medmm.errors import DataError

    (tmp_path / "t.psv").write_text(_psv_frame())
    with pytest.raises(DataError, match="unknown table format"):
        read_table(tmp_path / "t.psv")


class Recorder:
    """An engine callback that records the events it sees."""

    events: list[tuple[str, Any]] = []

    def __init__(self, cfg: dict[str, Any], run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_evaluate(self, trainer: Any, record: dict[str, Any]) -> None:
        Recorder.events.append(("evaluate", record["split"]))

    def on_train_end(self, trainer: Any, result: Any) -> None:
        last = self.run_dir / "checkpoints" / "last"
        Recorder.events.append(("train_end", (result.state.finished, result.state.global_step, last.is_dir())))


class CallbackPlugin:
    @staticmethod
    @__import__("medmm").hookimpl
    def register_callbacks(register) -> None:
        register(Component("recorder", f"{__name__}:Recorder", "any", "records engine events"))


@pytest.mark.slow
def test_a_task_trains_on_a_plugin_format_and_callbacks_see_the_end(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """tabular-risk reads a .psv through the plugin reader; on_train_end is called once, after the
    last checkpoint; metrics.csv holds the final test row that metrics.jsonl holds."""
    import json

    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    import medmm.plugins as mp
    from medmm.cli import main

    loaded = load_plugins(extra=[("psv_plugin", ReaderPlugin()), ("recorder", CallbackPlugin())])
    monkeypatch.setattr(mp, "default_plugins", lambda: loaded)
    Recorder.events = []
    df = load_breast_cancer(as_frame=True).frame
    df.insert(0, "patient", [f"P{i:04d}" for i in range(len(df))])
    df.to_csv(tmp_path / "bc.psv", sep="|", index=False)
    run = tmp_path / "run"
    code = main(["run", "tabular-risk", "--data", str(tmp_path / "bc.psv"), "--out", str(run), "--quiet",
                 "--set", "data.target=target", "--set", "data.id_column=patient", "--set", "model.backbone=linear",
                 "--set", "engine.epochs=20", "--set", "engine.min_steps=0", "--set", "engine.bootstrap=0",
                 "--set", "engine.baseline=none"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["auroc"] > 0.9  # it really learnt from the plugin-read rows
    preds = pd.read_csv(run / "predictions.csv", dtype=str)
    assert preds.iloc[:, 0].str.fullmatch(r"P\d{4}").all() and len(preds) == summary["sizes"]["test"]

    ends = [e[1] for e in Recorder.events if e[0] == "train_end"]
    assert len(ends) == 1 and ends[0][0] is True and ends[0][1] > 0 and ends[0][2] is True  # once, finished
    assert Recorder.events[-1][0] == "train_end" and ("evaluate", "val") in Recorder.events

    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    csv = pd.read_csv(run / "metrics.csv")
    assert len(csv) == len(jsonl) and jsonl[-1]["final"] is True and jsonl[-1]["split"] == "test"
    last = csv.iloc[-1]
    assert last["split"] == "test" and bool(last["final"]) and last["auroc"] == pytest.approx(jsonl[-1]["auroc"])
