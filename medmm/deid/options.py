"""The de-identification options (PS3.15 Annex E profile options), from flags or a small YAML."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from medmm.errors import ConfigError

__all__ = ["DeidOptions", "load_options"]


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 options to apply on top of the Basic Application Level Confidentiality Profile.

    retain_dates: Retain Longitudinal Temporal Information with Modified Dates: every date moves by
        a keyed per-patient shift (whole weeks back, same shift in DICOM and notes for the same
        key and patient id) instead of being removed. The birth date is removed either way.
    retain_device_identity: keep device serial numbers, station names and device UIDs.
    clean_descriptors: keep free-text descriptions (study/series description, protocol name,
        comments) after scrubbing them with the text rules and this file's own identifiers,
        instead of removing them.
    """

    retain_dates: bool = False
    retain_device_identity: bool = False
    clean_descriptors: bool = False

    def describe(self) -> dict[str, bool]:
        return asdict(self)


def load_options(path: Path | None = None, **overrides: bool | None) -> DeidOptions:
    """Options from a YAML mapping (keys as in :class:`DeidOptions`), then flags that were given."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(DeidOptions)}
    if path is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read deid config {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"deid config {path} must be a mapping of {', '.join(sorted(known))}")
        loaded = loaded.get("deid", loaded) if isinstance(loaded.get("deid"), dict) else loaded
        for key, value in loaded.items():
            if key not in known:
                raise ConfigError(f"unknown deid option {key!r} in {path}; known: {', '.join(sorted(known))}")
            if not isinstance(value, bool):
                raise ConfigError(f"deid option {key} must be true or false, got {value!r}")
            values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DeidOptions(**values)
