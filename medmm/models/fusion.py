"""Deprecated alias: the fusion heads moved to :mod:`medmm.models.fusion_heads`.

``from medmm.models.fusion import FusionHead`` (a third-party fusion head's base class, or any other
name below) keeps working with a :class:`DeprecationWarning`; import it from
:mod:`medmm.models.fusion_heads` instead. This module will be removed in a later release.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["AttentionFusion", "ConcatFusion", "FusionHead", "GatedFusion", "LateFusion", "masked_softmax",
           "modality_dropout"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        warnings.warn(f"medmm.models.fusion is deprecated: import {name} from medmm.models.fusion_heads",
                      DeprecationWarning, stacklevel=2)
        from medmm.models import fusion_heads

        return getattr(fusion_heads, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
