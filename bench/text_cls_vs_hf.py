"""text-cls vs ``transformers.Trainer``: the same model, data, split and hyper-parameters.

Fine-tunes one encoder + linear head on the Indiana University chest X-ray reports (normal vs
abnormal; read from the installed ``torchxrayvision`` wheel) twice in one process:

* through medmm (``medmm.runner.run_task``: cached tokenisation, the text-cls default: shuffled
  batches, each run packed on its real tokens only, ``medmm.models.packed``), then
* through ``transformers.Trainer`` with a plain torch ``Dataset`` and ``DataCollatorWithPadding``
  (dynamic padding), once with random batches (the documented default recipe) and once with
  ``train_sampling_strategy="group_by_length"`` (its own length grouping),

with the same train / validation split (medmm's ``splits.csv``), initial weights, epochs, batch
size, learning rate, schedule, warmup, weight decay, clipping and optimizer (fused AdamW: medmm's,
and Trainer's default with torch >= 2.8), for each of ``--seeds`` seeds.
Prints training samples/s (training loop only, evaluation excluded), medmm's speed ratio to each
Trainer mode (goals: >= 2.0 vs default, >= 1.3 vs group_by_length) and validation AUROC
mean ± sd over the seeds. Prints numbers; asserts nothing about time.

    pip install -e ".[bench]"                            # transformers.Trainer needs accelerate
    python bench/text_cls_vs_hf.py --seeds 3             # the full measurement: all 3,927 reports
    python bench/text_cls_vs_hf.py --limit 400 --seeds 1 # a smoke run (minutes on 2 CPU cores)
    python bench/text_cls_vs_hf.py --tiny --limit 800    # 2-layer random BERT: seconds
    python bench/text_cls_vs_hf.py --epochs 1 --precision bf16  # both tools under bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=0, help="use N reports (stratified sample; 0 = all)")
    p.add_argument("--tiny", action="store_true", help="2-layer random BERT instead of MiniLM-L6")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (split, init, batch order)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="both tools: medmm engine.precision, Trainer bf16=True (bf16 autocast; opt-in on CPUs)")
    p.add_argument("--sampler", default=None, help="medmm engine.sampler (default: the text-cls default)")
    p.add_argument("--hf-modes", default="random,group_by_length",
                   help="Trainer train_sampling_strategy values to run, comma-separated")
    p.add_argument("--out", type=Path, help="keep outputs here (default: a temporary folder)")
    return p.parse_args()


def make_data(out: Path, limit: int, seed: int = 0) -> tuple[Path, int]:
    import pandas as pd

    from medmm.demos.reports import build_reports_csv

    full = build_reports_csv(out / "all-reports.csv")
    df = pd.read_csv(full, dtype={"report_id": str})
    if limit and limit < len(df):
        df = df.groupby("label", group_keys=False).sample(frac=limit / len(df), random_state=seed)
    path = out / "reports.csv"
    df[["report_id", "text", "label"]].to_csv(path, index=False)
    return path, len(df)


def medmm_config(a: argparse.Namespace, seed: int) -> Any:
    """The resolved text-cls config both tools use (split, initial weights, hyper-parameters)."""
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    spec = get_registry().get("task", "text-cls")
    return resolved_config(spec, None, [
        "data.text_column=text", "data.label_column=label", "data.id_column=report_id",
        f"data.max_length={a.max_length}", f"model.backbone={'bert-tiny' if a.tiny else 'minilm-l6'}",
        f"engine.device={a.device}", f"engine.precision={a.precision}", f"engine.epochs={a.epochs}",
        f"engine.batch_size={a.batch_size}", f"engine.lr={a.lr}", "engine.schedule=cosine",
        "engine.warmup_ratio=0.1", "engine.weight_decay=0.01", "engine.max_grad_norm=1.0",
        "engine.patience=0", "engine.bootstrap=0", f"seed={seed}",
        *([f"engine.sampler={a.sampler}"] if a.sampler else []),
    ])


def run_medmm(data: Path, run_dir: Path, a: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from medmm.plugins import get_registry
    from medmm.runner import run_task

    spec = get_registry().get("task", "text-cls")
    t0 = time.perf_counter()
    run_task(spec, cfg, data, run_dir, quiet=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    # per-epoch training rates (the loop only) -> overall rate: total samples / total seconds
    n_train = sum(1 for line in (run_dir / "splits.csv").read_text().splitlines()[1:] if line.endswith(",train"))
    seconds = sum(n_train / r["samples_per_s"] for r in train)
    return {"samples_per_s": n_train * len(train) / seconds, "train_s": seconds, "wall_s": wall,
            "val_auroc": val[-1]["auroc"]}


def run_hf(data: Path, run_dir: Path, a: argparse.Namespace, cfg: Any, seed: int, mode: str) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from medmm_plugins.text_cls.task import TextClsTask
    from sklearn.metrics import roc_auc_score
    from torch.utils.data import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    # The same split, initial weights and tokenizer as the medmm run: the task builds them
    # deterministically from the config and seed. Only the model and tokenizer are used here.
    run_dir.mkdir(parents=True, exist_ok=True)
    task = TextClsTask(cfg, run_dir)
    task.build_data(data)
    classifier, tokenizer = task.build_model(), task.tokenizer
    # Trainer gets the plain Hugging Face forward on its padded batches, not medmm's padding-free
    # paths (before this, both Trainer arms silently ran medmm's length groups).
    classifier.length_groups, classifier.packed = False, False
    df = pd.read_csv(data, dtype={"report_id": str}).set_index("report_id")
    splits = pd.read_csv(run_dir / "splits.csv", dtype={"id": str})

    class Reports(Dataset):
        def __init__(self, ids: list[str]) -> None:
            part = df.loc[ids]
            self.enc = tokenizer(part["text"].tolist(), truncation=True, max_length=a.max_length)["input_ids"]
            self.y = (part["label"] == "normal").astype(np.float32).to_numpy()

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": self.enc[i], "labels": float(self.y[i])}

    class ForTrainer(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
            logits = self.model(input_ids, attention_mask).squeeze(-1)
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = F.binary_cross_entropy_with_logits(logits, labels.float())
            return out

    train = Reports(splits.loc[splits["split"] == "train", "id"].tolist())
    val = Reports(splits.loc[splits["split"] == "val", "id"].tolist())
    args = TrainingArguments(
        output_dir=str(run_dir), num_train_epochs=a.epochs, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=64, learning_rate=a.lr, weight_decay=0.01, lr_scheduler_type="cosine",
        warmup_steps=0.1, max_grad_norm=1.0, optim="adamw_torch_fused", seed=seed, data_seed=seed,
        train_sampling_strategy=mode, bf16=a.precision == "bf16",
        use_cpu=a.device == "cpu" or not torch.cuda.is_available(),  # bf16 on a CPU needs use_cpu
        eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=ForTrainer(classifier), args=args, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer))
    t0 = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t0
    # Scored in val's own order: Trainer.predict reorders the eval set under group_by_length (its
    # eval sampler is length-grouped too), so its predictions do not line up with val.y.
    collate, model = DataCollatorWithPadding(tokenizer), trainer.model.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, len(val), 64):
            batch = collate([{"input_ids": val.enc[j]} for j in range(i, min(i + 64, len(val)))])
            scores.append(model(batch["input_ids"].to(args.device), batch["attention_mask"].to(args.device))["logits"])
    wall = time.perf_counter() - t0
    return {"samples_per_s": result.metrics["train_samples_per_second"], "train_s": train_s, "wall_s": wall,
            "val_auroc": float(roc_auc_score(val.y, torch.cat(scores).float().cpu().numpy()))}


def _mean_sd(values: list[float], digits: int = 4) -> str:
    import statistics

    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    a = parse_args()
    import statistics

    import torch

    modes = [m.strip() for m in a.hf_modes.split(",") if m.strip()]
    arms = ["medmm", *(f"Trainer {m}" for m in modes)]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        data, n = make_data(out, a.limit)
        for seed in range(a.seeds):
            # the order of the tools rotates with the seed: on a shared host, load drifts over a run
            for arm in arms[seed % len(arms):] + arms[: seed % len(arms)]:
                cfg = medmm_config(a, seed)  # fresh per run: nothing one run resolves leaks into the next
                if arm == "medmm":
                    runs[arm].append(run_medmm(data, out / f"medmm-s{seed}", a, cfg))
                else:
                    mode = arm.removeprefix("Trainer ")
                    runs[arm].append(run_hf(data, out / f"hf-{mode}-s{seed}", a, cfg, seed, mode))
            print(f"seed {seed}: " + "; ".join(f"{arm} {r[-1]['samples_per_s']:.1f} samples/s AUROC "
                                                f"{r[-1]['val_auroc']:.4f}" for arm, r in runs.items()), flush=True)
    model = "bert-tiny (random init)" if a.tiny else "MiniLM-L6 (pretrained)"
    print(f"\ntext-cls vs transformers.Trainer: {model}, {n} reports, {a.epochs} epochs, batch {a.batch_size}, "
          f"lr {a.lr}, max_length {a.max_length}, {a.precision}, medmm sampler {a.sampler or 'text-cls default'}, "
          f"{a.seeds} seed(s), {torch.get_num_threads()} CPU threads")
    print(f"{'':26}{'train samples/s':>18}{'train s':>10}{'val AUROC (mean ± sd)':>24}")
    for arm, rs in runs.items():
        rate = statistics.fmean(r["samples_per_s"] for r in rs)
        secs = statistics.fmean(r["train_s"] for r in rs)
        print(f"{arm:<26}{rate:>18.1f}{secs:>10.1f}{_mean_sd([r['val_auroc'] for r in rs]):>24}")
    goals = {"random": 2.0, "group_by_length": 1.3}
    for mode in modes:
        ratios = [m["samples_per_s"] / h["samples_per_s"] for m, h in zip(runs["medmm"], runs[f"Trainer {mode}"])]
        diff = [m["val_auroc"] - h["val_auroc"] for m, h in zip(runs["medmm"], runs[f"Trainer {mode}"])]
        goal = f" (goal >= {goals[mode]})" if mode in goals else ""
        print(f"speed ratio medmm / Trainer {mode}: {_mean_sd(ratios, 2)}{goal}; "
              f"AUROC difference {_mean_sd(diff)}")


if __name__ == "__main__":
    main()
