"""text-cls end to end through the public CLI: train, outputs, chunk pooling, predict, baselines.

The BERT runs use a 2-layer 64-wide BERT (``model.backbone=bert-tiny``) with a tokenizer built in
the test, so nothing here needs downloaded weights. The TextCNN check uses 400 real radiology
reports when torchxrayvision is installed, a learnable synthetic variant otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAS_TXV = importlib.util.find_spec("torchxrayvision") is not None
FAST = ["--quiet", "--set", "engine.device=cpu", "--set", "engine.bootstrap=50",
        "--set", "engine.batch_size=16", "--set", "engine.eval_batch_size=32"]

# --------------------------------------------------------------------------- synthetic notes

FINDINGS = {
    "normal": ["the lungs are clear", "heart size is normal", "no focal consolidation",
               "no acute cardiopulmonary process"],
    "effusion": ["small left pleural effusion", "blunting of the costophrenic angle",
                 "layering fluid at the right base"],
    "pneumonia": ["right lower lobe consolidation", "airspace opacity concerning for pneumonia",
                  "patchy infiltrate in the lingula"],
    "cardiomegaly": ["the cardiac silhouette is enlarged", "moderate cardiomegaly"],
}
FILLER = ["portable frontal view of the chest", "comparison is made with the prior study",
          "the mediastinal contours are unremarkable", "the osseous structures are intact",
          "lines and tubes are unchanged", "the patient is rotated"]
WORDS = sorted({w for s in [*FILLER, *(x for v in FINDINGS.values() for x in v)] for w in s.split()})


def note(rng: random.Random, labels: list[str], long: bool = False) -> str:
    """A report-like note: filler sentences with one finding sentence per label, anywhere."""
    sentences = rng.sample(FILLER, rng.randint(1, 3)) * (4 if long else 1)
    for label in labels:
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(FINDINGS[label]))
    return ". ".join(sentences) + "."


def synthetic_notes(n: int, classes: list[str], seed: int = 0) -> pd.DataFrame:
    """Single-label notes, several per patient, about a quarter of them long."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = classes[i % len(classes)]
        rows.append({"note_id": f"n{i:04d}", "patient": f"p{i // 3:03d}", "label": label,
                     "text": note(rng, [label], long=rng.random() < 0.25)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmm.models.text import build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(folder, WORDS)
    return folder


def _bert_tiny(tokenizer: Path) -> list[str]:
    return ["--set", "model.backbone=bert-tiny", "--set", f"model.name_or_path={tokenizer}"]


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _val_metric(run: Path, name: str) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(r[name] for r in rows if r["split"] == "val")


# --------------------------------------------------------------------------- the main run


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> tuple[Path, pd.DataFrame]:
    """Multi-class notes, long ones split into windows, patients kept in one split."""
    tmp = tmp_path_factory.mktemp("chunked")
    df = synthetic_notes(180, ["normal", "effusion", "pneumonia"])
    df.loc[5, "text"] = "   "  # skipped with a reason, never a crash
    df.to_csv(tmp / "notes.csv", index=False)
    run = tmp / "run"
    proc = cli("run", "text-cls", "--data", str(tmp / "notes.csv"), "--out", str(run), *FAST,
                   *_bert_tiny(tiny_tokenizer), "--set", "data.id_column=note_id",
                   "--set", "data.group_column=patient", "--set", "data.long_text=chunk",
                   "--set", "data.max_length=24", "--set", "data.stride=4",
                   "--set", "engine.epochs=2", "--set", "engine.lr=0.002")
    _ok(proc)
    return run, df


@pytest.mark.slow
def test_run_outputs_and_chunk_pooling(chunked_run: tuple[Path, pd.DataFrame]) -> None:
    run, df = chunked_run
    for name in ("config.yaml", "metrics.jsonl", "predictions.csv", "report.html", "model_card.md",
                 "splits.csv", "checkpoints/best/model.safetensors", "artifacts/text_cls.json",
                 "artifacts/encoder/config.json", "artifacts/encoder/tokenizer.json"):
        assert (run / name).exists(), name

    skipped = pd.read_csv(run / "skipped.csv", dtype=str)
    assert skipped.to_dict("records") == [{"id": "n0005", "reason": "empty text"}]

    splits = pd.read_csv(run / "splits.csv", dtype=str)
    assert len(splits) == len(df) - 1 and set(splits["split"]) == {"train", "val", "test"}
    patient = dict(zip(df["note_id"], df["patient"]))
    per_patient = splits.assign(patient=splits["id"].map(patient)).groupby("patient")["split"].nunique()
    assert per_patient.max() == 1  # no patient in two splits

    pred = pd.read_csv(run / "predictions.csv", dtype={"id": str})
    test_ids = set(splits.loc[splits["split"] == "test", "id"])
    assert list(pred.columns) == ["id", "prob_effusion", "prob_normal", "prob_pneumonia", "predicted",
                                  "decision_effusion", "decision_normal", "decision_pneumonia",  # #16
                                  "set_90", "abstain", "true"]  # the conformal set and refer flag (#32)
    assert len(pred) == len(test_ids) and set(pred["id"]) == test_ids  # windows pooled per document
    np.testing.assert_allclose(pred.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
    assert (pred["true"] == df.set_index("note_id").loc[pred["id"], "label"].to_numpy()).all()
    assert "windows" in (run / "model_card.md").read_text()  # more windows than documents

    card = json.loads((run / "artifacts" / "text_cls.json").read_text())
    assert card["problem"] == "multiclass" and card["label_names"] == ["effusion", "normal", "pneumonia"]


@pytest.mark.slow
def test_streamed_predict_is_the_one_pass_file(chunked_run: tuple[Path, pd.DataFrame], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``medmm predict`` of a CSV of notes streams (#30): long notes split into windows, an empty note
    and a repeated id; blocks of whole length-sorted windows of evaluation batches that end between
    documents, the whole table never read at once, and the bytes of one pass (``--shard 0/1`` reads the
    table whole), with labels (metrics) and without; one missing label means no metrics, as in one pass."""
    from click.testing import CliRunner
    from medmm_plugins.text_cls.task import TextClsTask

    from medmm import batching
    from medmm import cli as cli_mod
    from medmm.data import readers

    # evaluation batches are length-sorted inside windows of 16 batches (512 windows here, more than
    # this table has); 2 batches (64 windows) give several blocks, in both paths
    monkeypatch.setattr(batching, "WINDOW_BATCHES", 2)
    run, df = chunked_run
    df = df.assign(site="a")  # another shape than the run's table (the same shape is read whole by the
    df.loc[5, "text"] = "   "  # training-rows check, docs/scale.md)
    df.loc[9, "note_id"] = df.loc[8, "note_id"]
    data, unlabelled, partly = tmp_path / "notes.csv", tmp_path / "unlabelled.csv", tmp_path / "partly.csv"
    df.to_csv(data, index=False)
    df.drop(columns=["label"]).to_csv(unlabelled, index=False)
    df.assign(label=df.label.where(df.index != 40)).to_csv(partly, index=False)
    runner = CliRunner()

    def predict(src: Path, out: Path, *extra: str) -> str:
        res = runner.invoke(cli_mod.make_cli(), ["predict", str(run), "--data", str(src), "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        return res.output

    reference = {src: tmp_path / f"{src.stem}-one.csv" for src in (data, unlabelled, partly)}
    for src, out in reference.items():
        predict(src, out, "--shard", "0/1")  # one pass: the whole table read by build_predict_data

    # --shard i/3: each shard predicts the whole length windows its block touches and writes its block,
    # so the three files concatenate to the one pass's bytes (blocks end inside windows here)
    parts = [tmp_path / f"shard{i}.csv" for i in range(3)]
    for i, part in enumerate(parts):
        predict(data, part, "--shard", f"{i}/3")
    texts = [p.read_text().splitlines(keepends=True) for p in parts]
    assert all(len(t) > 1 for t in texts)
    assert "".join(texts[0] + texts[1][1:] + texts[2][1:]) == reference[data].read_text()

    blocks: list[tuple[int, bool]] = []  # (windows, ends between documents)
    original = TextClsTask.predict_chunks

    def counted(self: TextClsTask, path: Path, rows: int):  # type: ignore[no-untyped-def]
        for split, collate in original(self, path, rows):
            units = split.units
            blocks.append((len(units), len(set(units)) < len(units)))
            yield split, collate

    def no_whole_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("streaming predict read the whole table")

    monkeypatch.setattr(TextClsTask, "predict_chunks", counted)
    monkeypatch.setattr(readers, "read_table", no_whole_read)
    monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", "5")  # rounded up to one length window
    for src, one in reference.items():
        out = tmp_path / f"{src.stem}-streamed.csv"
        blocks.clear()
        printed = predict(src, out)
        assert out.read_bytes() == one.read_bytes()
        assert "178 predictions" in printed
        assert ("auroc" in printed) == (src == data)  # metrics only when every predicted row has a label
        windows = [n for n, _ in blocks]
        assert len(blocks) > 2 and all(n % 64 == 0 for n in windows[:-1])
        assert any(several for _, several in blocks)  # documents of several windows, never cut between blocks
    first = pd.read_csv(reference[data])
    assert len(first) == 178 and first["id"].is_unique


@pytest.mark.slow
def test_predict_from_the_run_directory_alone(chunked_run: tuple[Path, pd.DataFrame], tiny_tokenizer: Path,
                                              tmp_path: Path) -> None:
    run, df = chunked_run
    new = tmp_path / "new.csv"
    df[["note_id", "text"]].to_csv(new, index=False)  # no label column
    # The tokenizer folder the run was trained from is gone: everything comes from the run dir.
    hidden = tiny_tokenizer.with_name(tiny_tokenizer.name + "-moved")
    tiny_tokenizer.rename(hidden)
    try:
        proc = cli("predict", str(run), "--data", str(new), "--out", str(tmp_path / "p.csv"))
    finally:
        hidden.rename(tiny_tokenizer)
    _ok(proc)
    got = pd.read_csv(tmp_path / "p.csv", dtype={"id": str}).set_index("id")
    assert len(got) == len(df) - 1 and "true" not in got.columns and "text" not in got.columns
    ref = pd.read_csv(run / "predictions.csv", dtype={"id": str}).set_index("id")
    cols = [c for c in ref.columns if c.startswith("prob_")]
    np.testing.assert_allclose(got.loc[ref.index, cols].to_numpy(), ref[cols].to_numpy(), atol=2e-5)
    assert (got.loc[ref.index, "predicted"] == ref["predicted"]).all()

    labelled = tmp_path / "labelled.csv"
    df.to_csv(labelled, index=False)  # with labels: predict also reports metrics
    proc = cli("predict", str(run), "--data", str(labelled), "--out", str(tmp_path / "q.csv"))
    _ok(proc)
    assert "accuracy" in proc.stdout and "true" in pd.read_csv(tmp_path / "q.csv").columns


# --------------------------------------------------------------------------- baselines, multi-label


def _binary_reports(path: Path, n: int) -> Path:
    """``n`` real reports (normal / abnormal), or a synthetic learnable stand-in."""
    if HAS_TXV:
        from medmm.demos.reports import build_reports_csv

        df = pd.read_csv(build_reports_csv(path.with_name("all-reports.csv")), dtype={"report_id": str})
        df = df.sample(n, random_state=0)[["report_id", "text", "label"]]
    else:
        df = synthetic_notes(n, ["normal", "pneumonia"]).rename(columns={"note_id": "report_id"})
    df.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_textcnn_baseline_learns(tmp_path: Path) -> None:
    data = _binary_reports(tmp_path / "reports.csv", 400)
    run = tmp_path / "cnn"
    proc = cli("run", "text-cls", "--data", str(data), "--out", str(run), *FAST,
                   "--set", "model.backbone=textcnn", "--set", "data.id_column=report_id",
                   "--set", "model.vocab_min_freq=1", "--set", "engine.lr=0.001", "--set", "engine.epochs=6",
                   "--set", "engine.patience=0")
    _ok(proc)
    assert _val_metric(run, "auroc") > 0.8
    assert (run / "artifacts" / "vocab.json").exists() and not (run / "artifacts" / "encoder").exists()
    proc = cli("predict", str(run), "--data", str(data), "--out", str(tmp_path / "p.csv"))
    _ok(proc)
    assert len(pd.read_csv(tmp_path / "p.csv")) == 400


@pytest.mark.slow
def test_multilabel_with_a_delimited_label_column(tmp_path: Path) -> None:
    rng = random.Random(1)
    names = ["cardiomegaly", "effusion", "pneumonia"]
    rows = []
    for i in range(150):
        labels = sorted(rng.sample(names, rng.randint(1, 2)))
        rows.append({"text": note(rng, labels), "findings": ";".join(labels)})
    pd.DataFrame(rows).to_csv(tmp_path / "ml.csv", index=False)
    run = tmp_path / "ml"
    proc = cli("run", "text-cls", "--data", str(tmp_path / "ml.csv"), "--out", str(run), *FAST,
                   "--set", "model.backbone=bigru", "--set", "data.label_column=findings",
                   "--set", "data.label_delimiter=;", "--set", "model.vocab_min_freq=1",
                   "--set", "engine.lr=0.003", "--set", "engine.epochs=4")
    _ok(proc)
    pred = pd.read_csv(run / "predictions.csv")
    assert [c for c in pred.columns if c.startswith("prob_")] == [f"prob_{n}" for n in names]
    assert pred["true"].str.split(";").map(len).between(1, 2).all()
    assert 0 <= _val_metric(run, "auroc") <= 1


# --------------------------------------------------------------------------- in-process checks


def _task(tmp_path: Path, df: pd.DataFrame, tokenizer: Path, **data: object):
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config
    from medmm_plugins.text_cls.task import TextClsTask

    df.to_csv(tmp_path / "d.csv", index=False)
    spec = get_registry().get("task", "text-cls")
    sets = ["model.backbone=bert-tiny", f"model.name_or_path={tokenizer}", "model.encoder_lr_scale=0.1",
            *(f"data.{k}={v}" for k, v in data.items())]
    task = TextClsTask(resolved_config(spec, None, sets), tmp_path)
    return task, task.build_data(tmp_path / "d.csv")


@pytest.mark.slow
def test_user_split_lengths_and_lr_groups(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from medmm.engine.schedule import build_optimizer

    df = synthetic_notes(40, ["normal", "effusion"])
    df["fold"] = ["train"] * 30 + ["valid"] * 5 + ["test"] * 5
    task, bundle = _task(tmp_path, df, tiny_tokenizer, split_column="fold", id_column="note_id")
    assert task.problem == "binary" and task.label_names == ["effusion", "normal"]
    assert bundle.test.units == [f"n{i:04d}" for i in range(35, 40)]
    assert len(bundle.lengths) == len(bundle.train.dataset) == 30
    assert bundle.lengths == [len(bundle.train.dataset[i]["input_ids"]) for i in range(30)]
    val_lengths = [len(bundle.val.dataset[i]["input_ids"]) for i in range(5)]
    assert val_lengths == sorted(val_lengths)  # evaluated in length order: little padding

    model = task.build_model()
    assert model.head.out_features == 1  # binary: one logit
    opt = build_optimizer(model, 1e-3, 0.01, task.param_groups(model))
    lrs = {g["name"].split("/")[0]: g["lr"] for g in opt.param_groups}
    assert lrs == {"encoder": pytest.approx(1e-4), "head": pytest.approx(1e-3)}
    batch = bundle.collate_fn([bundle.train.dataset[i] for i in range(4)])
    out = task.step(model, batch)
    assert out["output"].shape == (4, 1) and out["target"].tolist() == [1, 0, 1, 0]


def test_bad_inputs_are_clear_errors(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from medmm.errors import DataError

    df = synthetic_notes(30, ["normal", "effusion"])
    df["fold"] = ["train", "val", "test"] * 10  # patients of three notes span every split
    with pytest.raises(DataError, match="both"):
        _task(tmp_path, df, tiny_tokenizer, split_column="fold", group_column="patient")
    with pytest.raises(DataError, match="at least two classes"):
        _task(tmp_path, df.assign(label="normal"), tiny_tokenizer)
    with pytest.raises(DataError, match="missing column"):
        _task(tmp_path, df, tiny_tokenizer, text_column="report")
