"""Differentially private training (opacus through the engine) and the membership audit."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medmm.engine.trainer import EvalOutput
from medmm.errors import MedmmError
from medmm.engine import dp as dpm
from medmm.privacy.membership import loss_attack, unit_losses
from tests.toy_task import ToyTask, make_cfg

PRIVATE = {"enabled": True, "target_epsilon": 3.0, "delta": None, "max_grad_norm": 1.0, "accountant": "rdp",
           "audit": False}


def fake_trainer(n: int = 64, *, world: int = 1, problem: str = "binary", **engine: Any) -> SimpleNamespace:
    cfg = make_cfg(**engine)
    cfg["engine"]["privacy"] = dict(PRIVATE)
    return SimpleNamespace(e=cfg["engine"], cfg=cfg, dist=SimpleNamespace(enabled=world > 1),
                           task=SimpleNamespace(problem=problem), precision="fp32")


def fake_data(n: int = 64) -> SimpleNamespace:
    return SimpleNamespace(train=SimpleNamespace(dataset=list(range(n)), units=[f"u{i}" for i in range(n)]))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))


def with_privacy(trainer: SimpleNamespace, **kw: Any) -> SimpleNamespace:
    trainer.e["privacy"] = {**PRIVATE, **kw}
    return trainer


def made(n: int = 60, batch: int = 6, steps: int = 10, sigma: float = 1.1, **kw: Any) -> dpm.PrivateTraining:
    """A PrivateTraining with a given noise multiplier (no calibration search: fast)."""
    kw = {"epsilon": 3.0, "delta": 1e-3, "max_grad_norm": 1.0, "accountant": "rdp", **kw}
    return dpm.PrivateTraining(n=n, batch=batch, steps=steps, noise_multiplier=sigma, **kw)


# ----------------------------------------------------------------------------- accountant
@pytest.mark.slow  # two calibration searches (~5 s on a busy CPU)
def test_noise_multiplier_and_epsilon_match_opacus_make_private_with_epsilon() -> None:
    from opacus import PrivacyEngine
    from opacus.accountants import RDPAccountant
    from torch.utils.data import DataLoader, TensorDataset

    n, batch, epochs, delta = 380, 16, 3, 1e-4
    ds = TensorDataset(torch.randn(n, 5), torch.randn(n, 1))
    model = mlp()
    _, opt, loader = PrivacyEngine(accountant="rdp").make_private_with_epsilon(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(ds, batch_size=batch), target_epsilon=3.0, target_delta=delta, epochs=epochs,
        max_grad_norm=1.0)
    steps_per_epoch = len(loader)
    ours = dpm.PrivateTraining(n=n, batch=batch, steps=steps_per_epoch * epochs, epsilon=3.0, delta=delta,
                               max_grad_norm=1.0, accountant="rdp")
    assert ours.sample_rate == pytest.approx(loader.sample_rate)
    assert ours.noise_multiplier == pytest.approx(opt.noise_multiplier, rel=1e-9)
    for _ in range(steps_per_epoch * epochs):
        ours.on_step()
    reference = RDPAccountant()
    reference.history = [(opt.noise_multiplier, loader.sample_rate, steps_per_epoch * epochs)]
    assert ours.epsilon() == pytest.approx(reference.get_epsilon(delta), rel=1e-12)
    assert 2.9 < ours.epsilon() <= 3.0  # calibrated to the target, never above it


def test_accountant_state_round_trips_and_refuses_other_settings() -> None:
    a = made(n=100, batch=10, steps=30)
    for _ in range(7):
        a.on_step()
    b = made(n=100, batch=10, steps=30)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # it lives in state.json
    assert b.epsilon() == a.epsilon() and b.steps_taken == 7
    other = made(n=100, batch=10, steps=60, sigma=1.3)
    with pytest.raises(MedmmError, match="noise multiplier"):
        other.load_state_dict(a.state_dict())
    with pytest.raises(MedmmError, match="trained without engine.privacy"):
        b.load_state_dict(None)


def test_poisson_plan_is_deterministic_and_has_the_expected_rate() -> None:
    dp = made(n=1000, batch=50, steps=20)
    a, b, c = dp.plan(1000, 0, 0, 2), dp.plan(1000, 0, 0, 2), dp.plan(1000, 0, 1, 2)
    assert a == b and a != c
    assert len(a) == 2 * dp.steps_per_epoch == 40  # logical batches cut into grad_accum parts
    sizes = np.array([len(a[i]) + len(a[i + 1]) for i in range(0, len(a), 2)])
    assert abs(sizes.mean() - 50) < 8 and sizes.std() > 0  # Poisson: the size varies around n * q
    assert all(len(set(x)) == len(x) for x in a)


# ----------------------------------------------------------------------------- clipping
def test_each_example_is_clipped_to_max_grad_norm_and_the_sum_is_exact() -> None:
    torch.manual_seed(1)
    model = mlp()
    reference = mlp()
    x, y = torch.randn(6, 5) * torch.tensor([0.01, 0.1, 1, 10, 100, 1000]).reshape(6, 1), torch.randn(6, 1)
    C = 0.5
    dp = made(max_grad_norm=C)
    gsm = dp.wrap_model(model)
    opt = dp.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))

    def clipped_norm() -> float:
        return float(torch.sqrt(sum((p.summed_grad ** 2).sum() for p in opt.params)))

    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for i in range(6):  # one example at a time: its clipped gradient is the whole sum
        reference.zero_grad()
        nn.functional.mse_loss(reference(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        g = [p.grad.clone() for p in reference.parameters()]
        norm = float(torch.sqrt(sum((t ** 2).sum() for t in g)))
        nn.functional.mse_loss(gsm(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        opt.accumulate()
        assert clipped_norm() <= C * (1 + 1e-5)
        assert clipped_norm() == pytest.approx(min(norm, C), rel=1e-4)
        for e, t in zip(expected, g):
            e += t * min(1.0, C / (norm + 1e-6))
        opt.zero_grad()
    nn.functional.mse_loss(gsm(x), y, reduction="sum").backward()  # the whole batch at once
    opt.accumulate()
    for p, e in zip(opt.params, expected):
        torch.testing.assert_close(p.summed_grad, e, rtol=1e-4, atol=1e-6)


def test_an_empty_poisson_batch_still_takes_a_noise_step() -> None:
    model = mlp()
    dp = made()
    dp.wrap_model(model)
    opt = dp.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=1.0))
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # no example in this logical batch
    assert dp.steps_taken == 1 and dp.epsilon() > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_parameters_a_forward_does_not_use_get_zero_per_example_gradients() -> None:
    class TwoHeads(nn.Module):  # e.g. an encoder's unused pooler
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(5, 1), nn.Linear(5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = TwoHeads()
    dp = made()
    gsm = dp.wrap_model(model)
    opt = dp.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    gsm(torch.randn(4, 5)).sum().backward()
    opt.accumulate()
    assert float(model.unused.weight.summed_grad.abs().sum()) == 0.0
    assert float(model.used.weight.summed_grad.abs().sum()) > 0.0


def test_a_layer_fed_a_batch_shared_input_is_named_and_hf_position_embeddings_are_frozen() -> None:
    class Positions(nn.Module):  # BERT-style: position ids are one [1, L] buffer for the whole batch
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos, self.head = nn.Embedding(10, 4), nn.Embedding(6, 4), nn.Linear(4, 1)
            self.register_buffer("ids", torch.arange(6)[None])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head((self.tok(x) + self.pos(self.ids)).mean(1))

    model, dp = Positions(), made()
    opt = dp.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    dp.wrap_model(model)(torch.randint(0, 10, (3, 6))).sum().backward()
    with pytest.raises(MedmmError, match=r"pos.weight got one gradient for the whole batch"):
        opt.accumulate()
    enc = nn.Module()
    enc.embeddings = nn.Module()
    enc.embeddings.position_embeddings = nn.Embedding(6, 4)
    dpm.prepare_model(enc, {"engine": {"privacy": PRIVATE}})
    assert not enc.embeddings.position_embeddings.weight.requires_grad


# ----------------------------------------------------------------------------- model preparation
def test_batchnorm_becomes_groupnorm_in_place_and_gru_a_dp_gru() -> None:
    from opacus.layers import DPGRU

    cfg = {"engine": {"privacy": PRIVATE}}
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    same = dpm.prepare_model(model, cfg)
    assert same is model and isinstance(model[1], nn.GroupNorm)
    rnn = nn.Module()
    rnn.gru = nn.GRU(4, 6, batch_first=True, bidirectional=True)
    dpm.prepare_model(rnn, cfg)
    assert isinstance(rnn.gru, DPGRU)
    assert dpm.prepare_model(nn.BatchNorm1d(3), {"engine": {}}).__class__ is nn.BatchNorm1d  # DP off: untouched


@pytest.mark.slow  # imports timm / trains a small MLP (~2 s on a busy CPU)
def test_timm_norm_act_keeps_its_activation_and_fusion_heads_are_checked() -> None:
    from timm.layers import BatchNormAct2d

    from medmm.models.fusion_heads import AttentionFusion, ConcatFusion, LateFusion

    cfg = {"engine": {"privacy": PRIVATE}}
    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.ReLU6))
    dpm.prepare_model(model, cfg)
    assert isinstance(model[1], nn.GroupNorm) and isinstance(model[1].act, nn.ReLU6)
    assert float(model(torch.randn(2, 3, 8, 8)).detach().min()) >= 0.0  # the activation still runs
    dpm.check_model(dpm.prepare_model(ConcatFusion({"a": 4, "b": 3}, 1, hidden=8), cfg))
    with pytest.raises(MedmmError, match=r"layer <root> \(LateFusion\) owns trainable parameters \(weight_logits\)"):
        dpm.check_model(LateFusion({"a": 4, "b": 3}, 1, hidden=8))
    with pytest.raises(MedmmError, match="AttentionFusion"):
        dpm.check_model(dpm.prepare_model(AttentionFusion({"a": 4, "b": 3}, 1, hidden=8), cfg))


def test_unsupported_layer_is_refused_by_name() -> None:
    model = nn.Module()
    model.encoder = nn.RNN(4, 4, batch_first=True)
    model.head = nn.Linear(4, 1)
    with pytest.raises(MedmmError, match=r"layer encoder \(RNN\)"):
        dpm.private_training(fake_trainer(), model, fake_data())

    class Scaled(nn.Linear):  # trainable weights + a buffer, no opacus grad sampler, no fix
        def __init__(self) -> None:
            super().__init__(4, 1)
            self.register_buffer("scale", torch.ones(1))

    with pytest.raises(MedmmError, match=r"layer 1 \(Scaled\) has trainable weights and buffers \(scale\)"):
        dpm.private_training(fake_trainer(), nn.Sequential(nn.Linear(4, 4), Scaled()), fake_data())


@pytest.mark.parametrize(("kw", "message"), [
    ({"target_epsilon": 0.0}, "target_epsilon must be > 0"),
    ({"target_epsilon": -1.0}, "target_epsilon must be > 0"),
    ({"delta": 1 / 64}, r"delta must be in \(0, 1/n_train\)"),
    ({"delta": 0.5}, r"delta must be in \(0, 1/n_train\)"),
    ({"max_grad_norm": 0.0}, "max_grad_norm must be > 0"),
])
def test_bad_privacy_settings_are_clear_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(MedmmError, match=message):
        dpm.private_training(with_privacy(fake_trainer(), **kw), mlp(), fake_data(64))


def test_unreachable_epsilon_fails_before_training_with_the_numbers() -> None:
    trainer = with_privacy(fake_trainer(epochs=500, batch_size=8), target_epsilon=0.1)
    with pytest.raises(MedmmError, match=r"target ε=0.1.*n_train=64.*4000 steps.*cannot reach") as err:
        dpm.private_training(trainer, mlp(), fake_data(64))
    assert "\n" not in str(err.value)


def test_ddp_fp16_and_missing_opacus_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MedmmError, match="torchrun"):
        dpm.private_training(fake_trainer(world=2), mlp(), fake_data())
    with pytest.raises(MedmmError, match="engine.privacy needs fp32"):
        dpm.private_training(fake_trainer(precision="fp16"), mlp(), fake_data())
    monkeypatch.setitem(sys.modules, "opacus", None)
    with pytest.raises(MedmmError, match=r"pip install 'medmm\[privacy\]'"):
        dpm.private_training(fake_trainer(), mlp(), fake_data())


# ----------------------------------------------------------------------------- membership attack
def ev(scores: np.ndarray, targets: np.ndarray) -> EvalOutput:
    return EvalOutput([f"u{i}" for i in range(len(scores))], scores, targets, 0.0)


def test_unit_losses_have_known_values() -> None:
    assert unit_losses("binary", np.array([0.9, 0.2]), np.array([1.0, 1.0])) == pytest.approx(
        [-math.log(0.9), -math.log(0.2)])
    assert unit_losses("multiclass", np.array([[0.7, 0.3], [0.25, 0.75]]), np.array([1, 1])) == pytest.approx(
        [-math.log(0.3), -math.log(0.75)])
    assert unit_losses("regression", np.array([1.0, 3.0]), np.array([2.0, 3.0])) == pytest.approx([1.0, 0.0])
    # Cox: two events at t=1, 2 and log hazards 0, 0 -> log(2) - 0 and log(1) - 0
    surv = unit_losses("survival", np.array([0.0, 0.0]), np.array([[1.0, 1.0], [2.0, 1.0]]))
    assert surv == pytest.approx([math.log(2), 0.0])


def _memorise(train_steps: int) -> tuple[EvalOutput, EvalOutput]:
    """An MLP fitted to random labels of 40 points in 200-D (pure memorisation), scored on 40 new ones."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 200, generator=g)
    y = (torch.rand(80, generator=g) < 0.5).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(train_steps):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x[:40]).squeeze(1), y[:40]).backward()
        opt.step()
    with torch.no_grad():
        p = torch.sigmoid(model(x).squeeze(1)).numpy()
    return ev(p[:40], y[:40].numpy()), ev(p[40:], y[40:].numpy())


@pytest.mark.slow  # trains a small MLP 100 steps and bootstraps (~2 s on a busy CPU)
def test_attack_finds_a_memorised_training_set_and_not_an_untrained_model() -> None:
    members, heldout = _memorise(100)
    fitted = loss_attack("binary", members, heldout, n_boot=200)
    assert fitted["attack_auroc"] > 0.9 and fitted["ci_low"] > 0.75
    assert fitted["units_per_group"] == 40
    members, heldout = _memorise(0)
    untrained = loss_attack("binary", members, heldout, n_boot=200)
    assert 0.3 < untrained["attack_auroc"] < 0.7 and untrained["ci_low"] < 0.5 < untrained["ci_high"]


def test_attack_uses_equal_numbers_and_needs_labels() -> None:
    out = loss_attack("regression", ev(np.zeros(50), np.zeros(50)), ev(np.ones(8), np.zeros(8)), n_boot=50)
    assert out["units_per_group"] == 8 and out["attack_auroc"] == 1.0
    with pytest.raises(MedmmError, match="labelled"):
        loss_attack("binary", ev(np.zeros(5), None), ev(np.zeros(5), np.zeros(5)))


# ----------------------------------------------------------------------------- through the engine
class _StopAfter:
    """Kills training (an exception) right after the k-th 'last' checkpoint is written."""

    def __init__(self, k: int) -> None:
        self.k, self.n = k, 0

    def on_checkpoint(self, trainer: Any, path: Path, kind: str) -> None:
        if kind == "last":
            self.n += 1
            if self.n == self.k:
                raise RuntimeError("killed")


def _train_private(run_dir: Path, *, resume: bool = False, callbacks: list[Any] | None = None,
                   **engine: Any) -> tuple[dict[str, torch.Tensor], Any]:
    from medmm.engine import Trainer

    dropout = engine.pop("dropout", 0.1)
    cfg = make_cfg(dropout=dropout, **{"epochs": 2, "batch_size": 8, "grad_accum": 2, "checkpoint_every_steps": 1,
                                       **engine})
    cfg["engine"]["privacy"] = dict(PRIVATE)
    task = ToyTask(cfg, run_dir)
    data = task.build_data(Path("."))
    model = task.build_model()
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(task, cfg, run_dir, quiet=True, callbacks=callbacks)
    trainer.fit(model, data, resume=resume)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer


@pytest.mark.slow
def test_resumed_private_run_equals_uninterrupted_weights_and_epsilon(tmp_path: Path) -> None:
    full, t_full = _train_private(tmp_path / "full")
    with pytest.raises(RuntimeError, match="killed"):
        _train_private(tmp_path / "cut", callbacks=[_StopAfter(17)])  # mid-epoch 2 (24 steps per epoch)
    resumed, t_res = _train_private(tmp_path / "cut", resume=True)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert t_res.privacy.steps_taken == t_full.privacy.steps_taken == 48
    assert t_res.privacy.epsilon() == t_full.privacy.epsilon() <= 3.0
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["epsilon"] == pytest.approx(t_full.privacy.epsilon())
    assert train_rows[0]["epsilon"] < train_rows[-1]["epsilon"]  # spent as training goes
    assert {"delta", "noise_multiplier", "dp_max_grad_norm"} <= train_rows[-1].keys()


@pytest.mark.slow
def test_private_accumulation_equals_the_large_logical_batch(tmp_path: Path) -> None:
    # same Poisson logical batches (batch_size * grad_accum = 16), same noise draws (no dropout)
    big, t_big = _train_private(tmp_path / "big", epochs=1, batch_size=16, grad_accum=1, dropout=0.0,
                                checkpoint_every_steps=1000)
    acc, t_acc = _train_private(tmp_path / "acc", epochs=1, batch_size=8, grad_accum=2, dropout=0.0,
                                checkpoint_every_steps=1000)
    assert t_big.privacy.noise_multiplier == t_acc.privacy.noise_multiplier
    assert all(torch.allclose(big[k], acc[k], atol=1e-5) for k in big)
    small, _ = _train_private(tmp_path / "small", epochs=1, batch_size=8, grad_accum=1, dropout=0.0,
                              checkpoint_every_steps=1000)
    assert not all(torch.allclose(big[k], small[k], atol=1e-5) for k in big)  # the check can fail


@pytest.mark.slow
def test_private_run_and_audit_through_medmm_run(tmp_path: Path) -> None:
    from medmm.plugins import get_registry
    from medmm.runner import predict_run, resolved_config, run_task

    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.iloc[:, list(range(8)) + [30]]
    frame.insert(0, "row", range(len(frame)))
    csv = tmp_path / "bc.csv"
    frame.to_csv(csv, index=False)
    spec = get_registry().get("task", "tabular-risk")
    cfg = resolved_config(spec, None, ["data.target=target", "data.id_column=row", "engine.epochs=3",
                                       "engine.min_steps=0", "engine.bootstrap=100", "engine.baseline=none",
                                       "engine.privacy.enabled=true", "engine.privacy.target_epsilon=1",
                                       "engine.privacy.audit=true"])
    summary = run_task(spec, cfg, csv, tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    assert summary["privacy"]["epsilon"] <= 1.0 and summary["metrics"]["auroc"] > 0.8
    audit = json.loads((run / "membership_audit.json").read_text())
    assert 0.0 <= audit["attack_auroc"] <= 1.0 and audit["heldout_split"] == "test"
    card = (run / "model_card.md").read_text()
    assert "## Privacy" in card and "ε spent" in card and "membership attack AUROC" in card
    assert "Privacy" in (run / "report.html").read_text()
    out = predict_run(run, csv, tmp_path / "pred.csv", registry=get_registry())
    assert out.exists()
    from medmm.privacy.membership import audit_command

    again = audit_command(run, registry=get_registry())  # medmm evaluate RUN --membership-audit
    assert again["attack_auroc"] == pytest.approx(audit["attack_auroc"])  # same splits, weights, units
    assert "### Membership audit" in (run / "model_card.md").read_text()
