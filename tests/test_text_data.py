"""Text tables, tokenisation cache, dynamic padding and the reports demo."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medmm.data.readers import read_table
from medmm.data.text.examples import load_text_examples
from medmm.data.text.tokenize import (
    SimpleVocab,
    TokenizedCorpus,
    TokenizedTextDataset,
    pad_collate,
    tokenize_cached,
)
from medmm.errors import ConfigError, DataError

ROWS = [
    {"id": "007", "note": "Lungs are clear.", "extra": "No effusion.", "label": "normal"},
    {"id": "008", "note": "Right lower lobe pneumonia.", "extra": None, "label": "pneumonia"},
    {"id": "009", "note": "Small left effusion.", "extra": "", "label": "effusion"},
]
WORDS = ["lungs", "are", "clear", "no", "effusion", "right", "lower", "lobe", "pneumonia",
         "small", "left", "heart", "normal", "size", "the", "is"]


# --------------------------------------------------------------------------- read_table


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".csv.gz"])
def test_read_table_formats(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(ROWS)
    path = tmp_path / f"notes{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    else:
        df.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    out = read_table(path, string_columns=["id"])
    assert list(out["note"]) == [r["note"] for r in ROWS]
    assert list(out["id"]) == ["007", "008", "009"]  # leading zeros kept


def test_read_table_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "notes.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    assert len(read_table(path)) == 3


def test_read_table_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown table format"):
        read_table(tmp_path / "notes.xlsx")
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "missing.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("note,label\nPl\xe8vre normale,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv.*UTF-8"):
        read_table(latin)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{not json\n')
    with pytest.raises(DataError, match="bad.jsonl"):
        read_table(bad)


def test_read_table_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("note,label\nPlèvre normale,0\n".encode("utf-8-sig"))
    assert list(read_table(path).columns) == ["note", "label"]


# --------------------------------------------------------------------------- load_text_examples


def test_string_labels_and_joined_text() -> None:
    ex = load_text_examples(pd.DataFrame(ROWS), text_columns=["note", "extra"],
                            label_columns=["label"], id_column="id")
    assert ex.label_names == ["effusion", "normal", "pneumonia"]
    assert ex.labels.tolist() == [1, 2, 0] and ex.labels.dtype == np.int64
    assert ex.texts[0] == "Lungs are clear.\n\nNo effusion."
    assert ex.texts[1] == "Right lower lobe pneumonia."  # missing / empty columns left out
    assert ex.row_ids == ["007", "008", "009"] and not ex.multilabel and ex.skipped == []


def test_integer_labels_sort_numerically() -> None:
    df = pd.DataFrame({"t": list("abcd"), "y": [10, 2, 2, 1]})
    ex = load_text_examples(df, text_columns=["t"], label_columns=["y"])
    assert ex.label_names == ["1", "2", "10"]
    assert ex.labels.tolist() == [2, 1, 1, 0]
    assert ex.row_ids == ["0", "1", "2", "3"]
    again = load_text_examples(df, text_columns=["t"], label_columns=["y"], label_names=[1, 2, 10])
    assert again.label_names == ex.label_names and again.labels.tolist() == ex.labels.tolist()


def test_multilabel_columns_and_delimiter() -> None:
    df = pd.DataFrame({"t": ["a", "b", "c"], "edema": [1, 0, "yes"], "effusion": [0, 1, 1],
                       "tags": ["edema", "effusion", "edema|effusion"]})
    by_cols = load_text_examples(df, text_columns=["t"], label_columns=["edema", "effusion"])
    assert by_cols.multilabel and by_cols.label_names == ["edema", "effusion"]
    assert by_cols.labels.tolist() == [[1, 0], [0, 1], [1, 1]] and by_cols.labels.dtype == np.float32
    by_delim = load_text_examples(df, text_columns=["t"], label_columns=["tags"], label_delimiter="|")
    assert by_delim.multilabel and by_delim.label_names == ["edema", "effusion"]
    np.testing.assert_array_equal(by_delim.labels, by_cols.labels)


def test_skipped_rows_have_reasons_without_cell_contents() -> None:
    secret = "Patient John Smith, DOB 1950-01-01"
    df = pd.DataFrame({
        "id": ["a", "b", "c", "d", "a", "f", "g"],
        "t": ["ok", "   ", "ok", "ok", "dup", "ok", "ok"],
        "y": ["x", "x", None, secret, "x", "y", "x"],
        "grp": ["p1", "p1", "p2", "p3", "p4", None, "p5"],
        "split": ["train", "val", "test", "train", "train", "train", "holdout"],
    })
    ex = load_text_examples(df, text_columns=["t"], label_columns=["y"], id_column="id",
                            group_column="grp", split_column="split", label_names=["x", "y"])
    assert dict(ex.skipped) == {"b": "empty text", "c": "missing label", "d": "unseen label",
                                "a": "duplicate id", "g": "invalid split value (expected train/val/test)"}
    # no group: kept, its own group when split (medmm.task.assign_splits)
    assert ex.row_ids == ["a", "f"] and ex.groups == ["p1", ""] and ex.splits == ["train", "train"]
    assert ex.skip_summary()["empty text"] == 1
    assert all(secret not in reason for _, reason in ex.skipped)


def test_multilabel_invalid_and_unseen() -> None:
    df = pd.DataFrame({"t": ["a", "b", "c"], "l1": [1, 2, 0], "l2": [0, 1, None]})
    ex = load_text_examples(df, text_columns=["t"], label_columns=["l1", "l2"])
    assert ex.skipped == [("1", "invalid label value (expected 0/1)"), ("2", "missing label")]
    df = pd.DataFrame({"t": ["a", "b"], "tags": ["x;y", "x;z"]})
    ex = load_text_examples(df, text_columns=["t"], label_columns=["tags"], label_delimiter=";",
                            label_names=["x", "y"])
    assert ex.labels.tolist() == [[1, 1]] and ex.skipped == [("1", "unseen label")]


def test_missing_columns_listed() -> None:
    with pytest.raises(DataError, match=r"missing column\(s\) report.*available columns: id, note"):
        load_text_examples(pd.DataFrame({"id": [1], "note": ["x"]}), text_columns=["report"],
                           label_columns=["label"])


def test_truncation_no_labels_and_no_rows() -> None:
    df = pd.DataFrame({"t": ["x" * 50, "short"]})
    ex = load_text_examples(df, text_columns=["t"], label_columns=[], max_chars=10)
    assert ex.labels is None and [len(t) for t in ex.texts] == [10, 5] and ex.truncated == ["0"]
    with pytest.raises(DataError, match="no usable rows.*empty text: 2"):
        load_text_examples(pd.DataFrame({"t": ["", None]}), text_columns=["t"], label_columns=[])
    with pytest.raises(ConfigError):
        load_text_examples(df, text_columns=["t"], label_columns=["t", "t"], label_delimiter=",")


# --------------------------------------------------------------------------- tokenisation


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from medmm.models.text import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), WORDS)


class CallSpy:
    """Delegates to a tokenizer and counts calls to it."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)


def test_tokenize_cache_hit_and_invalidation(tokenizer, tmp_path: Path) -> None:
    texts = ["the lungs are clear", "small left effusion", "heart size is normal"] * 3
    spy = CallSpy(tokenizer)
    first = tokenize_cached(texts, spy, max_length=8, cache_dir=tmp_path)
    assert spy.calls > 0 and len(first) == 9 and first.lengths.max() <= 8
    (cache_file,) = tmp_path.glob("tok-*.npz")
    assert first[0].tolist() == tokenizer("the lungs are clear")["input_ids"]
    calls = spy.calls
    again = tokenize_cached(texts, spy, max_length=8, cache_dir=tmp_path)
    assert spy.calls == calls  # served from disk: the tokenizer is not called at all
    np.testing.assert_array_equal(again.ids, first.ids)
    np.testing.assert_array_equal(again.offsets, first.offsets)
    for args in ((texts, 6), (texts[:-1], 8)):  # other max_length, other texts: new entries
        tokenize_cached(args[0], spy, max_length=args[1], cache_dir=tmp_path)
        assert spy.calls > calls
        calls = spy.calls
    assert len(list(tmp_path.glob("tok-*.npz"))) == 3
    cache_file.write_bytes(b"garbage")
    tokenize_cached(texts, spy, max_length=8, cache_dir=tmp_path)
    assert spy.calls > calls  # a corrupt entry is rebuilt, not trusted
    with np.load(cache_file, allow_pickle=False) as z:  # stored without pickle
        assert z["ids"].dtype == np.int32


def test_chunk_mode(tokenizer) -> None:
    long_doc = " ".join(WORDS * 3)  # 48 words
    corpus = tokenize_cached(["no effusion", long_doc], tokenizer, max_length=16,
                             long_text="chunk", stride=4)
    assert corpus.mode == "chunk" and corpus.num_docs == 2
    assert corpus.doc_index[0] == 0 and (corpus.doc_index[1:] == 1).all() and len(corpus) > 3
    assert corpus.lengths.max() <= 16
    windows = [corpus[i].tolist() for i in range(1, len(corpus))]
    cls, sep = windows[0][0], windows[0][-1]
    assert all(w[0] == cls and w[-1] == sep for w in windows)  # specials on every window
    content = [w[1:-1] for w in windows]
    assert all(a[-4:] == b[:4] for a, b in zip(content, content[1:]))  # overlap of `stride`
    rebuilt = content[0] + [t for w in content[1:] for t in w[4:]]
    assert rebuilt == tokenizer(long_doc, add_special_tokens=False)["input_ids"]  # nothing lost
    with pytest.raises(ConfigError, match="stride"):
        tokenize_cached(["x"], tokenizer, max_length=8, long_text="chunk", stride=6)
    with pytest.raises(ConfigError, match="exceeds"):
        tokenize_cached(["x"], tokenizer, max_length=100_000)


def test_simple_vocab(tmp_path: Path) -> None:
    texts = ["The heart is normal.", "the LUNGS are clear", "heart normal"]
    vocab = SimpleVocab.build(texts, min_freq=2)
    assert vocab.tokens == ["<pad>", "<unk>", "heart", "normal", "the"]
    assert vocab.encode("The heart, lungs") == [4, 2, 1, 1]
    assert vocab.encode("   ") == [1]
    assert vocab("the heart", max_length=1) == {"input_ids": [4]}
    loaded = SimpleVocab.load(vocab.save(tmp_path / "vocab.json"))
    assert loaded.tokens == vocab.tokens and loaded.fingerprint() == vocab.fingerprint()
    corpus = tokenize_cached(["heart " * 10], vocab, max_length=4, long_text="chunk", stride=1,
                             cache_dir=tmp_path)
    assert corpus.lengths.tolist() == [4, 4, 4] and corpus.doc_index.tolist() == [0, 0, 0]
    cached = tokenize_cached(["heart " * 10], vocab, max_length=4, long_text="chunk", stride=1,
                             cache_dir=tmp_path)
    assert cached.mode == "chunk" and cached.doc_index.tolist() == [0, 0, 0]
    assert SimpleVocab.build(texts, min_freq=1, max_size=4).tokens[2:] == ["heart", "normal"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError):
        SimpleVocab.load(tmp_path / "bad.json")


# --------------------------------------------------------------------------- batching


def test_pad_collate_shapes() -> None:
    corpus = TokenizedCorpus.from_lists([[5, 6, 7], [8], [9, 9]], [0, 0, 1], 2, "chunk")
    ds = TokenizedTextDataset(corpus, np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    batch = pad_collate([ds[i] for i in range(3)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0]]
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"].sum(1).tolist() == [3, 1, 2]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist()[1] == [1.0, 0.0]
    assert batch["labels"].tolist()[0] == batch["labels"].tolist()[1]  # windows of one document
    assert batch["index"].tolist() == [0, 1, 2]
    single = TokenizedTextDataset(TokenizedCorpus.from_lists([[1], [2, 3]], None, 2, "truncate"),
                                  np.array([0, 1]))
    batch = pad_collate([single[1], single[0]], pad_id=-1)
    assert batch["labels"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[2, 3], [1, -1]]


# --------------------------------------------------------------------------- reports demo

needs_txv = pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None,
                               reason="pip install --no-deps torchxrayvision==1.5.7")


@pytest.mark.slow
@needs_txv
def test_reports_demo_counts(tmp_path: Path) -> None:
    from medmm.demos.reports import build_reports_csv

    df = pd.read_csv(build_reports_csv(tmp_path / "reports.csv"), dtype={"report_id": str})
    assert list(df.columns) == ["report_id", "findings", "impression", "text", "label", "mesh_major"]
    assert len(df) == 3927  # 3,955 reports, 28 with neither findings nor impression
    assert df["report_id"].is_unique and df["text"].str.strip().astype(bool).all()
    counts = df["label"].value_counts().to_dict()
    assert counts == {"abnormal": 2564, "normal": 1363}
    assert (df.loc[df.label == "normal", "mesh_major"].str.lower() == "normal").all()

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(df["text"], df["label"] == "abnormal",
                                              test_size=0.25, random_state=0, stratify=df["label"])
    vec = TfidfVectorizer(sublinear_tf=True)
    clf = LogisticRegression(max_iter=1000).fit(vec.fit_transform(x_tr), y_tr)
    assert roc_auc_score(y_te, clf.predict_proba(vec.transform(x_te))[:, 1]) > 0.95


def test_reports_demo_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm.demos import reports

    monkeypatch.setattr(reports.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps torchxrayvision==1\.5\.7"):
        reports.reports_archive()


def test_gzip_csv_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "notes.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("note\tlabel\nclear\t0\n")
    assert read_table(path).shape == (1, 2)


def test_is_missing_covers_every_empty_cell_kind() -> None:
    from medmm.data.readers import is_missing

    assert all(is_missing(v) for v in (None, float("nan"), pd.NA, pd.NaT, "", "  \t"))
    assert not any(is_missing(v) for v in ("0", 0, 0.0, "NA text", False))
