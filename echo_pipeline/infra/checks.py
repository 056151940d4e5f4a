"""The checks' outcomes, as plain records: each stage's checks (``pairs/checks.py``,
``datasets/checks.py``, ``evaluation/checks.py``) are plain functions of plain inputs that
return them.

A check that only runs inside Dagster can only be seen to pass: nothing makes it fail. Here
each check is computed from plain inputs (a pairs table, tokenised examples, a few ids), so a
unit test can hand it a broken input and watch it fail. The Dagster layer only turns each
:class:`CheckOutcome` into an ``AssetCheckResult``, keeping its name, metadata and description.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict: its name, whether it passed, the numbers behind it, and why not."""

    name: str
    passed: bool
    metadata: dict[str, Any]
    description: str | None = None
    warn_only: bool = False  # news for whoever reads it, never a reason to stop downstream


class Outcomes:
    """Iteration over a group's outcomes in field (= declaration) order."""

    def __iter__(self) -> Iterator[CheckOutcome]:
        return (getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self)

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed, in order."""
        return [outcome.name for outcome in self if not outcome.passed]
