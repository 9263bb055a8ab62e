"""Padding-free packed forward of a BERT-family encoder: no padding token is ever computed.

:func:`packed_embed` concatenates a batch's real tokens into one ``[T, H]`` matrix (rows sorted
by length, position ids restarting at 0 for each report), so every linear layer (query / key /
value, attention output, intermediate, output) is one matrix product over real tokens only.
Attention stays per report: reports of equal length are contiguous in the packed matrix and go
through one attention call together, without a mask. The
Hugging Face modules' own weights are called (checkpoints, export and explanations see the same
model), dropout is applied where Hugging Face applies it (embeddings, attention probabilities,
both sub-layer outputs; on a CPU with a cheaper mask, :func:`_dropout`), and pooling is the
encoder's (mean or CLS), so the output rows, the loss and every gradient are the padded batch's
up to summation order (``tests/test_packed.py``). On a CPU in training, attention is written out
(matmul, softmax, dropout, matmul: SDPA's own CPU math path, without its per-call masked-row
check); elsewhere it is one SDPA call per run of equal lengths. Encoders it does not recognise
(anything but a plain encoder-only ``BertModel`` with absolute positions, or one with forward
hooks, which expect whole-batch calls), left padding or empty rows return ``None``: the caller
falls back to :func:`medmm.models.length_groups.grouped_embed`. On CUDA each run of equal lengths
is one dense SDPA call (flash / memory-efficient kernels under bf16 autocast), not a varlen kernel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["packed_embed", "supports_packing"]


def supports_packing(encoder: Any) -> bool:
    """True for a :class:`~medmm.models.text.HFTextEncoder` around a plain encoder-only ``BertModel``."""
    model = getattr(encoder, "model", None)
    config = getattr(model, "config", None)
    if config is None or type(model).__name__ != "BertModel" or getattr(encoder, "pooling", None) not in ("mean", "cls"):
        return False
    return (not config.is_decoder and not getattr(config, "add_cross_attention", False)
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and not any(getattr(layer, "gradient_checkpointing", False) for layer in model.encoder.layer)
            and not any(m._forward_hooks or m._forward_pre_hooks for m in (encoder, model)))


def packed_embed(encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """``encoder(input_ids, attention_mask)`` computed on real tokens only; ``None`` if unsupported.

    Needs right padding (row ``i`` is ``input_ids[i, :length_i]``) and no empty row.
    """
    if not supports_packing(encoder):
        return None
    batch, width = input_ids.shape
    mask = attention_mask.to(torch.bool)
    lengths = mask.sum(dim=1)
    positions = torch.arange(width, device=input_ids.device)
    if width == 0 or bool((lengths == 0).any()) or not torch.equal(mask, positions < lengths.unsqueeze(1)):
        return None
    lengths_cpu = lengths.cpu()  # B integers (one sync on a GPU)
    order = torch.argsort(lengths_cpu, descending=True, stable=True)
    sorted_lengths = lengths_cpu[order]
    order_dev = order.to(input_ids.device)
    keep = mask.index_select(0, order_dev).reshape(-1)
    ids = input_ids.index_select(0, order_dev).reshape(-1)[keep]  # [T], sorted rows back to back
    pos = positions.expand(batch, width).reshape(-1)[keep]
    runs = _equal_length_runs(sorted_lengths.tolist())

    model = encoder.model
    emb = model.embeddings
    x = emb.word_embeddings(ids) + emb.token_type_embeddings(torch.zeros_like(ids)) + emb.position_embeddings(pos)
    x = _module_dropout(emb.dropout, emb.LayerNorm(x))
    for layer in model.encoder.layer:
        x = _layer(layer, x, runs)

    segment = torch.repeat_interleave(torch.arange(batch, device=x.device), sorted_lengths.to(x.device))
    if encoder.pooling == "cls":
        starts = torch.cumsum(sorted_lengths, 0) - sorted_lengths
        pooled = x.index_select(0, starts.to(x.device)).float()
    else:
        summed = torch.zeros(batch, x.shape[1], dtype=torch.float32, device=x.device)
        summed = summed.index_add(0, segment, x.float())
        pooled = summed / sorted_lengths.to(device=x.device, dtype=torch.float32).unsqueeze(1)
    inverse = torch.empty_like(order_dev)
    inverse[order_dev] = torch.arange(batch, device=order_dev.device)
    return pooled.index_select(0, inverse)


def _equal_length_runs(sorted_lengths: list[int]) -> list[tuple[int, int, int]]:
    """``(first token, reports, length)`` for each run of equal lengths in the packed matrix."""
    runs: list[tuple[int, int, int]] = []
    token = 0
    for n in sorted_lengths:
        if runs and runs[-1][2] == n:
            start, count, _ = runs[-1]
            runs[-1] = (start, count + 1, n)
        else:
            runs.append((token, 1, n))
        token += n
    return runs


def _layer(layer: Any, x: torch.Tensor, runs: list[tuple[int, int, int]]) -> torch.Tensor:
    """One ``BertLayer`` on packed tokens ``[T, H]``."""
    sa = layer.attention.self
    heads, head_dim = sa.num_attention_heads, sa.attention_head_size
    q, k, v = sa.query(x), sa.key(x), sa.value(x)  # one fused [T, 3H] product measured no faster
    p = sa.dropout.p if sa.training else 0.0
    # With attention dropout on a CPU, SDPA takes its math path plus a masked-row check per call;
    # the same arithmetic written out ran a step 4% faster (1 thread, bench/text_step_profile.py).
    explicit = p > 0.0 and x.device.type == "cpu"
    parts = []
    sizes = [count * length for _, count, length in runs]  # split, not slices: one concatenation backward
    for (_, count, length), *qkv in zip(runs, q.split(sizes), k.split(sizes), v.split(sizes)):
        shape = (count, length, heads, head_dim)
        qs, ks, vs = (t.view(shape).transpose(1, 2) for t in qkv)
        if explicit:
            probs = torch.softmax(torch.matmul(qs, ks.transpose(-1, -2)) * sa.scaling, dim=-1)
            ctx = torch.matmul(_dropout(probs, p), vs)
        else:
            ctx = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=p, scale=sa.scaling)
        parts.append(ctx.transpose(1, 2).reshape(count * length, heads * head_dim))
    return _feed_forward(layer, parts[0] if len(parts) == 1 else torch.cat(parts), x)


def _feed_forward(layer: Any, ctx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Attention output projection + residual + norm, then the feed-forward block, on ``[T, H]``."""
    attn_out, inter, out = layer.attention.output, layer.intermediate, layer.output
    a = attn_out.LayerNorm(_module_dropout(attn_out.dropout, attn_out.dense(ctx)) + x)
    h = inter.intermediate_act_fn(inter.dense(a))
    return out.LayerNorm(_module_dropout(out.dropout, out.dense(h)) + a)


def _module_dropout(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an ``nn.Dropout``, through :func:`_dropout` in training."""
    return _dropout(x, module.p) if module.training and module.p > 0.0 else x


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout; on a CPU with a mask from 16 random bits per element.

    torch's CPU ``bernoulli_`` (behind ``F.dropout``) measured 7.6 ns per element on one or two
    threads here, 12% of a packed MiniLM step on 2 threads; four 16-bit draws per 64-bit random
    word make the mask in about 1 ns. The drop rate is ``p`` rounded to 1/65536 (0.1 -> 0.100006),
    kept values are scaled by ``1 / (1 - p)`` as ``F.dropout`` does, and the draws come from
    torch's default generator, so ``torch.manual_seed`` and checkpointed RNG states replay them.
    """
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)[:n]
    threshold = round(p * 65536) - 32768  # P(bits < threshold) = round(p * 65536) / 65536
    keep = (bits >= threshold).view(x.shape).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep
