"""The export folder's ``manifest.json``: what it holds, file hashes, and how to check them.

Imports nothing heavy (no torch, no onnxruntime): the CLI uses it to tell an export folder from
a run directory, and the runtime to refuse a folder whose files were changed after export.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

from medmm.errors import MedmmError

MANIFEST = "manifest.json"
FORMAT = "medmm.export"
VERSION = 1
MODEL = "model.onnx"
MODEL_INT8 = "model.int8.onnx"


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MedmmError(f"{what} needs {module.split('.')[0]}: pip install 'medmm[{extra}]'") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` except the manifest, by POSIX relative path."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): sha256(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def is_export_dir(path: Path) -> bool:
    """True for a folder written by ``medmm export`` (it has a medmm export manifest)."""
    m = Path(path) / MANIFEST
    if not m.is_file():
        return False
    from medmm.io import read_json

    try:
        return read_json(m).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - a broken manifest is reported by read_manifest
        return True


def read_manifest(directory: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of an export folder; with ``verify`` every listed file's hash is checked."""
    from medmm.io import read_json

    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise MedmmError(f"{directory} is not a medmm export (no {MANIFEST}); make one with medmm export RUN_DIR")
    manifest = read_json(directory / MANIFEST, format=FORMAT)
    if int(manifest.get("version", 0)) > VERSION:
        raise MedmmError(f"{directory} was exported by a newer medmm (manifest version {manifest['version']})")
    if verify:
        for name, digest in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                raise MedmmError(f"{directory}: {name} is listed in the manifest but missing")
            if sha256(path) != digest:
                raise MedmmError(f"{directory}: {name} does not match its hash in the manifest "
                                 "(changed after export); export the run again")
    return manifest
