"""Reliability, second pass (#28): each test plants the fault an adversarial user found and checks
the fix (ONNX text export on short texts and at the edges of every dynamic axis, plugins raising
any BaseException, replacing only medmm's own files, predict / evaluate --out, library logging,
non-finite config values, SIGTERM / SIGINT status, follow-up-time leakage)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# --------------------------------------------------------------------------- 1. TextCNN / export edges


@pytest.mark.slow  # torch.onnx's first import costs seconds
def test_textcnn_exported_on_long_texts_runs_texts_shorter_than_its_kernels() -> None:
    """The issue's fault: traced on long inputs, the graph had no padding and onnxruntime refused
    texts of fewer tokens than the widest kernel (``Invalid input shape`` in a Conv node)."""
    ort = pytest.importorskip("onnxruntime")
    import torch

    from medmm.models.text_baselines import TextCNN

    torch.manual_seed(0)
    model = TextCNN(50, embedding_dim=8, kernel_sizes=(2, 3, 5), channels=4, dropout=0.0).eval()
    ids, mask = torch.randint(1, 50, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    f = io.BytesIO()
    torch.onnx.export(model, (ids, mask), f, input_names=["input_ids", "attention_mask"], output_names=["e"],
                      dynamo=False, dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    session = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for batch, length in [(1, 1), (1, 3), (3, 4), (2, 40)]:
        ids = torch.randint(1, 50, (batch, length))
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2 + 1:] = 0  # a right-padded row too
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            want = model(ids, mask).numpy()
        assert np.abs(got - want).max() < 1e-5, (batch, length)


def test_textcnn_output_does_not_depend_on_padding() -> None:
    import torch

    from medmm.models.text_baselines import TextCNN

    torch.manual_seed(0)
    model = TextCNN(30, embedding_dim=6, kernel_sizes=(3, 4, 5), channels=3, dropout=0.0).eval()
    ids = torch.tensor([[4, 7]])
    with torch.no_grad():
        short = model(ids, torch.ones_like(ids))
        padded = model(torch.tensor([[4, 7, 0, 0, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0, 0, 0, 0]]))
    assert torch.allclose(short, padded, atol=1e-6)


def test_edge_cases_cover_size_one_and_the_largest_size_of_every_axis() -> None:
    from types import SimpleNamespace

    from medmm.deploy.edges import axis_edges, edge_cases

    feeds = {"input_ids": np.arange(12).reshape(3, 4), "attention_mask": np.ones((3, 4), np.int64)}
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    cfg = SimpleNamespace(engine=SimpleNamespace(eval_batch_size=8), data=SimpleNamespace(max_length=10))
    edges = axis_edges(cfg, dynamic, feeds)
    assert edges == {"batch": (1, 8), "sequence": (1, 10)}
    cases = edge_cases(feeds, dynamic, edges)
    assert [c[0] for c in cases] == [{"batch": 1, "sequence": 1}, {"batch": 1, "sequence": 10},
                                     {"batch": 8, "sequence": 1}, {"batch": 8, "sequence": 10}]
    small, big = cases[0][1], cases[3][1]
    assert small["input_ids"].tolist() == [[0]]
    assert big["input_ids"].shape == (8, 10) and big["input_ids"][3].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    # an axis with no known limit is checked at 1 and the largest size seen
    assert axis_edges(SimpleNamespace(), {"x": {0: "rows"}}, {"x": np.zeros((5, 2))}) == {"rows": (1, 5)}


def test_edge_parity_reports_the_case_an_exported_graph_gets_wrong_or_cannot_run() -> None:
    from medmm.deploy.edges import edge_cases, edge_parity

    feeds = {"x": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)}
    cases = edge_cases(feeds, {"x": {0: "batch"}}, {"batch": (1, 16)})

    def reference(f: dict) -> np.ndarray:
        return f["x"].sum(1)

    def fails_on_one_row(f: dict) -> np.ndarray:  # as onnxruntime refusing a shape
        if len(f["x"]) == 1:
            raise RuntimeError("Invalid input shape: {1}")
        return reference(f)

    worst, rows = edge_parity(reference, fails_on_one_row, cases)
    assert worst == float("inf") and "Invalid input shape" in rows[0]["error"] and rows[1]["max_abs_diff"] == 0

    def off_on_big_batches(f: dict) -> np.ndarray:
        return reference(f) + (1e-3 if len(f["x"]) > 8 else 0)

    worst, rows = edge_parity(reference, off_on_big_batches, cases)
    assert worst == pytest.approx(1e-3, rel=1e-3) and rows[0]["max_abs_diff"] < 1e-6
    def large(f: dict) -> np.ndarray:  # values in the thousands (regression / survival outputs)
        return 1000 + 1000 * f["x"].sum(1) ** 2

    absolute, _ = edge_parity(large, lambda f: large(f) + 0.5, cases)
    relative, _ = edge_parity(large, lambda f: large(f) + 0.5, cases, relative=True)
    assert absolute == pytest.approx(0.5) and relative <= 0.5 / 1000 + 1e-9  # relative to the value's size


# --------------------------------------------------------------------------- 2. plugins


def test_plugin_raising_keyboard_interrupt_or_any_base_exception_is_isolated(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm import plugins

    (tmp_path / "kbd_at_import.py").write_text("raise KeyboardInterrupt\n")
    (tmp_path / "gen_exit_at_import.py").write_text("raise GeneratorExit('odd')\n")
    (tmp_path / "kbd_at_register.py").write_text(
        "from medmm import hookimpl\n@hookimpl\ndef register_tasks(register):\n    raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = plugins._sorted_entry_points()
    fakes = [EntryPoint(name=n, value=n, group="medmm") for n in ("kbd_at_import", "gen_exit_at_import", "kbd_at_register")]
    monkeypatch.setattr(plugins, "_sorted_entry_points", lambda: [*real, *fakes])
    loaded = plugins.load_plugins()
    errors = {i.name: i.error for i in loaded.infos}
    assert "KeyboardInterrupt raised by the plugin" in errors["kbd_at_import"]
    assert "KeyboardInterrupt raised by the plugin" in errors["kbd_at_register"]
    assert errors["gen_exit_at_import"].startswith("GeneratorExit")
    assert "tabular-risk" in loaded.registry.names("task")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_real_ctrl_c_while_plugins_load_still_stops_the_command(fake_plugin) -> None:
    env = fake_plugin("slow_plugin", "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
    out = subprocess.run([sys.executable, "-c", "from medmm.plugins import load_plugins; load_plugins(); print('loaded')"],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=60, check=False)
    assert out.returncode != 0 and "KeyboardInterrupt" in out.stderr and "loaded" not in out.stdout


@pytest.mark.slow
def test_cli_survives_a_plugin_raising_keyboard_interrupt(fake_plugin) -> None:
    env = fake_plugin("interrupter", "raise KeyboardInterrupt\n")
    out = run_cli("plugins", env=env)
    assert out.returncode == 0 and "interrupter" in out.stdout and "FAILED" in out.stdout, out.stderr


# --------------------------------------------------------------------------- 3. replace only medmm's files


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_hand_written_failed_run_json_never_deletes_the_users_files(tmp_path: Path) -> None:
    """The issue's case: the user's files beside a run.json saying failed; the old rule deleted
    ``checkpoints/`` (any medmm-looking name) before the new run."""
    import json

    from medmm.errors import MedmmError
    from medmm.runner import prepare_run_dir

    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "model-v3.pt").write_text("weeks of work")
    (mine / "config.yaml").write_text("mine: 1\n")
    (mine / "run.json").write_text(json.dumps({"status": "failed"}))
    before = _tree(mine)
    with pytest.raises(MedmmError, match="no list of the files medmm wrote"):
        prepare_run_dir(mine, resume=False)
    assert _tree(mine) == before
    (mine / "run.json").write_text(json.dumps({"status": "running", "pid": 0}))  # as a SIGKILL leaves it
    with pytest.raises(MedmmError, match="killed before it recorded the files it wrote"):
        prepare_run_dir(mine, resume=False)
    assert {k: v for k, v in _tree(mine).items() if k != "run.json"} == {k: v for k, v in before.items()
                                                                          if k != "run.json"}


def test_a_stopped_run_is_replaced_file_by_file_from_its_manifest(tmp_path: Path, capsys) -> None:
    from medmm import rundir
    from medmm.errors import MedmmError
    from medmm.runner import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    rundir.start(run, {"task": "tabular-risk"})
    for rel in ("config.yaml", "train.log", "artifacts/labels.json", "artifacts/deep/x.json", "cache/tokens.bin"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(rel)
    rundir.finish(run, RuntimeError("target column is not in the data"))
    info = rundir.read_info(run)
    assert info["status"] == "failed" and "artifacts/deep/x.json" in info["files"] and "run.json" not in info["files"]

    (run / "artifacts" / "my-notes.txt").write_text("mine")  # a file the run did not write
    with pytest.raises(MedmmError, match="1 file.* the failed run did not write .in artifacts/.*never deletes"):
        prepare_run_dir(run, resume=False)
    assert (run / "artifacts" / "my-notes.txt").read_text() == "mine" and (run / "config.yaml").exists()

    (run / "artifacts" / "my-notes.txt").unlink()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    info["files"] = [*info["files"], "../outside.txt"]  # a list that points out of the run is not followed
    rundir.write_info(run, info)
    prepare_run_dir(run, resume=False)
    assert "replacing the run" in capsys.readouterr().err
    left = {k: v for k, v in _tree(run).items() if k != ".run.lock"}  # the lock file is reused by the next run
    assert left == {"cache/tokens.bin": "cache/tokens.bin"} and outside.read_text() == "keep"


# --------------------------------------------------------------------------- 7. SIGTERM / SIGINT


def test_a_signal_inside_the_step_loop_waits_for_the_step_boundary() -> None:
    from medmm.engine import interrupt

    with interrupt.handle_signals():
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert interrupt.pending() == signal.SIGTERM  # recorded, not raised mid-step
            with pytest.raises(interrupt.Interrupted) as stop:
                interrupt.raise_pending("saved")
        assert stop.value.signal_name == "SIGTERM" and stop.value.exit_code == 143 and "saved" in str(stop.value)
        with pytest.raises(interrupt.Interrupted, match="SIGINT"):  # outside the loop: at once
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bounded: the handler runs between bytecodes
                pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and interrupt.pending() is None


def test_an_interrupted_run_says_so_with_its_signal(tmp_path: Path) -> None:
    from medmm import rundir
    from medmm.engine.interrupt import Interrupted

    run = tmp_path / "run"
    run.mkdir()
    rundir.start(run, {"task": "tabular-risk"})
    rundir.finish(run, Interrupted(signal.SIGTERM))
    info = rundir.read_info(run)
    assert (info["status"], info["signal"], info["pid"]) == ("interrupted", "SIGTERM", None)
    assert rundir.status(info, run) == "interrupted"


def _binary_table(path: Path, n: int = 240) -> Path:
    import pandas as pd

    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=n).round(3), rng.normal(size=n).round(3)
    y = (x1 + 0.3 * rng.normal(size=n) > 0).astype(int)
    pd.DataFrame({"pid": [f"p{i}" for i in range(n)], "x1": x1, "x2": x2, "y": y}).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_sigterm_and_sigint_mark_the_run_interrupted_with_a_last_checkpoint(tmp_path: Path) -> None:
    """Two real ``medmm run`` processes, stopped by SIGTERM (as ``timeout`` does) and SIGINT after
    their first evaluation: exit 128 + signal, one line, run.json ``interrupted`` with the signal,
    a ``last`` checkpoint at the step boundary after the signal, and ``--resume`` accepted."""
    import json
    import time

    data = _binary_table(tmp_path / "train.csv")
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        run = tmp_path / f"run-{sig.name}"
        procs[sig] = (run, subprocess.Popen(
            [sys.executable, "-m", "medmm", "run", "tabular-risk", "--data", str(data), "--out", str(run),
             "--set", "data.target=y", "--set", "data.id_column=pid", "--set", "model.backbone=mlp",
             "--set", "engine.bootstrap=0", "--set", "engine.epochs=4000", "--set", "engine.patience=0",
             "--set", "engine.checkpoint_every_steps=100000", "--quiet"],
            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 240
    for sig, (run, proc) in procs.items():
        while time.monotonic() < deadline and proc.poll() is None:  # bounded wait for the first evaluation
            if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size:
                break
            time.sleep(0.05)
        proc.send_signal(sig)
    for sig, (run, proc) in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, err[-2000:]
        assert f"medmm: interrupted by {sig.name}; a resumable checkpoint" in err and "Traceback" not in err
        info = json.loads((run / "run.json").read_text())
        assert (info["status"], info["signal"], info["pid"]) == ("interrupted", sig.name, None)
        state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())["state"]
        evaluated = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert state["global_step"] >= max(evaluated) and not state["finished"]
        from medmm.rundir import check_resume

        check_resume(run)  # --resume continues it


# --------------------------------------------------------------------------- 4. predict / evaluate --out


def test_predict_out_refuses_an_existing_file_unless_overwrite(tmp_path: Path) -> None:
    from medmm.errors import MedmmError
    from medmm.rundir import check_output_file

    mine = tmp_path / "p.csv"
    mine.write_text("my own predictions\n")
    with pytest.raises(MedmmError, match="already exists; medmm never overwrites a file.*--overwrite"):
        check_output_file(mine)
    check_output_file(mine, overwrite=True)
    (tmp_path / "q.skipped.csv").write_text("mine too\n")  # the report predict writes beside q.csv
    with pytest.raises(MedmmError, match="q.skipped.csv already exists"):
        check_output_file(tmp_path / "q.csv")
    check_output_file(tmp_path / "new.csv")
    assert mine.read_text() == "my own predictions\n"


def test_evaluate_out_overwrite_replaces_only_an_earlier_evaluation(tmp_path: Path) -> None:
    from medmm.errors import MedmmError
    from medmm.evaluation.external import _check_out

    earlier = tmp_path / "ev"
    earlier.mkdir()
    (earlier / "evaluation.json").write_text("{}")
    with pytest.raises(MedmmError, match="never overwrites files.*--overwrite"):
        _check_out(earlier)
    _check_out(earlier, overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(MedmmError, match="not an earlier medmm evaluation"):
        _check_out(mine, overwrite=True)


@pytest.mark.slow
def test_predict_and_evaluate_cli_follow_one_overwrite_rule(tmp_path: Path, capsys) -> None:
    from medmm.cli import main

    def medmm(*args: object) -> tuple[int, str]:
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err

    data = _binary_table(tmp_path / "t.csv", n=120)
    run = tmp_path / "run"
    code, err = medmm("run", "tabular-risk", "--data", data, "--out", run, "--set", "data.target=y",
                      "--set", "data.id_column=pid", "--set", "model.backbone=linear", "--set", "engine.epochs=1",
                      "--set", "engine.bootstrap=0", "--set", "engine.device=cpu", "--quiet")
    assert code == 0, err[-2000:]
    mine = tmp_path / "p.csv"
    mine.write_text("my own predictions\n")
    code, err = medmm("predict", run, "--data", data, "--out", mine)
    assert code == 2 and "--overwrite" in err and mine.read_text() == "my own predictions\n"
    code, err = medmm("predict", run, "--data", data, "--out", mine, "--overwrite")
    assert code == 0 and mine.read_text().startswith("id,"), err[-2000:]
    ev = tmp_path / "ev"
    assert medmm("evaluate", run, "--data", data, "--out", ev, "--no-card")[0] == 0
    (ev / "evaluation.json").write_text("{}")  # marks the earlier one
    code, err = medmm("evaluate", run, "--data", data, "--out", ev, "--no-card")
    assert code == 2 and "--overwrite" in err
    code, err = medmm("evaluate", run, "--data", data, "--out", ev, "--no-card", "--overwrite")
    assert code == 0 and (ev / "evaluation.json").read_text() != "{}", err[-2000:]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ev.")]  # the earlier one went, no leftovers


# --------------------------------------------------------------------------- 5. a library's logging setup


@pytest.mark.slow  # imports opacus (and torch) in a fresh process
def test_a_library_calling_basicconfig_at_import_does_not_double_medmms_console() -> None:
    """opacus calls ``logging.basicConfig`` at import; with ``engine.privacy.enabled`` every console
    line was printed twice (medmm's handler, then the root's). The CLI guards the root first."""
    pytest.importorskip("opacus")
    script = ("import logging\n"
              "from medmm.runlog import guard_root_logger, attach_console, echo\n"
              "guard_root_logger()  # what medmm.cli.main does first\n"
              "import opacus\n"
              "attach_console(None)\n"
              "logging.getLogger('medmm').setLevel(logging.INFO)\n"
              "echo('line-one')\n"
              "logging.getLogger('medmm').warning('line-two')\n"
              "logging.getLogger('otherlib').warning('line-three')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, **ENV},
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stderr.splitlines()
    assert [sum(m in x for x in lines) for m in ("line-one", "line-two", "line-three")] == [1, 1, 1], lines
    assert "medmm: warning: line-two" in lines and "line-three" in lines  # other libraries' warnings still show


# --------------------------------------------------------------------------- 8. follow-up time leakage


def _death_table(n: int = 600, seed: int = 0):
    """Heart-failure-like rows: a binary death outcome, three moderate real risk factors, and a
    follow-up ``time`` that is short for the patients who died (known only after the outcome)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.32).astype(float)
    df = pd.DataFrame({
        "age": rng.normal(60, 11, n) + 4 * y,
        "ejection_fraction": rng.normal(38, 11, n) - 4 * y,
        "serum_creatinine": rng.lognormal(0.2, 0.35, n) + 0.15 * y,
        "sex": rng.choice(["F", "M"], n),
        "time": np.where(y == 1, rng.uniform(4, 150, n), rng.uniform(40, 285, n)).round(),
    })
    return df, y


@pytest.mark.slow  # 3 x 6 x 5 small logistic fits: about a second, more on a loaded machine
def test_follow_up_time_under_the_single_feature_rule_is_named_with_its_evidence(caplog) -> None:
    """The issue's fault: ``time`` scores well under 0.95 alone, so the single-feature rule was silent."""
    import logging

    from medmm.data.leakage import feature_scores, warn_leaky_features
    from medmm.data.tabular.preprocess import fit_preprocessor

    df, y = _death_table()
    types = {"age": "numeric", "ejection_fraction": "numeric", "serum_creatinine": "numeric", "sex": "categorical",
             "time": "numeric"}
    train, val = np.arange(len(df)) < 400, np.arange(len(df)) >= 400
    assert 0.7 < feature_scores(df[train], types, "binary", y[train])["time"] < 0.95  # what the old rule saw
    pre = fit_preprocessor(df[train], types)
    with caplog.at_level(logging.WARNING, logger="medmm"):
        found = dict(warn_leaky_features(df[train], types, "binary", y[train], preprocessor=pre,
                                         val=(df[val], y[val])))
    assert list(found) == ["time"]
    text = caplog.text
    assert "possible leakage: feature 'time'" in text and "removing it lowers a classic baseline's AUROC" in text
    assert "name looks like a follow-up" in text and "data.exclude=[time]" in text

    renamed = df.rename(columns={"time": "x7"})  # no telling name: drop-column importance alone finds it
    types7 = {("x7" if k == "time" else k): v for k, v in types.items()}
    pre7 = fit_preprocessor(renamed[train], types7)
    assert [c for c, _ in warn_leaky_features(renamed[train], types7, "binary", y[train], preprocessor=pre7,
                                              val=(renamed[val], y[val]))] == ["x7"]

    honest = df.drop(columns=["time"])  # moderate real risk factors only: nothing is named
    types_h = {k: v for k, v in types.items() if k != "time"}
    pre_h = fit_preprocessor(honest[train], types_h)
    assert warn_leaky_features(honest[train], types_h, "binary", y[train], preprocessor=pre_h,
                               val=(honest[val], y[val])) == []


def test_a_column_of_dates_beside_a_binary_target_is_named_without_its_values(caplog) -> None:
    import logging

    import pandas as pd

    from medmm.data.leakage import warn_leaky_features

    rng = np.random.default_rng(1)
    n = 120
    y = (rng.random(n) < 0.4).astype(float)
    dates = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    df = pd.DataFrame({"age": rng.normal(60, 10, n), "last_seen": dates.strftime("%Y-%m-%d")})
    with caplog.at_level(logging.WARNING, logger="medmm"):
        found = [c for c, _ in warn_leaky_features(df, {"age": "numeric", "last_seen": "categorical"}, "binary", y)]
    assert found == ["last_seen"] and "values are dates" in caplog.text
    assert not any(d in caplog.text for d in df["last_seen"])  # never a value
    assert warn_leaky_features(df, {"age": "numeric", "last_seen": "categorical"}, "regression", y * 3) == []


# --------------------------------------------------------------------------- 1 + serve: TextCNN end to end


@pytest.mark.slow
def test_textcnn_export_predicts_and_serves_notes_shorter_than_its_kernels(tmp_path: Path, capsys) -> None:
    """The issue's case end to end: a TextCNN run exported with ``medmm export``; a file of notes with
    fewer tokens than the widest kernel predicts through the export as through the run, and the
    service answers the fuzz list (tests/serve_fuzz.py) without a 5xx."""
    import pandas as pd

    from medmm.cli import main
    from medmm.deploy.runtime import ExportedModel
    from medmm.deploy.service import create_app
    from tests.serve_fuzz import fuzz_rows, server_errors
    from tests.test_text_cls import synthetic_notes

    def medmm(*args: object) -> None:
        code = main([str(a) for a in args])
        assert code == 0, (args, capsys.readouterr().err[-2000:])

    synthetic_notes(40, ["normal", "pneumonia"]).to_csv(tmp_path / "notes.csv", index=False)
    short = tmp_path / "short.csv"
    pd.DataFrame({"note_id": ["a", "b", "c"], "text": ["pneumonia opacity", "clear", ""]}).to_csv(short, index=False)
    run, export = tmp_path / "run", tmp_path / "export"
    medmm("run", "text-cls", "--data", tmp_path / "notes.csv", "--out", run, "--set", "model.backbone=textcnn",
          "--set", "data.id_column=note_id", "--set", "engine.epochs=1", "--set", "engine.max_steps=2",
          "--set", "engine.bootstrap=0", "--set", "engine.device=cpu", "--quiet")
    medmm("export", run, "--out", export, "--exporter", "torchscript")
    parity = __import__("json").loads((export / "manifest.json").read_text())["parity"]
    assert {tuple(sorted(e["sizes"].items())) for e in parity["edges"]} >= {(("batch", 1), ("sequence", 1))}
    assert all(e["max_abs_diff"] <= 1e-4 for e in parity["edges"])
    medmm("predict", run, "--data", short, "--out", tmp_path / "torch.csv")
    medmm("predict", export, "--data", short, "--out", tmp_path / "onnx.csv")
    a, b = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert a["id"].tolist() == b["id"].tolist() and len(a) >= 2
    assert np.abs(a.filter(like="prob_").to_numpy() - b.filter(like="prob_").to_numpy()).max() < 1e-5
    model = ExportedModel(export)
    statuses = fuzz_rows(create_app(model, max_rows=8), model, max_rows=8)
    assert not server_errors(statuses), server_errors(statuses)
    assert statuses["row-short"] == 200 and statuses["row-long"] == 200


# --------------------------------------------------------------------------- serve: a plugin's task


PLUGIN_FUZZ = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from medmm.cli import main
from medmm.deploy.runtime import ExportedModel
from medmm.deploy.service import create_app
from tests.serve_fuzz import fuzz_rows
tmp = Path(sys.argv[1])
for argv in (["run", "discrete-survival", "--data", str(tmp / "gbsg2.csv"), "--out", str(tmp / "run"), "--quiet",
              "--set", "data.time=time", "--set", "data.event=cens", "--set", "data.id_column=patient",
              "--set", "data.horizon=1825", "--set", "engine.epochs=1", "--set", "engine.min_steps=0",
              "--set", "engine.bootstrap=0", "--set", "engine.device=cpu"],
             ["export", str(tmp / "run"), "--out", str(tmp / "export"), "--exporter", "torchscript"]):
    assert main(argv) == 0, argv
model = ExportedModel(tmp / "export")
edges = json.loads((tmp / "export" / "manifest.json").read_text())["parity"]["edges"]
print(json.dumps({"task": model.task, "edges": edges, "statuses": fuzz_rows(create_app(model, max_rows=8), model, 8)}))
"""


@pytest.mark.slow
def test_a_plugin_tasks_export_is_edge_checked_and_its_service_survives_the_fuzz_list(
        tmp_path: Path, example_plugin: tuple[Path, Path]) -> None:
    """The example third-party package (examples/medmm-example-plugin), installed as a user would (conftest):
    its discrete-survival task exports through its own runtime reader, the parity check covers
    the edges of its batch axis, and ``medmm serve`` answers the fuzz list without a 5xx."""
    import json

    lifelines = pytest.importorskip("lifelines")
    target, _ = example_plugin
    lifelines.datasets.load_gbsg2().iloc[:240].to_csv(tmp_path / "gbsg2.csv", index_label="patient")
    out = subprocess.run([sys.executable, "-c", PLUGIN_FUZZ, str(tmp_path), str(ROOT)], capture_output=True,
                         text=True, timeout=900,
                         env={**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])},
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["task"] == "discrete-survival"
    assert {e["sizes"]["batch"] for e in result["edges"]} >= {1} and len(result["edges"]) >= 2
    assert all(e["max_abs_diff"] is not None and e["max_abs_diff"] <= 1e-4 for e in result["edges"])
    statuses = result["statuses"]
    assert not {k: v for k, v in statuses.items() if v >= 500}, statuses
    assert statuses["row-short"] == 200 and statuses["empty-row"] == 422


def test_a_plugin_command_hook_raising_keyboard_interrupt_does_not_kill_the_cli(fake_plugin) -> None:
    env = fake_plugin("cmd_interrupter", """
        from medmm import hookimpl

        @hookimpl
        def register_commands(cli):
            raise KeyboardInterrupt
        """)
    out = subprocess.run([sys.executable, "-m", "medmm", "--help"], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120, check=False)
    assert out.returncode == 0 and "register_commands failed: KeyboardInterrupt" in out.stderr, out.stderr[-2000:]


def test_nested_interrupt_guards_share_the_users_ctrl_c() -> None:
    from medmm.plugins import user_interrupts

    with user_interrupts() as outer:
        with user_interrupts() as inner, pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bounded: the handler runs between bytecodes
                pass
        assert inner is outer and outer == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
