"""Where ``medmm predict`` keeps the caches of the data it is given (decoded pixels, tokens).

A trained run directory is never written by prediction: the pixel / token caches of *new*
data go to ``--cache-dir`` when given (kept, and reused by the next predict on the same
files), else to the ``data.cache_dir`` the run was trained with when one was set, else to a
temporary folder that is removed when prediction ends.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

__all__ = ["PredictCache", "predict_cache"]


class PredictCache:
    """The cache folder of one prediction; a temporary one is removed by :meth:`close` or when dropped."""

    def __init__(self, path: Path, temporary: bool) -> None:
        self.path, self.temporary = Path(path), temporary
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), True) if temporary else None

    def close(self) -> None:
        """Remove a temporary cache now (a kept one stays)."""
        if self._finalizer is not None:
            self._finalizer()


def predict_cache(cfg: Any, cache_dir: Path | None) -> PredictCache | None:
    """Point the config's ``data.cache_dir`` away from the run directory; ``None`` for tasks without caches.

    ``cfg`` is a :class:`medmm.config.TaskConfig` (or a legacy nested mapping). Keep the returned
    object alive while predicting: a temporary folder is removed when it is closed or
    garbage-collected (so also when prediction fails).
    """
    data = cfg.get("data")  # models and mappings alike
    if data is None or "cache_dir" not in data:
        return None
    if cache_dir is not None:
        data["cache_dir"] = str(Path(cache_dir).expanduser())
        return PredictCache(Path(data["cache_dir"]), temporary=False)
    if data["cache_dir"]:  # the user's shared cache of the training run
        return PredictCache(Path(data["cache_dir"]).expanduser(), temporary=False)
    path = tempfile.mkdtemp(prefix="medmm-predict-cache-")
    data["cache_dir"] = path
    return PredictCache(Path(path), temporary=True)
