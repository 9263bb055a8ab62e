"""The task contract: a cheap :class:`TaskSpec` to register, and the :class:`Task` it builds.

Registering a task imports nothing heavy; :meth:`TaskSpec.load` imports the implementation
only when the task runs. The engine drives every task through the same few methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmm.registry import resolve_object

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

PROBLEMS = ("binary", "multiclass", "multilabel", "regression", "survival")


@dataclass(frozen=True)
class TaskSpec:
    """What a plugin registers for a task.

    Attributes:
        name: CLI name, e.g. ``image-cls``.
        modality: ``text``, ``image``, ``tabular`` or ``multimodal``.
        summary: one line for ``medmm tasks``.
        config: path of the task's YAML: with ``config_model``, only the values that differ from the
            models' defaults (e.g. engine epochs); without it (legacy), every default: the YAML is
            then the schema (each key takes its default's type).
        impl: the :class:`Task` subclass, or a lazy ``"module:Class"`` reference.
        choices: legacy (YAML-schema tasks): allowed values per dotted key, e.g. ``{"model.pooling": [...]}``.
        demo: optional ``"module:function"`` ``(out_dir: Path) -> (data_path, overrides)``
            that builds a bundled demo data set for ``medmm demo NAME``.
        ranges: legacy: allowed intervals of numeric keys, e.g. ``{"data.size": Range(1)}``
            (:class:`medmm.config.Range`).
        config_model: the task's root config model, a :class:`medmm.config.TaskConfig` subclass
            that narrows ``data`` / ``model`` (Literal choices, Field ranges), or a lazy
            ``"module:Class"`` reference (kept lazy: registering a task imports nothing heavy).
    """

    name: str
    modality: str
    summary: str
    config: str | Path
    impl: str | Callable[..., Task]
    choices: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    demo: str | Callable[..., Any] | None = None
    ranges: Mapping[str, Any] = field(default_factory=dict)
    config_model: str | type | None = None

    def load(self) -> type[Task]:
        """Import the implementation class."""
        return resolve_object(self.impl)


@dataclass
class Split:
    """One split of a data set.

    ``units`` maps each example to the unit that is predicted and scored (a row id, a series
    UID, a document): examples of one unit are pooled (mean probability) before metrics, which
    covers long documents split into windows and instance -> series/study aggregation.
    """

    dataset: Dataset
    units: list[str]
    targets: Any = None  # per-example targets (numpy) for class weights / weighted sampling
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason), reported by predict


@dataclass
class DataBundle:
    """The splits a task built, and how to batch them."""

    train: Split | None
    val: Split | None
    test: Split | None
    collate_fn: Callable[..., Any] | None = None
    # optional: (lengths) for length-bucketed batching of the train split
    lengths: Sequence[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaselineInputs:
    """Raw inputs of one split for the classic baseline (:mod:`medmm.classic`), one row per example.

    ``units`` and ``targets`` follow :class:`Split` (examples of one unit are pooled). Each
    modality the task has is given: ``text`` (documents), ``tabular`` (the task's fitted
    preprocessing, ``[N, F]``), ``image`` (pixels ``[N, C, H, W]`` in [0, 1], any size).
    ``present`` marks, per modality, the rows that have it (default: all).
    """

    units: list[str]
    targets: Any = None
    text: list[str] | None = None
    tabular: Any = None
    image: Any = None
    present: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class of task implementations; the engine calls these methods.

    Subclasses set :attr:`problem` (one of :data:`PROBLEMS`) and :attr:`label_names` in
    :meth:`build_data` (or :meth:`load_artifacts` for prediction).
    """

    problem: str = "multiclass"
    label_names: list[str] | None = None

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        from medmm.config import as_config

        self.cfg = as_config(cfg)  # a medmm.config.TaskConfig (a legacy nested dict is turned into one)
        self.run_dir = run_dir

    # -- training -------------------------------------------------------------------------
    def build_data(self, data_path: Path) -> DataBundle:
        """Read and split the data; write reports (``skipped.csv``, splits) into ``run_dir``."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        """The model, on the CPU; the engine moves it to the device."""
        raise NotImplementedError

    def step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """One forward pass: ``{"output", "target", "index"}`` and optionally ``"loss"``.

        ``output`` is logits (classification), a prediction (regression) or a log hazard
        (survival; ``target`` is then ``[N, 2]`` time, event). ``index`` is each example's
        position in its split. Without ``"loss"`` the engine applies the problem's loss.
        """
        raise NotImplementedError

    def param_groups(self, model: torch.nn.Module) -> list[tuple[str, list[Any], float]] | None:
        """Optional ``(group name, parameters, lr multiplier)``, e.g. encoder vs head."""
        return None

    def report_sections(self, evaluate: Callable[[], dict[str, float]]) -> list[tuple[str, str]]:
        """Optional extra report sections ``(heading, html)`` from the trained model.

        ``evaluate()`` returns the test (or val) metrics under the task's current state, so a
        task can change how it feeds the model (e.g. mask a modality) and evaluate again.
        Called on every rank under torchrun; only rank 0's sections are written.
        """
        return []

    def baseline_inputs(self, split: str) -> BaselineInputs | None:
        """Optional raw inputs of ``train`` / ``val`` / ``test`` (from :meth:`build_data`) or
        ``predict`` (from the last :meth:`build_predict_data`) for the classic baseline fitted
        beside every run; ``None`` (the default) means the task has no classic baseline."""
        return None

    # -- persistence for ``medmm predict`` -------------------------------------------------
    def save_artifacts(self, directory: Path) -> None:
        """Write what prediction needs besides weights (label map, tokenizer, preprocessor)."""

    def load_artifacts(self, directory: Path) -> None:
        """Read what :meth:`save_artifacts` wrote."""

    def build_predict_data(self, data_path: Path) -> tuple[Split, Callable[..., Any] | None]:
        """The examples to predict (targets may be absent) and their collate function."""
        raise NotImplementedError

    # -- explanations for ``medmm explain`` --------------------------------------------------
    def explain_spec(self, model: torch.nn.Module) -> Any:
        """Optional: what ``medmm explain`` attributes in this task's batches, a
        :class:`medmm.explain.spec.ExplainSpec` (token ids + embedding layer, pixels + Grad-CAM
        layer, feature columns + names...). ``None`` (the default): occlusion of the batches'
        float tensors, a model-agnostic fallback that ``medmm explain`` names as such."""
        return None
