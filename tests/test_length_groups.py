"""Length-sorted micro-batches: the padded batch's loss and gradients, less padding computed."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from medmm.models.length_groups import grouped_embed, plan_groups
from medmm.models.text import TextClassifier, build_tiny_bert
from medmm.models.text_baselines import TextCNN

VOCAB = 60
LENGTHS = [9, 57, 3, 60, 14, 31, 5, 60, 22, 8, 44, 2]  # a shuffled batch: very uneven


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids; padding positions hold junk ids (they must not matter)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=g)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return ids, mask.long()


def _classifier(length_groups: bool) -> TextClassifier:
    torch.manual_seed(0)
    model = TextClassifier(build_tiny_bert(VOCAB, hidden=32, layers=2, heads=2), 1, length_groups=length_groups)
    for m in model.modules():  # dropout draws differ between the two paths; the arithmetic must not
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model.train()


def _loss_and_grads(model: TextClassifier, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy_with_logits(model(ids, mask).squeeze(-1), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_plan_groups_is_the_optimal_cut() -> None:
    lengths = [60, 60, 57, 44, 31, 22, 14, 9, 8, 5, 3, 2]
    assert plan_groups(lengths, overhead=10**9) == [(0, 12, 60)]  # one call when calls are dear
    assert plan_groups(lengths, overhead=0) == [(0, 2, 60), *((i, i + 1, n) for i, n in enumerate(lengths) if i >= 2)]
    groups = plan_groups(lengths, overhead=48)
    assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(groups))  # contiguous, complete
    cost = sum((b - a) * w + 48 for a, b, w in groups)
    assert cost < 12 * 60 + 48 and 1 < len(groups) < len(lengths)
    # brute force over every set of cut points: nothing cheaper exists
    best = min(sum((b - a) * lengths[a] + 48 for a, b in zip((0, *cuts), (*cuts, 12)))
               for k in range(12) for cuts in itertools.combinations(range(1, 12), k))
    assert cost == best
    assert plan_groups([], 48) == []


def test_grouped_batch_has_the_padded_batch_loss_and_gradients() -> None:
    ids, mask = _batch(LENGTHS)
    y = torch.tensor([1.0, 0.0] * 6)
    padded, grouped = _classifier(False), _classifier(True)
    calls = []
    grouped.encoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
    loss_p, grads_p = _loss_and_grads(padded, ids, mask, y)
    loss_g, grads_g = _loss_and_grads(grouped, ids, mask, y)
    assert len(calls) > 1 and sum(s[0] * s[1] for s in calls) < 0.7 * ids.numel()  # really less padding
    torch.testing.assert_close(loss_g, loss_p, rtol=1e-5, atol=1e-6)
    assert grads_g.keys() == grads_p.keys() and len(grads_p) > 10
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_g[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # the logits come back in the batch's row order
    with torch.no_grad():
        torch.testing.assert_close(grouped_embed(grouped.encoder, ids, mask, overhead=0),
                                   grouped.encoder(ids, mask), rtol=1e-5, atol=1e-5)


def test_grouping_stays_off_in_eval_under_hooks_and_for_vocab_baselines() -> None:
    ids, mask = _batch(LENGTHS)
    model = _classifier(True)
    calls = []
    model.encoder.register_forward_pre_hook(lambda m, args: calls.append(1))
    model.eval()
    model(ids, mask)
    assert len(calls) == 1  # evaluation: one call
    model.train()
    handle = model.head.register_forward_hook(lambda *a: None)  # as opacus / captum hook layers
    model(ids, mask)
    assert len(calls) == 2
    handle.remove()
    model(ids, mask)
    assert len(calls) > 3
    assert not TextClassifier(TextCNN(VOCAB, embedding_dim=8, channels=4), 1).length_groups
    assert TextClassifier(build_tiny_bert(VOCAB, hidden=16, layers=1, heads=1), 1).length_groups


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_grouped_batch_matches_under_bf16_autocast_on_cuda() -> None:
    ids, mask = _batch(LENGTHS)
    model = _classifier(True).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        grouped = grouped_embed(model.encoder, ids.cuda(), mask.cuda(), overhead=0)
        padded = model.encoder(ids.cuda(), mask.cuda())
    torch.testing.assert_close(grouped, padded, rtol=2e-2, atol=2e-2)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_example_gradients_see_one_call_per_batch() -> None:
    opacus = pytest.importorskip("opacus")
    ids, mask = _batch(LENGTHS)
    model = _classifier(True)
    calls = []
    model.encoder.register_forward_pre_hook(lambda m, args: calls.append(1))
    wrapped = opacus.GradSampleModule(model)
    wrapped(ids, mask).sum().backward()
    assert len(calls) == 1
    assert model.head.weight.grad_sample.shape[0] == len(LENGTHS)  # one per example
