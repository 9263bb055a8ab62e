"""The engine's config and the sections every task shares; the ONE place their defaults live.

A task's YAML (``configs/<task>.yaml``) holds only the values that differ from these defaults;
``medmm config TASK`` prints every resolved value and ``medmm config TASK --schema`` the JSON Schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr

from medmm.config.base import Bool, ConfigModel, Float, Fraction, Int, NonNegInt, PosInt, Probability

__all__ = ["ConformalConfig", "DataConfig", "EngineConfig", "EvalConfig", "ModelConfig", "PrivacyConfig", "TaskConfig",
           "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(hours?|h|minutes?|mins?|m|seconds?|secs?|s)?", re.I)
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds of a duration: ``600``, ``"600"``, ``"90s"``, ``"10m"``, ``"1h"``, ``"1h30m"``; ``None`` stays ``None``.

    Raises ``ValueError`` (one line) for anything else, e.g. a negative or unitless junk string.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a duration such as 600 (seconds), 90s, 10m, 1h or 1h30m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text, seconds, pos = str(value).strip(), 0.0, 0
        if text.lower() in ("", "none", "null", "off"):
            return None
        for m in _DURATION.finditer(text):
            if text[pos:m.start()].strip() or (m.group(2) is None and m.end() != len(text)):
                break
            seconds += float(m.group(1)) * _UNIT_S[(m.group(2) or "s")[0].lower()]
            pos = m.end()
        if pos == 0 or text[pos:].strip():
            raise ValueError("a duration such as 600 (seconds), 90s, 10m, 1h or 1h30m")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError("a positive, finite duration such as 600 (seconds), 90s, 10m or 1h")
    return seconds


Duration = Annotated[float | None, BeforeValidator(parse_duration)]


class PrivacyConfig(ConfigModel):
    """Differentially private training (DP-SGD through opacus: pip install 'medmm[privacy]')."""

    enabled: Bool = Field(False,
        description='train with DP-SGD (opacus): per-sample clipping + noise; ε is reported')
    target_epsilon: Float = Field(3.0, gt=0, description="ε reached at the end of the configured epochs / max_steps "
                                                          "(noise calibrated to it)")
    delta: Float | None = Field(None, gt=0, lt=1, description="null = 0.1 / n_train; must be < 1 / n_train")
    max_grad_norm: Float = Field(1.0, gt=0, description="per-example gradient clipping norm (replaces "
                                                         "engine.max_grad_norm when enabled)")
    accountant: Literal["rdp", "prv"] = Field("rdp",
        description='privacy accountant: rdp (Rényi DP) | prv (PRV, tighter)')
    audit: Bool = Field(False, description="membership-inference audit (train vs test units) at the end of the run, "
                                           "private or not")


class EngineConfig(ConfigModel):
    """The training engine every task uses (device, precision, optimisation, checkpoints)."""

    device: str = Field("auto", description="auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto (bf16 on GPUs that support it, else fp32; on a CPU see cpu_bf16) | fp32 | bf16 | fp16")
    cpu_bf16: Literal["off", "auto"] = Field(
        "off", description="precision=auto on a CPU: off = fp32 | auto = bf16 autocast when the CPU has native bf16 "
                           "(avx512_bf16 / AMX, detected) and a probe step takes at most 0.9x fp32's process CPU time (median of 3, "
                           "interleaved), else fp32")
    time_limit: Duration = Field(
        None, description="wall-clock budget of the whole run (600, 90s, 10m, 1h; null = none): after the first "
                          "steps the run is planned to fit (fewer steps, or the task's cheaper recipe) and stops "
                          "at the next step boundary when it is reached, report written (--time-limit)")
    epochs: PosInt = Field(10, description='passes over the training split (early stopping may end sooner)')
    max_steps: NonNegInt = Field(0, description="stop after this many optimizer steps (0 = no limit)")
    min_steps: NonNegInt = Field(300, description="raise epochs (unless you set them) until the run takes this many "
                                                  "optimizer steps; 0 = off")
    batch_size: PosInt = Field(32, description="per process micro-batch")
    eval_batch_size: PosInt = Field(64, description='per process batch for validation, test and predict')
    grad_accum: PosInt = Field(1, description="micro-batches per optimizer step")
    max_grad_norm: Float = Field(1.0, ge=0, description="0 disables clipping")
    lr: Float = Field(0.001, ge=0, description="0 is allowed: a frozen model (e.g. a sanity baseline)")
    weight_decay: Float = Field(0.01, ge=0, description="AdamW; not applied to biases and norm weights")
    schedule: Literal["constant", "linear", "cosine"] = Field("cosine",
        description='learning-rate decay after warmup')
    warmup_ratio: Fraction = Field(0.1, description="fraction of optimizer steps")
    class_weights: Literal["none", "balanced", "auto"] = Field(
        "none", description="none | balanced (single-label: per class; multi-label: per-label positive weight, "
                            "max 10) | auto (balanced for multi-label only)")
    sampler: Literal["shuffle", "weighted", "bucket"] = Field(
        "shuffle", description="shuffle | weighted (class-balanced) | bucket (similar lengths, class mix kept; text)")
    label_smoothing: Fraction = Field(0.0,
        description='classification: move this much target mass to the other classes')
    eval_every_steps: NonNegInt = Field(0, description="0 = evaluate once per epoch")
    monitor: str = Field("auto", description="metric for best checkpoint + early stopping (auto = the task's headline)")
    monitor_mode: Literal["auto", "max", "min"] = Field("auto",
        description='auto: max for scores, min for losses / errors; or force max | min')
    patience: NonNegInt = Field(5, description="evaluations without improvement before stopping (0 = never)")
    checkpoint_every_steps: PosInt = Field(50, description="resumable 'last' checkpoint cadence")
    nan_policy: Literal["stop", "skip"] = Field("stop", description="stop | skip (a step whose loss is not finite)")
    num_workers: NonNegInt = Field(0, description="DataLoader worker processes")
    bootstrap: NonNegInt = Field(1000, description="resamples for the test headline metric's 95% CI (0 disables)")
    tensorboard: Bool = Field(False, description="also log to TensorBoard when installed")
    baseline: Literal["auto", "none"] = Field(
        "auto", description="auto: fit the classic model (TF-IDF+LR, linear, Cox, pixel LR) on the same split and "
                            "compare | none")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)


class ConformalConfig(ConfigModel):
    """Split-conformal prediction sets / intervals calibrated on val, and the refer flag (medmm.evaluation.conformal)."""

    enabled: Bool = Field(True, description="calibrate sets (classification) or intervals (regression) on val")
    alpha: Float = Field(0.1, gt=0, lt=1, description="miscoverage: sets hold the true class for >= 1 - alpha of units")
    mondrian: Literal["class", "none"] = Field(
        "class", description="class: one threshold per class (coverage in every class) | none: one pooled threshold")
    group_column: str | None = Field(
        None, description="also thresholds per (group, class) of this column (numeric: banded on val), used by "
                          "predict, export, serve and SR; a unit with no value gets the per-class ones")
    refer: Literal["not_single", "ambiguous"] = Field(
        "not_single", description="abstain / refer when the set is not exactly one class | only when it holds 2+")
    max_width: Float | None = Field(None, gt=0, description="regression: refer when the interval is wider than this")


class EvalConfig(ConfigModel):
    """Operating point and subgroup audit of the training report and ``medmm evaluate``."""

    threshold: Literal["youden", "target_sensitivity", "target_specificity", "fixed"] = Field(
        "youden", description="operating point chosen on val")
    target: Probability = Field(0.9, description="the sensitivity or specificity a target_* threshold must reach")
    fixed_value: Probability = Field(0.5, description="the threshold when threshold=fixed")
    min_group_size: PosInt = Field(10, description="subgroups with fewer units are shown as '< N' without any figure")
    bands: dict[str, list[float]] | None = Field(
        None, description="bands of numeric subgroup columns, e.g. {age: [0, 40, 65, 80]} "
                          "(default: age bands, else quartiles)")
    conformal: ConformalConfig = Field(default_factory=ConformalConfig)


class DataConfig(ConfigModel):
    """Data keys every task has; a task's data section subclasses this."""

    subgroup_columns: list[str] | None = Field(
        None, description="subgroup audit in report.html / medmm evaluate: table columns, e.g. [sex, age, site]; "
                          "DICOM folders: PatientSex, PatientAge, Manufacturer, ManufacturerModelName, Modality, "
                          "BodyPartExamined")


class ModelConfig(ConfigModel):
    """A task's model section subclasses this (empty for a task without model keys)."""


class TaskConfig(ConfigModel):
    """The root of a task's config: a task subclasses it and narrows ``data`` / ``model``."""

    seed: Int = Field(0,
        description='seeds the split, initialisation, batch plans and augmentation (same seed = same run)')
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    # where values a backbone recipe / auto / min_steps chose came from (medmm.recipes), and the keys the user set
    _provenance: dict[str, str] = PrivateAttr(default_factory=dict)
    _user: set[str] | None = PrivateAttr(default=None)

    @property
    def provenance(self) -> dict[str, str]:
        """Dotted key -> where its value came from (``recipe of backbone minilm-l6``, ...)."""
        return self._provenance

    @property
    def user(self) -> set[str] | None:
        """Dotted keys the user set (``--config`` / ``--set``); ``None`` for a saved run's config."""
        return self._user

    @user.setter
    def user(self, keys: set[str] | None) -> None:
        self._user = None if keys is None else set(keys)
