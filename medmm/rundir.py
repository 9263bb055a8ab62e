"""A run directory's life cycle: ``run.json`` status (running / failed / done), and what may
be written where.

- ``--out`` must be new, empty, or a run of medmm: a folder holding other files is refused
  (medmm never overwrites a user's files).
- A run that failed (or was killed) before its first checkpoint may be replaced by a new run
  into the same folder; one with a checkpoint is continued with ``--resume``. Replacing removes
  only the files listed in ``run.json["files"]`` (the manifest of what medmm wrote, recorded when
  the run starts training and when it ends): a folder whose ``run.json`` lists none (written by
  hand, by an older medmm) or that holds files the list does not name is refused, untouched.
- A running run holds an exclusive ``flock`` on ``.run.lock`` until it ends; the kernel drops the
  lock when the process dies (also by SIGKILL), so "still running" needs no pid guessing and is
  right across pid namespaces and recycled pids.
"""

from __future__ import annotations

import json
import os
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
STOPPED = ("failed", "interrupted")  # runs that ended early: continued with --resume, or replaced
FILES = "files"  # run.json key: the manifest of the files medmm wrote in the run directory
CACHE = "cache"  # medmm's reusable cache folder: listed files there stay when a run is replaced


def is_main_process() -> bool:
    """Rank 0 under ``torchrun``, or a plain single process: the one that writes the run directory."""
    return int(os.environ.get("RANK", "0")) == 0


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
        elif isinstance(exc, KeyboardInterrupt):  # SIGTERM / SIGINT (medmm.engine.interrupt.Interrupted names it)
            name = getattr(exc, "signal_name", "SIGINT")
            first = (str(exc).strip().splitlines() or [""])[0]
            info.update(status="interrupted", signal=name, error=(first or f"interrupted by {name}")[:300])
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            info.update(status="failed", error=first[:300] or type(exc).__name__)
        info.update(pid=None, updated=time.time(), **{FILES: own_files(run_dir)})
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
    """``running``, ``failed`` (also: killed, i.e. marked running by a process that is gone),
    ``interrupted`` (stopped by SIGTERM / SIGINT, ``signal`` in run.json), ``done``."""
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
        if s in STOPPED and not has_checkpoint(run_dir):
            _remove_own_files(run_dir, info, s)
            click.echo(f"medmm: replacing the run in {run_dir}: it {s} before its first checkpoint "
                       f"({_error(info)})", err=True)
            return
        if s in STOPPED:
            raise MedmmError(f"{run_dir} holds a run that {s} ({_error(info)}) after a checkpoint; "
                             f"continue it with --resume {run_dir}, or choose another --out")
        raise MedmmError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise MedmmError(f"--out {run_dir} is a folder that already holds files and is not a medmm run; "
                         "medmm never overwrites them: choose a new or empty folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise MedmmError(f"--out {run_dir} is a file, not a folder")


def own_files(run_dir: Path) -> list[str]:
    """Every file under ``run_dir`` but run.json and the lock, as sorted POSIX paths (the manifest)."""
    run_dir = Path(run_dir)
    out = []
    for p in run_dir.rglob("*"):
        if (p.is_file() or p.is_symlink()) and not p.is_dir():
            rel = p.relative_to(run_dir).as_posix()
            if rel not in (INFO, LOCK):
                out.append(rel)
    return sorted(out)


def record_files(run_dir: Path) -> None:
    """Write the manifest of what is in the run directory now into run.json (the run wrote it all)."""
    try:
        info = read_info(run_dir)
    except MedmmError:
        return
    info[FILES] = own_files(run_dir)
    write_info(run_dir, info)


def _remove_own_files(run_dir: Path, info: dict[str, Any], s: str) -> None:
    """Remove the files run.json lists (caches kept), then emptied folders, run.json and the lock.

    Refuses, removing nothing, when run.json lists no files or the folder holds files it does not list.
    """
    listed = info.get(FILES)
    if listed is None and info.get("status") == "running":  # killed (SIGKILL, out of memory) while preparing data
        raise MedmmError(f"{run_dir} holds a run that was killed before it recorded the files it wrote (while "
                         "preparing its data); medmm removes only files it knows it wrote: remove the folder "
                         "yourself, or choose another --out")
    if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
        raise MedmmError(f"{run_dir} has a run.json saying the run {s}, but no list of the files medmm wrote (a "
                         "run.json written by hand or by an older medmm); medmm removes only its own files: "
                         "choose another --out, or empty the folder yourself")
    listed = [r for r in listed if r and not r.startswith("/") and ".." not in r.split("/")]  # inside the run only
    known = set(listed)
    foreign = [f for f in own_files(run_dir) if f not in known]
    if foreign:
        tops = sorted({f.split("/")[0] + ("/" if "/" in f else "") for f in foreign})
        raise MedmmError(f"{run_dir} holds {len(foreign)} file(s) that the {s} run did not write (in "
                         f"{', '.join(tops[:3])}{' ...' if len(tops) > 3 else ''}); medmm never deletes them: "
                         "choose another --out")
    root = run_dir.resolve()
    for rel in listed:
        if rel.split("/")[0] == CACHE:
            continue
        p = run_dir / rel
        if not p.is_symlink() and not p.resolve(strict=False).is_relative_to(root):
            continue  # through a linked folder out of the run: never followed
        if p.is_symlink() or p.is_file():
            p.unlink()
    folders = {"/".join(rel.split("/")[:i]) for rel in listed for i in range(1, rel.count("/") + 1)}
    for rel in sorted(folders, key=lambda r: r.count("/"), reverse=True):  # deepest first: emptied ones go
        d = run_dir / rel
        if rel.split("/")[0] != CACHE and d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()
    (run_dir / INFO).unlink(missing_ok=True)


def check_resume(run_dir: Path) -> None:
    """``--resume run_dir`` can continue: a run, not in use, with a checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / INFO).exists():
        raise MedmmError(f"--resume {run_dir}: not a medmm run directory (no run.json)")
    info = read_info(run_dir)
    if status(info, run_dir) == "running":
        raise MedmmError(f"--resume {run_dir}: the run is still running (pid {info.get('pid')})")
    if not has_checkpoint(run_dir):
        if status(info, run_dir) in STOPPED:
            raise MedmmError(f"--resume {run_dir}: the run {status(info, run_dir)} before its first checkpoint "
                             f"({_error(info)}); "
                             f"start it again with --out {run_dir}")
        raise MedmmError(f"--resume {run_dir}: no checkpoint to resume from")


def skipped_report_of(path: Path) -> Path:
    """The skipped-inputs report written beside a predictions file: ``p.csv`` -> ``p.skipped.csv``."""
    path = Path(path)
    return path.with_name(path.stem + ".skipped.csv")


def check_output_file(path: Path, *, overwrite: bool = False) -> None:
    """Fail before any work when ``path`` (a file to write, e.g. ``predict --out``) cannot be written.

    An existing file (or its skipped-inputs report beside it) is never replaced unless ``overwrite``
    (``--overwrite``): the one rule of predict and evaluate outputs.
    """
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise MedmmError(f"--out {path} is a folder; give a file name, e.g. {path / 'predictions.csv'}")
    if not overwrite:
        for existing in (path, skipped_report_of(path)):
            if existing.exists() or existing.is_symlink():
                raise MedmmError(f"--out {path}: {existing} already exists; medmm never overwrites a file: give a "
                                 "new name, or add --overwrite to replace it")
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
