"""``medmm predict --shard i/n`` (#30): blocks in order, folders cut only between folders, and shard
outputs that concatenate to the single-process file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medmm.data.shards import (FolderShard, ShardDataset, block, folder_files, keep_units, parse_shard, shard_split,
                               shard_windows)
from medmm.errors import ConfigError
from medmm.task import Split


def test_parse_shard() -> None:
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--shard must be i/n"):
            parse_shard(bad)


def test_blocks_cover_every_item_once_in_order() -> None:
    for count in (0, 1, 7, 100):
        for n in (1, 3, 8):
            edges = [block(count, (i, n)) for i in range(n)]
            assert edges[0][0] == 0 and edges[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
            assert max(e[1] - e[0] for e in edges) - min(e[1] - e[0] for e in edges) <= 1


def test_folder_blocks_cut_only_between_folders() -> None:
    files = [f"p{p}/s{s}/{k}.dcm" for p in range(3) for s in range(2) for k in range(5)] + ["z.dcm"]
    parts = [folder_files(files, (i, 4)) for i in range(4)]
    assert sum(parts, []) == files  # in order, each file once
    for part in parts:
        for other in parts:
            if part is not other:  # no folder is in two shards
                assert not {f.rsplit("/", 1)[0] for f in part} & {f.rsplit("/", 1)[0] for f in other if "/" in f}


class _Rows:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i  # the example index, as a task's dataset returns it


def test_shard_split_keeps_whole_units_and_the_base_index() -> None:
    units = ["a", "a", "b", "c", "c", "c", "d"]  # windows of one document share a unit
    split = Split(_Rows(len(units)), units, skipped=[("x", "unreadable")])
    seen = []
    for i in range(3):
        part = shard_split(split, (i, 3))
        got = [part.dataset[k] for k in range(len(part.dataset))]
        seen += got
        assert part.units == units  # the base positions index the whole split's units
        assert part.skipped == ([("x", "unreadable")] if i == 0 else [])
        assert len({units[g] for g in got}) == len({units[g] for g in got} - {units[g] for g in seen[:-len(got)]})
    assert seen == list(range(len(units)))
    assert ShardDataset(_Rows(5), np.array([4, 1])).__getitems__([0, 1]) == [4, 1]


def test_text_shards_predict_whole_length_windows_so_every_batch_is_the_one_pass_batch() -> None:
    """Batches sorted by length inside windows (text): a shard that starts inside a window would batch its
    part of that window otherwise than one pass (other padding, other bits); :func:`shard_windows` gives the
    whole windows its block touches, and :func:`keep_units` keeps the block's units."""
    from medmm.batching import eval_window
    from medmm.engine.sampling import eval_batches
    from medmm.engine.trainer import EvalOutput

    rng = np.random.default_rng(0)
    units = [f"d{k:03d}" for k in range(120) for _ in range(int(rng.integers(1, 4)))]  # documents of 1-3 windows
    lengths = rng.integers(5, 200, len(units))
    split = Split(_Rows(len(units)), units, lengths=lengths)
    batch = 4
    whole = {tuple(b) for b in eval_batches(len(units), batch, lengths=lengths)}

    def batches(part: Split) -> set[tuple[int, ...]]:
        pos = part.dataset.positions
        return {tuple(int(pos[j]) for j in b) for b in eval_batches(len(pos), batch, lengths=part.lengths)}

    kept: list[str] = []
    for i in range(3):
        part, keep = shard_windows(split, (i, 3), eval_window(batch))
        assert batches(part) <= whole  # every batch is one of the one pass's
        block_units = list(dict.fromkeys(units[int(p)] for p in shard_split(split, (i, 3)).dataset.positions))
        assert keep == block_units
        kept += keep
        seen = list(dict.fromkeys(units[int(p)] for p in part.dataset.positions))  # pooled units, in order
        ev = EvalOutput(seen, np.arange(3.0 * len(seen)).reshape(-1, 3), None, 0.0)
        got = keep_units(ev, keep)
        assert got.units == keep and got.targets is None
        assert got.scores.tolist() == [ev.scores[seen.index(u)].tolist() for u in keep]
    assert kept == list(dict.fromkeys(units))  # each unit in one shard, in order
    # the plain block would have batched a shard's first window otherwise (what shard_windows is for)
    assert any(not batches(shard_split(split, (i, 3))) <= whole for i in range(1, 3))


def test_folder_shard_view_keeps_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for rel in ("a/1.dcm", "a/2.dcm", "b/1.dcm", "b/c/1.dcm"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    views = [FolderShard(root, (i, 2)) for i in range(2)]
    listed = [sorted(p.relative_to(v.path).as_posix() for p in v.path.rglob("*.dcm")) for v in views]
    assert sum(listed, []) == ["a/1.dcm", "a/2.dcm", "b/1.dcm", "b/c/1.dcm"]
    assert (views[1].path / listed[1][0]).read_bytes() == listed[1][0].encode()
    tmp = views[0].path.parent
    views[0].close()
    assert not tmp.exists()


@pytest.mark.slow
def test_shard_outputs_concatenate_to_the_single_process_file(tmp_path: Path) -> None:
    import pandas as pd

    from tests.conftest import cli

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] > 0).astype(int)}).to_csv(
        tmp_path / "t.csv", index=False)
    sets = [a for s in ["data.target=y", "engine.epochs=1", "engine.bootstrap=0", "engine.baseline=none",
                        "model.backbone=linear", "engine.device=cpu"] for a in ("--set", s)]
    proc = cli("run", "tabular-risk", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "run"), *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    whole = tmp_path / "all.csv"
    assert cli("predict", str(tmp_path / "run"), "--data", str(tmp_path / "t.csv"), "--out", str(whole)).returncode == 0
    parts = []
    for i in range(3):
        out = tmp_path / f"part{i}.csv"
        proc = cli("predict", str(tmp_path / "run"), "--data", str(tmp_path / "t.csv"), "--out", str(out),
                   "--shard", f"{i}/3")
        assert proc.returncode == 0, proc.stderr[-2000:]
        parts.append(pd.read_csv(out))
    assert [len(p) for p in parts] == [40, 40, 40]
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), pd.read_csv(whole))
    proc = cli("predict", str(tmp_path / "run"), "--data", str(tmp_path / "t.csv"), "--out",
               str(tmp_path / "bad.csv"), "--shard", "3/3")
    assert proc.returncode != 0 and "--shard must be i/n" in proc.stderr
