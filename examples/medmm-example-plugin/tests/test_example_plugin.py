"""The example plugin's own tests (run with the plugin installed)."""

import torch

from medmm import load_plugins
from medmm_example_plugin.models import MaxFusion, SelfNormalizingNet


def test_registered_through_the_entry_point() -> None:
    reg = load_plugins().registry
    assert reg.owner("backbone", "snn") == "example"
    assert reg.owner("fusion_head", "max") == "example"


def test_snn_keeps_activations_normalised() -> None:
    torch.manual_seed(0)
    net = SelfNormalizingNet(20, 1, hidden=256, blocks=4).eval()
    h = net.embed(torch.randn(4096, 20))
    assert abs(h.mean().item()) < 0.15 and abs(h.std().item() - 1) < 0.2


def test_max_fusion_ignores_missing_modalities() -> None:
    head = MaxFusion({"text": 8, "image": 4}, out_dim=2).eval()
    emb = {"text": torch.randn(3, 8), "image": torch.randn(3, 4)}
    mask = torch.tensor([[1, 0], [1, 0], [1, 1]])
    out = head(emb, mask)
    emb2 = {"text": emb["text"], "image": torch.randn(3, 4) * 100}  # change only the hidden modality
    out2 = head(emb2, mask)
    assert torch.allclose(out[:2], out2[:2]) and not torch.allclose(out[2], out2[2])


def test_discrete_survival_is_registered_without_importing_torch_code() -> None:
    reg = load_plugins().registry
    assert reg.owner("task", "discrete-survival") == "example"
    assert reg.get("task", "discrete-survival").config.is_file()  # the YAML ships in the package


def test_logistic_hazard_nll_matches_the_likelihood_by_hand() -> None:
    import math

    from medmm_example_plugin.discrete_survival import cumulative_hazard, interval_of, logistic_hazard_nll

    logits = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.5, 0.5]])
    h = torch.sigmoid(logits)
    # patient 0: event in interval 1; patient 1: censored in interval 2 (survived 0, 1 and 2)
    by_hand = -(math.log(1 - h[0, 0]) + math.log(h[0, 1])) - sum(math.log(1 - h[1, k]) for k in range(3))
    got = logistic_hazard_nll(logits, torch.tensor([1, 2]), torch.tensor([1.0, 0.0]))
    assert math.isclose(got.item(), by_hand / 2, rel_tol=1e-6)
    # risk by the horizon's interval = -log S = -sum log(1 - h_k)
    assert math.isclose(cumulative_hazard(logits, 1)[0].item(), -math.log((1 - h[0, 0]) * (1 - h[0, 1])), rel_tol=1e-6)
    cuts = torch.tensor([10.0, 20.0]).numpy()
    assert interval_of(torch.tensor([5.0, 10.0, 10.5, 99.0]).numpy(), cuts).tolist() == [0, 0, 1, 2]
