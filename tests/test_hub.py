"""Opt-in hub weights (medmm.models.hub) from a Hugging Face cache this test fills itself; never the network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(cache: Path, repo_id: str) -> Path:
    """The hub cache layout: models--org--name/{refs/main, snapshots/<commit>/}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _run(code: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from medmm.models.text import load_tokenizer

    root = tmp_path_factory.mktemp("hf-cache")
    snap = _snapshot(root, "tiny-org/tiny-bert")
    torch.manual_seed(0)
    tok = load_tokenizer("minilm-l6")
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(snap, safe_serialization=True)
    tok.save_pretrained(snap)
    hub_id = timm.models.get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.nn.init.constant_(vit.patch_embed.proj.bias, 0.125)  # a planted value to find again
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(_snapshot(root, hub_id) / "model.safetensors"))
    return root


@pytest.mark.slow
def test_text_and_image_hub_weights_resolve_offline_from_the_cache(cache: Path) -> None:
    out = _run("""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        from medmm.models.image import create_image_backbone
        from medmm.models.text import load_hf_encoder
        enc, tok = load_hf_encoder("hf-hub", name_or_path="tiny-org/tiny-bert")
        print("hidden", enc.model.config.hidden_size, "vocab", len(tok))
        bb = create_image_backbone("vit_tiny_patch16_224", in_chans=3, pretrained="hub")
        print("bias", float(bb.model.patch_embed.proj.bias.mean()), bb.weights_source)
    """, cache)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "hidden 32" in out.stdout and "bias 0.125" in out.stdout
    assert "pretrained weights from the Hugging Face hub" in out.stdout + out.stderr  # announced
    assert "offline, from the cache" in out.stdout + out.stderr


@pytest.mark.slow
def test_a_hub_id_missing_from_the_cache_is_one_clear_error(tmp_path: Path) -> None:
    out = _run("""
        from medmm.errors import ConfigError
        from medmm.models.hub import hub_text_folder
        try:
            hub_text_folder("nobody/nothing")
        except ConfigError as exc:
            print("ERR", exc)
    """, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERR hub model 'nobody/nothing': HF_HUB_OFFLINE=1 and it is not in the cache" in out.stdout
