"""Where every artefact lives under one data folder: the only module that spells a data path.

The IO manager, the assets that write folders (adapters, reports, JSONL), the CLI, the runner
and the benchmarks all ask a :class:`Layout`, so a ``ParquetIOManager(base_dir=...)`` moves
every artefact together and nothing looks for a file where another part never wrote it.
Pure: no Dagster import (an asset key is passed as its path, ``AssetKey.path``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from echo_pipeline.infra.paths import data_dir

#: Beside ``template_dataset/<template>.parquet``: what the dataset was built with.
DATASET_MANIFEST_SUFFIX = ".manifest.json"


def partition_slug(partition: str) -> str:
    """A partition key as a file name: ``chatml|demo`` -> ``chatml__demo``; never a path."""
    slug = str(partition).replace("|", "__")
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in slug).lstrip(".") or "_"


def adapter_slug(template: str, experiment: str) -> str:
    """``<template>__<experiment>``: the folder name of everything made per adapter partition."""
    return f"{partition_slug(template)}__{partition_slug(experiment)}"


@dataclass(frozen=True)
class Layout:
    """The artefacts of one pipeline under ``root`` (default: :func:`~echo_pipeline.infra.paths.data_dir`)."""

    root: Path

    @classmethod
    def default(cls) -> Layout:
        """The layout under ``ECHO_DATA_DIR`` (else ``<repo>/data``), read now, not at import."""
        return cls(data_dir())

    @classmethod
    def at(cls, base_dir: str | Path | None) -> Layout:
        """The layout under ``base_dir``; empty or ``None``: :meth:`default`."""
        return cls(Path(base_dir)) if base_dir else cls.default()

    def asset_path(
        self, asset_key: Sequence[str], partition: str | None = None, suffix: str = ".parquet"
    ) -> Path:
        """``<root>/<key...>.parquet``, or ``<root>/<key...>/<partition>.parquet`` when partitioned."""
        key = [str(part) for part in asset_key]
        folder = Path(self.root).joinpath(*key[:-1])
        if partition is not None:
            return folder / key[-1] / f"{partition_slug(partition)}{suffix}"
        return folder / f"{key[-1]}{suffix}"

    def pairs_path(self) -> Path:
        """The conversation_pairs Parquet."""
        return self.asset_path(["conversation_pairs"])

    def dataset_path(self, template: str) -> Path:
        """The Parquet of one template_dataset partition."""
        return self.asset_path(["template_dataset"], template)

    def dataset_manifest_path(self, template: str) -> Path:
        """The :class:`~echo_pipeline.infra.records.DatasetManifest` beside :meth:`dataset_path`."""
        return self.asset_path(["template_dataset"], template, DATASET_MANIFEST_SUFFIX)

    def jsonl_dir(self, template: str) -> Path:
        """``train/val/test.jsonl`` of one template, in the seed's ``{"inputs": ...}`` shape."""
        return self.root / "template_dataset_jsonl" / partition_slug(template)

    def adapter_dir(self, template: str, experiment: str) -> Path:
        """The published, loadable adapter of one template and experiment."""
        return self.root / "lora_adapter" / adapter_slug(template, experiment)

    def training_work_dir(self, template: str, experiment: str) -> Path:
        """Checkpoints live here between attempts, so a re-materialisation resumes."""
        return self.root / "training_work" / adapter_slug(template, experiment)

    def report_dir(self, template: str, experiment: str) -> Path:
        """The evaluation report (HTML + metrics.json) of one adapter."""
        return self.root / "evaluation_report" / adapter_slug(template, experiment)

    def comparison_dir(self) -> Path:
        """The leaderboard over every adapter."""
        return self.root / "model_comparison"

    def logs_dir(self) -> Path:
        """Logs of ``echo-pipeline run``."""
        return self.root / "logs"
