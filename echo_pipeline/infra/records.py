"""Typed records handed from one stage to the next, each with one writer and one reader.

- :class:`DatasetManifest`: what a template dataset was built with (template, system prompt,
  EOS id, who "me" is, token budget, base model, reply memory), a JSON file beside the dataset
  Parquet. The adapter takes its system prompt and my names from here, and chat takes them from
  the adapter; chat, evaluation and the MLflow model take the reply memory (how many examples,
  which index) from here, through the adapter's dataset digest.
- :class:`AdapterMetadata`: ``echo_metadata.json`` in every adapter directory: where the
  adapter came from (base model, data, recipe, MLflow run) and how to prompt it.

Both are written atomically through :mod:`echo_pipeline.infra.storage` and read back with a clear
error naming the file when it is missing or malformed.

Jobs and their outcomes handed between processes (``AdapterJob``, ``PreferenceJob`` as Dagster
Pipes extras) go as JSON through :func:`to_json_dict` and come back through
:func:`from_json_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

METADATA_FILE = "echo_metadata.json"


class RecordError(ValueError):
    """A record file that is missing or unreadable; the message names the file and the fix."""


def to_json_dict(record: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready values: nested dataclasses as dicts, paths as strings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(record).items()}


def from_json_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """The dataclass :func:`to_json_dict` wrote: each field annotated ``Path`` a path again, and each
    annotated with a dataclass rebuilt from its dict (the annotations say which)."""
    values = dict(data)
    for name, kind in typing.get_type_hints(cls).items():
        if name not in values:
            continue
        if kind is Path:
            values[name] = Path(values[name])
        elif dataclasses.is_dataclass(kind) and isinstance(values[name], dict):
            values[name] = kind(**values[name])
    return cls(**values)


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {what}; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"{path}: {what} is not valid JSON ({error}); {fix}") from error
    if not isinstance(data, dict):
        raise RecordError(f"{path}: {what} is not a JSON object; {fix}")
    return data


def _write_json(data: Mapping[str, Any], path: Path) -> Path:
    from echo_pipeline.infra.storage import write_text

    return write_text(json.dumps(data, indent=2, default=str) + "\n", Path(path))


# --- dataset manifest -------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetManifest:
    """What one ``template_dataset`` partition was rendered and tokenised with."""

    template: str
    system_prompt: str
    eos_id: int
    me_ids: tuple[str, ...]
    me_names: tuple[str, ...]  # my display names in the export, most used first
    max_tokens: int
    base_model: str  # the source the tokenizer came from
    base_model_fingerprint: str
    memory_k: int = 0  # reply-memory examples per prompt (0: none)
    memory_index: str = ""  # the reply_memory Parquet the examples came from
    memory_digest: str = ""  # MemoryIndex.digest() of that index
    dataset_digest: str = ""  # adapters.dataset_digest of the dataset: ties an adapter to this file
    group_chat: bool = False  # every speaker named in every prompt (templates.is_group_chat)
    context_turns: int | None = None  # earlier turns a pair keeps (None: not recorded)

    @property
    def me_name(self) -> str:
        """The name the default system prompt uses ("" when the pairs did not say)."""
        return self.me_names[0] if self.me_names else ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "me_ids": list(self.me_ids), "me_names": list(self.me_names)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetManifest:
        return cls(
            template=str(data["template"]),
            system_prompt=str(data["system_prompt"]),
            eos_id=int(data["eos_id"]),
            me_ids=tuple(str(i) for i in data["me_ids"]),
            me_names=tuple(str(n) for n in data["me_names"]),
            max_tokens=int(data["max_tokens"]),
            base_model=str(data["base_model"]),
            base_model_fingerprint=str(data["base_model_fingerprint"]),
            # absent in manifests written before reply memory: no memory
            memory_k=int(data.get("memory_k") or 0),
            memory_index=str(data.get("memory_index") or ""),
            memory_digest=str(data.get("memory_digest") or ""),
            dataset_digest=str(data.get("dataset_digest") or ""),
            group_chat=bool(data.get("group_chat") or False),
            context_turns=None if data.get("context_turns") is None else int(data["context_turns"]),
        )

    def write(self, path: str | Path) -> Path:
        """The one writer: atomically, so a reader sees the old manifest or the new one."""
        return _write_json(self.to_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> DatasetManifest:
        """The one reader; a missing or partial manifest names the file and what to do."""
        path = Path(path)
        fix = "re-materialise template_dataset"
        data = _read_json(path, "dataset manifest", fix)
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as error:
            raise RecordError(
                f"{path}: dataset manifest lacks or garbles {error}; {fix}"
            ) from error


# --- adapter metadata -------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelRecord:
    """The base model an adapter applies to."""

    source: str
    path: str | None = None
    fingerprint: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class DatasetRecord:
    """The exact data an adapter was trained on."""

    path: str | None = None
    digest: str | None = None
    rows: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackingRecord:
    """The MLflow run that trained the adapter."""

    tracking_uri: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class AdapterMetadata:
    """``echo_metadata.json``: lineage of an adapter and how to prompt it."""

    template: str
    base_model: BaseModelRecord
    experiment: str = ""
    system_prompt: str = ""
    me_names: tuple[str, ...] = ()
    # datasets.prompt.PromptSpec.to_dict(): how to prompt the adapter ({}: written before it)
    prompt: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetRecord = field(default_factory=DatasetRecord)
    training: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    results: dict[str, float] = field(default_factory=dict)
    package_version: str | None = None
    git_commit: str | None = None
    mlflow: TrackingRecord = field(default_factory=TrackingRecord)

    @property
    def me_name(self) -> str:
        return self.me_names[0] if self.me_names else ""

    @property
    def calibrated_temperature(self) -> float | None:
        """The sampling temperature training measured for this adapter on the validation
        replies (None: no validation split, or trained before it was measured)."""
        value = self.results.get("calibrated_temperature")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (also logged to MLflow as ``echo_metadata.json``)."""
        return {
            "base_model": asdict(self.base_model),
            "template": self.template,
            "experiment": self.experiment,
            "system_prompt": self.system_prompt,
            "me_names": list(self.me_names),
            "prompt": dict(self.prompt),
            "dataset": asdict(self.dataset),
            "training": dict(self.training),
            "fingerprint": self.fingerprint,
            "results": dict(self.results),
            "package_version": self.package_version,
            "git_commit": self.git_commit,
            "mlflow": asdict(self.mlflow),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterMetadata:
        """``template`` and ``base_model.source`` are required; the rest defaults when absent
        (files written by hand, or before a field existed)."""
        base = data["base_model"]
        dataset = data.get("dataset") or {}
        tracked = data.get("mlflow") or {}
        return cls(
            template=str(data["template"]),
            base_model=BaseModelRecord(
                source=str(base["source"]),
                path=base.get("path"),
                fingerprint=base.get("fingerprint"),
                revision=base.get("revision"),
            ),
            experiment=str(data.get("experiment") or ""),
            system_prompt=str(data.get("system_prompt") or ""),
            me_names=tuple(str(n) for n in data.get("me_names") or ()),
            prompt=dict(data.get("prompt") or {}),
            dataset=DatasetRecord(
                path=dataset.get("path"),
                digest=dataset.get("digest"),
                rows=dict(dataset.get("rows") or {}),
            ),
            training=dict(data.get("training") or {}),
            fingerprint=data.get("fingerprint"),
            results=dict(data.get("results") or {}),
            package_version=data.get("package_version"),
            git_commit=data.get("git_commit"),
            mlflow=TrackingRecord(
                tracking_uri=tracked.get("tracking_uri"),
                experiment_id=tracked.get("experiment_id"),
                run_id=tracked.get("run_id"),
            ),
        )

    def write(self, adapter_dir: str | Path) -> Path:
        """The one writer of ``<adapter_dir>/echo_metadata.json``."""
        return write_adapter_metadata(adapter_dir, self)

    @classmethod
    def load(cls, adapter_dir: str | Path) -> AdapterMetadata:
        """The one reader: the metadata of an adapter directory, with a clear error if absent."""
        path = Path(adapter_dir) / METADATA_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{adapter_dir}: not an echo_pipeline adapter (no {METADATA_FILE})"
            )
        data = _read_json(path, METADATA_FILE, "re-materialise lora_adapter")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise RecordError(
                f"{path}: lacks or garbles {error}; re-materialise lora_adapter"
            ) from error


def write_adapter_metadata(adapter_dir: str | Path, metadata: AdapterMetadata | Mapping) -> Path:
    """Write ``echo_metadata.json`` (an :class:`AdapterMetadata`, or a raw mapping in tests)."""
    data = metadata.to_dict() if isinstance(metadata, AdapterMetadata) else dict(metadata)
    return _write_json(data, Path(adapter_dir) / METADATA_FILE)
