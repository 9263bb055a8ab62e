"""The task contract: a cheap :class:`TaskSpec` to register, the :class:`Task` it builds, and the
toolkit every task shares.

Registering a task imports nothing heavy; :meth:`TaskSpec.load` imports the implementation
only when the task runs. The engine drives every task through the same few methods.

The toolkit (built-in and third-party tasks alike): :attr:`Task.cache_dir`,
:meth:`Task.backbone` (registry lookup + modality check), :attr:`Task.is_main` and the rank-0
writers :meth:`Task.write_skipped` / :meth:`Task.write_splits`, the ONE split rule
(:func:`assign_splits`, :func:`read_split_column`, :meth:`Task.assign_splits`) and
:func:`pad_sequences` / :func:`pad_id_of` for collate functions.

The split rule (every task, documented once):

1. An explicit split column wins. Its cells are read with the usual aliases (``valid``,
   ``dev``, ``testing``...); a row whose cell is empty or anything else is skipped with a reason
   in ``skipped.csv`` ("missing split" / "invalid split value ..."), never silently re-split.
   With patient (group) IDs, a patient found in two splits is a :class:`DataError` (leakage).
2. Otherwise a group-wise, label-stratified random split (:func:`medmm.data.splits.group_split`,
   seeded by ``seed``): ``val_fraction`` / ``test_fraction`` of the *groups* per label stratum,
   so no patient is in two splits and rare classes still reach training. Strata are the class
   (binary / multiclass) or the event (survival); multi-label and regression are not stratified.
3. Groups are patient IDs when the task has them; a row whose group cell is empty is its own
   group (keyed ``row:<id>``), never pooled with the other rows that lack one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmm.errors import ConfigError, DataError, PluginError
from medmm.registry import resolve_object

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    from medmm.registry import Component

PROBLEMS = ("binary", "multiclass", "multilabel", "regression", "survival")
SKIPPED_CSV = "skipped.csv"
SPLITS_CSV = "splits.csv"
MISSING_SPLIT = "missing split"
INVALID_SPLIT = "invalid split value (expected train/val/test)"
STUDY_UID = "StudyInstanceUID"  # the unit column that references a unit's imaging study (DICOM SR of a table task)
ACCESSION = "AccessionNumber"  # optional: the study's accession number, copied into the SR's request reference


@dataclass(frozen=True)
class TaskSpec:
    """What a plugin registers for a task.

    Attributes:
        name: CLI name (``medmm run NAME``), lower case with hyphens.
        modality: ``text``, ``image``, ``tabular`` or ``multimodal``.
        summary: one line for ``medmm tasks``.
        config: path of the task's YAML: with ``config_model``, only the values that differ from the
            models' defaults (e.g. engine epochs); without it (legacy), every default: the YAML is
            then the schema (each key takes its default's type).
        impl: the :class:`Task` subclass, or a lazy ``"module:Class"`` reference.
        demo: optional ``"module:function"`` ``(out_dir: Path) -> (data_path, overrides)``
            that builds a bundled demo data set for ``medmm demo NAME``.
        config_model: the task's root config model, a :class:`medmm.config.TaskConfig` subclass
            that narrows ``data`` / ``model`` (Literal choices, Field ranges), or a lazy
            ``"module:Class"`` reference (kept lazy: registering a task imports nothing heavy).
        runtime: optional torch-free input reader of the task's exports, a lazy ``"module:Class"``
            reference: ``Class(export_dir, cfg, batch_size, manifest)`` with ``problem``,
            ``label_names``, ``accepts`` (``"rows"``: JSON rows / a table; ``"dicom"``: a folder of
            DICOM files; ``"table"``: a table file only), ``read(path)`` and ``examples(read) ->``
            :class:`medmm.deploy.runtime.Examples`; optionally ``columns`` (the input columns a row
            needs, for ``medmm serve``) and ``text_columns`` (those that must hold text). With
            :meth:`Task.deploy_spec` it makes the task exportable (``medmm export / serve``).
        study_key: for a task whose rows come from imaging studies (a table task has no DICOM file to
            reference): the config key (e.g. ``"data.study_column"``) naming the table column of each
            row's StudyInstanceUID. The task puts each unit's study into its unit columns with
            :func:`study_references`; ``medmm predict --dicom-sr`` then writes one DICOM SR per
            referenced study (:mod:`medmm.deploy.sr`). ``None`` (the default): only tasks that read
            DICOM folders write SRs.
        cheaper_recipe: optional config overrides (dotted keys, e.g. ``{"model.mode": "frozen"}``) of a
            cheaper recipe of the task: when ``engine.time_limit`` fits too few fine-tuning steps, the run
            restarts on it and says so (unless the user set one of its keys); see ``medmm.engine.budget``.
    """

    name: str
    modality: str
    summary: str
    config: str | Path
    impl: str | Callable[..., Task]
    demo: str | Callable[..., Any] | None = None
    config_model: str | type | None = None
    runtime: str | Callable[..., Any] | None = None
    study_key: str | None = None
    cheaper_recipe: Mapping[str, Any] | None = None
    choices: Any = field(default=None, repr=False)  # removed: a one-line error names the replacement
    ranges: Any = field(default=None, repr=False)  # removed: a one-line error names the replacement

    def __post_init__(self) -> None:
        for name in ("choices", "ranges"):
            if getattr(self, name) is not None:
                raise PluginError(f"task {self.name!r}: TaskSpec({name}=...) was removed; declare allowed values "
                                  "and bounds in a config_model (pydantic: Literal[...] choices, Field(ge=..., "
                                  "le=...) ranges); see docs/plugins.md")

    def load(self) -> type[Task]:
        """Import the implementation class."""
        return resolve_object(self.impl)


@dataclass(frozen=True)
class GraphInput:
    """One named input of an exported graph and its dynamic axes (``{0: "batch", 1: "sequence"}``;
    axes that share a label have the same size). ``name`` is a Python identifier."""

    name: str
    axes: Mapping[int, str] = field(default_factory=lambda: {0: "batch"})

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"graph input name {self.name!r} is not a Python identifier")


def _one_input_batch(x: Any) -> Any:
    return (x, None, None)


@dataclass(frozen=True)
class DeploySpec:
    """What ``medmm export`` needs from a trained task (:meth:`Task.deploy_spec`).

    Attributes:
        inputs: the graph's named inputs, in order; default one float input ``x`` ``[batch, ...]``.
        batch: graph inputs (tensors, in order) -> the batch :meth:`Task.step` takes; default
            ``(x, None, None)`` (features, no target, no index).
        graph: instead of ``batch``, a ready ``nn.Module`` whose ``forward`` takes the inputs by
            name and returns the scores (for graphs that differ from ``step``, e.g. fusion).
        sample: how export cuts its parity sample from the run's data: ``"table"`` (the test
            split's rows) or ``"files"`` (the test split's files of a folder).
        path_columns: table columns holding file paths relative to the table (made absolute in the
            sample).
        preprocessing: a readable summary for ``manifest.json`` (the exact parameters are the
            run's artifacts, copied into the export).
        output: what the graph's ``scores`` mean (``manifest.json``); default from the problem.
        pad_id: the token padding id the runtime reader pads with (``manifest.json``).
    """

    inputs: tuple[GraphInput, ...] = (GraphInput("x"),)
    batch: Callable[..., Any] = _one_input_batch
    graph: Any = None
    sample: str = "table"
    path_columns: tuple[str, ...] = ()
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    output: str | None = None
    pad_id: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        """The graph's input names, in order."""
        return tuple(i.name for i in self.inputs)

    @property
    def dynamic(self) -> dict[str, dict[int, str]]:
        """``{input: {axis: label}}`` for the exporters."""
        return {i.name: dict(i.axes) for i in self.inputs}


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
    skipped_key: str = "id"  # what an input is in that report: a row "id" or a file "path"
    # per-example token counts: evaluation batches in length order inside fixed windows (medmm.batching)
    lengths: Sequence[int] | None = None


@dataclass
class BundleMeta:
    """What a task tells the core about its data (:attr:`DataBundle.meta`), and what the core adds.

    Set by a task in :meth:`Task.build_data` (all optional):

    Attributes:
        description: one line about the data, printed at the start of a run and put in the card.
        report_sections: extra ``(heading, html)`` sections of ``report.html``.
        card_sections: extra Markdown sections of ``model_card.md``.
        unit_columns: extra ``predictions.csv`` columns per unit (``{unit: {column: value}}``, e.g. a
            DICOM unit's SOP instance UID, a row's ``StudyInstanceUID`` for ``--dicom-sr``).
        unit_name: what a unit is in the summary line (e.g. ``series``).
        example_name: what an example is in the summary line (e.g. ``instances``).
        trained_in_run_dir: the task already trained the model in the run directory (e.g. while
            choosing an ``auto`` backbone): the engine resumes it instead of training again.
        extra: anything else a task wants to keep with its bundle (the core never reads it).

    Added by the core during a run (a task leaves them unset): ``operating_point`` (the threshold
    chosen on the validation split), ``subgroups_card`` (the subgroup audit's card text),
    ``conformal`` / ``conformal_set_groups`` (conformal thresholds and their groups).
    """

    description: str | None = None
    report_sections: list[tuple[str, str]] = field(default_factory=list)
    card_sections: list[str] = field(default_factory=list)
    unit_columns: dict[str, dict[str, str]] | None = None
    unit_name: str = "units"
    example_name: str = "examples"
    trained_in_run_dir: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    operating_point: Any = None
    subgroups_card: str | None = None
    conformal: Any = None
    conformal_set_groups: Any = None

    @classmethod
    def of(cls, meta: BundleMeta | Mapping[str, Any] | None) -> BundleMeta:
        """``meta`` as a :class:`BundleMeta`; a plain dict names its fields (its ``extra`` key holds the
        rest). An unknown key raises a one-line :class:`PluginError` naming it."""
        if isinstance(meta, BundleMeta):
            return meta
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in (meta or {}) if k not in known)
        if unknown:
            raise PluginError(f"DataBundle.meta has no key {unknown[0]!r} (known: {', '.join(sorted(known))}); "
                              "keep a task's own values in meta.extra")
        return cls(**dict(meta or {}))


@dataclass
class DataBundle:
    """The splits a task built, and how to batch them; ``meta`` (:class:`BundleMeta`, or a dict of its
    fields) says what the core should know about the data."""

    train: Split | None
    val: Split | None
    test: Split | None
    collate_fn: Callable[..., Any] | None = None
    # optional: (lengths) for length-bucketed batching of the train split
    lengths: Sequence[int] | None = None
    meta: BundleMeta = field(default_factory=BundleMeta)

    def __post_init__(self) -> None:
        self.meta = BundleMeta.of(self.meta)


@dataclass
class BaselineInputs:
    """Raw inputs of one split for the classic baseline (:mod:`medmm.classic`), one row per example.

    ``units`` and ``targets`` follow :class:`Split` (examples of one unit are pooled). Each
    modality the task has is given: ``text`` (documents), ``tabular`` (the task's fitted
    preprocessing, ``[N, F]``), ``image`` (pixels ``[N, C, H, W]`` in [0, 1], any size, or rows
    already area-averaged to 32 px, ``[N, F]``: an array or a ``medmm.LazyRows`` read a block at a time).
    ``present`` marks, per modality, the rows that have it (default: all).
    """

    units: list[str]
    targets: Any = None
    text: list[str] | None = None
    tabular: Any = None
    image: Any = None
    present: dict[str, Any] = field(default_factory=dict)


# -- the toolkit: functions (usable without a Task) -------------------------------------------
def read_split_column(ids: Sequence[str], cells: Sequence[Any]) -> tuple[list[str | None], list[tuple[str, str]]]:
    """A user's split column -> per row ``train`` / ``val`` / ``test`` or ``None``, and the
    ``(id, reason)`` of each ``None`` row for ``skipped.csv`` (reasons are fixed phrases)."""
    from medmm.data.readers import is_missing
    from medmm.data.splits import parse_split

    if len(ids) != len(cells):
        raise DataError("one split cell per row is required")
    splits: list[str | None] = []
    skipped: list[tuple[str, str]] = []
    for row_id, cell in zip(ids, cells):
        split = None if is_missing(cell) else parse_split(cell)
        if split is None:
            skipped.append((str(row_id), MISSING_SPLIT if is_missing(cell) else INVALID_SPLIT))
        splits.append(split)
    return splits, skipped


def study_references(df: Any, ids: Sequence[str], study_column: str | None, accession_column: str | None = None,
                     *, required: bool = True) -> dict[str, dict[str, str]]:
    """Each row's imaging study as unit columns: ``{id: {"StudyInstanceUID": ..., "AccessionNumber": ...}}``
    (``predictions.csv`` columns; ``medmm predict --dicom-sr`` files an SR in each study).

    ``df`` is the table (rows in the order of ``ids``); ``study_column`` / ``accession_column`` name its
    columns (``None``: no references, ``{}``). A row whose study cell is empty gets none. A named column
    that the table lacks is a :class:`DataError` naming it (``required=False``, e.g. new data to predict
    or a served row: no references from it); a cell that is not a DICOM UID (digits and dots, at most 64
    characters) is one naming the column, never the value.
    """
    from medmm.data.readers import is_missing

    if not required:
        study_column = study_column if study_column in df.columns else None
        accession_column = accession_column if accession_column in df.columns else None
    if not study_column:
        return {}
    for col in (study_column, accession_column):
        if col and col not in df.columns:
            raise DataError(f"study column {col!r} is not in the data")
    if len(ids) != len(df):
        raise DataError("one id per row is required")
    studies = df[study_column].tolist()
    accessions = df[accession_column].tolist() if accession_column else [None] * len(df)
    out: dict[str, dict[str, str]] = {}
    for row_id, uid, acc in zip(ids, studies, accessions):
        if is_missing(uid):
            continue
        uid = str(uid).strip()
        if len(uid) > 64 or not uid.replace(".", "").isdigit():
            raise DataError(f"column {study_column!r} holds a value that is not a DICOM UID (digits and dots)")
        out[str(row_id)] = {STUDY_UID: uid, **({ACCESSION: str(acc).strip()[:16]} if not is_missing(acc) else {})}
    return out


def assign_splits(ids: Sequence[str], *, given: Sequence[str | None] | None = None,
                  groups: Sequence[Any] | None = None, labels: Any = None, val_fraction: float = 0.15,
                  test_fraction: float = 0.15, seed: int = 0) -> np.ndarray:
    """THE split rule (module docstring): ``train`` / ``val`` / ``test`` per row of ``ids``.

    ``given`` is the user's split per row (from :func:`read_split_column`, skipped rows already
    removed): it is used as is, and checked for patients in two splits. Otherwise the rows are
    split by group (an empty group cell: the row alone, ``row:<id>``), stratified by ``labels``.
    """
    import numpy as np

    from medmm.data.readers import is_missing
    from medmm.data.splits import check_no_leakage, group_split

    n = len(ids)
    keys = None
    if groups is not None:
        if len(groups) != n:
            raise DataError("one group per row is required")
        keys = [f"row:{i}" if is_missing(g) else str(g) for i, g in zip(ids, groups)]
    if given is not None:
        if len(given) != n or any(s not in ("train", "val", "test") for s in given):
            raise DataError("the given splits must hold train / val / test for every row "
                            "(drop the rows read_split_column skipped)")
        splits = np.asarray(given, dtype=object)
        if keys is not None:
            check_no_leakage(splits, keys)
        return splits
    return group_split(n, groups=keys, labels=labels, val_fraction=val_fraction,
                       test_fraction=test_fraction, seed=seed)


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token-id sequences -> ``(ids int64 [B, L], mask bool [B, L])``, ``L`` the longest (at least 1)."""
    import numpy as np

    lengths = [len(s) for s in sequences]
    width = max(max(lengths, default=0), 1)
    ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(lengths), width), dtype=bool)
    for row, (seq, n) in enumerate(zip(sequences, lengths)):
        ids[row, :n] = seq
        mask[row, :n] = True
    return ids, mask


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's padding id (``pad_token_id``), 0 when it has none."""
    return int(getattr(tokenizer, "pad_token_id", None) or 0)


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

    # -- the toolkit ------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        """Pixel / token / embedding caches: ``data.cache_dir`` when set, else ``RUN_DIR/cache``."""
        data = self.cfg.get("data")
        given = data.get("cache_dir") if data is not None else None
        return Path(given or Path(self.run_dir) / "cache").expanduser()

    @property
    def is_main(self) -> bool:
        """Rank 0 under ``torchrun`` (or a plain process): the one process that writes the run directory."""
        from medmm.rundir import is_main_process

        return is_main_process()

    def backbone(self, name: str, modality: str, *, key: str = "model.backbone") -> Component:
        """The registered backbone ``name``; a :class:`ConfigError` naming ``key`` if it is of another modality."""
        from medmm.plugins import get_registry

        comp = get_registry().get("backbone", name)
        if comp.modality != modality:
            raise ConfigError(f"{key} {name!r} is a {comp.modality} backbone; choose one of "
                              f"`medmm backbones --modality {modality}`")
        return comp

    def write_skipped(self, rows: Iterable[tuple[str, str]], *, key: str = "id") -> Path | None:
        """``RUN_DIR/skipped.csv`` (``key,reason``; rank 0 only): inputs not used, fixed reason phrases,
        never cell contents. No rows: no file (a stale one is removed)."""
        from medmm.io import write_skipped

        return write_skipped(Path(self.run_dir) / SKIPPED_CSV, rows, key=key) if self.is_main else None

    def write_splits(self, ids: Sequence[str], splits: np.ndarray) -> None:
        """``RUN_DIR/splits.csv``: each unit id and its split (rank 0 only)."""
        from medmm.data.splits import write_splits

        if self.is_main:
            write_splits(Path(self.run_dir) / SPLITS_CSV, ids, splits)

    def assign_splits(self, ids: Sequence[str], *, given: Sequence[str | None] | None = None,
                      groups: Sequence[Any] | None = None, labels: Any = None) -> np.ndarray:
        """:func:`assign_splits` with the config's ``data.val_fraction`` / ``data.test_fraction`` and
        ``seed``; writes ``splits.csv``."""
        data = self.cfg.get("data")
        fractions = {k: float(data.get(k, 0.15)) for k in ("val_fraction", "test_fraction")} if data is not None else {}
        splits = assign_splits(ids, given=given, groups=groups, labels=labels, seed=int(self.cfg.get("seed", 0)),
                               **fractions)
        self.write_splits(ids, splits)
        return splits

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

    # -- deployment for ``medmm export`` / ``serve`` ------------------------------------------
    def deploy_spec(self, model: torch.nn.Module) -> DeploySpec | None:
        """Optional: how the trained ``model`` becomes an ONNX graph (:class:`DeploySpec`), called
        after :meth:`load_artifacts`. With the spec's ``runtime`` reader the task is exportable,
        served and predicted without torch. ``None`` (the default): no export."""
        return None

    # -- optional members the core reads -------------------------------------------------
    unit_columns: dict[str, dict[str, str]] | None = None
    """Extra ``predictions.csv`` columns per unit (e.g. a DICOM unit's SOP instance UID), set by
    :meth:`build_predict_data`."""

    predict_chunks: Callable[[Path, int], Iterable[tuple[Split, Any]]] | None = None
    """Optional: ``predict_chunks(data_path, rows)`` -> ``(Split, collate)`` blocks of a table in
    order, for a streaming ``medmm predict`` whose memory does not grow with the table
    (:mod:`medmm.predict_stream`); ``None`` (the default): predict reads the input whole."""

    has_target: bool = True
    """Whether :meth:`step` reads targets from its batch: ``medmm export`` sets it False while it
    traces the graph (no targets there); a task's predict reader sets it when the data has none."""

    preprocessor: Any = None
    """The fitted tabular preprocessor (:class:`medmm.data.tabular.preprocess.Preprocessor`) when the
    task has one: ``medmm evaluate`` compares feature distributions through it (shift warnings)."""

    def choose_backbone(self, bundle: DataBundle) -> str | None:
        """Optional: decide an ``auto`` backbone on the validation split after :meth:`build_data` (e.g.
        train the candidates and keep the best), setting it in ``self.cfg``; returns a line saying what
        was chosen and why, or ``None`` (the default: nothing to choose)."""
        return None

    def speed_hints(self, n_train: int) -> list[str]:
        """Optional: the faster options printed after a long CPU estimate, one line each, naming only
        options measured good for this task and size (with their cost). The default names the
        task-independent ones: fewer steps, a time budget."""
        return ["fewer passes over the data: engine.epochs or engine.max_steps (early stopping keeps the best)",
                "a time budget: --time-limit 10m plans the run to fit it (docs/reliability.md)"]

    @staticmethod
    def resolve_auto_backbone(cfg: Any) -> tuple[str, str] | None:
        """Optional: resolve ``model.backbone=auto`` from the config alone, before any data is read:
        ``(backbone name, why)``; ``None`` (the default): the task does not resolve ``auto`` here."""
        return None
