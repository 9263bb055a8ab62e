"""Deprecated alias: :func:`cox_ph_loss` moved to :mod:`medmm.engine.losses` (the one losses module).

``from medmm.losses import cox_ph_loss`` keeps working with a :class:`DeprecationWarning`; import it
from :mod:`medmm.engine.losses` instead. This module will be removed in a later release.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["cox_ph_loss"]


def __getattr__(name: str) -> Any:
    if name == "cox_ph_loss":
        warnings.warn("medmm.losses is deprecated: import cox_ph_loss from medmm.engine.losses",
                      DeprecationWarning, stacklevel=2)
        from medmm.engine.losses import cox_ph_loss

        return cox_ph_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
