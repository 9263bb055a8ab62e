"""engine.time_limit / --time-limit: the planner, the stop at the limit, the cheaper recipe, and the ETA
(medmm.engine.budget), driven by a fake clock: a training step costs 1 s of it, an evaluation batch 0.05 s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.toy_task import ENGINE, ToyTask, make_cfg


class Clock:
    """A fake clock the toy task advances: each training step ``per_step`` seconds, each eval batch 0.05 s."""

    def __init__(self) -> None:
        self.t = 0.0
        self.per_step = 1.0

    def __call__(self) -> float:
        return self.t


CLOCK = Clock()


class SlowToy(ToyTask):
    """The toy task on the fake clock; ``model.slow: false`` (its cheaper recipe) makes a step 100x cheaper."""

    def step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        slow = self.cfg.get("model", {}).get("slow", True)
        CLOCK.t += (CLOCK.per_step if slow else 0.01) if model.training else 0.05
        return super().step(model, batch)


def _fit(run: Path, limit: float | None, *, resume: bool = False, slow_after: int | None = None,
         per_step: float = 1.0, **engine: Any) -> tuple[Any, Any, Any]:
    from medmm.engine import Trainer
    from medmm.engine.budget import Budget, activate

    cfg = make_cfg(**{"epochs": 4, "checkpoint_every_steps": 50, **engine})
    task = SlowToy(cfg, run)
    data = task.build_data(Path("."))
    model = task.build_model()
    run.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(task, cfg, run, quiet=True)
    if slow_after is not None:  # from this step on a step costs 4 s (the machine got busy)
        trainer.callbacks.append(type("Slower", (), {"on_evaluate": lambda self, tr, rec: setattr(
            CLOCK, "per_step", 4.0 if tr.state.global_step >= slow_after else 1.0)})())
    CLOCK.per_step = per_step
    with activate(Budget(limit, clock=CLOCK)) as budget:
        trainer.fit(model, data, resume=resume)
    return trainer, budget, model


@pytest.mark.parametrize("text, seconds", [(600, 600.0), ("600", 600.0), ("90s", 90.0), ("10m", 600.0),
                                           ("1h", 3600.0), ("1h30m", 5400.0), ("2.5 min", 150.0), (None, None)])
def test_durations_parse(text: Any, seconds: float | None) -> None:
    from medmm.config.engine import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("junk", ["junk", "10x", "-5", "0", "10m junk", "m", True])
def test_junk_durations_are_one_line_errors(junk: Any) -> None:
    from medmm.config.engine import parse_duration
    from medmm.runner import resolved_config
    from medmm.errors import ConfigError
    from medmm.plugins import get_registry

    with pytest.raises(ValueError):
        parse_duration(junk)
    if isinstance(junk, str):
        with pytest.raises(ConfigError) as err:
            resolved_config(get_registry().get("task", "tabular-risk"), None, [f"engine.time_limit={junk}"])
        assert "engine.time_limit" in str(err.value) and "\n" not in str(err.value)


def test_evaluations_counted_between_steps() -> None:
    from medmm.engine.budget import evals_between

    assert evals_between(0, 30, 10, 0) == 3  # epoch ends 10, 20, 30
    assert evals_between(0, 25, 10, 0) == 3  # 10, 20 and the last step
    assert evals_between(5, 30, 10, 4) == 8  # 10, 20, 30 + every 4th: 8, 12, 16, 24, 28 (20 counted once)
    assert evals_between(30, 30, 10, 0) == 0


def test_planner_estimates_and_plans_on_a_fake_clock() -> None:
    from medmm.engine.budget import Budget, Planner, Sizes

    clock = Clock()
    sizes = Sizes(n_train=1000, n_val=200, n_test=200, n_boot=0, batch_size=10, baseline=False)
    p = Planner(Budget(100.0, clock=clock, load=lambda: 0.5), total=200, steps_per_epoch=100, eval_every=0, sizes=sizes)
    p.started()
    clock.t = 3.0  # the first step holds 2 s of warm-up
    p.step()
    for _ in range(4):
        clock.t += 0.5
        p.step()
    assert p.step_s() == pytest.approx(0.5)
    clock.t += 4.0
    p.evaluated(4.0, boot_seconds=0.0)
    # 195 steps x 0.5 s + 2 evaluations x 4 s + finish (a test and a val pass, 4 s each, + the report)
    from medmm.engine.budget import REPORT_S

    finish = 8.0 + REPORT_S
    assert p.finish_s() == pytest.approx(finish)
    assert p.remaining_s(5) == pytest.approx(195 * 0.5 + 8.0 + finish)
    total = p.plan(5)  # 100 s budget, 9 spent, 5 kept as margin: the largest total whose steps + evals fit
    assert total is not None and total < 200
    avail = 100.0 - clock.t - 5.0 - finish
    assert p.train_left_s(5, total) <= avail < p.train_left_s(5, total + 1)
    assert p.plan(5) is None  # planned once


def test_time_limit_lowers_the_steps_and_the_run_ends_inside_it(tmp_path: Path) -> None:
    trainer, budget, _ = _fit(tmp_path / "r", 30.0, epochs=2)
    assert trainer.e.max_steps == trainer.total == trainer.state.global_step < 48  # 2 epochs of 24 steps planned down
    assert budget.notes and "fits" in budget.notes[0] and budget.stopped is None
    assert budget.elapsed() + trainer.planner.finish_s() <= 30.0  # training ended with the finish inside the limit


def test_stop_at_the_limit_then_resume_with_more_time_is_exact(tmp_path: Path) -> None:
    ref, _, ref_model = _fit(tmp_path / "ref", None, epochs=2)  # no limit: the whole 48 steps
    trainer, budget, _ = _fit(tmp_path / "run", 75.0, slow_after=12, epochs=2)  # the plan fits at 1 s/step; then 4 s
    assert trainer.stopped == budget.stopped == "time limit"
    assert 12 < trainer.state.global_step < 48 and trainer.e.max_steps == 0  # stopped, not planned down
    assert budget.elapsed() <= 75.0 - trainer.planner.finish_s()  # the finish still fits
    assert (tmp_path / "run" / "checkpoints" / "best").exists()
    resumed, budget2, model = _fit(tmp_path / "run", 1000.0, resume=True, epochs=2)
    assert resumed.state.global_step == 48 and budget2.stopped is None
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_eta_line_names_steps_evaluations_and_finish(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lines: list[str] = []
    monkeypatch.setattr("medmm.runlog.echo", lambda msg, **_: lines.append(msg))
    _fit(tmp_path / "r", None, epochs=2, per_step=20.0)
    assert len(lines) == 2 and "after the first evaluation" in lines[1]
    assert "optimizer steps at 20.00 s/step" in lines[0] and "then test, baseline, bootstrap and report" in lines[0]
    assert "faster on this CPU" in lines[0] and "--time-limit" in lines[0]  # 43 steps x 20 s left: the task's hints


@pytest.mark.slow
def test_run_switches_to_the_cheaper_recipe_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    import medmm.engine.budget as budget_mod
    from medmm.runner import resolved_config, run_task
    from medmm.task import TaskSpec

    (tmp_path / "toy.yaml").write_text(yaml.safe_dump({
        "seed": 0, "model": {"dropout": 0.2, "slow": True, "nan_at_step": None},
        "engine": {**ENGINE, "epochs": 20, "min_steps": 0, "checkpoint_every_steps": 50}}))
    (tmp_path / "data.csv").write_text("a\n1\n")
    spec = TaskSpec("toy", "tabular", "toy", tmp_path / "toy.yaml", SlowToy, cheaper_recipe={"model.slow": False})
    post = budget_mod.Budget.__post_init__
    monkeypatch.setattr(budget_mod.Budget, "__post_init__", lambda self: (setattr(self, "clock", CLOCK), post(self)))
    CLOCK.per_step = 1.0
    start = CLOCK.t
    # 25 s: about 17 of the 24 steps of an epoch fit (the finish is measured, ~0 s on the fake clock): too few
    summary = run_task(spec, resolved_config(spec, None, ["engine.time_limit=25"]), tmp_path / "data.csv",
                       tmp_path / "run", quiet=True)
    err = capsys.readouterr().err
    assert "switching to the task's cheaper recipe model.slow=False" in err
    assert summary["time_budget"]["notes"] and summary["time_budget"]["stopped"] is None
    assert CLOCK.t - start <= 25.0
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["model"]["slow"] is False and "cheaper recipe" in (tmp_path / "run" / "config.yaml").read_text()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "done"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["final"] and max(r["step"] for r in rows) == 480  # the cheap recipe trained all its steps


def test_bf16_is_detected_from_the_cpu_flags() -> None:
    from medmm.engine.device import cpu_native_bf16

    assert cpu_native_bf16("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_native_bf16("flags : sse amx_bf16\n")
    assert not cpu_native_bf16("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not cpu_native_bf16("")


@pytest.mark.parametrize("native, bf16_s, chosen", [(False, 0.1, "fp32"), (True, 0.5, "bf16"), (True, 0.95, "fp32")])
def test_cpu_bf16_auto_needs_native_bf16_and_a_faster_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            native: bool, bf16_s: float, chosen: str) -> None:
    """The probe's steps are timed by a fake CPU clock: fp32 1 s, bf16 ``bf16_s``; the weights it leaves are the
    fp32 run's (the probe changes nothing), and only a CPU with native bf16 is probed at all."""
    import medmm.engine.device as device
    from medmm.engine import Trainer

    monkeypatch.setattr(device, "cpu_native_bf16", lambda cpuinfo=None: native)
    clock = {"t": 0.0}
    monkeypatch.setattr("time.process_time", lambda: clock["t"])

    class Timed(ToyTask):
        def step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
            bf16 = torch.is_autocast_enabled("cpu")
            clock["t"] += bf16_s if bf16 else 1.0
            return super().step(model, batch)

    cfg = make_cfg(precision="auto", cpu_bf16="auto", epochs=1)
    task = Timed(cfg, tmp_path)
    data = task.build_data(Path("."))
    model = task.build_model()
    trainer = Trainer(task, cfg, tmp_path, quiet=True)
    probed = {k: v.clone() for k, v in model.state_dict().items()}
    trainer._choose_cpu_precision(model, data, resume=False)
    assert trainer.precision == trainer.state.precision == chosen
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in probed.items())  # the probe left no trace


def test_bf16_probe_takes_the_median_of_interleaved_cpu_timed_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known answer: fp32 steps cost 1.0 CPU s, bf16 0.6, but one bf16 step is hit by a 5 s spike and the
    wall clock (busy machine) makes every bf16 step look 3x slower: the median of 3 CPU-timed steps per
    precision, fp32 / bf16 interleaved, still finds bf16 faster (0.6 <= 0.9 x 1.0)."""
    from medmm.engine.device import PROBE_REPEATS, probe_bf16

    cpu, wall, calls = {"t": 0.0}, {"t": 0.0}, []
    cost = {"fp32": [1.0] * 4, "bf16": [0.6, 0.6, 5.6, 0.6]}  # the first of each is the warm-up
    monkeypatch.setattr("time.process_time", lambda: cpu["t"])
    monkeypatch.setattr("time.perf_counter", lambda: wall["t"])

    def step(precision: str) -> None:
        calls.append(precision)
        c = cost[precision][calls.count(precision) - 1]
        cpu["t"] += c
        wall["t"] += 3 * c if precision == "bf16" else c

    faster, t32, t16 = probe_bf16(step)
    assert PROBE_REPEATS == 3 and calls == ["fp32", "bf16", "fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]
    assert faster and (t32, t16) == pytest.approx((1.0, 0.6))
    # a given clock is used instead (the wall clock here: bf16 1.8 s vs 1.0 s, not faster)
    calls.clear()
    faster, t32, t16 = probe_bf16(step, clock=lambda: wall["t"])
    assert not faster and (t32, t16) == pytest.approx((1.0, 1.8))


def test_eta_expects_early_stopping_patience_evaluations_after_the_best() -> None:
    from medmm.engine.budget import Budget, Planner, Sizes

    sizes = Sizes(n_train=100, n_val=50, n_test=50, n_boot=0, batch_size=10, baseline=False)
    p = Planner(Budget(None, clock=Clock()), total=200, steps_per_epoch=10, eval_every=0, sizes=sizes, patience=3)
    assert p.expected_total(0) == 40  # before any evaluation: patience + 1 epochs
    p.evaluated(1.0, 0.0, bad_evals=0)  # best at the 1st evaluation: expected to improve 1 more, then 3 without
    assert p.expected_total(10) == 50
    for bad in (0, 0, 0, 1):  # 5 evaluations, the best at the 4th
        p.evaluated(1.0, 0.0, bad_evals=bad)
    assert p.expected_total(50) == 50 + (2 * 4 + 3 - 5) * 10
    assert p.expected_total(195) == 200  # never past the plan
    assert Planner(Budget(None), total=100, steps_per_epoch=10, eval_every=0, sizes=sizes).expected_total(0) == 100


def test_junk_time_limit_fails_before_the_demo_builds_its_data(tmp_path: Path) -> None:
    from tests.conftest import cli

    out = cli("demo", "tabular-risk", "--time-limit", "ten minutes", "--out", str(tmp_path / "run"))
    assert out.returncode != 0 and "--time-limit" in out.stderr and "10m" in out.stderr
    assert not (tmp_path / "run").exists()


def test_budget_counts_from_the_process_start() -> None:
    from medmm.engine.budget import process_started

    clock = Clock()
    clock.t = 1000.0
    started = process_started(clock, most_s=1e9)  # this test process started some seconds ago
    assert started < 1000.0
    assert process_started(clock, most_s=0.0) == 1000.0  # older than most_s: not a fresh command, counted from now


def test_step_rate_is_measured_on_the_latest_epoch_not_the_first() -> None:
    from medmm.engine.budget import Budget, Planner, Sizes

    clock = Clock()
    sizes = Sizes(n_train=100, n_val=20, n_test=20, n_boot=0, batch_size=10, baseline=False)
    p = Planner(Budget(None, clock=clock), total=30, steps_per_epoch=10, eval_every=0, sizes=sizes)
    p.started()
    for _ in range(10):  # epoch 1 fills a cache: 3 s per step
        clock.t += 3.0
        p.step()
    clock.t += 4.0
    p.evaluated(4.0, boot_seconds=0.0)
    assert p.step_s() == pytest.approx(3.0)  # only the first epoch measured yet
    for k in range(1, 6):  # epoch 2: 1 s per step
        clock.t += 1.0
        p.step()
        if k < 5:  # too few steps after the evaluation: the first epoch's steps 2-10, the 4 s evaluation excluded
            assert p.step_s() == pytest.approx((9 * 3.0 + k * 1.0) / (9 + k))
    assert p.window_start() == 10 and p.step_s() == pytest.approx(1.0)  # 5 steps of epoch 2: its own rate


def test_after_the_first_evaluation_line_waits_for_the_next_epochs_steps() -> None:
    from medmm.engine.budget import Budget, Planner, Sizes
    from medmm.engine.eta import Eta

    clock = Clock()
    sizes = Sizes(n_train=100, n_val=20, n_test=20, n_boot=0, batch_size=10, baseline=False)
    budget = Budget(None, clock=clock, load=lambda: 4.0)  # 4 runnable per core: fixed costs x 2
    p = Planner(budget, total=30, steps_per_epoch=10, eval_every=0, sizes=sizes)
    eta = Eta(p, "cpu", announce=False)
    p.started()
    for step in range(1, 16):
        clock.t += 3.0 if step <= 10 else 1.0
        p.step()
        eta.step(step)
        if step == 10:
            clock.t += 2.0
            p.evaluated(2.0, boot_seconds=0.0)
            eta.evaluated(step)
            assert [e["label"] for e in budget.etas] == ["after the first steps"]  # not yet: epoch 2 unmeasured
    said = [e for e in budget.etas if e["label"] == "after the first evaluation"]
    assert len(said) == 1 and said[0]["at_s"] == pytest.approx(37.0)  # at step 15
    # 15 steps x 1 s + 2 evaluations x 2 s + finish (test and val passes at 0.1 s/example x 40 + the report)
    from medmm.engine.budget import REPORT_S

    assert said[0]["predicted_s"] == pytest.approx(15 * 1.0 + 2 * 2.0 + 4.0 + 2 * REPORT_S, abs=1e-3)


def test_eta_counts_the_fits_the_run_trains_after_this_one() -> None:
    """model.backbone=auto's first candidate: the estimate holds the next candidate's fit (its probed step
    2 s dearer than this one's) and the run's finish once."""
    from medmm.engine.budget import REPORT_S, Budget, Planner, Sizes

    clock = Clock()
    sizes = Sizes(n_train=100, n_val=20, n_test=20, n_boot=0, batch_size=10, baseline=False)
    budget = Budget(None, clock=clock, load=lambda: 1.0, later=[2.0])
    p = Planner(budget, total=30, steps_per_epoch=10, eval_every=0, sizes=sizes)
    p.started()
    for step in range(1, 16):
        clock.t += 1.0
        p.step()
        if step == 10:
            clock.t += 2.0
            p.evaluated(2.0, boot_seconds=0.0)
    assert p.step_s() == pytest.approx(1.0) and p.one_eval_s() == pytest.approx(2.0)
    # the next fit: 30 steps at 1 + 2 s, 3 evaluations at 2 s + 0.35 x 2 s x 2 validation batches
    assert p.later_s(15) == pytest.approx(30 * 3.0 + 3 * 3.4)
    finish = 0.1 * 40 + REPORT_S  # test and val passes at 0.1 s per example, the report
    assert p.remaining_s(15) == pytest.approx(15 * 1.0 + 2 * 2.0 + 100.2 + finish)
    budget.later = []  # the last candidate: only its own steps are left
    assert p.remaining_s(15) == pytest.approx(15 * 1.0 + 2 * 2.0 + finish)


def test_plan_shares_the_time_limit_with_the_fits_after_this_one() -> None:
    """The first of two equal fits under a 100 s limit gets its share of what is left (in proportion to
    the full cost of each), not all of it; the count of a later fit's steps that fit is known too."""
    from medmm.engine.budget import Budget, Planner, Sizes

    clock = Clock()
    sizes = Sizes(n_train=1000, n_val=200, n_test=200, n_boot=0, batch_size=10, baseline=False)
    budget = Budget(100.0, clock=clock, load=lambda: 0.5, later=[0.0])
    p = Planner(budget, total=200, steps_per_epoch=100, eval_every=0, sizes=sizes)
    p.started()
    clock.t = 3.0
    p.step()
    for _ in range(4):
        clock.t += 0.5
        p.step()
    # 0.5 s/step; an evaluation 0.35 x 0.05 s x 200 = 3.5 s; finish 2 passes x 3.5 s + report 1.5 s = 8.5 s
    assert p.one_eval_s() == pytest.approx(3.5) and p.finish_s() == pytest.approx(8.5)
    # left 100 - 5 spent - 5 margin - 8.5 = 81.5 s; this fit's full rest 104.5 s, the next one's 107 s:
    # this one gets 81.5 x 104.5 / 211.5 = 40.27 s -> (t - 5) x 0.5 + 3.5 <= 40.27 -> t = 78
    assert p.plan(5) == 78
    assert "and 41 s for the fits this run trains after this one" in budget.notes[-1]
    # a later fit whose step is 1.5 s dearer: 2 s/step + (3.5 + 0.35 x 1.5 x 20 batches) / 100 per step
    assert p.steps_that_fit(1.5) == int(81.5 // 2.14)
    assert Planner(Budget(None), total=10, steps_per_epoch=5, eval_every=0, sizes=sizes).steps_that_fit(1.0) is None


def test_step_rate_is_measured_per_token_where_batches_differ_in_length() -> None:
    """Text batches of different real lengths: four short batches (50 tokens, 0.5 s each) measured first do
    not make the epoch's steps (100 tokens on average) look twice as fast."""
    from medmm.engine.budget import Budget, Planner, Sizes

    clock = Clock()
    sizes = Sizes(n_train=200, n_val=20, n_test=20, n_boot=0, batch_size=10, baseline=False)
    p = Planner(Budget(None, clock=clock), total=20, steps_per_epoch=20, eval_every=0, sizes=sizes, work_per_step=100.0)
    p.started()
    clock.t = 1.0
    p.step(120.0)
    for _ in range(4):
        clock.t += 0.5
        p.step(50.0)
    assert p.step_s() == pytest.approx(1.0)  # 0.01 s per token x 100 tokens per step
    assert p.train_left_s(5) == pytest.approx(15 * 1.0 + p.one_eval_s())
    q = Planner(Budget(None, clock=clock), total=20, steps_per_epoch=20, eval_every=0, sizes=sizes)
    q.started()
    for _ in range(5):
        clock.t += 0.5
        q.step()
    assert q.step_s() == pytest.approx(0.5)  # without lengths every step weighs the same


def test_a_fit_with_one_evaluation_says_its_estimate_at_a_quarter_of_its_steps() -> None:
    from medmm.engine.budget import REPORT_S, Budget, Planner, Sizes
    from medmm.engine.eta import Eta

    clock = Clock()
    sizes = Sizes(n_train=400, n_val=20, n_test=20, n_boot=0, batch_size=10, baseline=False)
    budget = Budget(None, clock=clock, load=lambda: 1.0)
    p = Planner(budget, total=40, steps_per_epoch=40, eval_every=0, sizes=sizes)  # one epoch: its evaluation ends it
    eta = Eta(p, "cpu", announce=False)
    p.started()
    for step in range(1, 41):
        clock.t += 1.0
        p.step()
        eta.step(step)
    said = [e for e in budget.etas if e["label"] == "after 25% of the steps (one evaluation, at the end)"]
    assert len(said) == 1 and said[0]["at_s"] == pytest.approx(10.0)
    # 30 steps x 1 s, the evaluation 0.35 x 0.1 s x 20 = 0.7 s, the finish: 40 examples at 0.035 s + the report
    assert said[0]["predicted_s"] == pytest.approx(30.0 + 0.7 + 1.4 + REPORT_S, abs=1e-3)


def test_early_stopping_is_not_expected_before_twice_the_warmup() -> None:
    """A run still improving while its learning rate warms up (40 steps, evaluations every 10) is expected
    to reach its best no sooner than step 80, then stop ``patience`` evaluations later (fusion's demo)."""
    from medmm.engine.budget import Budget, Planner, Sizes

    sizes = Sizes(n_train=100, n_val=50, n_test=50, n_boot=0, batch_size=10, baseline=False)
    p = Planner(Budget(None, clock=Clock()), total=400, steps_per_epoch=10, eval_every=0, sizes=sizes, patience=10,
                warmup=40)
    assert p.expected_total(0) == (8 + 10) * 10
    p.evaluated(1.0, 0.0, bad_evals=0)  # the best at the first evaluation: the warm-up, not the Lindy rule, decides
    assert p.expected_total(10) == 10 + (8 + 10 - 1) * 10
    for _ in range(8):  # 9 evaluations, each the best: improving for as long again (18), then 10 without
        p.evaluated(1.0, 0.0, bad_evals=0)
    assert p.expected_total(90) == 90 + (18 + 10 - 9) * 10


def test_the_metrics_import_is_not_counted_as_the_first_evaluations_cost(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """scikit-learn's metrics import once (~0.5-0.9 s): done before the steps, it no longer makes the first
    evaluation look 35x dearer than the others (the fusion demo's ETA after it was +206 %)."""
    from medmm import metrics

    loaded = {"done": False}
    original = metrics.compute_metrics

    def load_once() -> None:
        if not loaded["done"]:
            CLOCK.t += 5.0  # the one-off import, on the fake clock
            loaded["done"] = True

    def compute(*args: Any, **kwargs: Any) -> Any:
        load_once()  # what a lazy import inside the first metrics call would cost
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics, "preload", load_once)
    monkeypatch.setattr(metrics, "compute_metrics", compute)
    trainer, _, _ = _fit(tmp_path / "r", None, epochs=2)
    first, *later = trainer.planner.eval_s
    assert later and first == pytest.approx(later[0])  # the import happened before the first step


def test_the_finish_counts_the_timed_figures_not_the_report_constant() -> None:
    """report.html's figures (and the decision curves) at the probe figure's measured time: on a quiet or fast
    machine the reserve goes below the quiet-machine constant (tabular-risk's ETA was +95 % on 1.4 s left)."""
    from medmm.engine.budget import REPORT_S, Budget, Planner, Sizes

    sizes = Sizes(n_train=100, n_val=50, n_test=50, n_boot=0, batch_size=10, baseline=False)
    budget = Budget(None, clock=Clock(), load=lambda: 4.0)  # sqrt(4): the constant's load factor is 2
    p = Planner(budget, total=10, steps_per_epoch=10, eval_every=0, sizes=sizes)
    p.evaluated(0.0, 0.0)
    assert p.finish_s() == pytest.approx(2 * REPORT_S)  # no figure timed: the constant, scaled by the load
    budget.figures, budget.figure_s = 5, 0.04
    assert p.finish_s() == pytest.approx(5 * 0.04)  # measured: no load factor, no constant


def test_a_baseline_fitted_before_training_costs_only_its_predictions_and_cis() -> None:
    """The classic baseline fitted before training (medmm.classic.prefit_baseline): its fit is spent, so the
    finish keeps one bootstrap pass for its CIs and paired difference, not the fixed + per-row constants."""
    from medmm.engine.budget import BASELINE_S, BASELINE_S_PER_EXAMPLE, BOOT_PASSES, Budget, Planner, Sizes

    sizes = Sizes(n_train=1000, n_val=50, n_test=100, n_boot=200, batch_size=10, baseline=True)
    budget = Budget(None, clock=Clock(), load=lambda: 0.1)
    budget.figures, budget.figure_s = 2, 0.1
    p = Planner(budget, total=10, steps_per_epoch=10, eval_every=0, sizes=sizes)
    p.evaluated(0.0, 0.001)  # passes free; a resample of every metric 1 ms on val, 2 ms on test (twice the rows)
    one_pass = 200 * 0.001 * 2
    assert p.finish_s() == pytest.approx(BOOT_PASSES * one_pass + BASELINE_S + BASELINE_S_PER_EXAMPLE * 1000 + 0.2)
    budget.baseline_done = True
    assert p.finish_s() == pytest.approx((BOOT_PASSES + 1) * one_pass + 0.2)


def test_a_validation_batch_timed_before_the_steps_sizes_the_evaluations(tmp_path: Path) -> None:
    """A fit whose one evaluation ends it never measures one before its estimate: one validation batch (64 of
    the 90 rows, 0.05 s on the fake clock) is timed before the steps instead of 0.35 of a training step
    (1 s for 16 rows) per example, which made text-cls's evaluation ~8x too dear."""
    trainer, _, _ = _fit(tmp_path / "r", None, epochs=1)
    p = trainer.planner
    assert p.val_example_s == pytest.approx(0.05 / 64)
    assert p.eval_s == [pytest.approx(0.1)]  # the real one: two batches (64 + 26 rows)
    p.eval_s.clear()
    assert p.one_eval_s() == pytest.approx(0.05 * 90 / 64)  # the forward share would say 0.35 / 16 x 90 = 1.97 s


def test_one_figure_is_timed_per_run_before_the_first_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's figure cost is measured once per run (also when a task trains several fits), on the run's
    clock, before the steps (not counted as step time)."""
    calls: list[float] = []

    def probe(clock: Any) -> float:
        calls.append(clock())
        CLOCK.t += 0.3
        return 0.3

    monkeypatch.setattr("medmm.report.time_figure", probe)
    from medmm.engine import Trainer
    from medmm.engine.budget import Budget, activate

    cfg = make_cfg(epochs=1)
    with activate(Budget(None, clock=CLOCK, figures=4)) as budget:
        for name in ("a", "b"):
            task = SlowToy(cfg, tmp_path / name)
            (tmp_path / name).mkdir()
            trainer = Trainer(task, cfg, tmp_path / name, quiet=True)
            trainer.fit(task.build_model(), task.build_data(Path(".")))
    assert len(calls) == 1 and budget.figure_s == 0.3
    assert trainer.planner.step_s() == pytest.approx(1.0)  # the probe is not step time
    assert trainer.planner.finish_s() >= 4 * 0.3


def test_the_probe_figure_is_timed_after_a_warm_up_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first figure of a process holds one-offs (matplotlib's fonts, the PNG writer): 5 s here, 1 s each
    later one; the finish's figures cost the later ones' time, so that is what time_figure returns."""
    from medmm import report

    clock = Clock()
    drawn: list[str] = []

    def draw(caption: str, build: Any) -> str:
        clock.t += 5.0 if not drawn else 1.0
        drawn.append(caption)
        return ""

    monkeypatch.setattr(report, "_figure", draw)
    assert report.time_figure(clock) == pytest.approx(1.0) and len(drawn) == 2


def test_the_finish_counts_the_bootstrap_passes_each_problem_makes() -> None:
    """Regression: the CIs only (1 pass); multiclass: and the operating point (2); binary: and the decision
    curves' 200 resamples (2.2 at 1,000). A flat 3 passes made the seconds-long demos' finish too dear."""
    from medmm.engine.budget import Budget, Planner, Sizes, boot_passes_for

    assert [boot_passes_for(p, 1000) for p in ("regression", "survival", "multiclass", "binary")] == \
        [1.0, 1.0, 2.0, pytest.approx(2.2)]
    sizes = Sizes(n_train=100, n_val=50, n_test=50, n_boot=1000, batch_size=10, baseline=False,
                  boot_passes=boot_passes_for("regression", 1000))
    budget = Budget(None, clock=Clock())
    budget.figures, budget.figure_s = 2, 0.0
    p = Planner(budget, total=10, steps_per_epoch=10, eval_every=0, sizes=sizes)
    p.evaluated(0.0, 0.001)
    assert p.finish_s() == pytest.approx(1000 * 0.001)


def test_the_bootstrap_probe_separates_a_calls_fixed_cost_from_its_cost_per_resample(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics are computed over all resamples at once: a call costs 40 ms plus 0.05 ms per resample
    (fake clock). A 1000-resample pass then costs 0.09 s, 0.09 ms per resample; timing 50 resamples and
    dividing by them said 0.85 ms (9x, the image demo's finish was 5x its bootstrap's real cost)."""
    from types import SimpleNamespace

    import medmm.metrics
    from medmm.engine.trainer import Trainer

    now = [0.0]
    calls: list[int] = []

    def fake_bootstrap(problem: str, y_true: object, y_score: object, *, n_boot: int, **kw: object) -> dict:
        calls.append(n_boot)
        now[0] += (0.5 if len(calls) == 1 else 0.0) + 0.04 + 0.00005 * n_boot  # the first call's one-offs
        return {}

    monkeypatch.setattr(medmm.metrics, "bootstrap_cis", fake_bootstrap)
    fake = SimpleNamespace(e=SimpleNamespace(bootstrap=1000), task=SimpleNamespace(problem="multiclass"), seed=0,
                           metric_inputs=lambda out: ((None, None), {}))
    per = Trainer._time_bootstrap(fake, None, lambda: now[0])  # type: ignore[arg-type]
    assert per == pytest.approx((0.04 + 0.00005 * 1000) / 1000, rel=1e-6)
    assert calls[0] < calls[1] < calls[2] <= 50  # a warm-up, then two sizes; never the whole pass
