"""Tabular models and the Cox partial-likelihood loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmm.engine.losses import cox_ph_loss
from medmm.models.tabular import TabularLinear, TabularMLP


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_mlp_shapes_and_embed(norm):
    torch.manual_seed(0)
    model = TabularMLP(7, 3, hidden=16, blocks=2, dropout=0.1, norm=norm)
    x = torch.randn(5, 7)
    assert model.embed_dim == 16
    assert model.embed(x).shape == (5, 16)
    out = model(x)
    assert out.shape == (5, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model.head(model.embed(x)), model(x))


def test_mlp_without_blocks_and_bad_args():
    assert TabularMLP(4, 1, hidden=8, blocks=0)(torch.randn(2, 4)).shape == (2, 1)
    with pytest.raises(ValueError):
        TabularMLP(0, 1)
    with pytest.raises(ValueError):
        TabularMLP(4, 1, dropout=1.0)
    with pytest.raises(ValueError, match="norm"):
        TabularMLP(4, 1, norm="group")  # type: ignore[arg-type]


def test_linear_shapes_and_embed():
    model = TabularLinear(6, 1, bias=False)
    x = torch.randn(4, 6)
    assert model.embed_dim == 6 and model.embed(x) is x
    assert model(x).shape == (4, 1)
    assert model.linear.bias is None


# --------------------------------------------------------------------------- Cox loss


def _breslow_reference(eta: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Textbook Breslow negative partial log-likelihood per event, one loop per event."""
    total = 0.0
    for i in np.flatnonzero(event):
        at_risk = time >= time[i]
        total += eta[i] - math.log(np.exp(eta[at_risk]).sum())
    return -total / event.sum()


def test_cox_loss_exact_value_with_ties():
    # times 2 and 5 are tied (two events at 2; an event and a censoring at 5)
    eta = np.array([0.5, -0.2, 1.0, 0.0, 0.3, -1.0])
    time = np.array([2.0, 5.0, 2.0, 7.0, 5.0, 1.0])
    event = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    e = np.exp(eta)
    # risk sets by hand: t=1 -> everyone; t=2 -> all but subject 5; t=5 -> subjects 1, 3, 4
    by_hand = -(
        (eta[5] - math.log(e.sum()))
        + (eta[0] - math.log(e[:5].sum()))
        + (eta[2] - math.log(e[:5].sum()))
        + (eta[1] - math.log(e[[1, 3, 4]].sum()))
    ) / 4
    assert by_hand == pytest.approx(_breslow_reference(eta, time, event), abs=1e-12)
    loss = cox_ph_loss(torch.tensor(eta), torch.tensor(time), torch.tensor(event))
    assert loss.item() == pytest.approx(by_hand, abs=1e-12)
    # input order and an [N, 1] shape do not matter
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    loss2 = cox_ph_loss(torch.tensor(eta)[perm, None], torch.tensor(time)[perm], torch.tensor(event)[perm])
    assert loss2.item() == pytest.approx(by_hand, abs=1e-12)


def test_cox_loss_random_ties_match_reference():
    rng = np.random.default_rng(1)
    for _ in range(5):
        n = 40
        eta, time = rng.normal(size=n) * 3, rng.integers(1, 8, n).astype(float)
        event = (rng.random(n) < 0.5).astype(float)
        event[0] = 1.0
        got = cox_ph_loss(torch.tensor(eta), torch.tensor(time), torch.tensor(event)).item()
        assert got == pytest.approx(_breslow_reference(eta, time, event), rel=1e-10)


def test_cox_loss_without_events_is_zero_with_grad():
    eta = torch.randn(5, requires_grad=True)
    loss = cox_ph_loss(eta, torch.arange(1.0, 6.0), torch.zeros(5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(eta.grad, torch.zeros(5))
    empty = torch.zeros(0, requires_grad=True)
    assert cox_ph_loss(empty, torch.zeros(0), torch.zeros(0)).item() == 0.0
    with pytest.raises(ValueError, match="N elements"):
        cox_ph_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3))


def test_cox_loss_stable_for_large_log_hazards():
    eta = torch.tensor([800.0, 0.0, -800.0], requires_grad=True)
    loss = cox_ph_loss(eta, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(eta.grad).all()


def test_linear_cox_fit_matches_breslow_reference_and_lifelines():
    """Rossi recidivism data (many tied weeks): full-batch LBFGS on our loss."""
    lifelines = pytest.importorskip("lifelines")
    from scipy.optimize import minimize

    df = lifelines.datasets.load_rossi()
    covariates = [c for c in df.columns if c not in ("week", "arrest")]
    x = df[covariates].to_numpy(float)
    time, event = df["week"].to_numpy(float), df["arrest"].to_numpy(float)
    mean, sd = x.mean(0), x.std(0)
    z = (x - mean) / sd

    # independent Breslow fit: dense risk-set matrix + scipy BFGS with the analytic gradient
    at_risk = time[None, :] >= time[:, None]

    def nll(beta):
        eta = z @ beta
        top = eta.max()
        log_risk = np.log((at_risk * np.exp(eta - top)).sum(1)) + top
        return -((eta - log_risk) * event).sum() / event.sum()

    def grad(beta):
        w = at_risk * np.exp(z @ beta)
        w /= w.sum(1, keepdims=True)
        return -((z - w @ z) * event[:, None]).sum(0) / event.sum()

    reference = minimize(nll, np.zeros(len(covariates)), jac=grad, method="BFGS", options={"gtol": 1e-10}).x

    model = TabularLinear(len(covariates), 1, bias=False).double()
    torch.nn.init.zeros_(model.linear.weight)
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=100, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )
    zt, tt, et = torch.from_numpy(z), torch.from_numpy(time), torch.from_numpy(event)

    def closure():
        opt.zero_grad()
        loss = cox_ph_loss(model(zt), tt, et)
        loss.backward()
        return loss

    opt.step(closure)
    ours = model.linear.weight.detach().numpy().ravel()
    np.testing.assert_allclose(ours, reference, atol=1e-5)

    # lifelines uses Efron's ties: close but not identical on data with this many ties
    efron = lifelines.CoxPHFitter().fit(df, "week", "arrest").params_[covariates].to_numpy()
    np.testing.assert_allclose(ours / sd, efron, atol=5e-3)
