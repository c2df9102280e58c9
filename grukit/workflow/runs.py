"""Run folders: PROJECT/TASK/NAME, created fresh for every run and never overwritten."""

from __future__ import annotations

from pathlib import Path

from grukit.errors import ConfigError


def new_run_dir(project: str, task: str, name: str) -> Path:
    """Create and return PROJECT/TASK/NAME, or NAME2, NAME3, ... when it exists (``mkdir`` is atomic, so two
    runs started at once get different folders). The folder gets a ``weights`` subfolder."""
    return new_folder(Path(project) / task, name)


def new_folder(parent: Path, name: str, weights: bool = True) -> Path:
    """Create and return PARENT/NAME, or NAME2, NAME3, ... when it exists; with a ``weights`` subfolder if
    ``weights``."""
    parent.mkdir(parents=True, exist_ok=True)
    for index in range(1, 100_000):
        path = parent / (name if index == 1 else f"{name}{index}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        if weights:
            (path / "weights").mkdir()
        return path
    raise ConfigError(f"too many runs named {name!r} in {parent}; choose another name=")


def find_resume_dir(project: str, task: str, name: str) -> Path:
    """The run to resume: PROJECT/TASK/NAME, or for name "auto" the most recently changed run there that has
    a ``last`` checkpoint. ConfigError when there is none."""
    parent = Path(project) / task
    if name != "auto":
        path = parent / name
        if not (path / "weights" / "last.safetensors").is_file():
            raise ConfigError(f"resume: {path} has no weights/last.safetensors to continue from")
        return path
    runs = [p for p in parent.glob("*") if (p / "weights" / "last.safetensors").is_file()] if parent.is_dir() else []
    if not runs:
        raise ConfigError(f"resume: no run with a last checkpoint in {parent}; train one first")
    return max(runs, key=lambda p: (p / "weights" / "last.safetensors").stat().st_mtime)
