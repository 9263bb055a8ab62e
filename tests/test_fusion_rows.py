"""The fusion table reader shared by the task and the exported (torch-free) predictor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medmm.errors import DataError
from medmm_plugins.fusion.config import FusionConfig, FusionDataConfig
from medmm_plugins.fusion.rows import load_rows, read_fusion_table, read_texts, text_tokens, without_modality


def _table(path: Path, rows: list[str]) -> Path:
    path.write_text("id,text,image,age,label\n" + "\n".join(rows) + "\n")
    return path


def test_the_group_column_is_needed_to_split_not_to_predict(tmp_path: Path) -> None:
    d = FusionDataConfig(id_column="id", group_column="patient", tabular_columns=["age"])
    table = _table(tmp_path / "t.csv", ["007,a note,,61,1", "008,,x.dcm,,0"])
    with pytest.raises(DataError, match=r"t\.csv: no column\(s\) \['patient'\]"):
        read_fusion_table(table, d, labelled=True)
    df, ids, tab = read_fusion_table(table, d, labelled=False, trained=["age"])  # predict (task and export)
    assert ids == ["007", "008"] and tab == ["age"] and len(df) == 2  # ids keep their leading zeros
    with pytest.raises(DataError, match=r"no column\(s\) \['weight'\]"):  # the fitted preprocessor's columns
        read_fusion_table(table, d, labelled=False, trained=["weight"])


def test_predict_rows_read_without_the_patient_column(tmp_path: Path) -> None:
    cfg = FusionConfig(data=FusionDataConfig(id_column="id", group_column="patient", image_column=None))
    table = _table(tmp_path / "new.csv", ["007,a note,,61,", "008,,,,"])
    rows = load_rows(table, cfg, ["text"], labelled=False, cache_dir=tmp_path / "cache")
    assert "groups" not in rows and rows["keep"].tolist() == [True, False]
    assert rows["skipped"] == [("008", "no modality present")]


def test_duplicate_ids_and_folders_are_refused_with_the_file_named(tmp_path: Path) -> None:
    d = FusionDataConfig(id_column="id")
    with pytest.raises(DataError, match=r"dup\.csv: data\.id_column 'id' has duplicate values"):
        read_fusion_table(_table(tmp_path / "dup.csv", ["1,a,,,1", "1,b,,,0"]), d, labelled=True)
    with pytest.raises(DataError, match="got a folder"):
        read_fusion_table(tmp_path, d, labelled=False)


def test_blank_text_is_absent_and_rows_without_a_modality_are_skipped_with_the_image_failure() -> None:
    texts, present = read_texts(["a note", "   ", None, float("nan")])
    assert texts == ["a note", "", "", ""] and present.tolist() == [True, False, False, False]
    mask = np.array([[True, False], [False, False], [False, False]])
    keep, skipped = without_modality(["a", "b", "c"], mask, {2: "unreadable DICOM"})
    assert keep.tolist() == [True, False, False]
    assert skipped == [("b", "no modality present"), ("c", "no modality present (unreadable DICOM)")]


def test_text_tokens_per_row_empty_where_absent(tmp_path: Path) -> None:
    from medmm.data.text.tokenize import SimpleVocab

    vocab = SimpleVocab.build(["a note", "a note again"], min_freq=1)
    texts, present = read_texts(["a note", None, "again a note"])
    tokens = text_tokens(texts, present, vocab, max_length=8, cache_dir=None)
    assert [t.dtype for t in tokens] == [np.int64] * 3 and len(tokens[1]) == 0
    assert tokens[0].tolist() == vocab(["a note"], max_length=8)["input_ids"][0]
    cached = text_tokens(texts, present, vocab, max_length=8, cache_dir=tmp_path / "cache")
    assert [t.tolist() for t in cached] == [t.tolist() for t in tokens]


def test_the_shared_reader_and_the_exported_predictor_import_no_training_stack() -> None:
    code = ("import sys\n"
            "import medmm_plugins.fusion, medmm_plugins.fusion.rows, medmm_plugins.fusion.runtime\n"
            "heavy = {'torch', 'transformers', 'timm', 'torchvision', 'sklearn'}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
