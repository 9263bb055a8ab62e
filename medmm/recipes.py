"""Recommended training defaults per backbone (like timm's ``pretrained_cfg``), and enough steps.

A registered backbone may carry ``extra={"recipe": {"engine.lr": 5e-4, ...}}``: dotted config keys
and the values that work for it (MiniLM wants a larger learning rate than BERT-base; a TextCNN
trained from scratch wants 1e-3 and more epochs). They replace the task YAML's defaults unless the
user set the key (``--config`` file or ``--set``): the user always wins. ``engine.min_steps`` then
raises ``engine.epochs`` (when the user did not set it) until the run takes that many optimizer
steps, so 300 documents are not trained for 80 steps; early stopping on val stays in charge.

Where each changed value came from is kept in :attr:`medmm.config.TaskConfig.provenance` and written as
comments into the run's ``config.yaml`` (``lr: 0.0005  # recipe of backbone minilm-l6``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CPU_FINETUNE_BUDGET_S", "annotated_yaml", "apply_defaults", "apply_min_steps", "apply_recipe",
           "choose_mode", "user_keys"]

CPU_FINETUNE_BUDGET_S = 300.0
"""``model.mode=auto`` on a CPU fine-tunes a pretrained encoder only when the estimated fine-tuning
time fits in this many seconds (five minutes: a laptop user waits that long); longer estimates
train a head on frozen, cached embeddings instead (measured in docs/guide/frozen.md)."""

log = logging.getLogger("medmm")


# A recipe value that only makes sense with another one: a user who sets engine.lr gets the
# task's own encoder lr scale, not one tuned for the recipe's learning rate.
_COUPLED = {"model.encoder_lr_scale": "engine.lr"}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        keys |= _flatten(v, f"{key}.") if isinstance(v, Mapping) else {key}
    return keys


def user_keys(user_file: Path | None, overrides: Sequence[str]) -> set[str]:
    """Dotted keys the user set in a ``--config`` file or with ``--set``."""
    from medmm.config import load_yaml, parse_override

    keys = _flatten(load_yaml(user_file)) if user_file is not None else set()
    return keys | {".".join(parse_override(item)[0]) for item in overrides}


def get_key(cfg: Mapping[str, Any], key: str) -> Any:
    """The value of dotted ``key`` (``model.backbone``) in a config; ``KeyError`` when absent."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def has_key(cfg: Mapping[str, Any], key: str) -> bool:
    """Whether the config has dotted ``key``."""
    try:
        get_key(cfg, key)
    except (KeyError, TypeError):
        return False
    return True


def apply_recipe(cfg: Any, spec: Any, user: set[str]) -> Any:
    """``cfg`` with the backbone's recipe (and ``model.backbone=auto`` resolved) where the user set nothing.

    The typed config is changed in place; its ``provenance`` / ``user`` record what happened.
    """
    from medmm.config import current_key, set_key
    from medmm.errors import MedmmError
    from medmm.plugins import get_registry

    out = cfg
    user = {current_key(type(cfg), key) for key in user}  # a deprecated name the user set counts as set
    out.user = set(user)
    if not has_key(out, "model.backbone") or not isinstance(get_key(out, "model.backbone"), str):
        return out
    name = get_key(out, "model.backbone")
    if name == "auto":
        chosen = spec.load().resolve_auto_backbone(out)  # Task's default: None (the task decides later, on data)
        if chosen is None:
            return out
        name, why = chosen
        set_key(out, "model.backbone", name)
        out.provenance["model.backbone"] = f"auto: {why}"
    try:
        comp = get_registry().get("backbone", name)
    except MedmmError:
        return out  # the task reports an unknown backbone with its own message
    for key, value in dict(comp.extra.get("recipe", {})).items():
        key = current_key(type(cfg), key)  # a recipe written with a deprecated name: the user's key still wins
        if key in user or _COUPLED.get(key) in user or not has_key(out, key):
            continue
        set_key(out, key, value)
        out.provenance[key] = f"recipe of backbone {name}"
    return out


def apply_defaults(cfg: Any, values: Mapping[str, Any], origin: str) -> list[str]:
    """Set dotted ``values`` the user did not set (``cfg.user``), recording ``origin`` in the
    provenance (``config.yaml`` comments); returns the keys changed. A config without a record of
    the user's keys (a saved run's, ``user=None``) is left as it is."""
    from medmm.config import set_key

    user = getattr(cfg, "user", None)
    if user is None:
        return []
    changed = []
    for key, value in values.items():
        if key in user or _COUPLED.get(key) in user or not has_key(cfg, key) or get_key(cfg, key) == value:
            continue
        set_key(cfg, key, value)
        cfg.provenance[key] = origin
        changed.append(key)
    return changed


def choose_mode(device: str, *, pretrained: bool, finetune_s: float | None,
                cpu_frozen_why: str | None = None) -> tuple[str, str]:
    """``model.mode=auto``: ``("finetune" | "frozen", why)``.

    The rule (measured in docs/guide/frozen.md): an encoder without pretrained weights always trains
    (frozen random features are noise); a GPU fine-tunes; on a CPU, a task that passes
    ``cpu_frozen_why`` (one where frozen scored at or above CPU fine-tuning on every set measured)
    trains a head on the frozen encoder's cached embeddings whatever the estimate; otherwise a CPU
    fine-tunes when ``finetune_s``, the task's estimate of the fine-tuning time, fits
    :data:`CPU_FINETUNE_BUDGET_S`, and freezes the encoder when it does not (where fine-tuning was
    more accurate, at 10-60x the cost).
    """
    from medmm.engine.device import select_device

    if not pretrained:
        return "finetune", "the encoder has no pretrained weights: it must train"
    if select_device(device).type != "cpu":
        return "finetune", "an accelerator fine-tunes the encoder"
    est = "" if finetune_s is None else f"; fine-tuning about {finetune_s / 60:.1f} min estimated"
    if cpu_frozen_why:
        return "frozen", f"{cpu_frozen_why}{est} (model.mode=finetune to fine-tune anyway)"
    if finetune_s is None or finetune_s <= CPU_FINETUNE_BUDGET_S:
        est = "" if finetune_s is None else f" (about {finetune_s / 60:.1f} min estimated)"
        return "finetune", f"fine-tuning fits {CPU_FINETUNE_BUDGET_S / 60:.0f} min on this CPU{est}"
    return "frozen", (f"fine-tuning would take about {finetune_s / 60:.0f} min on this CPU (over "
                      f"{CPU_FINETUNE_BUDGET_S / 60:.0f}): the encoder runs once and a head trains on its "
                      "cached embeddings (model.mode=finetune to fine-tune anyway)")


def describe(cfg: Any) -> str | None:
    """One console line naming the values a recipe or ``auto`` chose, or ``None``."""
    prov = getattr(cfg, "provenance", {})
    if not prov:
        return None
    parts = [f"{k}={get_key(cfg, k)} ({v})" for k, v in prov.items()]
    return "defaults chosen for this run (a --set wins over each): " + "; ".join(parts)


def apply_min_steps(cfg: Any, steps_per_epoch: int) -> int | None:
    """Raise ``engine.epochs`` to reach ``engine.min_steps`` optimizer steps; the new value or ``None``.

    Only when the user did not set ``engine.epochs`` (or ``engine.max_steps``) and the config knows
    it (a resolved :class:`~medmm.config.TaskConfig` records ``user``; a saved run's config, e.g. a
    resumed run, has ``user=None`` and keeps its saved epochs).
    """
    user = getattr(cfg, "user", None)
    if user is None or {"engine.epochs", "engine.max_steps"} & user:
        return None
    e = cfg.engine
    min_steps = e.min_steps
    if not min_steps or steps_per_epoch <= 0:
        return None
    if e.privacy.enabled:  # DP-SGD: ε is budgeted for the configured epochs
        return None
    epochs = e.epochs
    if steps_per_epoch * epochs >= min_steps:
        return None
    new = math.ceil(min_steps / steps_per_epoch)
    cfg.provenance["engine.epochs"] = (f"raised from {epochs} so the run takes >= {min_steps} optimizer steps "
                                       f"({steps_per_epoch} per epoch; engine.min_steps)")
    e.epochs = new
    log.info("engine.epochs %d -> %d: %s", epochs, new, cfg.provenance["engine.epochs"])
    return new


def annotated_yaml(cfg: Mapping[str, Any]) -> str:
    """YAML of ``cfg`` with a ``# <origin>`` comment on every value a recipe, auto or min_steps chose."""
    from medmm.config import dump_yaml

    text = dump_yaml(cfg)
    prov = getattr(cfg, "provenance", {})
    if not prov:
        return text
    lines, path = text.splitlines(), []  # path: (indent, key) of enclosing sections
    out = []
    for line in lines:
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        key = stripped.split(":", 1)[0] if ":" in stripped and not stripped.startswith("-") else None
        if key is not None:
            path = [(i, k) for i, k in path if i < indent]
            dotted = ".".join([k for _, k in path] + [key])
            if dotted in prov and not line.rstrip().endswith(":"):
                line = f"{line}  # {prov[dotted]}"
            path.append((indent, key))
        out.append(line)
    return "\n".join(out) + "\n"
