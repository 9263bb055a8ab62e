"""medmm.testing.check_task, the conformance kit: a built-in task passes it; a broken task is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmm import check_task
from medmm.registry import Registry
from medmm.task import Task, TaskSpec


def tiny_breast_cancer(folder: Path) -> tuple[Path, list[str]]:
    """150 rows of scikit-learn's breast-cancer table, 6 features, an id column."""
    from sklearn.datasets import load_breast_cancer

    folder.mkdir(parents=True, exist_ok=True)
    df = load_breast_cancer(as_frame=True).frame.iloc[:150, [0, 1, 2, 7, 20, 27, 30]]
    df.columns = [c.replace(" ", "_") for c in df.columns]
    df["target"] = df["target"].map({0: "malignant", 1: "benign"})
    df.insert(0, "pid", [f"p{i:03d}" for i in range(len(df))])
    df.to_csv(folder / "bc.csv", index=False)
    return folder / "bc.csv", ["data.target=target", "data.id_column=pid", "model.backbone=mlp"]  # auto: test_tabular_auto


class Broken(Task):
    """A planted non-conforming task: its reader fails on every input."""

    def build_data(self, data_path: Path) -> None:
        raise RuntimeError("the reader of this task is broken")


@pytest.mark.slow  # imports the engine (torch) in-process: ~10 s on a loaded 2-core VM
def test_a_failing_run_is_reported_and_the_checks_that_need_it_are_skipped(tmp_path: Path) -> None:
    registry = Registry()
    yaml = tmp_path / "broken.yaml"
    yaml.write_text("data: {target: '', id_column: ''}\nmodel: {backbone: ''}\n")
    registry.add("task", TaskSpec("broken", "tabular", "a broken task", yaml, Broken), owner="test")
    report = check_task("broken", tiny_breast_cancer, tmp_path / "work", registry=registry)
    assert not report.ok and [c.name for c in report.failed] == ["run"]
    assert "the reader of this task is broken" in report["run"].detail
    assert all(c.ok is None and "needs the" in c.detail for c in report.checks[1:])
    assert "FAIL  run" in str(report) and "skip  export" in str(report)


def test_unknown_checks_are_refused(tmp_path: Path) -> None:
    from medmm.errors import MedmmError

    with pytest.raises(MedmmError, match="unknown check"):
        check_task("tabular-risk", tiny_breast_cancer, tmp_path, checks=["run", "fly"])


def tiny_notes(folder: Path) -> tuple[Path, list[str]]:
    """60 synthetic two-class notes (a finding sentence per class among filler) for a TextCNN: no
    transformers import, a vocabulary built from the notes."""
    from tests.test_text_cls import synthetic_notes

    folder.mkdir(parents=True, exist_ok=True)
    synthetic_notes(60, ["normal", "effusion"]).to_csv(folder / "notes.csv", index=False)
    return folder / "notes.csv", ["model.backbone=textcnn", "model.embed_dim=32", "data.id_column=note_id",
                                  "data.max_length=24", f"data.cache_dir={folder / 'cache'}"]  # shared by both runs


def tiny_squares(folder: Path) -> tuple[Path, list[str]]:
    """40 noise DICOM images, every second with a bright square (the label): a planted signal, so a
    trained model's Grad-CAM maps are faithful (an untrained one's are not, and the check says so)."""
    from tests.test_explain import _squares

    _squares(folder / "dicom", 40, 0)
    return folder / "dicom", ["model.backbone=test_resnet", "model.pretrained=none", "data.size=48",
                              "data.augment=false", "model.freeze_bn=true", "engine.lr=0.003", "engine.monitor=loss",
                              f"data.cache_dir={folder / 'cache'}"]  # pixels decoded once for both runs


def tiny_pairs(folder: Path) -> tuple[Path, list[str]]:
    """96 rows of text (filler) + two table columns; the label is decided by the column ``marker``."""
    from tests.test_explain import _pairs

    folder.mkdir(parents=True, exist_ok=True)
    return _pairs(folder / "pairs.csv", 96, 0), ["data.image_column=null", "data.tabular_columns=[marker,noise]",
                                                  "model.text_backbone=bert-tiny", "data.id_column=id",
                                                  f"data.cache_dir={folder / 'cache'}"]  # text encoded once


# The four built-in tasks on tiny planted data with tiny backbones: each run trains for seconds, so the
# whole kit (two trainings: run + killed-and-resumed; export; a torch-free predict in a fresh process)
# stays cheap. Measured with the example plugin's run (tests/test_plugins.py) in docs/plugins.md.
@pytest.mark.slow
@pytest.mark.parametrize(("task", "build", "steps"), [
    ("tabular-risk", tiny_breast_cancer, ["engine.epochs=2"]),
    ("text-cls", tiny_notes, ["engine.epochs=2"]),
    ("image-cls", tiny_squares, ["engine.epochs=6"]),
    ("fusion", tiny_pairs, ["engine.epochs=5", "engine.lr=0.003"]),
])
def test_built_in_task_passes_the_conformance_kit(task: str, build, steps: list[str], tmp_path: Path) -> None:
    report = check_task(task, build, tmp_path, overrides=steps, exporter="torchscript")  # the quicker exporter;
    assert report.ok, str(report)                                                       # test_deploy covers dynamo
    skipped = {c.name for c in report.checks if c.ok is None}
    assert skipped == ({"serve"} if task == "fusion" else set()), str(report)  # a fusion export reads table files
