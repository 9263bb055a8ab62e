"""A saved, resolved ``config.yaml`` (a run's or a ``medmm export`` folder's) as the task's typed config.

Needs pydantic, PyYAML and the task's config module (``medmm_plugins.<task>.config``), never torch:
the onnxruntime runtime (``medmm[runtime]``) reads an export's config through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medmm.config import TaskConfig, _build, _merge, load_yaml, log, task_defaults

__all__ = ["saved_config"]


def saved_config(spec: Any, path: str | Path) -> TaskConfig:
    """``path`` on the model of task ``spec`` (a ``TaskSpec``): keys this medmm no longer knows are
    dropped with a warning (a config made by another version), keys added since take their defaults,
    every value is validated (a ConfigError names the key)."""
    path = Path(path)
    defaults = task_defaults(spec)
    cls = type(defaults)
    dropped: list[str] = []
    data = _merge(cls, defaults.model_dump(), load_yaml(path), dropped=dropped)
    if dropped:
        log.warning("%s: ignoring keys this medmm version does not know (made by another version): %s",
                    path, ", ".join(dropped))
    return _build(cls, data)  # type: ignore[return-value]
