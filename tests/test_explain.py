"""medmm explain on planted signal: short real training runs through the CLI, then explain.

Each data set hides one known answer (a keyword, a bright square, a column, a modality); the
explanation must find it, beat random deletion, and lose it when the model's weights are random.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medmm.cli import main
from medmm.errors import MedmmError

KEYWORD = "pneumothorax"
FILLER = ["the", "a", "patient", "chest", "lung", "heart", "normal", "seen", "no", "with", "and", "of", "is",
          "clear", "view", "film", "study", "left", "right", "mild", "small", "stable", "image", "exam", "shows"]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _top_items(out: Path, name: str) -> dict[str, str]:
    """Rank-1 item per unit for one input."""
    return {r["unit"]: r["item"] for r in _rows(out / "attributions.csv") if r["input"] == name and r["rank"] == "1"}


def _faith(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())["faithfulness"][name]


# ------------------------------------------------------------------------------------- text


def _notes(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = [FILLER[k] for k in rng.integers(0, len(FILLER), rng.integers(8, 17))]
        if i % 2:
            words.insert(int(rng.integers(0, len(words) + 1)), KEYWORD)
        rows.append({"id": f"n{seed}-{i}", "text": " ".join(words), "label": "pos" if i % 2 else "neg"})
    return _write_csv(path, rows)


@pytest.mark.slow
def test_text_keyword_is_ranked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, out = tmp_path / "run", tmp_path / "explained"
    code, _, err = _cli(capsys, "run", "text-cls", "--data", str(_notes(tmp_path / "train.csv", 400, 0)),
                        "--out", str(run), "--set", "model.backbone=textcnn", "--set", "data.id_column=id",
                        "--set", "model.embed_dim=32", "--set", "engine.epochs=8", "--set", "engine.lr=0.003",
                        "--set", "engine.bootstrap=0", "--quiet")
    assert code == 0, err
    new = _notes(tmp_path / "new.csv", 30, 1)
    code, printed, err = _cli(capsys, "explain", str(run), "--data", str(new), "--out", str(out), "--limit", "30")
    assert code == 0, err
    assert "integrated gradients" in printed and str(out / "explanations.html") in printed
    top = _top_items(out, "text")
    positives = [r["id"] for r in _rows(new) if r["label"] == "pos"]
    hits = sum(top.get(u) == KEYWORD for u in positives)
    assert hits >= 0.9 * len(positives), (hits, len(positives))
    f = _faith(out, "text")
    assert f["deletion_top"] > f["deletion_random"] + 0.1
    assert f["randomisation_spearman"] < 0.5
    assert f["ig_delta_mean"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lexicon"]["pos"][0][0] == KEYWORD  # the global lexicon puts it first too
    html = (out / "explanations.html").read_text()
    assert KEYWORD in html and "<script" not in html


# ------------------------------------------------------------------------------------ image

SIDE, SQUARE = 64, 16


def _dicom(path: Path, pixels: np.ndarray, uid_seed: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    uid = generate_uid(entropy_srcs=[uid_seed])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.PatientID, ds.PatientName, ds.Modality = f"PAT-{uid_seed}", f"DOE^{uid_seed}", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1500, 3000  # one window for both classes: no brightness shortcut
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _squares(root: Path, n: int, seed: int) -> dict[str, tuple[int, int] | None]:
    """Noise images; every second one ("pos") has a bright square at a random position."""
    rng = np.random.default_rng(seed)
    boxes: dict[str, tuple[int, int] | None] = {}
    for i in range(n):
        img = rng.normal(800, 120, (SIDE, SIDE)).clip(0, 4095)
        box = None
        if i % 2:
            r, c = (int(v) for v in rng.integers(0, SIDE - SQUARE, 2))
            img[r:r + SQUARE, c:c + SQUARE] = 2500 + rng.normal(0, 60, (SQUARE, SQUARE))
            box = (r, c)
        rel = f"{'pos' if box else 'neg'}/img{i:03d}.dcm"
        _dicom(root / rel, img, f"{seed}-{i}")
        boxes[rel] = box
    return boxes


@pytest.mark.slow
def test_gradcam_points_at_the_square(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, out = tmp_path / "run", tmp_path / "explained"
    _squares(tmp_path / "train", 64, 0)
    code, _, err = _cli(capsys, "run", "image-cls", "--data", str(tmp_path / "train"), "--out", str(run),
                        "--set", "model.backbone=test_resnet", "--set", "model.pretrained=none", "--set", "data.size=128",
                        "--set", "data.augment=false", "--set", "model.freeze_bn=true", "--set", "engine.epochs=6",
                        "--set", "engine.lr=0.003", "--set", "engine.monitor=loss", "--set", "engine.bootstrap=0",
                        "--quiet")
    assert code == 0, err
    boxes = _squares(tmp_path / "new", 40, 1)
    code, printed, err = _cli(capsys, "explain", str(run), "--data", str(tmp_path / "new"), "--out", str(out),
                              "--limit", "40")
    assert code == 0, err
    assert "Grad-CAM" in printed
    scale = 128 / SIDE
    tol = 15 * 128 / 224  # the pointing game's 15-pixel tolerance at 224 px, at this size
    hits = n = blank = 0
    for r in _rows(out / "overlays.csv"):
        box = boxes[r["unit"]]
        if box is None:
            continue
        if r["blank"] == "1":  # flagged, no peak, left out of the faithfulness figures (#27)
            blank += 1
            continue
        y0, x0, s = box[0] * scale, box[1] * scale, SQUARE * scale
        row, col = int(r["peak_row"]), int(r["peak_col"])
        hits += (y0 - tol <= row < y0 + s + tol) and (x0 - tol <= col < x0 + s + tol)
        n += 1
        assert (out / r["png"]).stat().st_size < 200_000
    assert n + blank == 20 and blank <= 2 and hits >= 0.8 * n, (hits, n, blank)
    f = _faith(out, "image")
    assert f["deletion_verdict"].startswith("pass: deleting the top 10% of grid cells drops the score")
    assert f["degenerate"] == sum(r["blank"] == "1" for r in _rows(out / "overlays.csv"))
    assert f["deletion_top"] > f["deletion_random"]
    assert f["randomisation_spearman"] < 0.5
    # no patient identifiers anywhere in what explain wrote
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".csv", ".json", ".html"):
            text = path.read_text()
            assert "PAT-" not in text and "DOE^" not in text, path


# ---------------------------------------------------------------------------------- tabular


def _table(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b, c = rng.normal(size=3)
        rows.append({"id": f"p{seed}-{i}", "marker": round(a, 4), "noise1": round(b, 4), "noise2": round(c, 4),
                     "site": ["north", "south", "east"][int(rng.integers(3))],
                     "outcome": "event" if a > 0 else "none"})
    return _write_csv(path, rows)


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tab")
    run = root / "run"
    code = main(["run", "tabular-risk", "--data", str(_table(root / "train.csv", 300, 0)), "--out", str(run),
                 "--set", "data.target=outcome", "--set", "data.id_column=id", "--set", "engine.epochs=30",
                 "--set", "model.backbone=mlp", "--set", "engine.bootstrap=0", "--quiet"])
    assert code == 0
    return run, _table(root / "new.csv", 60, 1)


@pytest.mark.slow
def test_tabular_deciding_column_first(tabular_run: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run, new = tabular_run
    out = tmp_path / "explained"
    code, _, err = _cli(capsys, "explain", str(run), "--data", str(new), "--out", str(out), "--limit", "60")
    assert code == 0, err
    top = _top_items(out, "tabular")
    assert sum(v == "marker" for v in top.values()) >= 0.9 * len(top)
    items = {r["item"] for r in _rows(out / "attributions.csv")}
    assert "site" in items and not any(i.startswith("site=") for i in items)  # one-hot summed back
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global"]["tabular"][0]["item"] == "marker"
    perm = summary["permutation_importance"]
    assert perm[0]["item"] == "marker" and perm[0]["ci_low"] > perm[1]["ci_high"]
    f = _faith(out, "tabular")
    assert f["deletion_top"] > f["deletion_random"]
    # each feature's own value beside its attribution, a bar per attribution, the prediction said plainly (#27)
    page = (out / "explanations.html").read_text()
    first = _rows(new)[0]
    assert "value in this example" in page and f"<td>{float(first['marker']):.4g}</td>" in page
    assert f"<td>{first['site']}</td>" in page and "predicted prediction" not in page
    assert "pass: deleting the top 10% of items" in page and "(rule: pass when" in page
    # Shapley value sampling agrees
    code, _, err = _cli(capsys, "explain", str(run), "--data", str(new), "--out", str(tmp_path / "shap"),
                        "--limit", "10", "--method", "shap")
    assert code == 0, err
    assert sum(v == "marker" for v in _top_items(tmp_path / "shap", "tabular").values()) >= 9


@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(tabular_run: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run, new = tabular_run
    rows = _rows(new)
    for r in rows:
        del r["marker"]
    missing = _write_csv(tmp_path / "missing.csv", rows)
    out = tmp_path / "explained"
    code, _, err = _cli(capsys, "explain", str(run), "--data", str(missing), "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "marker" in err
    assert not out.exists() and not list(tmp_path.glob(".explained*"))
    code, _, err = _cli(capsys, "explain", str(run), "--data", str(new), "--method", "gradcam", "--out", str(out))
    assert code == 2 and "does not apply" in err and not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, _, err = _cli(capsys, "explain", str(run), "--data", str(new), "--out", str(out))
    assert code == 2 and "never overwrites" in err and (out / "mine.txt").read_text() == "keep"


def test_run_without_weights_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"task": "tabular-risk"}))
    data = _table(tmp_path / "d.csv", 5, 0)
    code, _, err = _cli(capsys, "explain", str(run), "--data", str(data))
    assert code == 2 and err.startswith("medmm: error:") and "checkpoint" in err and err.count("\n") == 1
    assert list(run.iterdir()) == [run / "run.json"]


def test_missing_captum_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from medmm.explain.run import require_captum

    real = builtins.__import__

    def fake(name: str, *args: Any, **kw: Any) -> Any:
        if name == "captum" or name.startswith("captum."):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MedmmError, match=r"pip install 'medmm\[explain\]'"):
        require_captum()


# ----------------------------------------------------------------------------------- fusion


def _pairs(path: Path, n: int, seed: int) -> Path:
    """Text (random filler) + two table columns; the label is decided by the column ``marker``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = rng.normal(size=2)
        rows.append({"id": f"f{seed}-{i}", "text": " ".join(rng.choice(FILLER, 10)), "marker": round(a, 4),
                     "noise": round(b, 4), "label": "yes" if a > 0 else "no"})
    return _write_csv(path, rows)


@pytest.mark.slow
def test_fusion_deciding_modality_on_top(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, out = tmp_path / "run", tmp_path / "explained"
    code, _, err = _cli(capsys, "run", "fusion", "--data", str(_pairs(tmp_path / "train.csv", 200, 0)), "--out",
                        str(run), "--set", "data.image_column=null", "--set", "data.tabular_columns=[marker,noise]",
                        "--set", "model.text_backbone=bert-tiny", "--set", "data.id_column=id",
                        "--set", "engine.epochs=10", "--set", "engine.bootstrap=0", "--quiet")
    assert code == 0, err
    code, printed, err = _cli(capsys, "explain", str(run), "--data", str(_pairs(tmp_path / "new.csv", 30, 1)),
                              "--out", str(out), "--limit", "20")
    assert code == 0, err
    assert "modality masking" in printed
    top = _top_items(out, "modalities")
    assert len(top) == 20 and sum(v == "tabular" for v in top.values()) >= 18
    assert sum(v == "marker" for v in _top_items(out, "tabular").values()) >= 18  # and inside the modality
    assert _top_items(out, "text")  # the text modality is explained too (IG through the frozen encoder)
    f = _faith(out, "modalities")
    assert f["deletion_top"] > f["deletion_random"]


# --------------------------------------------------------------------------- fallback (unit)


def test_occlusion_fallback_finds_the_only_used_feature() -> None:
    """A task without explain_spec: occlusion over its float input ranks the one feature its model reads."""
    from medmm.explain.core import Scorer, ablate
    from medmm.explain.occlusion import fallback_spec, tensor_items
    from medmm.explain.tabular import feature_items
    from tests.toy_task import ToyTask, make_cfg

    task = ToyTask(make_cfg(), Path("."))
    model = torch.nn.Linear(30, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 7] = 3.0
    torch.manual_seed(0)
    batch = (torch.randn(8, 30), torch.zeros(8), torch.arange(8))
    espec = fallback_spec("toy", batch)
    s = espec.inputs[0]
    assert s.kind == "features" and "occlusion" in espec.notes[0]
    items = feature_items(s, batch)
    scorer = Scorer(task, model)
    target = scorer.predicted(scorer.output(batch))
    scores = ablate(scorer, s, batch, items, target)
    assert all(int(np.argmax(sc)) == 7 for sc in scores)
    assert len(tensor_items(s, batch)[0]) == 30


def test_fallback_without_float_input_is_a_clear_error() -> None:
    from medmm.explain.occlusion import fallback_spec

    with pytest.raises(MedmmError, match="no explain_spec"):
        fallback_spec("ids-only", {"input_ids": torch.zeros(2, 5, dtype=torch.long), "index": torch.arange(2)})


def test_word_pieces_merge_into_words() -> None:
    from medmm.explain.text import join_windows, merge_pieces

    assert merge_pieces(["pneu", "##mo", "##thorax", "seen", "."]) == [("pneumothorax", [0, 1, 2]), ("seen", [3]),
                                                                        (".", [4])]
    assert [w for w, _ in merge_pieces(["\u2581left", "\u2581pleu", "ral"])] == ["left", "pleural"]
    windows = [[("a", 1.0, 1), ("b", 2.0, 1), ("c", 3.0, 1)], [("b", 9.0, 1), ("c", 9.0, 1), ("d", 4.0, 1)]]
    assert join_windows(windows, overlap=2) == [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)]


def test_deletion_replaces_only_the_chosen_positions() -> None:
    from medmm.explain.core import delete, grid_items
    from medmm.explain.spec import InputSpec

    s = InputSpec("image", "image", get=lambda b: b, put=lambda b, x: x)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    items = grid_items((1, 4, 4), (2, 2))
    y = delete(s, x, [items.index[0], None])
    assert torch.equal(y[1], x[1])
    assert torch.all(y[0, 0, :2, :2] == x[0].mean()) and torch.equal(y[0, 0, 2:], x[0, 0, 2:])


def test_text_is_batched_in_length_order_and_other_inputs_as_given() -> None:
    from medmm.data.text.tokenize import pad_collate
    from medmm.explain.run import _explain_loader
    from medmm.explain.spec import ExplainSpec, InputSpec

    lengths = [9, 2, 7, 3, 8, 1, 6, 4, 5, 10]
    data = [{"input_ids": list(range(1, n + 1)), "index": i} for i, n in enumerate(lengths)]
    positions = list(range(len(data)))
    tokens = ExplainSpec([InputSpec("text", "tokens", get=lambda b: b, put=lambda b, x: x)])
    batches = [b["index"].tolist() for b in _explain_loader(data, positions, tokens, 4, pad_collate, 0)]
    assert sorted(i for b in batches for i in b) == positions  # every example once
    assert sorted(batches) == [[0, 9], [5, 1, 3, 7], [8, 6, 2, 4]]  # padded to 4, 6 and 10, not 9, 8, 10
    image = ExplainSpec([InputSpec("image", "image", get=lambda b: b, put=lambda b, x: x)])
    assert [b["index"].tolist() for b in _explain_loader(data, positions, image, 4, pad_collate, 0)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.slow  # timm import + a ViT forward: seconds, not a fast unit test
def test_vit_gradcam_maps_tokens_to_the_patch_grid() -> None:
    """ViT: Grad-CAM on the last block's patch tokens, [CLS] dropped, reshaped to the 4 x 4 grid."""
    import timm

    from medmm.explain.core import Scorer
    from medmm.explain.image import gradcam, image_input

    class Stub:
        problem = "binary"

        def step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
            return {"output": model(batch[0]).squeeze(-1), "index": batch[1]}

    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=0, in_chans=1, img_size=64, patch_size=16)
    model = torch.nn.Sequential(vit, torch.nn.Linear(vit.num_features, 1)).eval()
    spec = image_input("image", vit, get=lambda b: b[0], put=lambda b, x: (x, *b[1:]))
    assert spec.patch_grid == (4, 4) and spec.prefix_tokens == vit.num_prefix_tokens
    batch = (torch.rand(3, 1, 64, 64), torch.arange(3))
    maps = gradcam(Scorer(Stub(), model), spec, batch, torch.ones(3, dtype=torch.long))
    assert maps.shape == (3, 4, 4) and torch.all(maps >= 0)
