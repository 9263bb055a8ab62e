"""tabular-risk ``model.backbone=auto`` (#14): linear vs mlp chosen by the validation metric.

Planted answers: a linear signal on few rows -> linear; an XOR interaction (no linear signal at all)
-> mlp; a user's explicit backbone is never second-guessed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

QUICK = ["engine.device=cpu", "engine.batch_size=16", "engine.epochs=60", "engine.patience=10", "engine.bootstrap=50"]


def _task(tmp_path: Path, df: pd.DataFrame, *sets: str):
    from medmm_plugins.tabular_risk.task import TabularRiskTask

    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    df.to_csv(tmp_path / "d.csv", index=False)
    spec = get_registry().get("task", "tabular-risk")
    task = TabularRiskTask(resolved_config(spec, None, ["data.target=y", *QUICK, *sets]), tmp_path)
    return task, task.build_data(tmp_path / "d.csv")


def _linear(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    y = x @ np.array([1.0, -0.8, 0.6, 0.0, 0.0, 0.0]) + rng.normal(0, 0.5, n)
    return pd.DataFrame({**{f"x{i}": x[:, i] for i in range(6)}, "y": y})


def _xor(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 3))
    y = ((x[:, 0] * x[:, 1]) > 0).astype(int)
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "noise": x[:, 2], "y": y})


@pytest.mark.slow  # imports torch and fits the preprocessor; trains nothing
def test_explicit_backbone_is_kept_without_training(tmp_path: Path) -> None:
    for name in ("mlp", "linear"):
        task, bundle = _task(tmp_path, _xor(60), f"model.backbone={name}")
        assert task.choose_backbone(bundle) is None
        assert task.cfg.model.backbone == name and "model.backbone" not in task.cfg.provenance
    task, bundle = _task(tmp_path, _xor(60), "data.val_fraction=0")  # the default is auto; nothing to choose on
    assert task.cfg.model.backbone == "auto"
    assert task.choose_backbone(bundle) == "model.backbone=auto -> mlp, not chosen by validation (no validation split " \
                                           "to choose on)"
    assert task.cfg.model.backbone == "mlp"


@pytest.mark.slow
def test_auto_picks_linear_on_a_small_linear_problem(tmp_path: Path) -> None:
    task, bundle = _task(tmp_path, _linear(120), "model.backbone=auto")
    line = task.choose_backbone(bundle)
    assert task.cfg.model.backbone == "linear", line
    assert task.cfg.engine.lr == 0.02 and task.cfg.provenance["engine.lr"] == "recipe of backbone linear"
    assert line.startswith("model.backbone=auto -> linear won on val") and "mlp" in line
    assert task.cfg.provenance["model.backbone"].startswith("auto: linear won")
    assert any(h == "Backbone chosen by validation" for h, _ in bundle.meta.report_sections)


@pytest.mark.slow
def test_auto_picks_mlp_on_xor_and_the_run_keeps_it(tmp_path: Path) -> None:
    import pandas as pd

    from tests.conftest import cli

    _xor(300).to_csv(tmp_path / "xor.csv", index=False)
    run = tmp_path / "run"
    quick = ["engine.device=cpu", "engine.batch_size=32", "engine.epochs=30", "engine.patience=5",
             "engine.bootstrap=0", "engine.baseline=none"]
    sets = [a for s in ["data.target=y", *quick, "model.backbone=auto"] for a in ("--set", s)]
    proc = cli("run", "tabular-risk", "--data", str(tmp_path / "xor.csv"), "--out", str(run), *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model.backbone=auto -> mlp won on val auroc (linear" in proc.stderr
    cfg = (run / "config.yaml").read_text()
    assert "backbone: mlp  # auto: mlp won" in cfg
    assert "Backbone chosen by validation" in (run / "model_card.md").read_text()
    assert "model.backbone=auto: training candidate linear" in (run / "train.log").read_text()
    proc = cli("predict", str(run), "--data", str(tmp_path / "xor.csv"), "--out", str(tmp_path / "p.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "p.csv")) == 300


@pytest.mark.slow
def test_auto_keeps_the_winners_weights_instead_of_training_it_again(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """#30: two trainings (the candidates), not three; the run's checkpoints are the winner's."""
    import json

    from medmm.engine import Trainer
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config, run_task

    _xor(200).to_csv(tmp_path / "xor.csv", index=False)
    steps: list[int] = []
    real_loop = Trainer._loop

    def counting_loop(self, *args, **kwargs):  # optimizer steps each fit() really takes
        before = self.state.global_step
        real_loop(self, *args, **kwargs)
        steps.append(self.state.global_step - before)

    monkeypatch.setattr(Trainer, "_loop", counting_loop)
    spec = get_registry().get("task", "tabular-risk")
    cfg = resolved_config(spec, None, ["data.target=y", "engine.device=cpu", "engine.batch_size=32", "engine.epochs=6",
                                       "engine.patience=3", "engine.bootstrap=0", "engine.baseline=none",
                                       "model.backbone=auto"])
    run = tmp_path / "run"
    summary = run_task(spec, cfg, tmp_path / "xor.csv", run, quiet=True)
    assert len(steps) == 3 and steps[0] > 0 and steps[1] > 0 and steps[2] == 0, steps  # the third fit resumes
    assert "its trained weights are kept, not trained again" in (run / "config.yaml").read_text()
    assert "keeping" in (run / "train.log").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in records if r.get("split") == "val"]
    assert epochs == sorted(set(epochs)) and epochs  # the winner's epochs, once each
    assert not list(run.glob(".auto-*"))  # the scratch folders are gone
    assert summary["best_step"] > 0


@pytest.mark.slow
def test_time_limit_plans_the_candidates_and_skips_one_that_cannot_fit(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """#29: the first candidate plans with the second in view (its share of the limit), and a second
    candidate whose steps cannot fit one epoch in what is left is not trained, and the run says so. The
    probe is planted: the mlp's step 1000 s dearer than the linear's."""
    from medmm.engine import Trainer
    from medmm.engine.budget import Budget, activate

    monkeypatch.setattr(Trainer, "probe_step_s", lambda self, models, data, repeats=5: [0.001, 1000.001])
    fits: list[tuple[list[float], int]] = []
    real_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, model, data, **kw: (
        fits.append((list(self.later_step_s), self.e.max_steps)), real_fit(self, model, data, **kw))[1])
    task, bundle = _task(tmp_path, _linear(120), "model.backbone=auto")
    with activate(Budget(600.0)) as budget:
        line = task.choose_backbone(bundle)
    assert fits == [([1000.0], 0)]  # the linear knew the mlp would follow; the mlp was never trained
    assert task.cfg.model.backbone == "linear"
    assert "mlp not trained: the time limit left fits 0 of its steps" in line
    assert any("mlp not trained" in n for n in budget.notes)
    planned = task.cfg.engine.max_steps  # the linear's share: the mlp's full run would not fit beside it
    assert 0 < planned < 60 * 6 and "planned to fit engine.time_limit" in task.cfg.provenance["engine.max_steps"]
    assert any("for the fits this run trains after this one" in n for n in budget.notes)
