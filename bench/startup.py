"""`medmm --help` start-up cost: ratio to `python -c pass`, and proof that torch is not imported."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def wall(cmd: list[str], repeat: int = 7) -> float:
    """Median wall time of a command."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def heavy_imports() -> list[str]:
    """Heavy top-level packages imported by `medmm --help` (python -X importtime)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "medmm", "--help"], capture_output=True, text=True)
    names = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    return sorted(names & {"torch", "transformers", "timm", "pydicom", "sklearn", "numpy", "pandas"})


def main() -> None:
    base = wall([sys.executable, "-c", "pass"])
    medmm = wall([sys.executable, "-m", "medmm", "--help"])
    tasks = wall([sys.executable, "-m", "medmm", "tasks"])
    print(f"python -c pass      {base * 1000:7.1f} ms")
    print(f"medmm --help        {medmm * 1000:7.1f} ms   ratio {medmm / base:5.2f}x")
    print(f"medmm tasks         {tasks * 1000:7.1f} ms   ratio {tasks / base:5.2f}x (loads every plugin)")
    heavy = heavy_imports()
    print(f"heavy imports by --help: {', '.join(heavy) if heavy else 'none (torch not imported)'}")


if __name__ == "__main__":
    main()
