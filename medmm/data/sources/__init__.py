"""Where DICOM data come from: a local folder or a DICOMweb server, behind one interface.

``parse_source(spec)`` turns a ``--data`` value into a :class:`FolderSource` (a path) or a
:class:`DicomwebSource` (``dicomweb+https://...``, see :mod:`medmm.data.sources.dicomweb`). Both
answer ``describe()`` (safe to print) and ``is_remote``; a remote source is read into a local
folder by :mod:`medmm.pacs` (de-identified in memory on the way) before the readers see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medmm.data.sources.dicomweb import Credentials, DicomwebURL, is_dicomweb, parse_dicomweb
from medmm.errors import DataError

__all__ = ["DicomwebSource", "FolderSource", "Source", "is_dicomweb", "parse_source"]


@dataclass(frozen=True)
class FolderSource:
    """DICOM files (or a table) under a local path."""

    path: Path
    is_remote = False

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class DicomwebSource:
    """The instances a DICOMweb server returns for the source's QIDO-RS matching keys."""

    url: DicomwebURL
    is_remote = True

    def describe(self) -> str:
        keys = ", ".join(k for k, _ in self.url.filters)
        return f"{self.url.where}" + (f" (matching on {keys})" if keys else "")

    def server(self, credentials: Credentials | None = None, *, connections: int = 4, retries: int = 4,
               backoff: float = 0.5, timeout: float = 60.0):  # type: ignore[no-untyped-def]
        """A connected :class:`~medmm.data.sources.dicomweb.DicomwebServer` (credentials from the
        environment unless given)."""
        from medmm.data.sources.dicomweb import DicomwebServer

        return DicomwebServer(self.url, credentials or Credentials.from_env(), connections=connections,
                              retries=retries, backoff=backoff, timeout=timeout)


Source = FolderSource | DicomwebSource


def parse_source(spec: str | Path, *, must_exist: bool = True) -> Source:
    """A ``--data`` value as a source; a missing local path is a one-line error when ``must_exist``."""
    if is_dicomweb(str(spec)):
        return DicomwebSource(parse_dicomweb(str(spec)))
    path = Path(spec)
    if must_exist and not path.exists():
        raise DataError(f"--data path does not exist: {path}")
    return FolderSource(path)
