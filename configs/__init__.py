"""Default configuration files of the built-in tasks (one YAML per task)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent


def path(task: str) -> Path:
    """The default YAML of a built-in task."""
    return CONFIG_DIR / f"{task}.yaml"
