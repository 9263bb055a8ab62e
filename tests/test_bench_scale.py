"""``bench/scale.py --tiny`` (#30): counts of work that a return of anything quadratic would change.
Never a timing assert."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("medmm_bench_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_work_counter_sees_a_loop_per_group() -> None:
    """The planted quadratic: the pre-#30 split (a row scan per group) makes ~10x the calls at 10x the rows."""
    from tests.test_splits import _old_group_split

    bench = _bench()
    small = bench.count_calls(lambda: _old_group_split(200, labels=np.arange(200) % 2))
    large = bench.count_calls(lambda: _old_group_split(2000, labels=np.arange(2000) % 2))
    assert large > 5 * small


def test_tiny_scale_bench_counts_of_work() -> None:
    results = _bench().main(["--tiny"])
    small, large = results["split"]["calls"]
    # the split's calls grow with the number of digits of the row count (a few numpy calls per digit
    # pair) and one block per 65,536 rows, never per row or per group (the planted scan: ~10x)
    assert large < 1.5 * small, results["split"]
    for n, got in results["dicom"].items():
        assert got["headers_read"] == [n, 0]  # a second scan with the same cache reads no header
    small, large = (results["dicom"][n]["cached_calls"] for n in sorted(results["dicom"]))
    assert large < 15 * small, results["dicom"]  # 10x files: linear in the files (work per pair: ~100x)
    # image-cls around the model (cached ingest, labels, patient split, units; the baseline's pixels; predict's
    # data): the calls per added file stay the same from 4 -> 24 to 24 -> 124 files (a scan per pair: ~5x)
    per_file = results["imagework"]["per_added_file"]
    first, second = (per_file[n] for n in sorted(per_file))
    for step in ("build_data", "build_predict_data", "baseline_pixels"):
        assert 0 < second[step] < 1.5 * max(first[step], 1.0), (step, per_file)
