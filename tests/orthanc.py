"""A real Orthanc PACS on 127.0.0.1 for the DICOMweb tests and ``bench/dicomweb_pull.py``.

Debian's ``orthanc`` + ``orthanc-dicomweb``: a random free port, storage and index in a temporary
folder, no DICOM (DIMSE) server, no remote access. :func:`start_orthanc` returns ``None`` with a
reason when the binary or the DICOMweb plugin is absent, so a caller can skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
READY_TIMEOUT_S = 30.0


@dataclass
class Orthanc:
    """A running Orthanc: its REST root and DICOMweb root (both http://127.0.0.1:PORT/...)."""

    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    auth: tuple[str, str] | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    @property
    def url(self) -> str:
        """The medmm source spelling of this server."""
        return f"dicomweb+{self.dicomweb}"

    def upload(self, files: Iterable[Path]) -> int:
        """POST each file to /instances; returns how many Orthanc accepted."""
        import requests

        n = 0
        for f in files:
            r = requests.post(f"{self.rest}/instances", data=Path(f).read_bytes(), auth=self.auth, timeout=30)
            n += r.status_code == 200
        return n

    def count(self) -> int:
        import requests

        return len(requests.get(f"{self.rest}/instances", auth=self.auth, timeout=10).json())


def unavailable() -> str | None:
    """Why Orthanc cannot be started here, or ``None``."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc)"
    if not PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin is not installed ({PLUGIN}; Debian package orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def start_orthanc(folder: Path, users: dict[str, str] | None = None) -> Iterator[Orthanc | None]:
    """Run Orthanc until the block ends (``None`` when it is not installed); ``users`` turns on
    HTTP basic authentication with those credentials."""
    if unavailable():
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "medmm-test", "HttpPort": port, "RemoteAccessAllowed": False, "DicomServerEnabled": False,
        "DicomPort": free_port(), "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"), "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "MainDicomTags",
                     "SeriesMetadata": "MainDicomTags"},
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "HttpThreadsCount": 16, "StorageCompression": False, "SaveJobs": False,
        "HttpCompressionEnabled": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder, start_new_session=True)
    server = Orthanc(port, proc, folder, next(iter(users.items())) if users else None)
    try:
        _wait_ready(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _wait_ready(server: Orthanc) -> None:
    import requests

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {server.process.returncode}; see {server.folder}/orthanc.log")
        try:
            r = requests.get(f"{server.rest}/system", auth=server.auth, timeout=2)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer within {READY_TIMEOUT_S:.0f} s; see {server.folder}/orthanc.log")


def sample_files(limit: int | None = None) -> list[Path]:
    """Small real DICOM images from pydicom's test files (installed; walked, never fetched)."""
    import pydicom

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm"]
    files = [root / n for n in names if (root / n).is_file()]
    files += sorted((root / "dicomdirtests").rglob("*"))
    files = [f for f in files if f.is_file() and f.name != "DICOMDIR" and os.path.getsize(f) > 0]
    return files[:limit] if limit else files
