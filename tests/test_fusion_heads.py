"""Fusion heads (``medmm.models.fusion_heads``): masking contract, input checks, helpers, learnability.

Every built-in head registered under the ``fusion_head`` kind is covered: the tests are
parametrized over the registry, so a newly registered built-in head gets the same checks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from medmm.errors import ConfigError
from medmm.models.fusion_heads import (
    AttentionFusion,
    ConcatFusion,
    FusionHead,
    GatedFusion,
    LateFusion,
    masked_softmax,
    modality_dropout,
)
from medmm.plugins import BUILTIN_DIST, default_plugins, get_registry

MODS: dict[str, int] = {"text": 6, "image": 5, "tabular": 3}  # distinct sizes catch mixed-up modalities
OUT = 3
HIDDEN = 8
EXPECTED = {"concat": ConcatFusion, "gated": GatedFusion, "attention": AttentionFusion, "late": LateFusion}


def _builtin_head_names() -> list[str]:
    """Names of the fusion heads registered by medmm's own (built-in) plugins."""
    plugins = default_plugins()
    builtin = {info.name for info in plugins.infos if info.dist == BUILTIN_DIST}
    registry = plugins.registry
    return [n for n in registry.names("fusion_head") if registry.owner("fusion_head", n) in builtin]


HEADS = _builtin_head_names()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Single-threaded torch: fast for tiny models and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def head_class(name: str) -> type[FusionHead]:
    """The head class registered as ``name``."""
    return get_registry().get("fusion_head", name).load()


def make_head(name: str, seed: int = 0, **kwargs: object) -> FusionHead:
    """A small head with reproducible weights."""
    torch.manual_seed(seed)
    args: dict[str, object] = {"embed_dims": MODS, "out_dim": OUT, "hidden": HIDDEN, "dropout": 0.1, **kwargs}
    return head_class(name)(**args)


def make_embeddings(batch: int, seed: int) -> dict[str, Tensor]:
    """Random embeddings for every modality of ``MODS``."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, dim, generator=g) for name, dim in MODS.items()}


def all_masks(repeat: int = 1) -> Tensor:
    """Every presence pattern of the modalities (including the empty one), ``repeat`` times."""
    rows = list(itertools.product([False, True], repeat=len(MODS))) * repeat
    return torch.tensor(rows, dtype=torch.bool)


def garbage_like(x: Tensor, kind: str, seed: int = 123) -> Tensor:
    """Values a missing modality's embedding might hold."""
    if kind == "random":
        return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 10
    fill = {"huge": 1e30, "inf": math.inf, "nan": math.nan}[kind]
    return torch.full_like(x, fill)


def with_garbage(emb: dict[str, Tensor], mask: Tensor, kind: str) -> dict[str, Tensor]:
    """Copy of ``emb`` whose rows for absent modalities are replaced by garbage."""
    out = {}
    for i, name in enumerate(MODS):
        absent = ~mask[:, i]
        x = emb[name].clone()
        x[absent] = garbage_like(x[absent], kind, seed=i)
        out[name] = x
    return out


# --------------------------------------------------------------------------- registry


def test_builtin_heads_are_registered() -> None:
    """The four documented heads are registered by medmm itself and resolve to their classes."""
    assert set(EXPECTED) <= set(HEADS)
    for name, cls in EXPECTED.items():
        assert head_class(name) is cls
    for name in HEADS:
        assert issubclass(head_class(name), FusionHead)


# --------------------------------------------------------------------------- forward contract


@pytest.mark.parametrize("name", HEADS)
def test_output_shape_finite_and_mask_dtypes(name: str) -> None:
    """[B, out_dim] finite logits; a bool, int or float 0/1 mask gives the same result."""
    head = make_head(name).eval()
    mask = all_masks(repeat=2)
    emb = make_embeddings(len(mask), seed=1)
    with torch.no_grad():
        out = head(emb, mask)
        assert out.shape == (len(mask), OUT)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        for dtype in (torch.int64, torch.float32):
            torch.testing.assert_close(head(emb, mask.to(dtype)), out, rtol=0, atol=0)


@pytest.mark.parametrize("name", HEADS)
def test_rows_are_independent(name: str) -> None:
    """A row's output depends on that row only: alone, or with other rows changed."""
    head = make_head(name).eval()
    mask = all_masks(repeat=2)
    emb = make_embeddings(len(mask), seed=2)
    with torch.no_grad():
        out = head(emb, mask)
        for i in range(len(mask)):
            alone = head({k: v[i : i + 1] for k, v in emb.items()}, mask[i : i + 1])
            torch.testing.assert_close(alone[0], out[i], rtol=1e-5, atol=1e-6)
        # change every row but the first (embeddings and presence), keep the first
        other = make_embeddings(len(mask), seed=3)
        emb2 = {k: torch.cat([v[:1], other[k][1:]]) for k, v in emb.items()}
        mask2 = torch.cat([mask[:1], ~mask[1:]])
        out2 = head(emb2, mask2)
    torch.testing.assert_close(out2[0], out[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out2[1:], out[1:])  # the other rows did change


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("kind", ["random", "huge", "inf", "nan"])
@pytest.mark.parametrize("name", HEADS)
def test_missing_modality_has_no_influence(name: str, kind: str, mode: str) -> None:
    """Garbage (random, 1e30, inf, NaN) in a masked-out embedding leaves the output bitwise equal."""
    head = make_head(name)
    head.train(mode == "train")
    mask = all_masks(repeat=2)
    emb = make_embeddings(len(mask), seed=4)
    dirty = with_garbage(emb, mask, kind)
    with torch.no_grad():
        torch.manual_seed(7)  # same dropout draws in train mode
        clean_out = head(emb, mask)
        torch.manual_seed(7)
        dirty_out = head(dirty, mask)
    assert torch.isfinite(clean_out).all()
    assert torch.equal(dirty_out, clean_out)


@pytest.mark.parametrize("kind", ["nan", "huge"])
@pytest.mark.parametrize("name", HEADS)
def test_missing_modality_gets_no_gradient(name: str, kind: str) -> None:
    """No gradient reaches a masked-out embedding, and no NaN reaches any parameter gradient."""
    head = make_head(name).train()
    mask = all_masks(repeat=2)
    emb = with_garbage(make_embeddings(len(mask), seed=5), mask, kind)
    for x in emb.values():
        x.requires_grad_(True)
    torch.manual_seed(8)
    out = head(emb, mask)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    (out * weights).sum().backward()
    for i, name_m in enumerate(MODS):
        grad = emb[name_m].grad
        assert grad is not None
        assert torch.equal(grad[~mask[:, i]], torch.zeros_like(grad[~mask[:, i]]))
        assert torch.isfinite(grad[mask[:, i]]).all()
        assert grad[mask[:, i]].abs().sum() > 0  # present modalities do get a gradient
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("name", HEADS)
def test_single_modality_rows(name: str) -> None:
    """A row with one present modality is finite, depends on it, and differs from the full row."""
    head = make_head(name).eval()
    n = len(MODS)
    mask = torch.cat([torch.eye(n, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)])
    base = make_embeddings(1, seed=6)
    emb = {k: v.expand(len(mask), -1).clone() for k, v in base.items()}  # same embeddings in every row
    with torch.no_grad():
        out = head(emb, mask)
        assert torch.isfinite(out).all()
        for i in range(n):
            assert not torch.allclose(out[i], out[n], atol=1e-6), f"only {list(MODS)[i]} == all present"
        # two present (text + image) differs from text only
        pair = torch.tensor([[True, True, False], [True, False, False]])
        out_pair = head({k: v[:2] for k, v in emb.items()}, pair)
        assert not torch.allclose(out_pair[0], out_pair[1], atol=1e-6)
        # the single present modality is actually used
        changed = {k: v.clone() for k, v in emb.items()}
        for i, name_m in enumerate(MODS):
            changed[name_m][i] = -3 * changed[name_m][i] + 1
        out2 = head(changed, mask)
    for i in range(n):
        assert not torch.allclose(out2[i], out[i], atol=1e-6)


@pytest.mark.parametrize("name", HEADS)
def test_row_without_modalities_is_finite_and_input_independent(name: str) -> None:
    """An all-absent row gives the same finite output whatever its embeddings and batch mates."""
    head = make_head(name).eval()
    mask = torch.zeros(4, len(MODS), dtype=torch.bool)
    mask[3] = True  # one normal row alongside
    emb = make_embeddings(4, seed=10)
    emb["text"][1] = math.nan
    emb["image"][2] = 1e30
    with torch.no_grad():
        out = head(emb, mask)
        other = head(make_embeddings(2, seed=11), torch.zeros(2, len(MODS), dtype=torch.bool))
    assert torch.isfinite(out).all()
    for row in (out[1], out[2], other[0], other[1]):
        torch.testing.assert_close(row, out[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- bad input


def _bad_inputs(emb: dict[str, Tensor], mask: Tensor) -> dict[str, tuple[dict[str, Tensor], Tensor]]:
    """Named (embeddings, mask) pairs that must be refused."""
    b = len(mask)
    cases = {
        "missing key": ({k: v for k, v in emb.items() if k != "image"}, mask),
        "mask 1-d": (emb, mask[:, 0]),
        "mask 3-d": (emb, mask.unsqueeze(-1)),
        "mask too many columns": (emb, torch.cat([mask, mask[:, :1]], dim=1)),
        "mask too few columns": (emb, mask[:, :2]),
        "mask wrong batch": (emb, mask[: b - 1]),
        "embedding wrong dim": ({**emb, "text": torch.randn(b, MODS["text"] + 1)}, mask),
        "embedding wrong batch": ({**emb, "image": torch.randn(b + 1, MODS["image"])}, mask),
        "embedding 1-d": ({**emb, "tabular": torch.randn(b * MODS["tabular"])}, mask),
        "embedding 3-d": ({**emb, "tabular": torch.randn(b, 1, MODS["tabular"])}, mask),
    }
    return cases


@pytest.mark.parametrize("name", HEADS)
def test_bad_inputs_raise_value_error(name: str) -> None:
    """Missing modality key, wrong mask shape or wrong embedding shape -> ValueError."""
    head = make_head(name).eval()
    mask = all_masks()
    emb = make_embeddings(len(mask), seed=12)
    for case, (bad_emb, bad_mask) in _bad_inputs(emb, mask).items():
        with pytest.raises(ValueError):
            head(bad_emb, bad_mask)
            pytest.fail(f"accepted: {case}")


BAD_CONFIGS: dict[str, dict[str, object]] = {
    "no modalities": {"embed_dims": {}},
    "zero dim": {"embed_dims": {"text": 0, "image": 5}},
    "negative dim": {"embed_dims": {"text": 6, "image": -5}},
    "float dim": {"embed_dims": {"text": 6.0, "image": 5}},
    "zero out_dim": {"out_dim": 0},
    "zero hidden": {"hidden": 0},
    "dropout 1": {"dropout": 1.0},
    "negative dropout": {"dropout": -0.1},
    "nan dropout": {"dropout": math.nan},
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
@pytest.mark.parametrize("name", HEADS)
def test_bad_constructor_args_raise_config_error(name: str, case: str) -> None:
    """Invalid sizes or dropout are a ConfigError for every head."""
    with pytest.raises(ConfigError):
        make_head(name, **BAD_CONFIGS[case])


@pytest.mark.parametrize("kwargs", [{"heads": 3}, {"heads": 0}, {"layers": 0}])
def test_attention_bad_layout_raises_config_error(kwargs: dict[str, int]) -> None:
    """Attention heads must divide hidden; at least one layer and one head."""
    with pytest.raises(ConfigError):
        AttentionFusion(MODS, OUT, hidden=HIDDEN, **kwargs)


# --------------------------------------------------------------------------- head-specific weights


def test_gated_gates_sum_to_one_over_present() -> None:
    """GatedFusion gates: per unit, 1 summed over present modalities, exactly 0 for missing ones."""
    head = GatedFusion(MODS, OUT, hidden=HIDDEN).eval()
    mask = all_masks()
    with torch.no_grad():
        z = head.gates(with_garbage(make_embeddings(len(mask), 13), mask, "nan"), mask)
    assert z.shape == (len(mask), len(MODS), HIDDEN)
    assert torch.isfinite(z).all()
    assert torch.equal(z[~mask], torch.zeros_like(z[~mask]))
    sums = z.sum(dim=1)
    any_present = mask.any(dim=1)
    torch.testing.assert_close(sums[any_present], torch.ones_like(sums[any_present]))
    assert torch.equal(sums[~any_present], torch.zeros_like(sums[~any_present]))


@pytest.mark.parametrize("cls", [AttentionFusion, LateFusion])
def test_absent_modality_equals_head_without_it(cls: type[FusionHead]) -> None:
    """Attention/late: an absent modality is truly excluded (masked out of attention / the average).

    The same head with that modality removed from ``embed_dims`` (same remaining weights) gives
    the same output on rows where it is absent.
    """
    torch.manual_seed(0)
    full = cls(MODS, OUT, hidden=HIDDEN).eval()
    sub_dims = {k: v for k, v in MODS.items() if k != "tabular"}
    sub = cls(sub_dims, OUT, hidden=HIDDEN).eval()
    state = {k: v for k, v in full.state_dict().items() if ".tabular." not in k}
    for key in ("modality_embed", "weight_logits"):
        if key in state:
            state[key] = state[key][: len(sub_dims)]
    sub.load_state_dict(state)
    with torch.no_grad():  # a trained-looking, non-uniform late weighting
        if isinstance(full, LateFusion):
            full.weight_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
            sub.weight_logits.copy_(torch.tensor([0.5, -1.0]))
    mask = all_masks(repeat=2)
    mask = mask[~mask[:, 2]]  # rows without tabular
    emb = make_embeddings(len(mask), 15)
    with torch.no_grad():
        out_full = full(emb, mask)
        out_sub = sub({k: emb[k] for k in sub_dims}, mask[:, :2])
    torch.testing.assert_close(out_full, out_sub, rtol=1e-5, atol=1e-6)


def test_late_fixed_weights_are_a_plain_mean() -> None:
    """LateFusion(learn_weights=False): the logits are the mean of the present modalities' logits."""
    head = LateFusion(MODS, OUT, dropout=0.0, learn_weights=False).eval()
    assert not head.weight_logits.requires_grad
    mask = all_masks()
    emb = make_embeddings(len(mask), 14)
    with torch.no_grad():
        out = head(emb, mask)
        per = torch.stack([head.heads[n](emb[n]) for n in MODS], dim=1)  # [B, M, C]
    k = mask.sum(dim=1, keepdim=True).clamp(min=1)
    expected = (per * mask.unsqueeze(-1)).sum(dim=1) / k
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------- masked_softmax


def test_masked_softmax_normalises_over_mask_only() -> None:
    """Sums to 1 over the mask, equals softmax of the present scores, exactly 0 elsewhere."""
    g = torch.Generator().manual_seed(20)
    scores = torch.randn(64, 5, generator=g) * 5
    mask = torch.rand(64, 5, generator=g) < 0.5
    mask[0] = False
    mask[1] = True
    scores[~mask] = torch.tensor([math.nan, math.inf, -math.inf, 1e30])[torch.arange(int((~mask).sum())) % 4]
    out = masked_softmax(scores, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    rows = mask.any(dim=1)
    torch.testing.assert_close(out.sum(dim=1)[rows], torch.ones(int(rows.sum())))
    assert torch.equal(out[0], torch.zeros(5))
    for i in range(len(scores)):
        if mask[i].any():
            torch.testing.assert_close(out[i][mask[i]], torch.softmax(scores[i][mask[i]], dim=0))


def test_masked_softmax_broadcast_and_dim() -> None:
    """The mask broadcasts (as GatedFusion uses it) and ``dim`` selects the normalised axis."""
    scores = torch.randn(4, 3, 7, generator=torch.Generator().manual_seed(21))
    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]]).unsqueeze(-1)
    out = masked_softmax(scores, mask, dim=1)
    assert out.shape == scores.shape
    sums = out.sum(dim=1)
    torch.testing.assert_close(sums[[0, 2, 3]], torch.ones(3, 7))
    assert torch.equal(sums[1], torch.zeros(7))
    torch.testing.assert_close(out[3, 1], torch.ones(7))


def test_masked_softmax_gradient_has_no_nan() -> None:
    """No NaN in the gradient, even for an all-masked row or garbage in masked scores."""
    scores = torch.tensor([[0.3, math.nan, -1.0], [math.nan, math.inf, 2.0], [1.0, 2.0, 3.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    out = masked_softmax(scores, mask)
    (out * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert scores.grad is not None
    assert torch.isfinite(scores.grad).all()
    assert torch.equal(scores.grad[~mask], torch.zeros(int((~mask).sum())))
    assert scores.grad[2].abs().sum() > 0


# --------------------------------------------------------------------------- modality_dropout


def _random_mask(n: int, m: int, seed: int) -> Tensor:
    return torch.rand(n, m, generator=torch.Generator().manual_seed(seed)) < 0.6


@pytest.mark.parametrize("p", [0.3, 0.9, 1.0])
def test_modality_dropout_never_empties_and_never_adds(p: float) -> None:
    """Rows with a present modality keep one; absent modalities stay absent; input untouched."""
    mask = _random_mask(4000, 3, seed=30)
    mask[:10] = False
    before = mask.clone()
    out = modality_dropout(mask, p, generator=torch.Generator().manual_seed(31))
    assert torch.equal(mask, before)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert not (out & ~mask).any()
    assert torch.equal(out.any(dim=1), mask.any(dim=1))
    assert (out != mask).any()  # something was hidden


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.float32])
def test_modality_dropout_keeps_dtype_and_p0_is_identity(dtype: torch.dtype) -> None:
    """p=0 returns an equal copy; the result has the mask's dtype and only 0/1 values."""
    mask = _random_mask(200, 3, seed=32).to(dtype)
    same = modality_dropout(mask, 0.0, generator=torch.Generator().manual_seed(33))
    assert torch.equal(same, mask) and same.dtype == dtype
    assert same.data_ptr() != mask.data_ptr()
    out = modality_dropout(mask, 0.5, generator=torch.Generator().manual_seed(33))
    assert out.dtype == dtype
    assert set(out.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8, 1.0])
def test_modality_dropout_hide_rate(p: float) -> None:
    """Hide rate per present modality: p - p**k / k (k present); 0 for k == 1; fair rescue."""
    n = 40_000
    pattern = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    mask = pattern.repeat(n, 1)
    out = modality_dropout(mask, p, generator=torch.Generator().manual_seed(34))
    hidden = (mask & ~out).view(n, 3, 3).float().mean(dim=0)  # [pattern row, modality]
    two = p - p**2 / 2
    three = p - p**3 / 3
    tol = 0.012
    assert abs(hidden[0, 0].item() - two) < tol and abs(hidden[0, 1].item() - two) < tol
    assert hidden[1, 0].item() == 0.0
    for j in range(3):
        assert abs(hidden[2, j].item() - three) < tol
    assert hidden[:, 2][:2].sum().item() == 0.0  # absent stays absent (and is not "hidden")


def test_modality_dropout_reproducible_with_generator() -> None:
    """Same generator seed -> same mask; another seed -> a different one."""
    mask = _random_mask(2000, 3, seed=35)
    a = modality_dropout(mask, 0.5, generator=torch.Generator().manual_seed(36))
    b = modality_dropout(mask, 0.5, generator=torch.Generator().manual_seed(36))
    c = modality_dropout(mask, 0.5, generator=torch.Generator().manual_seed(37))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("p", [-0.01, 1.01, math.nan, math.inf])
def test_modality_dropout_bad_p(p: float) -> None:
    """p outside [0, 1] (or NaN) is a ConfigError."""
    with pytest.raises(ConfigError):
        modality_dropout(torch.ones(4, 2, dtype=torch.bool), p)


def test_modality_dropout_bad_mask_shape() -> None:
    """A mask that is not [batch, modalities] is a ValueError."""
    with pytest.raises(ValueError):
        modality_dropout(torch.ones(4, dtype=torch.bool), 0.5)


# --------------------------------------------------------------------------- learnability

TRAIN_DIMS = {"text": 4, "image": 4}
P_POSITIVE = 0.7  # per modality, so the AND label is ~balanced (chance ~0.51)


def and_task(n: int, seed: int) -> tuple[dict[str, Tensor], Tensor]:
    """label = (x_text[:, 0] > 0) AND (x_image[:, 0] > 0), other features noise.

    ``|x[:, 0]|`` is drawn from [0.5, 1) so the task stays learnable by LateFusion, which is
    linear in its inputs (x_text0 + x_image0 > 0.75 separates it); a single modality caps
    accuracy near 0.79, so > 0.85 needs both.
    """
    g = torch.Generator().manual_seed(seed)
    emb = {}
    for name, dim in TRAIN_DIMS.items():
        x = torch.randn(n, dim, generator=g)
        sign = torch.where(torch.rand(n, generator=g) < P_POSITIVE, 1.0, -1.0)
        x[:, 0] = sign * (0.5 + 0.5 * torch.rand(n, generator=g))
        emb[name] = x
    label = ((emb["text"][:, 0] > 0) & (emb["image"][:, 0] > 0)).long()
    return emb, label


@pytest.mark.parametrize("name", HEADS)
def test_each_head_learns_and_task(name: str) -> None:
    """~200 Adam steps with full masks: held-out accuracy > 0.85 (chance ~0.5)."""
    torch.manual_seed(0)
    head = head_class(name)(embed_dims=TRAIN_DIMS, out_dim=2, hidden=16, dropout=0.0)
    train_x, train_y = and_task(128, seed=40)
    test_x, test_y = and_task(2000, seed=41)
    full = torch.ones(128, len(TRAIN_DIMS), dtype=torch.bool)
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    loss_fn = nn.CrossEntropyLoss()
    head.train()
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn(head(train_x, full), train_y)
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        pred = head(test_x, torch.ones(2000, len(TRAIN_DIMS), dtype=torch.bool)).argmax(dim=1)
    chance = max(test_y.float().mean().item(), 1 - test_y.float().mean().item())
    accuracy = (pred == test_y).float().mean().item()
    assert chance < 0.6
    assert accuracy > 0.85, f"{name}: accuracy {accuracy:.3f}"
