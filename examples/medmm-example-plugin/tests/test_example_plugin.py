"""The example plugin's own tests (run with the plugin installed)."""

import torch

from medmm.plugins import load_plugins
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
