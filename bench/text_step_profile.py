"""One text-cls training step: padded vs length groups vs packed, timed and profiled.

Draws shuffled batches of IU chest X-ray reports (as ``engine.sampler=shuffle`` does), and times
forward + backward + the engine's AdamW step of MiniLM-L6 + linear head with the batch padded to its longest
report (what ``transformers.Trainer`` computes), run as length groups
(``medmm.models.length_groups``) and packed padding-free (``medmm.models.packed``), the variants
interleaved batch by batch (a shared host's load hits all alike), then prints the top
``torch.profiler`` items of three steps of the last variant and, for packed, the linear layers'
share of them and their rate against torch's sgemm alone on the same shapes (the ceiling of any
change outside the matrix products). ``--compile`` adds each variant under
``torch.compile(dynamic=True)`` (the whole HF encoder; for packed, the dense blocks of each layer,
whose shapes depend only on the token count), compile time reported apart.

    python bench/text_step_profile.py                 # MiniLM-L6, batch 16, 8 batches
    python bench/text_step_profile.py --tiny --batches 4
    python bench/text_step_profile.py --variants groups,packed --compile
    python bench/text_step_profile.py --variants groups,packed --precision bf16  # both under bf16 autocast
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="2-layer random BERT instead of MiniLM-L6")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--variants", default="padded,groups,packed", help="comma-separated: padded, groups, packed")
    p.add_argument("--compile", action="store_true", help="also each variant under torch.compile(dynamic=True)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: every variant under CPU bf16 autocast (engine.precision=bf16)")
    a = p.parse_args()

    import pandas as pd
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    import medmm.models.packed as packed_mod
    from medmm.data.text.tokenize import pad_collate
    from medmm.demos.reports import build_reports_csv
    from medmm.engine.sampling import plan_epoch
    from medmm.engine.schedule import build_optimizer
    from medmm.models.text import TextClassifier, load_hf_encoder

    with tempfile.TemporaryDirectory() as tmp:
        df = pd.read_csv(build_reports_csv(Path(tmp) / "reports.csv"))
    encoder, tokenizer = load_hf_encoder("bert-tiny" if a.tiny else "minilm-l6")
    ids = tokenizer(df["text"].tolist(), truncation=True, max_length=a.max_length)["input_ids"]
    y = torch.tensor((df["label"] == "normal").to_numpy(), dtype=torch.float32)
    plan = plan_epoch(len(ids), a.batch_size, seed=0, epoch=0, mode="shuffle")[: a.batches]
    batches = [pad_collate([{"input_ids": torch.tensor(ids[i]), "index": i} for i in b], pad_id=0) for b in plan]
    model = TextClassifier(encoder, 1).train()
    opt = build_optimizer(model, 1e-5, 0.01, None)  # the engine's (fused) AdamW
    eager_model = encoder.model
    compiled_model = torch.compile(eager_model, dynamic=True) if a.compile else None
    if a.compile:
        eager_ff = packed_mod._feed_forward  # attention stays eager: its per-report shapes vary
        compiled_ff = torch.compile(eager_ff, dynamic=True)

    variants = [(v, False) for v in a.variants.split(",")] + ([(v, True) for v in a.variants.split(",")]
                                                                if a.compile else [])

    def step(batch: dict, variant: tuple[str, bool]) -> None:
        name, compiled = variant
        model.length_groups, model.packed = name != "padded", name == "packed"
        if a.compile:  # swap the eager / compiled callables in place
            encoder.model = compiled_model if compiled and name != "packed" else eager_model
            packed_mod._feed_forward = compiled_ff if compiled else eager_ff
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = model(batch["input_ids"], batch["attention_mask"]).squeeze(-1)
        F.binary_cross_entropy_with_logits(logits.float(), y[batch["index"]]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for variant in variants:  # warm-up (allocator, lazy init, compilation)
        t0 = time.perf_counter()
        for batch in batches[:2 if variant[1] else 1]:
            step(batch, variant)
        if variant[1]:
            print(f"  compile warm-up {variant[0]}: {time.perf_counter() - t0:.1f} s (2 steps)")
    times: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    for batch in batches:  # interleave, so that load on a shared host hits every variant alike
        for variant in variants:
            t0 = time.perf_counter()
            step(batch, variant)
            times[variant].append(time.perf_counter() - t0)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    print(f"{'bert-tiny' if a.tiny else 'MiniLM-L6'}, {len(batches)} shuffled batches of {a.batch_size} IU reports, "
          f"{torch.get_num_threads()} threads, {a.precision}; padded / real tokens {padded / real:.2f}")
    base = times[variants[0]]
    for variant, t in times.items():
        name = variant[0] + (" +compile" if variant[1] else "")
        med = statistics.median(t)
        paired = statistics.median(b / v for b, v in zip(base, t))  # same batch, back to back: robust to load drift
        print(f"  {name:<16} step median {med * 1e3:8.1f} ms   {a.batch_size / med:6.1f} samples/s   "
              f"{paired:5.2f}x {variants[0][0]} (median of per-batch ratios)")
    profiled = batches[:3]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in profiled:
            step(batch, variants[-1])
    print(f"profile of {len(profiled)} steps: {variants[-1][0]}{' +compile' if variants[-1][1] else ''}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))
    if variants[-1] == ("packed", False) and a.precision == "fp32":
        linear_ceiling(prof, profiled, encoder.model.config)


def linear_ceiling(prof: Any, batches: list[dict], config: Any) -> None:
    """How much of the profiled packed step the linear layers take, at what rate, against sgemm alone.

    The linear layers' arithmetic is fixed by the model and the real tokens (forward, input and
    weight gradients: 3 products per layer), so removing everything else from a step could speed it
    up by at most ``1 / linear share``; their rate is compared with torch's sgemm on the same shapes.
    """
    import torch

    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    hidden, inter = config.hidden_size, config.intermediate_size
    flops = 3 * 2 * tokens * config.num_hidden_layers * (4 * hidden * hidden + 2 * hidden * inter)
    rows = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    linear_s, total_s = rows.get("aten::mm", 0.0) + rows.get("aten::addmm", 0.0), sum(rows.values())
    per_step = tokens // len(batches)
    shapes = [(per_step, hidden, hidden), (per_step, hidden, inter), (per_step, inter, hidden)]
    seconds, work = 0.0, 0.0
    for m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            x @ w
        reps, t0 = 0, time.perf_counter()
        while reps < 10 or time.perf_counter() - t0 < 0.2:
            x @ w
            reps += 1
        seconds, work = seconds + time.perf_counter() - t0, work + reps * 2 * m * k * n
    print(f"linear layers: {linear_s / total_s:.0%} of the step's self CPU time at {flops / linear_s / 1e9:.0f} GFLOP/s "
          f"(torch sgemm alone on these shapes: {work / seconds / 1e9:.0f} GFLOP/s, {torch.get_num_threads()} threads); "
          f"all the rest made free would speed the step up by at most {total_s / linear_s:.2f}x")


if __name__ == "__main__":
    main()
