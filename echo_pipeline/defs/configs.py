"""Dagster configs derived from the core config dataclasses: one config per stage, its fields,
types, defaults, bounds and descriptions written once, in the core (``infra.settings``).

A launchpad field that restated a core default in prose drifted from it; one that was never
restated could not be set at all. :func:`derived_config` makes a ``dg.Config`` subclass with
one field per core setting, so every core setting can be set from the launchpad.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal

import dagster as dg
import pydantic
from pydantic import Field

from echo_pipeline.infra.settings import Setting, settings_of


def launchpad_type(annotation: Any) -> Any:
    """The annotation as Dagster's config system takes it: ``Literal`` choices as ``str``
    (the core validates them), tuples as lists, ``str | list[str]`` as ``list[str]``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str
    if origin is tuple:
        return list[typing.get_args(annotation)[0]]
    if origin is collections.abc.Mapping:
        return dict[typing.get_args(annotation)]
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        lists = [a for a in members if typing.get_origin(a) is list]
        inner = lists[0] if lists else launchpad_type(members[0])
        return inner | None if optional else inner
    return annotation


def _field(setting: Setting, overrides: bool) -> tuple[Any, Any]:
    kind = launchpad_type(setting.type)
    if overrides:
        return kind | None, Field(default=None, description=setting.description, **setting.bounds)
    if setting.required:
        return kind, Field(description=setting.description, **setting.bounds)
    default = setting.default
    if isinstance(default, list | tuple | dict):  # a fresh one per config, as a list if a tuple
        return kind, Field(
            default_factory=lambda d=default: dict(d) if isinstance(d, dict) else list(d),
            description=setting.description,
            **setting.bounds,
        )
    return kind, Field(default=default, description=setting.description, **setting.bounds)


def derived_config(
    name: str,
    core: type | Iterable[type],
    *,
    doc: str,
    base: type[dg.Config] | type[dg.ConfigurableResource] = dg.Config,
    overrides: bool = False,
) -> type[dg.Config]:
    """A ``dg.Config`` subclass of ``base`` named ``name`` with a field per setting of the
    dataclass(es) ``core`` (those ``base`` already declares left out).

    ``overrides``: every field defaults to None, meaning "keep the core's value" (a recipe's
    overrides), and the core's own default shows in the description instead."""
    cores = (core,) if isinstance(core, type) else tuple(core)
    skip = set(base.model_fields)
    fields: dict[str, Any] = {}
    for each in cores:
        for setting in settings_of(each):
            if setting.name in skip or setting.name in fields:
                continue
            if overrides and not setting.required:
                setting = _with_default_said(setting)
            fields[setting.name] = _field(setting, overrides)
    made = pydantic.create_model(name, __base__=base, __doc__=doc, **fields)
    made.__module__ = base.__module__ if base is not dg.Config else __name__
    return made


def _with_default_said(setting: Setting) -> Setting:
    said = f"{setting.description} (Default {setting.default!r}.)"
    return dataclasses.replace(setting, description=said)


def core_values(config: dg.Config, core: type) -> dict[str, Any]:
    """The values ``config`` holds for the settings of ``core``, as the core takes them
    (a list where the core has a tuple)."""
    values = {}
    for setting in settings_of(core):
        if setting.name not in type(config).model_fields:
            continue
        value = getattr(config, setting.name)
        if typing.get_origin(setting.type) is tuple and isinstance(value, list):
            value = tuple(value)
        values[setting.name] = value
    return values
