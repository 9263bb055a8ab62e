"""``Run``: the one way to open a run directory.

Training writes a run directory (``run.json``, ``config.yaml``, ``artifacts/``, ``checkpoints/``);
every command that uses a trained run (predict, evaluate, explain, export, serve, the membership
audit, :func:`medmm.testing.check_task`) reads it through :meth:`Run.open`::

    run = Run.open("runs/ds")            # run.json, the task's spec, the typed saved config
    task = run.task()                    # the task, its artifacts (label map, preprocessor) loaded
    model = run.model(task, "best")      # weights of checkpoints/best, on the CPU
    split, collate = run.predict_data(task, "new.csv")   # read by the task's own reader

Nothing here imports torch until a model is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmm.errors import MedmmError

if TYPE_CHECKING:
    import torch

    from medmm.config import TaskConfig
    from medmm.task import Split, Task, TaskSpec


@dataclass
class Run:
    """A run directory opened for use: its record, the task's spec and its typed config."""

    path: Path
    info: dict[str, Any]
    spec: TaskSpec
    cfg: TaskConfig

    @classmethod
    def open(cls, path: str | Path, *, registry: Any = None, overrides: Sequence[str] = ()) -> Run:
        """Open ``path``: ``run.json`` (a one-line error when it is not a run), the registered task
        (an unknown task names the plugins' tasks) and the saved ``config.yaml`` (+ ``overrides``)."""
        from medmm.config import run_config
        from medmm.rundir import read_info

        path = Path(path)
        info = read_info(path)
        if not isinstance(info.get("task"), str):
            raise MedmmError(f"{path}/run.json names no task")
        if registry is None:
            from medmm.plugins import get_registry

            registry = get_registry()
        spec = registry.get("task", info["task"])
        return cls(path, info, spec, run_config(spec, path, overrides))

    @property
    def task_name(self) -> str:
        """The registered name of the run's task."""
        return str(self.info["task"])

    @property
    def artifacts(self) -> Path:
        """``RUN_DIR/artifacts``: what prediction needs besides weights."""
        return self.path / "artifacts"

    def checkpoint(self, name: str = "best") -> Path:
        """``RUN_DIR/checkpoints/<name>`` (``best`` or ``last``)."""
        return self.path / "checkpoints" / name

    def data_path(self, given: str | Path | None = None) -> Path:
        """``given``, else the data the run was trained on when it is reachable from here."""
        if given is not None:
            return Path(given)
        path = Path(str(self.info.get("data", "")))
        for cand in (path, self.path / path, self.path.parent / path):
            if str(path) and cand.exists():
                return cand
        raise MedmmError(f"the run's data ({path}) is not reachable from here; pass --data with rows (or DICOM "
                         "files) of the same kind")

    def task(self, work_dir: str | Path | None = None, *, artifacts: bool = True) -> Task:
        """A new task object on the run's config; ``artifacts``: its saved artifacts loaded.

        ``work_dir`` is where the task may write reports (default: the run directory); commands
        that rebuild the splits (the membership audit) give a scratch folder.
        """
        task = self.spec.load()(self.cfg, Path(work_dir) if work_dir is not None else self.path)
        if artifacts:
            task.load_artifacts(self.artifacts)
        return task

    def model(self, task: Task, checkpoint: str = "best") -> torch.nn.Module:
        """The task's model with the weights of ``checkpoint`` (a DP run's layers rebuilt), on the CPU."""
        from medmm.engine.checkpoint import load_weights
        from medmm.engine.dp import prepare_model

        model = prepare_model(task.build_model(), self.cfg)  # a DP run's layers (BatchNorm -> GroupNorm, ...)
        load_weights(self.checkpoint(checkpoint), model)
        return model

    def predict_data(self, task: Task, data: str | Path) -> tuple[Split, Any]:
        """``data`` read by the task's own predict reader: ``(split, collate_fn)``."""
        return task.build_predict_data(Path(data))
