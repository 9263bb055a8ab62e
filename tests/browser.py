"""Open a page in a real headless browser (Debian's ``chromium``), as a reader would.

Tests call :func:`open_page`; where no Chromium is installed they skip with the reason
(``.ci/run`` installs it). The browser starts with a fresh profile in a temporary folder, no
network services, and is bounded in time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]\s*(.*)")
"""A page's console message as Chromium logs it on stderr (``--enable-logging=stderr``)."""


def chromium() -> str:
    """The Chromium executable, or skip the test saying why."""
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    return exe


def open_page(page: Path, screenshot: Path, *, width: int = 1280, height: int = 2400, timeout: int = 120) -> list[str]:
    """Load ``page`` (a local file) headless, save a PNG of it to ``screenshot``; return its console messages
    (errors, warnings and logs: a page that runs no script has none)."""
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="medmm-chromium-") as profile:
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}",
             f"--screenshot={screenshot}", Path(page).resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0 and Path(screenshot).is_file(), proc.stderr[-2000:]
    return [m.group(1) for m in map(CONSOLE.search, proc.stderr.splitlines()) if m]
