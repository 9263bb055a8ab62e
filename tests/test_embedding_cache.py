"""Embedding cache (``medmm.data.embedding_cache``): keys, round trip, misses, safety, fingerprints."""

from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medmm.data.embedding_cache import (
    EmbeddingCache,
    fingerprint_files,
    fingerprint_module,
    fingerprint_texts,
)
from medmm.errors import DataError

HEX64 = re.compile(r"[0-9a-f]{64}")
TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
KEY = EmbeddingCache.key(fingerprint_texts(["a", "b"]), "encoder-v1")


@pytest.fixture
def cache(tmp_path: Path) -> EmbeddingCache:
    """A cache in a folder that does not exist yet."""
    return EmbeddingCache(tmp_path / "cache" / "emb")


def embeddings(rows: int = 7, dim: int = 5, seed: int = 0) -> np.ndarray:
    """Float32 embeddings including awkward values (-0.0, subnormal, inf, nan)."""
    a = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    a[0, :4] = [-0.0, np.float32(1e-45), np.inf, np.nan]
    return a


# --------------------------------------------------------------------------- keys


def test_key_is_deterministic_hex() -> None:
    """Same fingerprints -> same 64-hex key, also in a fresh process (no per-process salt)."""
    k = EmbeddingCache.key("data-fp", "enc-fp")
    assert HEX64.fullmatch(k)
    assert k == EmbeddingCache.key("data-fp", "enc-fp")
    code = ("from medmm.data.embedding_cache import EmbeddingCache as C, fingerprint_texts as t;"
            "print(C.key('data-fp', 'enc-fp'), t(['x', None, '']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.split() == [k, fingerprint_texts(["x", None, ""])]


@pytest.mark.parametrize(
    ("data", "encoder"),
    [("data-fp2", "enc-fp"), ("data-fp", "enc-fp2"), ("enc-fp", "data-fp"), ("data-fpenc", "-fp"),
     ("data-fp", ""), ("", "data-fpenc-fp")],
)
def test_key_is_sensitive_to_both_fingerprints(data: str, encoder: str) -> None:
    """Any change of data or encoder fingerprint (incl. swapping or moving a boundary) changes the key."""
    assert EmbeddingCache.key(data, encoder) != EmbeddingCache.key("data-fp", "enc-fp")


@pytest.mark.parametrize(
    "bad",
    ["", "abc", KEY[:-1], KEY + "0", KEY.upper(), "g" * 64, f"../{KEY[3:]}", f"{KEY[:-4]}.npy", KEY + "\n",
     f"/{KEY[1:]}", f"{KEY[:32]} {KEY[33:]}"],
)
def test_invalid_key_is_refused(cache: EmbeddingCache, bad: str) -> None:
    """Anything but 64 lowercase hex digits is a ValueError, before touching the disk."""
    for call in (cache.path, cache.load, lambda k: cache.save(k, np.zeros((1, 2), np.float32)),
                 lambda k: k in cache):
        with pytest.raises(ValueError):
            call(bad)
    assert not cache.cache_dir.exists()


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_round_trip_is_exact_memory_mapped_and_read_only(cache: EmbeddingCache, dtype: type) -> None:
    """save -> load gives the same bytes, dtype and shape, memory-mapped and read-only."""
    array = embeddings().astype(dtype)
    assert KEY not in cache
    path = cache.save(KEY, array)
    assert path == cache.path(KEY) == cache.cache_dir / f"{KEY}.npy"
    assert path.is_file() and KEY in cache
    loaded = cache.load(KEY)
    assert loaded is not None
    assert isinstance(loaded, np.memmap)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    assert loaded.tobytes() == array.tobytes()  # bitwise, including -0.0 and NaN
    assert np.array_equal(loaded, array, equal_nan=True)
    assert not loaded.flags.writeable
    with pytest.raises(ValueError):
        loaded[0, 0] = 1.0
    assert [p.name for p in cache.cache_dir.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_save_accepts_non_contiguous_and_lists(cache: EmbeddingCache) -> None:
    """Fortran-ordered arrays and nested lists round-trip by value."""
    a = np.asfortranarray(embeddings(dim=6)[:, ::2])
    cache.save(KEY, a)
    loaded = cache.load(KEY)
    assert loaded is not None and np.array_equal(loaded, a, equal_nan=True)
    other = EmbeddingCache.key("lists", "x")
    cache.save(other, [[1.0, 2.0], [3.0, 4.0]])
    assert np.array_equal(cache.load(other), np.array([[1.0, 2.0], [3.0, 4.0]]))


def test_save_overwrites_previous_entry(cache: EmbeddingCache) -> None:
    """A later save under the same key replaces the array."""
    cache.save(KEY, embeddings(seed=1))
    cache.save(KEY, embeddings(rows=3, seed=2))
    loaded = cache.load(KEY)
    assert loaded is not None and loaded.tobytes() == embeddings(rows=3, seed=2).tobytes()


def test_miss_returns_none_without_creating_anything(cache: EmbeddingCache) -> None:
    """An unknown key, in a folder that does not exist, is a miss; nothing is created."""
    assert cache.load(KEY) is None
    assert KEY not in cache
    assert not cache.cache_dir.exists()
    cache.save(EmbeddingCache.key("other", "x"), embeddings())
    assert cache.load(KEY) is None


def test_cachedir_tag_written(cache: EmbeddingCache) -> None:
    """The first save creates the folder and a valid CACHEDIR.TAG (kept by later saves)."""
    cache.save(KEY, embeddings())
    tag = cache.cache_dir / "CACHEDIR.TAG"
    text = tag.read_text(encoding="utf-8")
    assert text.startswith(TAG_SIGNATURE)
    cache.save(EmbeddingCache.key("second", "x"), embeddings())
    assert tag.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in cache.cache_dir.iterdir()) == sorted(
        ["CACHEDIR.TAG", f"{KEY}.npy", f"{EmbeddingCache.key('second', 'x')}.npy"])


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


GOOD = _npy_bytes(embeddings(rows=20, dim=8))
HEADER_END = GOOD.index(b"\n") + 1
CORRUPTIONS: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"this is not an npy file at all\x00\xff" * 10,
    "half magic": GOOD[:4],
    "magic only": GOOD[:8],
    "half header": GOOD[: HEADER_END // 2],
    "header only": GOOD[:HEADER_END],
    "one value short": GOOD[:-1],
    "half data": GOOD[: (HEADER_END + len(GOOD)) // 2],
    "bad header": GOOD[:10] + b"{'descr': '<f4', 'fortran_order': False, 'shape': (20, 8, }" + GOOD[69:],
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_file_is_a_miss_and_is_overwritten(cache: EmbeddingCache, kind: str) -> None:
    """A truncated or corrupt file loads as None (no exception); the next save replaces it."""
    cache.cache_dir.mkdir(parents=True)
    cache.path(KEY).write_bytes(CORRUPTIONS[kind])
    assert cache.load(KEY) is None
    array = embeddings()
    cache.save(KEY, array)
    loaded = cache.load(KEY)
    assert loaded is not None and loaded.tobytes() == array.tobytes()


def test_directory_in_place_of_file_is_a_miss(cache: EmbeddingCache) -> None:
    """An unreadable entry (a folder named like the file) is a miss, not a crash."""
    cache.path(KEY).mkdir(parents=True)
    assert cache.load(KEY) is None
    assert KEY not in cache


def test_zip_content_is_a_miss(cache: EmbeddingCache) -> None:
    """A file that is a zip (.npz) archive rather than .npy is not an array: a miss."""
    cache.cache_dir.mkdir(parents=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("arr_0.npy", GOOD)
    cache.path(KEY).write_bytes(buf.getvalue())
    assert cache.load(KEY) is None


# --------------------------------------------------------------------------- no pickle, ever

CALLS: list[str] = []


def _record_call(tag: str) -> str:
    """Runs only if a pickle payload is unpickled."""
    CALLS.append(tag)
    return tag


class _Payload:
    """Unpickling this object calls ``_record_call``: proof that pickle was used."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_record_call, ("unpickled",))


@pytest.mark.parametrize(
    "array",
    [np.array([1.0, "a", None], dtype=object), np.array([{"a": 1}]),
     np.zeros(2, dtype=[("x", np.float32), ("y", object)])],
    ids=["object", "dicts", "struct-with-object"],
)
def test_object_arrays_are_refused(cache: EmbeddingCache, array: np.ndarray) -> None:
    """Saving anything that would need pickle is a DataError and writes no array."""
    assert array.dtype.hasobject
    with pytest.raises(DataError):
        cache.save(KEY, array)
    assert not cache.path(KEY).exists()


def test_pickled_files_never_load(cache: EmbeddingCache) -> None:
    """A cache file holding pickle data (object .npy or raw pickle) is a miss and runs no code."""
    cache.cache_dir.mkdir(parents=True)
    path = cache.path(KEY)
    payload = np.array([_Payload(), 1], dtype=object)
    CALLS.clear()
    with path.open("wb") as f:
        np.save(f, payload, allow_pickle=True)
    # the payload is live: loading it the unsafe way does call back
    np.load(path, allow_pickle=True)
    assert CALLS == ["unpickled"]
    CALLS.clear()
    assert cache.load(KEY) is None
    path.write_bytes(pickle.dumps(payload))
    assert cache.load(KEY) is None
    path.write_bytes(pickle.dumps(_Payload()))
    assert cache.load(KEY) is None
    assert CALLS == []


# --------------------------------------------------------------------------- fingerprint_texts


def test_fingerprint_texts() -> None:
    """Deterministic, order-sensitive, boundary-safe; None (or NaN) differs from ""."""
    base = fingerprint_texts(["alpha", "beta", None])
    assert HEX64.fullmatch(base)
    assert base == fingerprint_texts(iter(["alpha", "beta", None]))  # any iterable, same result
    variants = [
        ["beta", "alpha", None],  # order
        ["alpha", "beta", ""],  # missing vs empty
        ["alpha", "beta", "None"],
        ["alphabeta", "", None],  # boundaries
        ["alph", "abeta", None],
        ["alpha", "beta"],  # count
        ["alpha", "beta", None, None],
        ["alpha", "beta ", None],
    ]
    # separators inside the text cannot fake a boundary (length-prefixed)
    assert fingerprint_texts(["a\x01b", None]) != fingerprint_texts(["a", "b\x00"])
    fps = [fingerprint_texts(v) for v in variants]
    assert base not in fps and len(set(fps)) == len(fps)
    assert fingerprint_texts([None]) != fingerprint_texts([""])
    assert fingerprint_texts([]) != fingerprint_texts([""])
    assert fingerprint_texts([]) != fingerprint_texts([None])
    assert fingerprint_texts([float("nan")]) == fingerprint_texts([None])
    assert fingerprint_texts(["é"]) != fingerprint_texts(["e"])


# --------------------------------------------------------------------------- fingerprint_files


def _tree(root: Path) -> list[str]:
    """A small data set: two files and a 'series' folder; returns item paths relative to root."""
    (root / "series" / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("aaaa")
    (root / "b.txt").write_text("bb")
    (root / "series" / "1.dcm").write_text("one")
    (root / "series" / "sub" / "2.dcm").write_text("two")
    return ["a.txt", "series", "b.txt"]


def _set_mtime(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))


def test_fingerprint_files_stat_sensitivity(tmp_path: Path) -> None:
    """mtime or size changes (of a file or a file in a folder) change the fingerprint; contents are not read."""
    root = tmp_path / "data"
    items = [str(root / p) for p in _tree(root)]
    for p in root.rglob("*"):
        _set_mtime(p, 1_600_000_000_000_000_000)
    base = fingerprint_files(items)
    assert HEX64.fullmatch(base)
    assert fingerprint_files(items) == base

    a = root / "a.txt"
    _set_mtime(a, 1_600_000_000_000_000_001)  # 1 ns later
    assert fingerprint_files(items) != base
    _set_mtime(a, 1_600_000_000_000_000_000)
    assert fingerprint_files(items) == base

    a.write_text("AAAA")  # same size, mtime restored: by design not detected (no reading)
    _set_mtime(a, 1_600_000_000_000_000_000)
    assert fingerprint_files(items) == base
    a.write_text("aaaaa")  # size changed, mtime restored
    _set_mtime(a, 1_600_000_000_000_000_000)
    assert fingerprint_files(items) != base
    a.write_text("aaaa")
    _set_mtime(a, 1_600_000_000_000_000_000)
    assert fingerprint_files(items) == base

    inner = root / "series" / "sub" / "2.dcm"
    _set_mtime(inner, 1_700_000_000_000_000_000)
    assert fingerprint_files(items) != base
    _set_mtime(inner, 1_600_000_000_000_000_000)
    assert fingerprint_files(items) == base


def test_fingerprint_files_appearing_files_and_order(tmp_path: Path) -> None:
    """A listed path that appears, a new file inside a folder, order and missing items all count."""
    root = tmp_path / "data"
    items = [str(root / p) for p in _tree(root)]
    later = root / "later.txt"
    with_missing = [*items, str(later)]
    before = fingerprint_files(with_missing)
    assert before != fingerprint_files(items)
    later.write_text("")
    assert fingerprint_files(with_missing) != before

    base = fingerprint_files(items)
    (root / "series" / "3.dcm").write_text("three")
    assert fingerprint_files(items) != base

    assert fingerprint_files(list(reversed(items))) != fingerprint_files(items)
    assert fingerprint_files([None, *items]) == fingerprint_files(["", *items])
    assert fingerprint_files([None, *items]) != fingerprint_files(items)
    assert fingerprint_files([None, *items]) != fingerprint_files([str(root / "nope"), *items])
    assert fingerprint_files([float("nan")]) == fingerprint_files([None])


def test_fingerprint_files_stable_when_tree_moves_with_root(tmp_path: Path) -> None:
    """With root=, moving the whole data set (relative or absolute item paths) keeps the fingerprint."""
    old = tmp_path / "old" / "data"
    rel = _tree(old)
    before_rel = fingerprint_files(rel, root=old)
    before_abs = fingerprint_files([old / p for p in rel], root=old)
    before_plain = fingerprint_files([old / p for p in rel])
    assert before_rel == before_abs

    new = tmp_path / "elsewhere" / "renamed"
    new.parent.mkdir()
    os.rename(old, new)  # keeps sizes and mtimes
    assert fingerprint_files(rel, root=new) == before_rel
    assert fingerprint_files([new / p for p in rel], root=new) == before_abs
    assert fingerprint_files([new / p for p in rel]) != before_plain  # without root, paths count
    # the relative layout still matters
    os.rename(new / "a.txt", new / "c.txt")
    assert fingerprint_files([*rel[:-1], "c.txt"], root=new) != before_rel


# --------------------------------------------------------------------------- fingerprint_module


class _Encoder(nn.Module):
    """A tiny encoder with a weight, a bias and a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)


class _OtherEncoder(_Encoder):
    """Same state-dict layout, different class."""


class _Buffered(nn.Module):
    """Only a buffer, to compare states whose raw bytes are identical."""

    def __init__(self, state: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("state", state)


def _encoder(seed: int = 0, cls: type[_Encoder] = _Encoder) -> _Encoder:
    torch.manual_seed(seed)
    return cls()


def test_fingerprint_module_changes_with_weights_and_extra_only() -> None:
    """Weights, buffers, dtype, class and ``extra`` change it; mode, grads, fresh copies do not."""
    enc = _encoder()
    base = fingerprint_module(enc, extra="max_length=128")
    assert HEX64.fullmatch(base)
    assert fingerprint_module(enc, extra="max_length=128") == base
    assert fingerprint_module(_encoder(), extra="max_length=128") == base  # same weights, new object

    # not otherwise: mode, requires_grad, accumulated gradients
    enc.eval()
    enc.linear.weight.requires_grad_(False)
    enc.linear.bias.grad = torch.ones(3)
    assert fingerprint_module(enc, extra="max_length=128") == base

    assert fingerprint_module(enc, extra="max_length=256") != base
    assert fingerprint_module(enc) != base
    assert fingerprint_module(_encoder(seed=1), extra="max_length=128") != base
    assert fingerprint_module(_encoder(cls=_OtherEncoder), extra="max_length=128") != base

    with torch.no_grad():  # the smallest possible change of one weight
        w = enc.linear.weight
        old = w[1, 2].clone()
        w[1, 2] = torch.nextafter(old, torch.tensor(np.inf))
        assert fingerprint_module(enc, extra="max_length=128") != base
        w[1, 2] = old
        assert fingerprint_module(enc, extra="max_length=128") == base
        enc.norm.running_mean += 1e-3  # a buffer is state too
        assert fingerprint_module(enc, extra="max_length=128") != base
        enc.norm.running_mean -= enc.norm.running_mean
        assert fingerprint_module(enc, extra="max_length=128") == base
    assert fingerprint_module(_encoder().double(), extra="max_length=128") != base


def test_fingerprint_module_includes_dtype_and_shape() -> None:
    """Equal raw bytes with another dtype or shape is another encoder state."""
    fps = {fingerprint_module(_Buffered(t)) for t in
           (torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(6), torch.zeros(2, 3, dtype=torch.int32))}
    assert len(fps) == 4
    assert fingerprint_module(_Buffered(torch.zeros(2, 3))) == fingerprint_module(_Buffered(torch.zeros(2, 3)))
