"""The one exception type every export reader raises for bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path


class ExportError(ValueError):
    """A chat export that cannot be read, with the file and what is wrong (and what to do).

    ``str(error)`` is always one line, ``"<path>: <problem>"``, so it can go straight into a
    Dagster failure message or a CLI error without a traceback.
    """

    def __init__(self, path: str | Path | zipfile.Path, problem: str) -> None:
        # A zip member is named as ``archive.zip/member`` (its str), which names both.
        self.path = Path(str(path) if isinstance(path, zipfile.Path) else path)
        # One line, whatever the caller passed: multi-line problems break log readers.
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def __reduce__(self):  # keep it picklable across Dagster's multiprocess executor
        return (type(self), (self.path, self.problem))
