"""Images: Grad-CAM on the last convolutional stage (or a ViT's last block on the patch grid).

Maps are computed on the tensor the model was given, i.e. the windowed pixels (VOI LUT /
window, MONOCHROME1 inverted) of the instance the prediction used, and drawn over exactly
those pixels. Overlays carry no text: nothing from the header is burned in.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmm.explain.core import Attribution, Items, Scorer, grid_items
from medmm.explain.spec import InputSpec

DEFAULT_GRID = (8, 8)
"""Cells of an image for methods without a native grid (occlusion, IG)."""


def gradcam(scorer: Scorer, spec: InputSpec, batch: Any, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps ``[B, h, w]`` (ReLU of channel-weighted activations) at ``spec.layer``."""
    x = spec.get(batch)
    forward = scorer.forward_of(spec, batch, target)
    if spec.patch_grid is None:
        from captum.attr import LayerGradCam

        cam = LayerGradCam(forward, spec.layer).attribute(x, relu_attributions=True).detach().float()[:, 0]
        return _in_place(cam, spec, batch, x.shape[0])
    # ViT: the block's tokens, prefix ([CLS], registers) dropped, reshaped to the patch grid
    store: dict[str, torch.Tensor] = {}

    def hook(_m: Any, _i: Any, out: Any) -> None:
        out = out[0] if isinstance(out, tuple) else out
        store["act"] = out

    handle = spec.layer.register_forward_hook(hook)
    try:
        y = forward(x)
    finally:
        handle.remove()
    act = store["act"]
    grad = torch.autograd.grad(y.sum(), act)[0]
    h, w = spec.patch_grid
    act = act[:, spec.prefix_tokens:].reshape(act.shape[0], h, w, -1)
    grad = grad[:, spec.prefix_tokens:].reshape(grad.shape[0], h, w, -1)
    weights = grad.mean(dim=(1, 2), keepdim=True)
    return _in_place(F.relu((weights * act).sum(-1)).detach().float(), spec, batch, x.shape[0])


def _in_place(maps: torch.Tensor, spec: InputSpec, batch: Any, n: int) -> torch.Tensor:
    """Maps of the rows an encoder saw (fusion: images present) back at their batch rows."""
    if maps.shape[0] == n or spec.present is None:
        return maps
    full = maps.new_zeros((n, *maps.shape[1:]))
    full[spec.present(batch).bool()] = maps
    return full


def pixel_ig(scorer: Scorer, spec: InputSpec, batch: Any, target: torch.Tensor, *, steps: int,
             internal_batch_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Integrated Gradients on the pixels against each image's mean: ``([B, H, W], delta)``."""
    from captum.attr import IntegratedGradients

    x = spec.get(batch)
    base = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True).expand_as(x).contiguous()
    attr, delta = IntegratedGradients(scorer.forward_of(spec, batch, target)).attribute(
        x, baselines=base, n_steps=steps, internal_batch_size=max(x.shape[0], internal_batch_size),
        return_convergence_delta=True)
    return attr.detach().float().sum(1), delta.detach().abs().cpu().numpy()


def image_items(spec: InputSpec, batch: Any, grid: tuple[int, int]) -> list[Items | None]:
    x = spec.get(batch)
    present = None if spec.present is None else spec.present(batch).cpu().numpy()
    items = grid_items(tuple(x.shape[1:]), grid)
    return [None if present is not None and not present[i] else items for i in range(x.shape[0])]


def from_maps(maps: torch.Tensor, items: Sequence[Items | None], size: tuple[int, int],
              pooled: bool, delta: np.ndarray | None = None) -> list[Attribution | None]:
    """Cell scores from per-example maps: a native ``[h, w]`` grid (``pooled=False``) or a
    per-pixel map summed over each cell (``pooled=True``); ``extra['cam']`` is the map at the
    image's size and ``extra['peak']`` its maximum ``(row, col)``."""
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] if not pooled else maps
    out: list[Attribution | None] = []
    for i, it in enumerate(items):
        if it is None:
            out.append(None)
            continue
        m = maps[i].cpu().numpy()
        if pooled:
            flat = m.ravel()
            scores = np.array([flat[idx % flat.size].sum() for idx in it.index])
        else:
            scores = m.ravel().astype(np.float64)
        u = up[i].cpu().numpy()
        peak = np.unravel_index(int(np.argmax(u)), u.shape)
        extra: dict[str, Any] = {"cam": u, "peak": (int(peak[0]), int(peak[1]))}
        if delta is not None:
            extra["delta"] = float(delta[i])
        out.append(Attribution(it, scores, extra))
    return out


def overlay_png(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> bytes:
    """PNG bytes: the model's input ``[C, H, W]`` in [0, 1] (grey or RGB) under a heat map."""
    from matplotlib import colormaps
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(img[:1], 3, axis=0) if img.shape[0] != 3 else img
    rgb = np.clip(rgb.transpose(1, 2, 0), 0, 1)
    heat = np.clip(cam, 0, None)
    heat = heat / heat.max() if heat.max() > 0 else heat
    colour = colormaps["jet"](heat)[..., :3]
    weight = alpha * heat[..., None] ** 0.5
    blend = (1 - weight) * rgb + weight * colour
    picture = Image.fromarray((blend * 255).round().astype(np.uint8))
    buf = io.BytesIO()
    _with_colour_bar(picture, colormaps["jet"]).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _with_colour_bar(picture: Any, cmap: Any) -> Any:
    """The overlay with its colour scale at the right: the map's maximum at the top, 0 at the bottom."""
    from PIL import Image, ImageDraw

    h = picture.height
    bar_w, pad, text_w = max(6, h // 40), 4, 30
    canvas = Image.new("RGB", (picture.width + pad + bar_w + text_w, h), "white")
    canvas.paste(picture, (0, 0))
    ramp = np.linspace(1.0, 0.0, h)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray((cmap(ramp)[..., :3] * 255).astype(np.uint8)), (picture.width + pad, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.width + pad + bar_w + 2
    draw.text((x, 0), "max", fill="black")
    draw.text((x, h - 12), "0", fill="black")
    return canvas


def image_input(name: str, timm_model: Any, *, get: Any, put: Any, present: Any = None) -> InputSpec:
    """The :class:`InputSpec` of ``[B, C, H, W]`` pixels fed to a timm model: Grad-CAM at its last
    feature stage (``feature_info``), or for a ViT at its last block's patch tokens."""
    grid, prefix = None, 0
    if hasattr(timm_model, "patch_embed") and hasattr(timm_model, "blocks"):
        layer = timm_model.blocks[-1]
        grid = tuple(int(v) for v in timm_model.patch_embed.grid_size)
        prefix = int(getattr(timm_model, "num_prefix_tokens", 1))
    else:
        info = getattr(timm_model, "feature_info", None)
        module = info[-1]["module"] if info else None
        layer = timm_model.get_submodule(module) if module else None
    return InputSpec(name=name, kind="image", get=get, put=put, layer=layer, baseline=None,
                     baseline_doc="each image's mean value", present=present, patch_grid=grid, prefix_tokens=prefix)
