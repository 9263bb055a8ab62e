"""A run directory's life cycle: ``run.json`` status (running / failed / done), and what may
be written where.

- ``--out`` must be new, empty, or a run of medmm: a folder holding other files is refused
  (medmm never overwrites a user's files).
- A run that failed (or was killed) before its first checkpoint may be replaced by a new run
  into the same folder; one with a checkpoint is continued with ``--resume``.
- A running run holds an exclusive ``flock`` on ``.run.lock`` until it ends; the kernel drops the
  lock when the process dies (also by SIGKILL), so "still running" needs no pid guessing and is
  right across pid namespaces and recycled pids.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from medmm.errors import MedmmError

INFO = "run.json"
LOCK = ".run.lock"
_held: dict[Path, int] = {}  # run dir -> lock fd held by this process
# What a run writes at the top of its folder; replacing a failed run removes these (caches stay).
OUTPUTS = ("config.yaml", INFO, "train.log", "metrics.jsonl", "metrics.csv", "splits.csv", "skipped.csv",
           "unmatched_labels.csv", "summary.json", "predictions.csv", "report.html", "model_card.md",
           "data_fingerprint.json", "artifacts", "checkpoints", ".ranks", "tensorboard")


def read_info(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory."""
    try:
        info = json.loads((Path(run_dir) / INFO).read_text())
    except FileNotFoundError:
        raise MedmmError(f"{run_dir} is not a medmm run directory (no run.json)") from None
    except ValueError as exc:
        raise MedmmError(f"{run_dir}/run.json is corrupt: {exc}") from None
    if not isinstance(info, dict):
        raise MedmmError(f"{run_dir}/run.json is corrupt: not a JSON object")
    return info


def write_info(run_dir: Path, info: dict[str, Any]) -> None:
    from medmm.io import write_json_atomic

    write_json_atomic(Path(run_dir) / INFO, info)


def start(run_dir: Path, info: dict[str, Any] | None = None) -> None:
    """Mark the run as running in this process (``info``: a new run's record)."""
    info = info if info is not None else read_info(run_dir)
    _lock(Path(run_dir))
    info.update(status="running", pid=os.getpid(), host=socket.gethostname(), error=None, updated=time.time())
    write_info(run_dir, info)


def finish(run_dir: Path, exc: BaseException | None = None) -> None:
    """Mark the run done, or failed with the error's first line; the run's lock is released."""
    try:
        try:
            info = read_info(run_dir)
        except MedmmError:
            return
        if exc is None:
            info.update(status="done", error=None)
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            text = "interrupted" if isinstance(exc, KeyboardInterrupt) else first
            info.update(status="failed", error=text[:300] or type(exc).__name__)
        info.update(pid=None, updated=time.time())
        write_info(run_dir, info)
    finally:
        _unlock(Path(run_dir))  # also when run.json is gone; after it says done / failed otherwise


def _lock(run_dir: Path) -> None:
    """Hold ``run_dir/.run.lock`` while this process runs the run (refused if another one holds it)."""
    key = run_dir.resolve()
    if key in _held or sys.platform == "win32":
        return
    import fcntl

    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MedmmError(f"{run_dir} is in use by another running medmm process; choose another --out") from None
    _held[key] = fd


def _unlock(run_dir: Path) -> None:
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def _locked_elsewhere(lock: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


def is_live(info: dict[str, Any], run_dir: Path | None = None) -> bool:
    """True when the process that marked the run running still runs it.

    With the run's lock file (every run since the lock was added) the answer is the lock's;
    runs without one fall back to "that pid exists on this host".
    """
    if info.get("status") != "running":
        return False
    if run_dir is not None and sys.platform != "win32" and (Path(run_dir) / LOCK).exists():
        return Path(run_dir).resolve() not in _held and _locked_elsewhere(Path(run_dir) / LOCK)
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(info: dict[str, Any], run_dir: Path | None = None) -> str:
    """``running``, ``failed`` (also: killed, i.e. marked running by a process that is gone), ``done``."""
    s = info.get("status")
    if s == "running" and not is_live(info, run_dir):
        return "failed"
    return s or "unknown"  # runs from before status was recorded


def has_checkpoint(run_dir: Path) -> bool:
    ck = Path(run_dir) / "checkpoints"
    return any((ck / name / "state.json").exists() for name in ("last", "last.old", "best"))


def _error(info: dict[str, Any]) -> str:
    return info.get("error") or ("killed" if info.get("status") == "running" else "unknown error")


def check_new(run_dir: Path) -> None:
    """A new run may write into ``run_dir``: new, empty, or a run that failed before its first checkpoint."""
    run_dir = Path(run_dir)
    if (run_dir / INFO).exists():
        info = read_info(run_dir)
        s = status(info, run_dir)
        if s == "running":
            raise MedmmError(f"{run_dir} holds a run that is still running (pid {info.get('pid')}); "
                             "choose another --out")
        if s == "failed" and not has_checkpoint(run_dir):
            for name in OUTPUTS:
                p = run_dir / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
            click.echo(f"medmm: replacing the run in {run_dir}: it failed before its first checkpoint "
                       f"({_error(info)})", err=True)
            return
        if s == "failed":
            raise MedmmError(f"{run_dir} holds a run that failed ({_error(info)}) after a checkpoint; "
                             f"continue it with --resume {run_dir}, or choose another --out")
        raise MedmmError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise MedmmError(f"--out {run_dir} is a folder that already holds files and is not a medmm run; "
                         "medmm never overwrites them: choose a new or empty folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise MedmmError(f"--out {run_dir} is a file, not a folder")


def check_resume(run_dir: Path) -> None:
    """``--resume run_dir`` can continue: a run, not in use, with a checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / INFO).exists():
        raise MedmmError(f"--resume {run_dir}: not a medmm run directory (no run.json)")
    info = read_info(run_dir)
    if status(info, run_dir) == "running":
        raise MedmmError(f"--resume {run_dir}: the run is still running (pid {info.get('pid')})")
    if not has_checkpoint(run_dir):
        if status(info, run_dir) == "failed":
            raise MedmmError(f"--resume {run_dir}: the run failed before its first checkpoint ({_error(info)}); "
                             f"start it again with --out {run_dir}")
        raise MedmmError(f"--resume {run_dir}: no checkpoint to resume from")


def check_output_file(path: Path) -> None:
    """Fail before any work when ``path`` (a file to write, e.g. ``predict --out``) cannot be written."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise MedmmError(f"--out {path} is a folder; give a file name, e.g. {path / 'predictions.csv'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MedmmError(f"--out {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent if path.parent.exists() else parent, prefix=".medmm-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MedmmError(f"--out {path}: cannot write into {parent}: {exc.strerror or exc}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise MedmmError(f"--out {path}: the existing file is not writable")
