"""Fault cases a careful user hits (issue #13): kill/resume, other data, odd folders, bad values,
hostile plugins, unwritable outputs, reversible ids, damaged checkpoints. Add new ones here."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from medmm.errors import ConfigError, MedmmError
from tests.conftest import ROOT, run_cli

ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _spec(name: str):
    from medmm.plugins import get_registry

    return get_registry().get("task", name)


def _binary_table(path: Path, n: int = 240, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n).round(3), rng.normal(size=n).round(3)
    y = (x1 + 0.3 * rng.normal(size=n) > 0).astype(int)
    pd.DataFrame({"pid": [f"p{i}" for i in range(n)], "x1": x1, "x2": x2, "y": y}).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- 4. ranges


@pytest.mark.parametrize("item, message", [
    ("engine.batch_size=0", "'engine.batch_size' must be >= 1 (got 0)"),
    ("engine.lr=-1", "'engine.lr' must be >= 0"),
    ("engine.epochs=0", "'engine.epochs' must be >= 1"),
    ("engine.epochs=-1", "'engine.epochs' must be >= 1"),
    ("engine.warmup_ratio=1.5", "'engine.warmup_ratio' must be in [0, 1)"),
    ("engine.lr=.nan", "'engine.lr' must be a finite number"),
    ("engine.lr=inf", "'engine.lr' must be a finite number"),  # #28: inf passed ge=0, then a NaN loss
    ("engine.lr=.inf", "'engine.lr' must be a finite number"),
    ("engine.max_grad_norm=1e400", "'engine.max_grad_norm' must be a finite number"),
    ("engine.privacy.target_epsilon=inf", "'engine.privacy.target_epsilon' must be a finite number"),
    ("engine.grad_accum=0", "'engine.grad_accum' must be >= 1"),
    ("data.val_fraction=1", "'data.val_fraction' must be in [0, 1)"),  # a task's own range
    ("model.dropout=-0.1", "'model.dropout' must be in [0, 1)"),
])
def test_out_of_range_values_are_one_line_errors(item: str, message: str) -> None:
    from medmm.runner import resolved_config

    with pytest.raises(ConfigError) as err:
        resolved_config(_spec("tabular-risk"), None, [item])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_boundary_values_stay_allowed(tmp_path: Path) -> None:
    from medmm.runner import resolved_config

    cfg = resolved_config(_spec("tabular-risk"), None, ["engine.lr=0", "engine.max_steps=0", "engine.patience=0",
                                                        "data.val_fraction=0", "engine.warmup_ratio=0.99"])
    assert cfg["engine"]["lr"] == 0.0
    user = tmp_path / "my.yaml"  # a user's YAML is checked the same way
    user.write_text("engine:\n  batch_size: -4\n")
    with pytest.raises(ConfigError, match="batch_size' must be >= 1"):
        resolved_config(_spec("tabular-risk"), user, [])


# --------------------------------------------------------------------------- 7. plugins


def test_plugin_calling_sys_exit_at_import_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medmm.plugins as plugins

    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "exits_at_register.py").write_text(
        "from medmm import hookimpl\n@hookimpl\ndef register_tasks(register):\n    raise SystemExit('bye')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = plugins._sorted_entry_points()
    fakes = [EntryPoint(name=n, value=n, group="medmm") for n in ("exits_at_import", "exits_at_register")]
    monkeypatch.setattr(plugins, "_sorted_entry_points", lambda: [*real, *fakes])
    loaded = plugins.load_plugins()
    errors = {i.name: i.error for i in loaded.infos}
    assert "SystemExit(3)" in errors["exits_at_import"]
    assert "SystemExit('bye')" in errors["exits_at_register"]
    assert "tabular-risk" in loaded.registry.names("task")  # everything else still works
    monkeypatch.setenv("MEDMM_STRICT_PLUGINS", "1")
    with pytest.raises(MedmmError, match="exits_at_import"):
        plugins.load_plugins()


@pytest.mark.slow
def test_cli_survives_a_plugin_that_exits(fake_plugin) -> None:
    env = fake_plugin("quitter", "import sys\nsys.exit(0)\n")
    out = run_cli("plugins", env=env)
    assert out.returncode == 0 and "quitter" in out.stdout and "FAILED" in out.stdout, out.stderr
    assert run_cli("tasks", env=env).stdout.count("tabular-risk") == 1


# --------------------------------------------------------------------------- 1. fingerprints


def test_fingerprint_names_what_changed(tmp_path: Path) -> None:
    from medmm.fingerprint import differences, fingerprint

    a = _binary_table(tmp_path / "a.csv")
    df = pd.read_csv(a)
    ref = fingerprint(a)
    assert ref["rows"] == 240 and not differences(ref, fingerprint(a))
    df.assign(x2=df.x2 + 0.001).to_csv(tmp_path / "b.csv", index=False)
    assert differences(ref, fingerprint(tmp_path / "b.csv")) == ["column(s) 'x2' changed"]
    df.iloc[:200].drop(columns="pid").to_csv(tmp_path / "c.csv", index=False)
    assert differences(ref, fingerprint(tmp_path / "c.csv")) == ["240 rows, now 200", "column(s) 'pid' missing"]

    folder = tmp_path / "dicom"
    (folder / "CT").mkdir(parents=True)
    (folder / "CT" / "1.dcm").write_bytes(b"a" * 100)
    (folder / "CT" / "2.dcm").write_bytes(b"b" * 100)
    before = fingerprint(folder)
    (folder / "CT" / "2.dcm").write_bytes(b"c" * 100)  # same size, new content
    st = (folder / "CT" / "2.dcm").stat()  # folders are fingerprinted by size + mtime (#30): a rewrite
    os.utime(folder / "CT" / "2.dcm", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # within one clock tick reads as one
    (folder / "CT" / "3.dcm").write_bytes(b"d")
    assert differences(before, fingerprint(folder)) == ["1 new file(s): 'CT/3.dcm'", "1 file(s) changed: 'CT/2.dcm'"]
    assert "aaaa" not in json.dumps(before)  # hashes only, never content
    assert before["method"] == "size+mtime"


def test_fingerprint_read_does_not_repeat_the_tasks_warnings(tmp_path: Path, caplog) -> None:
    from medmm.fingerprint import fingerprint

    (tmp_path / "t.csv").write_text('id,income\n1,"395,000"\n2,"1,200"\n')
    with caplog.at_level("WARNING"):
        assert fingerprint(tmp_path / "t.csv")["rows"] == 2
    assert not caplog.records


# --------------------------------------------------------------------------- 2./3. run folders


def test_out_folder_holding_user_files_is_refused(tmp_path: Path) -> None:
    from medmm.runner import prepare_run_dir

    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "predictions.csv").write_text("my own work\n")
    (mine / "config.yaml").write_text("mine: 1\n")
    with pytest.raises(MedmmError, match="not a medmm run; medmm never overwrites"):
        prepare_run_dir(mine, resume=False)
    assert (mine / "predictions.csv").read_text() == "my own work\n"
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "predictions.csv"]
    prepare_run_dir(tmp_path / "empty", resume=False)  # new and empty folders are fine
    prepare_run_dir(tmp_path / "empty", resume=False)


def _fake_run(run: Path, **info: object) -> Path:
    run.mkdir(parents=True)
    for name in ("config.yaml", "train.log", "skipped.csv"):
        (run / name).write_text("x")
    (run / "cache").mkdir()
    files = ["config.yaml", "skipped.csv", "train.log"]  # the manifest medmm records (#28)
    (run / "run.json").write_text(json.dumps({"task": "tabular-risk", "files": files, **info}))
    return run


def test_failed_run_without_checkpoint_is_replaced_and_says_so(tmp_path: Path, capsys) -> None:
    from medmm.runner import prepare_run_dir

    run = _fake_run(tmp_path / "r", status="failed", error="target column 'nope' is not in the data")
    with pytest.raises(MedmmError, match="failed before its first checkpoint .*target column 'nope'.*--out"):
        prepare_run_dir(run, resume=True)
    prepare_run_dir(run, resume=False)
    assert "replacing the run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["cache"]  # outputs gone, the reusable cache kept

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a run SIGKILLed before its checkpoint: "running", but its process is gone
    run2 = _fake_run(tmp_path / "r2", status="running", pid=dead.pid, host=socket.gethostname())
    prepare_run_dir(run2, resume=False)
    assert "failed before its first checkpoint (killed)" in capsys.readouterr().err

    live = _fake_run(tmp_path / "r3", status="running", pid=dead.pid, host=socket.gethostname())
    holder = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")
    alive = subprocess.Popen([sys.executable, "-c", holder, str(live / ".run.lock")], stdout=subprocess.PIPE, text=True)
    try:  # the run's lock is held by a live process: never replaced, whatever run.json's pid says
        assert alive.stdout.readline().strip() == "locked"
        with pytest.raises(MedmmError, match="still running"):
            prepare_run_dir(live, resume=False)
        with pytest.raises(MedmmError, match="still running"):
            prepare_run_dir(live, resume=True)
    finally:
        alive.kill()
        alive.wait()
    prepare_run_dir(live, resume=False)  # its holder is gone (SIGKILL): the lock went with it
    assert "failed before its first checkpoint (killed)" in capsys.readouterr().err

    with_ckpt = _fake_run(tmp_path / "r4", status="failed", error="boom")
    (with_ckpt / "checkpoints" / "last").mkdir(parents=True)
    (with_ckpt / "checkpoints" / "last" / "state.json").write_text("{}")
    with pytest.raises(MedmmError, match="failed .boom. after a checkpoint; continue it with --resume"):
        prepare_run_dir(with_ckpt, resume=False)


# --------------------------------------------------------------------------- 5./6. predict


@pytest.mark.parametrize("labels", ["int", "float", "str"])
def test_positive_label_matches_numeric_labels(labels: str) -> None:
    from medmm.data.tabular.preprocess import prepare_target

    y = pd.Series([0, 1, 1, 0, 1])
    y = {"int": y, "float": y.astype(float), "str": y.astype(str)}[labels]
    t = prepare_target(pd.DataFrame({"y": y}), "binary", "y", positive_label="1")
    assert t.y.tolist() == [0, 1, 1, 0, 1]
    with pytest.raises(ConfigError, match="positive_label 'yes'"):
        prepare_target(pd.DataFrame({"y": y}), "binary", "y", positive_label="yes")


def test_unwritable_predict_out_fails_before_any_work(tmp_path: Path) -> None:
    from medmm.runner import predict_run

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = [blocker / "preds.csv", tmp_path]  # under a file; a folder
    if os.geteuid() == 0:
        bad.append(Path("/proc/medmm-preds.csv"))  # root ignores permissions; /proc refuses files
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        bad.append(ro / "preds.csv")
    for out in bad:  # the run dir does not even exist: the --out check comes first
        with pytest.raises(MedmmError, match=r"^--out "):
            predict_run(tmp_path / "no-such-run", tmp_path / "data.csv", out, registry=None)


# --------------------------------------------------------------------------- 8. pseudonyms


@pytest.mark.slow  # imports the image task (timm, pydicom): seconds on a cold process
def test_hashed_patient_id_is_a_keyed_hmac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm.deid.pseudonyms import new_key_file
    from medmm.runner import resolved_config
    from medmm_plugins.image_cls.task import ImageClsTask

    cfg = resolved_config(_spec("image-cls"), None, ["output.include_patient_id=true", "engine.device=cpu"])
    items = [SimpleNamespace(key=f"{i}.dcm", record=SimpleNamespace(sop_uid=f"1.2.{i}", patient_id=pid))
             for i, pid in enumerate(["PAT001", "PAT002", "PAT001"])]
    ids = []
    for name in ("key1", "key2"):
        monkeypatch.setenv("MEDMM_DEID_KEY_FILE", str(new_key_file(tmp_path / name)))
        cols = ImageClsTask(cfg, tmp_path)._unit_columns(items)
        ids.append([cols[f"{i}.dcm"]["patient_id"] for i in range(3)])
    one, two = ids
    assert one[0] == one[2] != one[1]  # one patient, one pseudonym
    plain = hashlib.sha256(b"PAT001").hexdigest()
    assert plain[:16] not in one[0] and "PAT001" not in one[0]  # not the reversible unsalted hash
    assert one[0] != two[0]  # depends on the secret key


# --------------------------------------------------------------------------- 9. engine


@pytest.mark.slow
def test_every_step_skipped_fails_instead_of_done(tmp_path: Path) -> None:
    from medmm.engine import Trainer, TrainingError
    from tests.toy_task import ToyTask, make_cfg

    class NaNTask(ToyTask):
        def step(self, model, batch):
            out = super().step(model, batch)
            return {**out, "output": out["output"] * float("nan")} if model.training else out

    cfg = make_cfg(nan_policy="skip", epochs=1, checkpoint_every_steps=1000)
    task = NaNTask(cfg, tmp_path)
    with pytest.raises(TrainingError, match="every optimizer step .* skipped"):
        Trainer(task, cfg, tmp_path, quiet=True).fit(task.build_model(), task.build_data(tmp_path))


@pytest.mark.slow
def test_truncated_last_falls_back_to_best_and_orphans_are_cleaned(tmp_path: Path, capsys) -> None:
    from medmm.engine.checkpoint import read_state
    from tests.toy_task import train

    run = tmp_path / "r"
    train(run, epochs=2, checkpoint_every_steps=1000)
    ck = run / "checkpoints"
    best_step = read_state(ck / "best")["state"]["global_step"]
    weights = ck / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    (ck / ".last-k1ll3d").mkdir()  # a writer killed mid-checkpoint
    (ck / ".last-k1ll3d" / "model.safetensors").write_bytes(b"\0" * 4096)
    train(run, resume=True, epochs=3, checkpoint_every_steps=1000)
    err = capsys.readouterr().err
    assert "truncated" in err and "resuming from checkpoints/best" in err and "not bit-exact" in err
    state = read_state(ck / "last")["state"]
    assert state["finished"] and state["epoch"] == 3 and best_step > 0
    assert sorted(p.name for p in ck.iterdir()) == ["best", "last"]
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # history rewound to best, no duplicates


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def _medmm(capsys, *args: str) -> tuple[int, str, str]:
    """``medmm ARGS`` in this process (the CLI's own entry point), returning (code, stdout, stderr)."""
    from medmm.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_sigkilled_run_resumes_only_on_its_own_data(tmp_path: Path, capsys) -> None:
    """A real ``medmm run`` killed with SIGKILL after a checkpoint; resumed with other data (refused,
    naming the column), with its data (done), and once more when finished (no duplicate test row);
    then ``medmm predict`` on labelled files whose 0/1 labels are int, float or text."""
    data = _binary_table(tmp_path / "train.csv")
    run = tmp_path / "run"
    args = ["run", "tabular-risk", "--data", str(data), "--set", "data.target=y", "--set", "data.id_column=pid",
            "--set", "engine.bootstrap=0", "--set", "model.backbone=mlp", "--quiet"]  # one training, no auto choice
    proc = subprocess.Popen([sys.executable, "-m", "medmm", *args, "--out", str(run), "--set", "engine.epochs=400",
                             "--set", "engine.patience=0", "--set", "engine.checkpoint_every_steps=1"],
                            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = run / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["state"]["epoch"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # as a kill leaves it
    (run / "checkpoints" / ".last-orphan").mkdir()
    artifacts = _files(run / "artifacts")

    other = pd.read_csv(data)
    other.loc[5, "x2"] = 9.0
    other.to_csv(tmp_path / "other.csv", index=False)
    code, _, err = _medmm(capsys, *args[:3], str(tmp_path / "other.csv"), *args[4:], "--resume", str(run))
    assert code == 2 and "is not the data this run started with" in err and "'x2' changed" in err, err
    code, _, err = _medmm(capsys, *args, "--out", str(run))  # a new run into it is refused too
    assert code == 2 and f"--resume {run}" in err, err

    code, _, err = _medmm(capsys, *args, "--resume", str(run), "--set", "engine.epochs=3")
    assert code == 0, err[-2000:]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["error"] is None
    assert not (run / "checkpoints" / ".last-orphan").exists()
    after = _files(run / "artifacts")
    assert {k: after[k] for k in artifacts} == artifacts  # never rewritten on resume

    code, _, err = _medmm(capsys, *args, "--resume", str(run), "--set", "engine.epochs=3")
    assert code == 0, err[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows].count("test") == 1

    test = pd.read_csv(data).iloc[:60]
    for kind in (int, float, str):
        path = tmp_path / f"labelled-{kind.__name__}.csv"
        test.assign(y=test.y.astype(kind)).to_csv(path, index=False)
        code, out, err = _medmm(capsys, "predict", str(run), "--data", str(path),
                                "--out", str(tmp_path / f"p-{kind.__name__}.csv"))
        assert code == 0, err[-2000:]
        assert "60 predictions" in out and "auroc" in out, out


@pytest.mark.slow
def test_other_ranks_keep_their_scratch_files_out_of_the_run_dir(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What rank 1 of ``torchrun`` does in the runner (its reports and caches go to a temporary
    folder that is removed at the end), without the cost of starting a process group."""
    import tempfile

    from medmm.runner import resolved_config, run_task

    made: list[Path] = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(Path(real(*a, **k))) or made[-1])
    monkeypatch.setenv("RANK", "1")
    data = _binary_table(tmp_path / "train.csv", n=120)
    cfg = resolved_config(_spec("tabular-risk"), None, ["data.target=y", "engine.epochs=1", "engine.bootstrap=0",
                                                        "engine.device=cpu"])
    run = tmp_path / "run"
    run.mkdir()  # rank 0 made it; with no process group the engine here writes as rank 0 would
    run_task(_spec("tabular-risk"), cfg, data, run, quiet=True)
    scratch = [m for m in made if m.name.startswith("medmm-rank1-")]
    assert len(scratch) == 1 and not scratch[0].exists()  # rank 1's splits/skipped reports went there
    assert not (run / ".ranks").exists() and not (run / "splits.csv").exists() and not (run / "run.json").exists()


@pytest.mark.slow  # imports the fusion task (torch, transformers): seconds on a cold process
def test_fusion_predict_matches_labels_written_as_numbers() -> None:
    from medmm_plugins.fusion.rows import label_key

    assert {label_key(v) for v in ("1", "1.0", " 1 ")} == {"1"} and label_key("0.5") == "0.5"
    assert label_key("yes") == "yes" and label_key("nan") == "nan"


def test_a_running_run_is_seen_running_from_another_process_until_it_ends(tmp_path: Path) -> None:
    from medmm import rundir

    run = tmp_path / "run"
    run.mkdir()
    probe = ("import sys; from pathlib import Path; from medmm import rundir; p = Path(sys.argv[1]); "
             "print(rundir.status(rundir.read_info(p), p))")
    rundir.start(run, {"task": "tabular-risk"})
    try:
        seen = subprocess.run([sys.executable, "-c", probe, str(run)], capture_output=True, text=True, check=True)
        assert seen.stdout.strip() == "running"
        steal = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from medmm import rundir; "
                                "rundir.start(Path(sys.argv[1]))", str(run)], capture_output=True, text=True)
        assert steal.returncode != 0 and "in use by another running medmm process" in steal.stderr
    finally:
        rundir.finish(run)
    seen = subprocess.run([sys.executable, "-c", probe, str(run)], capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == "done"


def test_finish_releases_the_lock_even_without_run_json(tmp_path: Path) -> None:
    from medmm import rundir

    run = tmp_path / "run"
    run.mkdir()
    rundir.start(run, {"task": "tabular-risk"})
    (run / "run.json").unlink()  # e.g. removed by hand while the run ran
    rundir.finish(run)
    assert run.resolve() not in rundir._held
    probe = ("import sys; from pathlib import Path; from medmm import rundir; "
             "print(rundir._locked_elsewhere(Path(sys.argv[1]) / rundir.LOCK))")
    seen = subprocess.run([sys.executable, "-c", probe, str(run)], capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == "False"
