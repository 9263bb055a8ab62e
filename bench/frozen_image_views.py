"""Frozen image runs with and without cached augmented views (``data.frozen_views``), same splits.

For each seed the DICOM demo runs ``model.mode=frozen`` twice through ``medmm.runner.run_task`` (as
``bench/frozen_vs_finetune.py`` does: task defaults, EfficientNet-Lite0): with plain images only
(``data.frozen_views=0``, the default) and with K augmented views of every training image embedded
once and cycled over the epochs. One ``data.cache_dir`` is shared, so the plain embeddings are
encoded once. Prints the test macro-F1 and the best val monitor per run, then mean ± sd per arm.

    python bench/frozen_image_views.py --views 0,4 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", default="0,4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", type=Path, help="append the rows here (JSON lines)")
    args = ap.parse_args()
    import logging

    from frozen_vs_finetune import _ms, build, run_one

    logging.getLogger("medmm").setLevel(logging.WARNING)
    print(f"load average {os.getloadavg()[0]:.1f} at start, {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medmm-views-bench-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "dicom-demo").mkdir()
        data, overrides = build("dicom-demo", tmp / "dicom-demo", 0)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for k in [int(v) for v in args.views.split(",")]:
                out = tmp / f"views{k}-{seed}"
                row = run_one("dicom-demo", data, [*overrides, f"data.frozen_views={k}"], "frozen", seed, out,
                              tmp / "cache")
                summary = json.loads((out / "summary.json").read_text())
                row.update(views=k, val=summary.get("best_value"), monitor=summary.get("monitor"), load=round(os.getloadavg()[0], 1))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    print("\n| views | test macro-F1 | best val monitor | pixels + LR | wall s (mean) | data s (mean) |")
    print("|---|---|---|---|---|---|")
    for k in [int(v) for v in args.views.split(",")]:
        sel = [r for r in rows if r["views"] == k]
        print(f"| {k} | {_ms([r['model'] for r in sel])} | {_ms([r['val'] for r in sel])} | "
              f"{_ms([r['baseline'] for r in sel])} | {sum(r['wall_s'] for r in sel) / len(sel):.0f} | "
              f"{sum(r['data_s'] for r in sel) / len(sel):.0f} |")


if __name__ == "__main__":
    main()
