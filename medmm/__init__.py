"""medmm: multimodal clinical machine learning with pluggy task plugins."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("medmm")
"""Decorator for plugin hook implementations: ``@medmm.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
