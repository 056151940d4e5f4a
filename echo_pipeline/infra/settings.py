"""Settings of the core config dataclasses, each written once: its default, its description,
its bounds, and whether it changes what a stage computes or only how fast or where.

The core dataclasses (``TrainingConfig``, ``PairingConfig``, ``EvaluationConfig``...) declare
their fields with :func:`setting`; the Dagster configs of the launchpad and the CLI's flags are
derived from :func:`settings_of`, and fingerprints leave out :func:`speed_only` fields, so a
default, a bound or a rule changed here changes everywhere. Standard library only.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any

_KEY = "echo.setting"


@dataclass(frozen=True)
class Setting:
    """One field of a core config: what the launchpad shows and validates for it."""

    name: str
    type: Any  # the resolved annotation
    default: Any  # MISSING where the field is required
    description: str
    bounds: dict[str, float]  # pydantic's ge / gt / le / lt
    speed_only: bool  # changes how fast or where a result is computed, not the result

    @property
    def required(self) -> bool:
        return self.default is MISSING


def setting(
    default: Any = MISSING,
    description: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    speed_only: bool = False,
) -> Any:
    """A dataclass field carrying its description, bounds and ``speed_only`` flag."""
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    metadata = {_KEY: (description, bounds, speed_only)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def settings_of(cls: type) -> tuple[Setting, ...]:
    """Every field of the dataclass ``cls`` declared with :func:`setting`, in order."""
    hints = typing.get_type_hints(cls)
    found = []
    for spec in dataclasses.fields(cls):
        if _KEY not in spec.metadata:
            continue
        description, bounds, fast = spec.metadata[_KEY]
        if spec.default is not MISSING:
            default = spec.default
        elif spec.default_factory is not MISSING:
            default = spec.default_factory()
        else:
            default = MISSING
        found.append(Setting(spec.name, hints[spec.name], default, description, bounds, fast))
    return tuple(found)


def speed_only(cls: type) -> frozenset[str]:
    """The settings of ``cls`` that a fingerprint of its result leaves out."""
    return frozenset(s.name for s in settings_of(cls) if s.speed_only)
