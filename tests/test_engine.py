"""The training engine: determinism, accumulation, exact resume after SIGKILL, DDP, faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medmm.engine import TrainingError
from medmm.engine.checkpoint import read_state, save_checkpoint
from medmm.errors import CheckpointError
from tests.toy_task import train

TOY = Path(__file__).with_name("toy_task.py")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> bool:
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-4) for k in a)


@pytest.mark.slow
def test_seeded_runs_are_identical_and_seed_matters(tmp_path: Path) -> None:
    a = train(tmp_path / "a", checkpoint_every_steps=1000)
    b = train(tmp_path / "b", checkpoint_every_steps=1000)
    assert same(a, b)
    assert (tmp_path / "a" / "checkpoints" / "best" / "model.safetensors").exists()
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # train + val record per epoch, 3 epochs


@pytest.mark.slow
def test_grad_accumulation_matches_large_batch(tmp_path: Path) -> None:
    big = train(tmp_path / "big", dropout=0.0, batch_size=16, grad_accum=1, checkpoint_every_steps=1000)
    acc = train(tmp_path / "acc", dropout=0.0, batch_size=8, grad_accum=2, checkpoint_every_steps=1000)
    small = train(tmp_path / "small", dropout=0.0, batch_size=8, grad_accum=1, checkpoint_every_steps=1000)
    assert close(big, acc)
    assert not close(big, small)  # the comparison can fail: half the batch size is another run


def _run_toy(run: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(TOY), str(run), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(tmp_path: Path) -> None:
    opts = ("epochs=3", "checkpoint_every_steps=4")
    ref = _run_toy(tmp_path / "ref", *opts)
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()

    run = tmp_path / "killed"
    proc = _run_toy(run, *opts)
    state_file = run / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill mid-epoch 2, at some step after a checkpoint was written
        try:
            if read_state(run / "checkpoints" / "last", verify=False)["state"]["global_step"] >= 30:
                break
        except (CheckpointError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "final.safetensors").exists(), "the run finished before it could be killed"
    killed_at = read_state(run / "checkpoints" / "last")["state"]
    assert 0 < killed_at["global_step"] < 72 and state_file.exists()

    resumed = _run_toy(run, "--resume", *opts)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert same(load_file(str(ref_path := tmp_path / "ref" / "final.safetensors")), load_file(str(run / "final.safetensors")))
    assert ref_path.exists()
    ref_metrics = [l for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    got_metrics = [l for l in (run / "metrics.jsonl").read_text().splitlines()]
    strip = lambda lines: [{k: v for k, v in __import__("json").loads(l).items() if k != "samples_per_s"} for l in lines]
    assert strip(ref_metrics) == strip(got_metrics)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    one = _run_toy(tmp_path / "one", "dropout=0", "batch_size=16", "checkpoint_every_steps=1000", "epochs=2")
    assert one.wait(timeout=300) == 0, one.stderr.read().decode()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", _free_port(), str(TOY), str(tmp_path / "two"), "dropout=0", "batch_size=8",
                          "checkpoint_every_steps=1000", "epochs=2"], env=env, capture_output=True, timeout=300)
    assert two.returncode == 0, two.stderr.decode()[-3000:]
    a = load_file(str(tmp_path / "one" / "final.safetensors"))
    b = load_file(str(tmp_path / "two" / "final.safetensors"))
    assert close(a, b, atol=1e-5)
    assert (tmp_path / "two" / "metrics.jsonl").read_text() and not (tmp_path / "two" / "rank1").exists()


@pytest.mark.slow
def test_torchrun_ranks_agree_on_the_time_limit_plan_and_stop(tmp_path: Path) -> None:
    """#29: rank 0 plans engine.time_limit and decides the stop; both ranks train the same steps (a rank
    that stepped alone would hang DDP). Steps take 0.02 s, then 1 s from step 8: the plan (made at 0.02
    s/step) lowers 480 steps, then the slow steps reach the limit before the plan's end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", _free_port(), str(TOY), str(tmp_path / "two"), "batch_size=8", "epochs=20",
                          "checkpoint_every_steps=1000", "time_limit=14", "sleep=[0.02, 8, 1.0]"],
                         env=env, capture_output=True, timeout=240)
    out, err = two.stdout.decode(), two.stderr.decode()
    assert two.returncode == 0, err[-3000:]
    import re

    lines = "".join(p.read_text() for p in sorted((tmp_path / "two").glob("done-rank*.txt")))
    done = sorted(re.findall(r"toy rank (\d): step (\d+) of (\d+), stopped (.+)", lines))
    assert [d[0] for d in done] == ["0", "1"], out
    assert done[0][1:] == done[1][1:], done  # the same step, plan and stop on both ranks
    step, total, stopped = int(done[0][1]), int(done[0][2]), done[0][3]
    assert 8 < step < total < 480 and stopped == "time limit", done
    assert len(re.findall(r"warning: the time limit \(14 s\) fits \d+ of 480", err)) == 1, err  # by rank 0 alone
    assert err.count(f"warning: time limit (14 s) reached at step {step} of {total}") == 1, err


@pytest.mark.slow
def test_nan_loss_stops_and_names_the_step(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="step 5"):
        train(tmp_path / "r", nan_at_step=5, checkpoint_every_steps=2)
    state = read_state(tmp_path / "r" / "checkpoints" / "last")["state"]
    assert state["global_step"] == 4
    weights = load_file(str(tmp_path / "r" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.slow
def test_nan_loss_skip_policy_skips_the_step(tmp_path: Path) -> None:
    weights = train(tmp_path / "r", nan_at_step=5, nan_policy="skip", checkpoint_every_steps=1000)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert read_state(tmp_path / "r" / "checkpoints" / "last")["state"]["skipped_steps"] == 1


@pytest.mark.slow
def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    train(tmp_path / "r", epochs=1, checkpoint_every_steps=1000)
    for kind in ("last", "best"):  # with only `last` damaged, resume falls back to `best` (test_reliability)
        weights = tmp_path / "r" / "checkpoints" / kind / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        train(tmp_path / "r", resume=True, epochs=2)


def test_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "state.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not a medmm checkpoint"):
        read_state(tmp_path / "last")


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(2, 1)
    save_checkpoint(tmp_path / "last", model, {"state": {"global_step": 1}})
    import medmm.engine.checkpoint as ck

    def boom(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last", model, {"state": {"global_step": 2}})
    assert read_state(tmp_path / "last")["state"]["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temp litter


@pytest.mark.slow
def test_callbacks_see_train_end_once_after_the_last_checkpoint(tmp_path: Path) -> None:
    from medmm.engine import Trainer
    from tests.toy_task import ToyTask, make_cfg

    events: list[tuple[str, object]] = []

    class Recorder:
        def on_evaluate(self, trainer: object, record: dict) -> None:
            events.append(("evaluate", record["split"]))

        def on_train_end(self, trainer: object, result: object) -> None:
            last = tmp_path / "checkpoints" / "last"
            events.append(("train_end", (result.state.finished, result.state.global_step, last.is_dir())))

    cfg = make_cfg(epochs=1, max_steps=3, checkpoint_every_steps=1000)
    task = ToyTask(cfg, tmp_path)
    Trainer(task, cfg, tmp_path, quiet=True, callbacks=[Recorder()]).fit(task.build_model(), task.build_data(tmp_path))
    assert events[-1] == ("train_end", (True, 3, True)) and [e for e, _ in events].count("train_end") == 1
    assert ("evaluate", "val") in events


def test_optimizer_is_fused_adamw_with_the_reference_update() -> None:
    from medmm.engine.schedule import build_optimizer

    def run(fused: bool) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
        opt = build_optimizer(model, 1e-2, 0.01, None)
        if not fused:  # the same groups through the per-parameter reference loop
            groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=1e-2, foreach=False)
            assert not any(g["fused"] for g in opt.param_groups)
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return opt, [p.detach().clone() for p in model.parameters()]

    fused_opt, fused_params = run(True)
    assert fused_opt.defaults["fused"] is True
    assert [g["weight_decay"] for g in fused_opt.param_groups] == [0.01, 0.0]  # decay groups kept
    for a, b in zip(fused_params, run(False)[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
