"""User-facing errors: the CLI prints these as one line on stderr, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MedmmError(Exception):
    """Base class of every error that is the user's input, not a bug in medmm."""


class ConfigError(MedmmError):
    """A configuration file or ``--set`` override is malformed or invalid."""


class DataError(MedmmError):
    """Input data is missing, unreadable or unusable."""


class PluginError(MedmmError):
    """A plugin failed to load or registered something invalid."""


class CheckpointError(MedmmError):
    """A checkpoint is missing, truncated, or not written by medmm."""


class TrainingError(MedmmError):
    """Training cannot continue (non-finite loss, interrupted, ...)."""


class PrivacyError(MedmmError):
    """A differentially private run cannot be set up as configured."""


class PixelDecodeError(DataError):
    """Pixel data that cannot be decoded or turned into a valid image."""

    def __init__(self, path: object, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class UnknownNameError(MedmmError, KeyError):
    """A task, backbone, reader or fusion head name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(name, self.known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(self.known) or "none registered"
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {listed}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]
