"""discrete-survival honours medmm's task contract: medmm's conformance kit, as a plugin author runs it."""

from pathlib import Path

import pytest

from medmm import check_task


def tiny_gbsg2(folder: Path) -> tuple[Path, list[str]]:
    """240 patients of lifelines' GBSG2 table and the --set items that name its columns."""
    datasets = pytest.importorskip("lifelines.datasets")
    folder.mkdir(parents=True, exist_ok=True)
    datasets.load_gbsg2().head(240).to_csv(folder / "gbsg2.csv", index_label="patient")
    return folder / "gbsg2.csv", ["data.time=time", "data.event=cens", "data.id_column=patient", "data.horizon=1825"]


def test_discrete_survival_passes_medmm_check_task(tmp_path: Path) -> None:
    report = check_task("discrete-survival", tiny_gbsg2, tmp_path, overrides=["engine.epochs=2"],
                        exporter="torchscript")  # the quicker of medmm export's two exporters
    print(report)  # one line per check: run, resume, predict, evaluate, explain, export, serve, bad-input
    assert report.ok, str(report)
    assert all(c.ok for c in report.checks), str(report)  # every check ran: it exports and serves too
