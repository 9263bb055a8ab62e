"""medmm export / predict EXPORT_DIR / serve / --dicom-sr on tiny runs of every exportable task.

Parity is checked against the torch path on the same files; the torch-free claim is checked in a
subprocess whose imports of torch / transformers / timm raise ImportError; the service is started
as ``medmm serve`` on a free 127.0.0.1 port and spoken to over real HTTP.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmm.data.readers import streams as _streams
from medmm.errors import MedmmError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUIET = ["--quiet", "--set", "engine.device=cpu", "--set", "engine.bootstrap=0"]

# A child process in which torch, transformers, timm and torchvision cannot be imported; it runs
# the medmm CLI and fails if any of them ended up in sys.modules anyway.
NO_TORCH = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "timm", "torchvision"}:
            raise ImportError(name + " is hidden in this test")
        return None
sys.meta_path.insert(0, _Hide())
from medmm.cli import main
code = 0
for argv in [a.split("\\x1f") for a in sys.argv[1:]]:
    code = code or main(argv)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "timm", "torchvision"})
assert not leaked, leaked
sys.exit(code)
"""


def medmm(*args: str) -> None:
    """Run the CLI in this process (the heavy imports are shared between tests)."""
    from medmm.cli import main

    assert main([str(a) for a in args]) == 0, args


def no_torch(*commands: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    argv = ["\x1f".join(str(a) for a in cmd) for cmd in commands]
    return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def assert_same_predictions(torch_csv: Path, onnx_csv: Path) -> None:
    a, b = read_csv(torch_csv), read_csv(onnx_csv)
    assert list(a.columns) == list(b.columns)
    assert a["id"].tolist() == b["id"].tolist()
    num = [c for c in a.columns if c.startswith("prob_") or c in ("prediction", "risk")]
    assert num and np.abs(a[num].to_numpy(float) - b[num].to_numpy(float)).max() <= 2e-6
    # operating-point decisions may flip only for a score within float error of its threshold (the
    # thresholds are observed validation scores, so ties happen on the validation rows themselves)
    # so may conformal set membership and the refer flag (their thresholds are validation scores too)
    decision = [c for c in a.columns if c.startswith(("decision", "set_")) or c == "abstain"]
    bounds = [c for c in a.columns if c.startswith(("lower_", "upper_"))]
    if bounds:
        assert np.abs(a[bounds].to_numpy(float) - b[bounds].to_numpy(float)).max() <= 2e-6
    rest = [c for c in a.columns if c not in num and c not in decision and c not in bounds]
    assert a[rest].astype(str).equals(b[rest].astype(str))
    if decision:
        assert (a[decision].astype(str) == b[decision].astype(str)).to_numpy().mean() >= 0.97


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from sklearn.datasets import load_breast_cancer

    root = tmp_path_factory.mktemp("tab")
    df = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 7, 20, 27, 30]]
    df.columns = [c.replace(" ", "_") for c in df.columns]
    df["target"] = df["target"].map({0: "malignant", 1: "benign"})
    df.insert(0, "pid", [f"p{i:03d}" for i in range(len(df))])
    data = root / "bc.csv"
    df.to_csv(data, index=False)
    run, export = root / "run", root / "export"
    medmm("run", "tabular-risk", "--data", data, "--out", run, "--set", "data.target=target",
          "--set", "data.id_column=pid", "--set", "engine.epochs=2", *QUIET)
    medmm("export", run, "--out", export, "--quantize")
    return data, run, export


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from medmm.models.text import build_tiny_tokenizer
    from tests.test_text_cls import WORDS, synthetic_notes

    root = tmp_path_factory.mktemp("txt")
    build_tiny_tokenizer(root / "tok", WORDS)
    data = root / "notes.csv"
    synthetic_notes(90, ["normal", "effusion", "pneumonia"]).to_csv(data, index=False)
    run, export = root / "run", root / "export"
    medmm("run", "text-cls", "--data", data, "--out", run, "--set", "model.backbone=bert-tiny",
          "--set", f"model.name_or_path={root / 'tok'}", "--set", "data.id_column=note_id",
          "--set", "data.long_text=chunk", "--set", "data.max_length=24", "--set", "data.stride=4",
          "--set", "engine.epochs=1", *QUIET)
    medmm("export", run, "--out", export, "--exporter", "torchscript")  # dynamo: the tabular fixture (time budget)
    return data, run, export


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from medmm.demos.dicom import build_demo

    root = tmp_path_factory.mktemp("img")
    data = build_demo(root / "dicom")
    run, export = root / "run", root / "export"
    medmm("run", "image-cls", "--data", data, "--out", run, "--set", "model.backbone=resnet18",
          "--set", "model.pretrained=none", "--set", "data.size=32", "--set", "engine.epochs=1", *QUIET)
    medmm("export", run, "--out", export, "--exporter", "torchscript")
    return data, run, export


@pytest.fixture(scope="module")
def fusion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Text + image + tabular, end to end with tiny random encoders (bert-tiny, resnet18 at 32 px)."""
    from medmm.demos.fusion import build_fusion_demo

    root = tmp_path_factory.mktemp("fus")
    data = build_fusion_demo(root / "data", n_patients=12)  # rows without text / image included
    run, export = root / "run", root / "export"
    medmm("run", "fusion", "--data", data, "--out", run, "--set", "model.mode=finetune",
          "--set", "model.text_backbone=bert-tiny", "--set", "model.image_backbone=resnet18",
          "--set", "model.image_pretrained=none", "--set", "model.head=attention",
          "--set", "data.tabular_columns=[age,sex]", "--set", "data.label_column=label",
          "--set", "data.classes=[no_malignancy,malignant]", "--set", "data.id_column=id",
          "--set", "data.group_column=patient", "--set", "data.size=32", "--set", "engine.epochs=1",
          "--set", "engine.max_steps=2", *QUIET)
    medmm("export", run, "--out", export, "--exporter", "torchscript")  # auto: dynamo misses parity, then this
    return data, run, export


# --------------------------------------------------------------------------- unit tests


def test_pooling_averages_windows_per_unit_in_first_seen_order() -> None:
    from medmm.pooling import pool_by_unit

    scores = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    units, pooled, targets = pool_by_unit(["b", "a", "b", "c", "a"], scores, np.array([1, 0, 1, 2, 0]))
    assert units == ["b", "a", "c"] and targets.tolist() == [1, 0, 2]
    assert np.allclose(pooled, [[0.3, 0.7], [0.3, 0.7], [1.0, 0.0]])
    same = pool_by_unit(["x", "y"], scores[:2], None)  # one example per unit: passed through
    assert same[0] == ["x", "y"] and same[1] is not None and same[2] is None


def test_manifest_refuses_a_file_changed_after_export(tmp_path: Path) -> None:
    from medmm.deploy.manifest import FORMAT, MANIFEST, file_hashes, is_export_dir, read_manifest

    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": 1, "files": file_hashes(tmp_path)}))
    assert is_export_dir(tmp_path) and read_manifest(tmp_path)["files"]
    (tmp_path / "model.onnx").write_bytes(b"other graph")
    with pytest.raises(MedmmError, match="does not match its hash"):
        read_manifest(tmp_path)
    assert not is_export_dir(tmp_path / "nothing")


def test_a_task_without_export_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    from medmm.deploy.export import export_run
    from medmm.registry import Registry
    from medmm.task import TaskSpec

    registry = Registry()
    registry.add("task", TaskSpec("my-plugin-task", "tabular", "no runtime reader", "x.yaml", "x:Y"), owner="p")
    (tmp_path / "run.json").write_text(json.dumps({"task": "my-plugin-task", "data": "x.csv"}))
    with pytest.raises(MedmmError, match=r"'my-plugin-task' declares no torch-free reader \(TaskSpec.runtime\)"):
        export_run(tmp_path, tmp_path / "out", registry=registry)
    assert not (tmp_path / "out").exists()


def test_a_fusion_export_is_not_served_but_predicted_from_a_table() -> None:
    from types import SimpleNamespace

    from medmm.deploy.service import create_app

    model = SimpleNamespace(task="fusion", inputs=SimpleNamespace(accepts="table"))
    with pytest.raises(MedmmError, match="medmm predict EXPORT_DIR --data TABLE"):
        create_app(model)


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from medmm.deploy import manifest

    def fail(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(MedmmError, match=r"medmm serve needs fastapi: pip install 'medmm\[serve\]'"):
        manifest.require("fastapi", "serve", "medmm serve")


def test_export_config_is_the_typed_task_config_without_torch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The runtime reads an export's config.yaml as the task's typed model: unknown keys (another
    version) dropped, missing ones defaulted, bad values named; no torch for any exportable task."""
    import yaml

    from medmm.deploy.runtime import export_config
    from medmm.errors import ConfigError

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"target": "y", "id_column": "pid", "from_a_newer_medmm": 1},
        "engine": {"eval_batch_size": 16}}))
    with caplog.at_level("WARNING", logger="medmm"):
        cfg = export_config(tmp_path, "tabular-risk")
    assert "data.from_a_newer_medmm" in caplog.text
    assert type(cfg).__name__ == "TabularRiskConfig"
    assert (cfg.data.target, cfg.data.id_column, cfg.engine.eval_batch_size) == ("y", "pid", 16)
    assert cfg.data.decimal == "." and not hasattr(cfg.data, "from_a_newer_medmm")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"engine": {"eval_batch_size": "many"}}))
    with pytest.raises(ConfigError, match="engine.eval_batch_size"):
        export_config(tmp_path, "tabular-risk")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    code = ("import sys\n" + NO_TORCH.split("from medmm.cli")[0] + "from pathlib import Path\n"
            "from medmm.deploy.runtime import export_config, runtime_reader\n"
            "from medmm.plugins import get_registry\n"
            "tasks = [n for n, s in get_registry().items('task') if s.runtime is not None]\n"
            "readers = [runtime_reader(get_registry().get('task', t)) for t in tasks]  # imports each reader\n"
            f"cfgs = [export_config(Path({str(tmp_path)!r}), t) for t in tasks]\n"
            "print(sum(c.engine.eval_batch_size > 0 for c in cfgs))\n"
            "leaked = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'timm'})\n"
            "assert not leaked, leaked\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 4  # the four built-in tasks at least


def test_body_limit_refuses_declared_and_chunked_bodies_over_the_limit() -> None:
    import asyncio

    from medmm.deploy.service import BodyLimit

    seen: list[bytes] = []

    async def app(scope, receive, send) -> None:
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def status(chunks: list[bytes], headers: tuple = ()) -> int:
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent: list[dict] = []

        async def receive() -> dict:
            return messages.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(BodyLimit(app, 10)({"type": "http", "headers": list(headers)}, receive, send))
        return sent[0]["status"]

    assert status([b"12345", b"12345"]) == 200 and seen == [b"1234512345"]  # at the limit: replayed whole
    assert status([b"123456", b"123456"]) == 413 and len(seen) == 1  # chunked, over: the app never runs
    assert status([b"1"], ((b"content-length", b"11"),)) == 413  # declared over: refused unread
    assert status([b"1"], ((b"content-length", b"x"),)) == 413


# --------------------------------------------------------------------------- export + predict


@pytest.mark.slow
def test_tabular_export_is_parity_checked_and_predicts_like_torch(tabular, tmp_path: Path) -> None:
    data, run, export = tabular
    m = json.loads((export / "manifest.json").read_text())
    assert m["task"] == "tabular-risk" and m["opset"] == 18 and m["parity"]["max_abs_diff"] <= 1e-4
    assert m["parity"]["units"] > 50 and m["inputs"][0]["shape"][0] == "batch"
    assert {"model.onnx", "model.int8.onnx", "config.yaml", "artifacts/tabular.json"} <= set(m["files"])
    assert m["quantized"]["max_abs_diff"] < 0.05 and m["quantized"]["label_agreement"] > 0.95
    assert not list(export.rglob("*.safetensors"))
    op = run / "artifacts" / "operating_point.json"
    if op.exists():  # the run's chosen operating point travels with the export (decisions, SR findings)
        assert m["threshold"] == json.loads(op.read_text())["thresholds"][m["label_names"][1]]
        assert (export / "artifacts" / "operating_point.json").read_bytes() == op.read_bytes()
    medmm("predict", run, "--data", data, "--out", tmp_path / "torch.csv")
    medmm("predict", export, "--data", data, "--out", tmp_path / "onnx.csv")
    assert_same_predictions(tmp_path / "torch.csv", tmp_path / "onnx.csv")


@pytest.mark.slow
def test_text_export_with_chunked_documents_predicts_like_torch(text, tmp_path: Path) -> None:
    data, run, export = text
    m = json.loads((export / "manifest.json").read_text())
    assert m["parity"]["max_abs_diff"] <= 1e-4 and m["inputs"][0]["shape"] == ["batch", "sequence"]
    assert "artifacts/encoder/tokenizer.json" in m["files"]
    medmm("predict", run, "--data", data, "--out", tmp_path / "torch.csv")
    medmm("predict", export, "--data", data, "--out", tmp_path / "onnx.csv")
    assert_same_predictions(tmp_path / "torch.csv", tmp_path / "onnx.csv")


@pytest.mark.slow
def test_text_export_streams_a_table_of_notes_to_the_one_pass_file(text, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``medmm predict EXPORT_DIR`` of a CSV of notes reads it in blocks (#30): long notes' windows never cut
    between blocks, an empty note and a repeated id skipped as in one pass, labels (metrics) only when every row
    has one; the bytes, the console and the skipped report are one pass's, and the whole table is never read."""
    from click.testing import CliRunner
    from medmm_plugins.text_cls.runtime import TextInputs

    from medmm import batching
    from medmm import cli as cli_mod
    from medmm.data import readers

    data, _, export = text
    df = pd.read_csv(data)
    df.loc[5, "text"] = "   "
    df.loc[9, "note_id"] = df.loc[8, "note_id"]
    sources = {"labelled": df, "unlabelled": df.drop(columns=["label"]),
               "partly": df.assign(label=df.label.where(df.index != 40))}
    blocks: list[tuple[int, bool]] = []
    original = TextInputs.blocks

    def counted(self: TextInputs, path: Path, rows: int):  # type: ignore[no-untyped-def]
        for ex in original(self, path, rows):
            blocks.append((len(ex.units), len(set(ex.units)) < len(ex.units)))
            yield ex

    monkeypatch.setattr(TextInputs, "blocks", counted)

    def predict(src: Path, out: Path, rows: str) -> str:
        monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", rows)
        monkeypatch.setattr(batching, "WINDOW_BATCHES", 2)  # length-sorted windows of 64 token windows, both paths
        res = CliRunner().invoke(cli_mod.make_cli(), ["predict", str(export), "--data", str(src), "--out", str(out)])
        assert res.exit_code == 0, res.output
        return res.output

    for name, frame in sources.items():
        src = tmp_path / f"{name}.csv"
        frame.to_csv(src, index=False)
        monkeypatch.setattr(readers, "streams", lambda path: False)  # one pass: the table read whole
        said = predict(src, tmp_path / f"{name}-one.csv", "100000")
        monkeypatch.setattr(readers, "streams", _streams)
        monkeypatch.setattr(readers, "read_table", lambda *a, **k: (_ for _ in ()).throw(AssertionError("whole read")))
        blocks.clear()
        told = predict(src, tmp_path / f"{name}-blocks.csv", "5")  # rounded up to a whole length-sorted window
        monkeypatch.undo()
        monkeypatch.setattr(TextInputs, "blocks", counted)
        assert (tmp_path / f"{name}-blocks.csv").read_bytes() == (tmp_path / f"{name}-one.csv").read_bytes()
        warned = "medmm: warning: skipped 2 of 90 rows: {'empty text': 1, 'duplicate id': 1}"
        assert told.splitlines().count(warned) == 1 and warned in said  # one pass says it per reading of the table
        rest = [[ln for ln in out.splitlines() if not ln.startswith("medmm: warning: skipped")]
                for out in (told.replace("-blocks.", "-one."), said)]
        assert rest[0] == rest[1]  # the referral line and metrics as one pass
        assert "88 predictions" in told
        assert (tmp_path / f"{name}-blocks.skipped.csv").read_bytes() == (tmp_path / f"{name}-one.skipped.csv").read_bytes()
        assert ("auroc" in told) == (name == "labelled")
        assert len(blocks) >= 2 and all(n % 64 == 0 for n, _ in blocks[:-1])  # whole length-sorted windows
        assert any(several for _, several in blocks)  # a note of several windows stays in its block


@pytest.mark.slow
def test_parity_miss_fails_with_the_figure_and_writes_nothing(tabular, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm_plugins.tabular_risk import runtime

    from medmm.cli import _registry
    from medmm.deploy.export import export_run

    _, run, export = tabular
    shifted = runtime.TabularInputs.examples

    def drifted(self, df):  # a preprocessing that no longer matches the task's
        ex = shifted(self, df)
        for b in ex.batches:
            b["x"] = b["x"] + 0.5
        return ex

    monkeypatch.setattr(runtime.TabularInputs, "examples", drifted)
    with pytest.raises(MedmmError, match=r"parity check failed: max \|delta probability\| = [0-9.e-]+ > 0.0001"):
        export_run(run, tmp_path / "bad", registry=_registry(), exporter="torchscript", quiet=True)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())
    with pytest.raises(MedmmError, match="not empty"):
        export_run(run, export, registry=_registry())


@pytest.mark.slow
def test_image_export_predicts_like_torch_and_writes_dicom_sr(image, tmp_path: Path, recwarn: pytest.WarningsRecorder,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import pydicom

    data, run, export = image
    m = json.loads((export / "manifest.json").read_text())
    assert m["parity"]["max_abs_diff"] <= 1e-4 and m["preprocessing"]["size"] == 32
    medmm("predict", run, "--data", data, "--out", tmp_path / "torch.csv", "--dicom-sr", tmp_path / "sr-torch")
    recwarn.clear()
    caplog.clear()
    medmm("predict", export, "--data", data, "--out", tmp_path / "onnx.csv", "--dicom-sr", tmp_path / "sr")
    said = caplog.text + "".join(str(w.message) for w in recwarn)
    assert_same_predictions(tmp_path / "torch.csv", tmp_path / "onnx.csv")
    # the torch path's reports (built from its predictions.csv) cover the same studies
    assert sorted(p.name for p in (tmp_path / "sr-torch").iterdir()) == sorted(p.name for p in (tmp_path / "sr").iterdir())

    preds: dict[str, list[dict]] = {}  # the demo holds one image in several transfer syntaxes: one UID, several files
    for r in csv.DictReader((tmp_path / "onnx.csv").open()):
        preds.setdefault(r["sop_instance_uid"], []).append(r)
    sources = {}
    for path in data.rglob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - the demo holds non-DICOM files on purpose
            continue
        if "SOPInstanceUID" in ds:
            sources[str(ds.SOPInstanceUID)] = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
            name = str(ds.get("PatientName", ""))
            assert len(name) < 3 or name not in said  # no patient name in warnings or logs
    reports = sorted((tmp_path / "sr").glob("*.dcm"))
    assert len(reports) >= 5
    checked = 0
    for path in reports:
        sr = pydicom.dcmread(path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.Modality == "SR"  # Comprehensive 3D SR
        evidence = {str(i.ReferencedSOPInstanceUID): (str(st.StudyInstanceUID), str(se.SeriesInstanceUID))
                    for st in sr.CurrentRequestedProcedureEvidenceSequence
                    for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        assert evidence and all(sources[uid] == ref for uid, ref in evidence.items())
        assert {study for study, _ in evidence.values()} == {str(sr.StudyInstanceUID)}
        for group in sr.ContentSequence[-1].ContentSequence:  # one measurement group per predicted instance
            items = group.ContentSequence
            image_ref = [i for i in items if i.ValueType == "IMAGE"]
            uid = str(image_ref[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            probs = {i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
                     for i in items if i.ValueType == "NUM"}
            finding = [i.ConceptCodeSequence[0].CodeMeaning for i in items if i.ValueType == "CODE"
                       and i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"]
            names = [c[5:] for c in preds[uid][0] if c.startswith("prob_")]
            match = [row for row in preds[uid] if all(abs(probs[f"Probability of {n}"] - float(row[f"prob_{n}"])) < 1e-6
                                                      for n in names)]
            assert match and finding == [match[0]["predicted"]]
            code = {i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning for i in items
                    if i.ValueType == "CODE"}  # the conformal set's members and the refer flag (#32)
            in_set = [i.ConceptCodeSequence[0].CodeMeaning for i in items if i.ValueType == "CODE" and
                      i.ConceptNameCodeSequence[0].CodeMeaning.startswith("Member of 90% conformal")]
            assert in_set == [n for n in match[0]["set_90"].split(";") if n]
            assert code["Refer to clinician (conformal set not one class)"] == ("Yes" if match[0]["abstain"] == "1"
                                                                                else "No")
            algorithm = [i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name"]
            assert algorithm == ["resnet18"]
            checked += 1
    assert checked >= 10
    with pytest.raises(MedmmError, match="never overwritten"):  # a second run into the same folder
        from medmm.deploy.runtime import predict_export

        predict_export(export, data, tmp_path / "again.csv", dicom_sr=tmp_path / "sr")


@pytest.mark.slow
def test_fusion_export_predicts_like_torch_with_missing_modalities_and_without_torch(fusion, tmp_path: Path) -> None:
    data, run, export = fusion
    m = json.loads((export / "manifest.json").read_text())
    assert m["task"] == "fusion" and m["parity"]["max_abs_diff"] <= 1e-4
    assert [i["name"] for i in m["inputs"]] == ["mask", "input_ids", "attention_mask", "image", "tabular"]
    assert "artifacts/text_encoder/tokenizer.json" in m["files"] and not list(export.rglob("*.safetensors"))
    df = pd.read_csv(data, dtype=str, keep_default_na=False)
    full = df[(df["text"] != "") & (df["image"] != "")].iloc[0]
    rows = [full.to_dict(), {**full, "id": "no-image"}, {**full, "id": "no-text", "text": ""},
            {**full, "id": "tabular-only", "text": "", "image": ""},
            {**full, "id": "lost-image", "image": "dicom/NOPE"}, {**full, "id": "nothing", "text": "", "image": "",
                                                                   "age": "", "sex": ""}]
    rows[1]["image"] = ""
    table = data.with_name("predict.csv")  # next to the demo: image paths are relative to the table
    pd.DataFrame(rows).to_csv(table, index=False)
    medmm("predict", run, "--data", table, "--out", tmp_path / "torch.csv")
    proc = no_torch(["predict", export, "--data", table, "--out", tmp_path / "onnx.csv"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_predictions(tmp_path / "torch.csv", tmp_path / "onnx.csv")
    probs = read_csv(tmp_path / "onnx.csv").set_index("id").filter(like="prob_").iloc[:, 0]
    assert list(probs.index) == [full["id"], "no-image", "no-text", "tabular-only", "lost-image"]
    assert probs["no-image"] == probs["lost-image"] and len(set(probs.round(6))) >= 3  # the mask changes scores
    skipped = (tmp_path / "onnx.skipped.csv").read_text()
    assert skipped == (tmp_path / "torch.skipped.csv").read_text() and "nothing" in skipped


@pytest.mark.slow
def test_fusion_predict_streams_a_table_to_the_one_pass_file(fusion, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``medmm predict`` of a fusion table streams on the torch and the onnxruntime path (#30): blocks of rows
    whose kept rows are cut to whole eval batches (4 here; the rest is read again with the next block), rows
    without a modality or with a lost image in several blocks; the bytes, the skipped report and the console
    are one pass's, with labels (metrics) and with one row's label missing (no metrics, as one pass)."""
    import shutil

    from click.testing import CliRunner
    from medmm_plugins.fusion.runtime import FusionInputs

    from medmm import cli as cli_mod
    from medmm.data import readers

    data, run, export = fusion
    small = tmp_path / "run"  # the run with eval batches of 4 rows
    shutil.copytree(run, small)
    cfg = (small / "config.yaml").read_text()
    assert "eval_batch_size:" in cfg
    (small / "config.yaml").write_text("\n".join("  eval_batch_size: 4" if ln.strip().startswith("eval_batch_size:")
                                                 else ln for ln in cfg.splitlines()) + "\n")
    init = FusionInputs.__init__

    def four(self: FusionInputs, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.batch_size = 4

    monkeypatch.setattr(FusionInputs, "__init__", four)
    from medmm_plugins.fusion.task import FusionTask

    sizes: list[int] = []  # units per block, both paths
    chunks, feeds = FusionTask.predict_chunks, FusionInputs.blocks

    def counted_chunks(self: FusionTask, path: Path, rows: int):  # type: ignore[no-untyped-def]
        for split, collate in chunks(self, path, rows):
            sizes.append(len(split.units))
            yield split, collate

    def counted_feeds(self: FusionInputs, path: Path, rows: int):  # type: ignore[no-untyped-def]
        for ex in feeds(self, path, rows):
            sizes.append(len(ex.units))
            yield ex

    monkeypatch.setattr(FusionTask, "predict_chunks", counted_chunks)
    monkeypatch.setattr(FusionInputs, "blocks", counted_feeds)
    df = pd.read_csv(data, dtype=str, keep_default_na=False)
    full = df[(df["text"] != "") & (df["image"] != "")].iloc[0].to_dict()
    odd = [{**full, "id": "no-image", "image": ""}, {**full, "id": "tabular-only", "text": "", "image": ""},
           {**full, "id": "lost-image", "image": "dicom/NOPE"},
           {**full, "id": "nothing", "text": "", "image": "", "age": "", "sex": ""}]
    rows = df.to_dict("records")
    for k, row in enumerate(odd * 2):  # each kind in two places
        rows.insert(3 + 5 * k, {**row, "id": f"{row['id']}-{k}"})
    tables = {"labelled": pd.DataFrame(rows)}
    tables["partly"] = tables["labelled"].assign(label=["" if i == 11 else v for i, v in enumerate(tables["labelled"].label)])
    runner = CliRunner()

    def predict(model: Path, src: Path, out: Path, rows: str) -> str:
        monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", rows)
        res = runner.invoke(cli_mod.make_cli(), ["predict", str(model), "--data", str(src), "--out", str(out)])
        assert res.exit_code == 0, res.output
        return res.output.replace(str(out.with_suffix("")), "OUT")

    for name, frame in tables.items():
        src = data.with_name(f"stream-{name}.csv")  # next to the demo: image paths are relative to the table
        frame.to_csv(src, index=False)
        for model in (small, export) if name == "labelled" else (export,):  # the label rule: one code for both
            stem = tmp_path / f"{name}-{model.name}"
            monkeypatch.setattr(readers, "streams", lambda path: False)  # one pass: the whole table
            said = predict(model, src, stem.with_name(stem.name + "-one.csv"), "100000")
            monkeypatch.setattr(readers, "streams", _streams)
            sizes.clear()
            told = predict(model, src, stem.with_name(stem.name + "-blocks.csv"), "5")
            assert len(sizes) >= 3 and all(k % 4 == 0 for k in sizes[:-1]), sizes  # whole batches of 4 rows
            one, blocks = (stem.with_name(stem.name + f"-{k}.csv") for k in ("one", "blocks"))
            assert blocks.read_bytes() == one.read_bytes()
            assert (blocks.with_suffix(".skipped.csv").read_bytes() == one.with_suffix(".skipped.csv").read_bytes())
            assert told == said and ("auroc" in told) == (name == "labelled")
            assert b"lost-image-2," in blocks.read_bytes() and b"nothing-3" not in blocks.read_bytes()


@pytest.mark.slow
def test_predict_from_exports_runs_with_torch_hidden(tabular, text, image, tmp_path: Path) -> None:
    commands = [["predict", export, "--data", data, "--out", tmp_path / f"{name}.csv"]
                for name, (data, _, export) in (("tab", tabular), ("txt", text), ("img", image))]
    proc = no_torch(*commands)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the same files as this (torch-importing) process writes; those equal the torch path's (tests above)
    for name, (data, _, export) in (("tab", tabular), ("txt", text), ("img", image)):
        medmm("predict", export, "--data", data, "--out", tmp_path / f"{name}-here.csv")
        assert (tmp_path / f"{name}-here.csv").read_bytes() == (tmp_path / f"{name}.csv").read_bytes()
    assert len(read_csv(tmp_path / "img.csv")) > 40


# --------------------------------------------------------------------------- the service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: bytes | None = None, ctype: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.mark.slow
def test_serve_answers_valid_and_rejects_bad_requests_over_http(text, tmp_path: Path) -> None:
    _, _, export = text
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", NO_TORCH, "\x1f".join(
        ["serve", str(export), "--port", str(port), "--max-body-mb", "0.01", "--max-rows", "50"])],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    marker = "zebra-marker-7731"
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded wait for the server to come up
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if _http("GET", f"{base}/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        code, body = _http("POST", f"{base}/predict", json.dumps({"rows": [
            {"note_id": "a", "text": f"small left pleural effusion {marker}"},
            {"note_id": "b", "text": "the lungs are clear " * 20}]}).encode())
        assert code == 200 and [p["id"] for p in body["predictions"]] == ["a", "b"]
        assert all(abs(sum(v for k, v in p.items() if k.startswith("prob_")) - 1) < 1e-4 for p in body["predictions"])
        bad = [b"{not json", json.dumps({"rows": [{"txt": "x"}]}).encode(), json.dumps({"rows": [{"text": 5}]}).encode(),
               json.dumps({"rows": []}).encode(), json.dumps({"rows": [{"text": "x"}], "extra": 1}).encode(),
               json.dumps({"rows": [{"text": {"nested": marker}}]}).encode()]
        for payload in bad:
            code, body = _http("POST", f"{base}/predict", payload)
            assert code == 422 and marker not in json.dumps(body), (payload, body)
        code, body = _http("POST", f"{base}/predict", json.dumps({"rows": [{"text": "x" * 20_000}]}).encode())
        assert code == 413 and "limit" in body["detail"]
        assert _http("GET", f"{base}/health") == (200, {"status": "ok", "task": "text-cls", "model": "bert-tiny"})
        code, info = _http("GET", f"{base}/model")
        assert code == 200 and info["manifest"]["task"] == "text-cls" and "model_card" in info
        assert _http("GET", f"{base}/openapi.json")[0] == 200
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()
    out = (tmp_path / "serve.log").read_text()
    assert "127.0.0.1" in out and "POST /predict" in out and marker not in out and "effusion" not in out


@pytest.mark.slow
def test_image_service_takes_dicom_uploads_and_refuses_other_files(image) -> None:
    from fastapi.testclient import TestClient

    from medmm.deploy.runtime import ExportedModel
    from medmm.deploy.service import create_app

    data, _, export = image
    client = TestClient(create_app(ExportedModel(export)))
    files = sorted((data / "CT").glob("*.dcm"))[:2]
    r = client.post("/predict", files=[("files", (f"../{f.name}", f.read_bytes(), "application/dicom")) for f in files])
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert [row["id"] for row in rows] == [f.name for f in files]  # the client's base name, never a path
    assert len(rows) == 2 and all(row["sop_instance_uid"] for row in rows)
    r = client.post("/predict", files=[("files", ("notes.txt", b"not an image", "text/plain"))])
    assert r.status_code == 415 and "DICOM" in r.json()["detail"]


@pytest.mark.slow
def test_serve_fuzz_every_exportable_task_never_answers_5xx(tabular, text, image, fusion) -> None:
    """#28: shortest / longest inputs, empty strings, missing and extra fields, wrong types and broken
    bodies (tests/serve_fuzz.py) against the service of every exportable built-in task."""
    import pydicom

    from medmm.deploy.runtime import ExportedModel
    from medmm.deploy.service import create_app
    from tests.serve_fuzz import fuzz_dicom, fuzz_rows, server_errors

    for _, _, export in (tabular, text):
        model = ExportedModel(export)
        statuses = fuzz_rows(create_app(model, max_rows=8), model, max_rows=8)
        assert not server_errors(statuses), (model.task, server_errors(statuses))
        assert statuses["row-short"] == 200 and statuses["max-rows"] == 200 and statuses["extra-field"] == 200
        assert statuses["empty-row"] == 422 and statuses["max-rows-plus-one"] == 422
    data, _, export = image
    model = ExportedModel(export)
    files = Path(pydicom.__file__).parent / "data" / "test_files"  # exact installed names (never a download)
    good = next(p for p in sorted(Path(data).rglob("*")) if p.is_file())
    statuses = fuzz_dicom(create_app(model, max_rows=4), good, {"no-pixels": files / "rtplan.dcm",
                                                                "truncated-mr": files / "MR_truncated.dcm"}, 4)
    assert not server_errors(statuses), server_errors(statuses)
    assert statuses["one-good"] == 200 and statuses["not-dicom"] == 415 and statuses["too-many"] == 422
    with pytest.raises(MedmmError, match="predicts a table"):  # fusion is predicted from files, not served
        create_app(ExportedModel(fusion[2]))
