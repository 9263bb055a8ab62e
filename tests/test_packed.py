"""Padding-free packed BERT forward: the padded batch's outputs, loss and gradients."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

import medmm.models.packed as packed_module
from medmm.models.packed import packed_embed, supports_packing
from medmm.models.text import HFTextEncoder, TextClassifier, build_tiny_bert

VOCAB = 60
LENGTHS = [9, 57, 3, 60, 14, 31, 5, 60, 22, 8, 44, 2, 9]  # shuffled, uneven, with equal lengths


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids; padding positions hold junk ids (they must not matter)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=g)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return ids, mask.long()


def _no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():  # dropout draws differ between the paths; the arithmetic must not
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _classifier(packed: bool, pooling: str = "mean") -> TextClassifier:
    torch.manual_seed(0)
    encoder = build_tiny_bert(VOCAB, hidden=32, layers=2, heads=2, pooling=pooling)  # type: ignore[arg-type]
    return _no_dropout(TextClassifier(encoder, 3, length_groups=packed, packed=packed)).train()


def _loss_and_grads(model: TextClassifier, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(ids, mask), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_batch_has_the_padded_batch_loss_and_gradients(pooling: str) -> None:
    ids, mask = _batch(LENGTHS)
    y = torch.arange(len(LENGTHS)) % 3
    padded, packed = _classifier(False, pooling), _classifier(True, pooling)
    calls: list[int] = []  # the packed path must not run the HF encoder stack at all
    packed.encoder.model.encoder.register_forward_pre_hook(lambda m, args: calls.append(1))
    loss_p, grads_p = _loss_and_grads(padded, ids, mask, y)
    loss_k, grads_k = _loss_and_grads(packed, ids, mask, y)
    assert calls == []
    torch.testing.assert_close(loss_k, loss_p, rtol=1e-5, atol=1e-6)
    assert grads_k.keys() == grads_p.keys() and len(grads_p) > 20
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_k[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_rows_equal_the_encoder_in_eval_mode(pooling: str) -> None:
    torch.manual_seed(1)
    encoder = build_tiny_bert(VOCAB, hidden=32, layers=2, heads=4, pooling=pooling).eval()  # type: ignore[arg-type]
    ids, mask = _batch(LENGTHS, seed=3)
    with torch.no_grad():
        out = packed_embed(encoder, ids, mask)
        assert out is not None and out.dtype == torch.float32
        torch.testing.assert_close(out, encoder(ids, mask), rtol=1e-5, atol=1e-5)
        # one report alone gives its row of the batch: no dependence on the other reports
        torch.testing.assert_close(packed_embed(encoder, ids[3:4, :60], mask[3:4, :60]), out[3:4],
                                   rtol=1e-5, atol=1e-5)


def test_packed_training_applies_dropout() -> None:
    torch.manual_seed(0)
    encoder = build_tiny_bert(VOCAB, hidden=32, layers=2, heads=2).train()
    ids, mask = _batch(LENGTHS)
    a, b = packed_embed(encoder, ids, mask), packed_embed(encoder, ids, mask)
    assert a is not None and b is not None and not torch.allclose(a, b)
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(packed_embed(encoder, ids, mask), packed_embed(encoder, ids, mask))


def test_cpu_attention_with_dropout_has_the_padded_batch_loss_and_gradients(monkeypatch) -> None:
    """With attention dropout on, the CPU path writes attention out instead of SDPA: same arithmetic."""
    ids, mask = _batch(LENGTHS)
    y = torch.arange(len(LENGTHS)) % 3
    padded, packed = _classifier(False), _classifier(True)
    for layer in packed.encoder.model.encoder.layer:
        layer.attention.self.dropout.p = 0.3  # takes the written-out branch ...
    drawn: list[float] = []
    monkeypatch.setattr(packed_module, "_dropout", lambda x, p: drawn.append(p) or x)  # ... with no draw
    loss_p, grads_p = _loss_and_grads(padded, ids, mask, y)
    loss_k, grads_k = _loss_and_grads(packed, ids, mask, y)
    assert drawn and set(drawn) == {0.3}
    torch.testing.assert_close(loss_k, loss_p, rtol=1e-5, atol=1e-6)
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_k[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_at_rate_p_scales_the_rest_and_replays_under_a_seed(p: float) -> None:
    x = torch.linspace(1.0, 2.0, 1_000_003, requires_grad=True)  # odd size: the last 64-bit word is partial
    torch.manual_seed(5)
    out = packed_module._dropout(x, p)
    kept = out != 0
    rate = 1.0 - kept.double().mean().item()
    sd = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(rate - p) < 5 * sd  # the drop rate is p (rounded to 1/65536)
    torch.testing.assert_close(out[kept], x.detach()[kept] / (1 - p))  # kept values scaled as F.dropout does
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))  # the gradient passes through the same mask
    # neighbours are independent (16-bit lanes of one random word): P(both kept) = (1 - p)^2
    both = (kept[:-1] & kept[1:]).double().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * (((1 - p) ** 2) * (1 - (1 - p) ** 2) / x.numel()) ** 0.5
    torch.manual_seed(5)
    assert torch.equal(packed_module._dropout(x.detach(), p), out.detach())  # the default generator replays it


def test_unsupported_inputs_and_encoders_fall_back() -> None:
    torch.manual_seed(0)
    encoder = build_tiny_bert(VOCAB, hidden=16, layers=1, heads=1)
    ids, mask = _batch([5, 3, 4])
    left = mask.flip(1)  # left padding: HF positions would not restart at 0
    assert packed_embed(encoder, ids, left) is None
    assert packed_embed(encoder, ids, torch.cat([mask[:2], torch.zeros_like(mask[:1])])) is None  # empty row
    from transformers import RobertaConfig

    roberta = HFTextEncoder.from_config(RobertaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                                      num_attention_heads=1, intermediate_size=32))
    assert supports_packing(encoder) and not supports_packing(roberta)
    handle = encoder.register_forward_hook(lambda m, args, out: None)  # a hook expects whole-batch calls
    assert not supports_packing(encoder)
    handle.remove()
    assert packed_embed(roberta, ids, mask) is None
    # the classifier then runs length groups: still the padded batch's loss
    y = torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    padded = _no_dropout(TextClassifier(roberta, 3, length_groups=False)).train()
    loss_p, _ = _loss_and_grads(padded, ids, mask, y)
    padded.length_groups, padded.packed = True, True
    loss_k, _ = _loss_and_grads(padded, ids, mask, y)
    torch.testing.assert_close(loss_k, loss_p, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_packed_batch_matches_under_bf16_autocast_on_cuda() -> None:
    ids, mask = _batch(LENGTHS)
    model = _classifier(True).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        packed = packed_embed(model.encoder, ids.cuda(), mask.cuda())
        padded = model.encoder(ids.cuda(), mask.cuda())
    assert packed is not None
    torch.testing.assert_close(packed, padded, rtol=2e-2, atol=2e-2)
