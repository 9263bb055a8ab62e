"""What a task tells the explainer: which tensor of a batch to attribute, and how.

A task opts in with :meth:`medmm.task.Task.explain_spec`, returning an :class:`ExplainSpec`;
a task that returns ``None`` gets model-agnostic occlusion over the float tensors of its
batches (:func:`medmm.explain.occlusion.fallback_spec`). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

KINDS = ("tokens", "image", "features", "modalities", "tensor")


@dataclass
class InputSpec:
    """One attributed input of a batch.

    Attributes:
        name: shown in outputs (``text``, ``image``, ``tabular``, ``modalities``...).
        kind: ``tokens`` (integer ids; items are words), ``image`` (``[C, H, W]``; items are grid
            cells), ``features`` (``[D]``; items are source columns), ``modalities`` (a bool
            presence mask ``[M]``; items are modalities) or ``tensor`` (anything else).
        get: ``batch -> tensor [B, ...]``.
        put: ``(batch, tensor) -> batch`` with that tensor replaced (a shallow copy; never in place).
        layer: ``tokens``: the token-embedding layer (Integrated Gradients runs there);
            ``image``: the Grad-CAM layer (last convolutional stage, or a ViT's last block).
        baseline: what "removed" means: a token id (``tokens``), a ``[D]`` vector
            (``features``), ``None`` = each image's mean (``image``), ``0``/``False`` otherwise.
        baseline_doc: the baseline in words, shown in the report.
        tokens: ``tokens``: ids -> token strings (word pieces are merged back into words).
        special_ids: ``tokens``: ids never attributed or removed (``[CLS]``, ``[SEP]``, padding).
        valid: ``tokens``: ``batch -> bool [B, L]`` real positions (the attention mask).
        present: ``batch -> bool [B]``: rows where this input exists (fusion: modality present).
        feature_names: ``features``: the model's columns; ``groups`` maps each source column
            to its model columns (one-hot columns summed back to their source).
        item_names: ``modalities``: one name per mask column.
        patch_grid / prefix_tokens: ``image`` with a ViT layer: tokens -> ``(h, w)`` grid.
        window_overlap: ``tokens``: content tokens a window shares with the previous window of
            its unit (long documents split into windows); shown once when the windows are joined.
        describe: ``features``: one model row ``[D]`` -> each item's value in the source's own units
            (shown beside its attribution), e.g. ``["31.8", "missing", "female"]``.
    """

    name: str
    kind: str
    get: Callable[[Any], torch.Tensor]
    put: Callable[[Any, torch.Tensor], Any]
    layer: Any = None
    baseline: Any = None
    baseline_doc: str = ""
    tokens: Callable[[Sequence[int]], list[str]] | None = None
    special_ids: frozenset[int] = frozenset()
    valid: Callable[[Any], torch.Tensor] | None = None
    present: Callable[[Any], torch.Tensor] | None = None
    feature_names: list[str] | None = None
    groups: dict[str, list[int]] | None = None
    item_names: list[str] | None = None
    patch_grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    window_overlap: int = 0
    describe: Callable[[Any], list[str]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"InputSpec kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class ExplainSpec:
    """The inputs of a task's batches to explain; the first is the headline one.

    For fusion the first input is the modality mask (how much each modality moved the
    prediction), followed by each modality's own input (attributions inside it).
    """

    inputs: list[InputSpec]
    notes: list[str] = field(default_factory=list)
