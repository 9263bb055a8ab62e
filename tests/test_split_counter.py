"""The training-rows caveat of a streamed predict (#30): split counts made block by block, without the ids,
equal :func:`seen_splits` over the whole list in any order."""

from __future__ import annotations

import random
from pathlib import Path

from medmm.data.splits import write_splits
from medmm.evaluation.overlap import SplitCounter, seen_splits


def test_split_counts_in_blocks_are_seen_splits(tmp_path: Path) -> None:
    rng = random.Random(0)
    ids = [str(i) for i in range(200)]
    write_splits(tmp_path / "splits.csv", ids[::2] + ids[1::4], [rng.choice(["train", "val", "test"]) for _ in range(150)])
    orders = {
        "the run's order": ids[::2] + ids[1::4],
        "with rows the run skipped": sorted(ids, key=lambda u: (int(u) % 2, int(u))),
        "shuffled, new ids, a repeat": rng.sample(ids, 120) + ["new-1", "new-2", "4"],
        "none": [],
    }
    for name, units in orders.items():
        counter = SplitCounter(tmp_path)
        for start in range(0, len(units), 7):
            counter.add(units[start:start + 7])
        if name == "the run's order":  # in the file's order no id waits: memory flat in the rows
            assert not counter._pending
        assert counter.result() == seen_splits(tmp_path, units), name
    assert not SplitCounter(tmp_path / "nowhere").result()  # a run without splits.csv: nothing seen
