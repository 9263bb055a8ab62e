"""medmm.io: atomic JSON artifacts and the clear errors their readers give."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmm.errors import DataError
from medmm.io import read_json, write_json_atomic


def test_json_round_trip_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "a" / "task.json", {"format": "medmm.x", "labels": ["é", "b"]})
    assert read_json(path, format="medmm.x") == {"format": "medmm.x", "labels": ["é", "b"]}
    assert [p.name for p in path.parent.iterdir()] == ["task.json"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "task.json", {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})
    assert read_json(path) == {"v": 1} and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("text, message", [
    ("{not json", "Expecting property name"),
    ("[1, 2]", "not a JSON object"),
    ('{"format": "medmm.other"}', "not a medmm.x file"),
])
def test_bad_files_are_data_errors_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "task.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_json(path, format="medmm.x")
    assert str(path) in str(err.value)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_json(tmp_path / "absent.json")
