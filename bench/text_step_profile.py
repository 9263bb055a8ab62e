"""One text-cls training step, padded vs length-sorted micro-batches, timed and profiled.

Draws shuffled batches of IU chest X-ray reports (as ``engine.sampler=shuffle`` does), and times
forward + backward + AdamW step of MiniLM-L6 + linear head with the batch padded to its longest
report (what ``transformers.Trainer`` computes) and run as length groups (medmm's text-cls
default), then prints the top ``torch.profiler`` items of one grouped step.

    python bench/text_step_profile.py                 # MiniLM-L6, batch 16, 8 batches
    python bench/text_step_profile.py --tiny --batches 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="2-layer random BERT instead of MiniLM-L6")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()

    import pandas as pd
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from medmm.data.reports_demo import build_reports_csv
    from medmm.data.text_batching import pad_collate
    from medmm.engine.sampling import plan_epoch
    from medmm.models.text import TextClassifier, load_hf_encoder

    with tempfile.TemporaryDirectory() as tmp:
        df = pd.read_csv(build_reports_csv(Path(tmp) / "reports.csv"))
    encoder, tokenizer = load_hf_encoder("bert-tiny" if a.tiny else "minilm-l6")
    ids = tokenizer(df["text"].tolist(), truncation=True, max_length=a.max_length)["input_ids"]
    y = torch.tensor((df["label"] == "normal").to_numpy(), dtype=torch.float32)
    plan = plan_epoch(len(ids), a.batch_size, seed=0, epoch=0, mode="shuffle")[: a.batches]
    batches = [pad_collate([{"input_ids": torch.tensor(ids[i]), "index": i} for i in b], pad_id=0) for b in plan]
    model = TextClassifier(encoder, 1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(batch: dict, grouped: bool) -> None:
        model.length_groups = grouped
        logits = model(batch["input_ids"], batch["attention_mask"]).squeeze(-1)
        F.binary_cross_entropy_with_logits(logits, y[batch["index"]]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0], False)  # warm-up (allocator, lazy init)
    times: dict[bool, list[float]] = {False: [], True: []}
    for batch in batches:  # alternate, so that load on a shared host hits both alike
        for grouped in (False, True):
            t0 = time.perf_counter()
            step(batch, grouped)
            times[grouped].append(time.perf_counter() - t0)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    print(f"{'bert-tiny' if a.tiny else 'MiniLM-L6'}, {len(batches)} shuffled batches of {a.batch_size} IU reports, "
          f"{torch.get_num_threads()} threads; padded / real tokens {padded / real:.2f}")
    for grouped, name in ((False, "padded batch"), (True, "length groups")):
        t = times[grouped]
        print(f"  {name:<14} step median {statistics.median(t) * 1e3:8.1f} ms   "
              f"{a.batch_size / statistics.median(t):6.1f} samples/s")
    print(f"  speed-up {statistics.median(times[False]) / statistics.median(times[True]):.2f}x (median step)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batches[0], True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))


if __name__ == "__main__":
    main()
