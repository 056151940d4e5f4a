"""Is an asset partition current? The provenance it would record now against the one its last
materialisation recorded, for the shell runner (which skips what is current) and the freshness
schedule (which requests only what is not).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg

from echo_pipeline.defs import datasets as dataset_defs
from echo_pipeline.defs import pairs as pair_defs
from echo_pipeline.defs.datasets import DatasetConfig
from echo_pipeline.defs.evaluation import EvaluationReportConfig
from echo_pipeline.defs.exports import ExportConfig, export_manifest
from echo_pipeline.defs.pairs import PairsConfig
from echo_pipeline.defs.partitions import adapter_partitions
from echo_pipeline.defs.provenance import (
    adapter_provenance,
    comparison_provenance,
    dataset_provenance,
    ingest_provenance,
    latest_materialization,
    memory_provenance,
    pairs_provenance,
    report_provenance,
)
from echo_pipeline.defs.training import LoraConfig
from echo_pipeline.infra.provenance import PROVENANCE_METADATA_KEY, Provenance
from echo_pipeline.training.experiments import experiment_config


def recorded_provenance(materialization: dg.AssetMaterialization | None) -> Provenance | None:
    if materialization is None:
        return None
    value = materialization.metadata.get(PROVENANCE_METADATA_KEY)
    return Provenance.from_json(getattr(value, "value", None))


def failed_blocking_checks(instance: dg.DagsterInstance, asset: str) -> list[str]:
    """Blocking checks of ``asset`` whose latest execution did not pass."""
    from dagster._core.storage.asset_check_execution_record import (  # no public reader
        AssetCheckExecutionRecordStatus,
    )

    # Read through the modules: an asset imported by name here would be found twice as a def.
    keys = [
        spec.key
        for checks in (*pair_defs.pairs_checks, dataset_defs.template_dataset)
        for spec in checks.check_specs
        if spec.asset_key == dg.AssetKey(asset) and spec.blocking
    ]
    if not keys:
        return []
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    return sorted(
        key.name
        for key, record in latest.items()
        if record.status != AssetCheckExecutionRecordStatus.SUCCEEDED
    )


# --- is it current? --------------------------------------------------------------------------

# asset -> (instance, partition, op config, base model resource) -> the provenance it would have
Expected = Callable[[dg.DagsterInstance, str | None, dict, Any], Provenance]


def _expected_ingest(instance, partition, op_config, base_model) -> Provenance:
    manifest = export_manifest(ExportConfig(**op_config).path)
    return ingest_provenance(manifest.column("sha256").to_pylist())


def _expected_pairs(instance, partition, op_config, base_model) -> Provenance:
    return pairs_provenance(instance, PairsConfig(**op_config))


def _expected_memory(instance, partition, op_config, base_model) -> Provenance:
    return memory_provenance(instance)


def _expected_dataset(instance, partition, op_config, base_model) -> Provenance:
    return dataset_provenance(
        instance, DatasetConfig(**op_config), base_model.resolve().fingerprint
    )


def _expected_adapter(instance, partition, op_config, base_model) -> Provenance:
    dims = _dimensions(partition)
    config = LoraConfig(**op_config)
    recipe = experiment_config(dims["experiment"], config.overrides())
    return adapter_provenance(
        instance,
        dims["template"],
        recipe,
        base_model.resolve().fingerprint,
        world_size=config.world_size,
    )


def _expected_report(instance, partition, op_config, base_model) -> Provenance:
    return report_provenance(instance, str(partition), EvaluationReportConfig(**op_config))


def _expected_comparison(instance, partition, op_config, base_model) -> Provenance:
    return comparison_provenance(instance)


def _dimensions(partition: Any) -> dict[str, str]:
    """``"demo|chatml"`` (how a multi-partition key prints) -> {"experiment": .., "template": ..}."""
    key = adapter_partitions.get_partition_key_from_str(str(partition))
    return dict(key.keys_by_dimension)


EXPECTED: Mapping[str, Expected] = {
    "raw_chat_export": _expected_ingest,
    "chat_messages": _expected_ingest,
    "conversation_pairs": _expected_pairs,
    "reply_memory": _expected_memory,
    "template_dataset": _expected_dataset,
    "lora_adapter": _expected_adapter,
    "evaluation_report": _expected_report,
    "model_comparison": _expected_comparison,
}


def output_missing(layout: Any, asset: str, partition: str | None) -> bool:
    """The files a materialisation wrote are gone (a deleted data folder, another data dir)."""
    if asset in ("raw_chat_export", "chat_messages", "conversation_pairs", "reply_memory"):
        return not layout.asset_path([asset]).exists()
    if asset == "template_dataset":
        return not (
            layout.dataset_path(str(partition)).exists()
            and layout.dataset_manifest_path(str(partition)).exists()
        )
    if asset == "model_comparison":
        return not layout.comparison_dir().is_dir()
    dims = _dimensions(partition)
    template, experiment = dims["template"], dims["experiment"]
    if asset == "lora_adapter":
        return not (layout.adapter_dir(template, experiment) / "echo_metadata.json").exists()
    return not layout.report_dir(template, experiment).is_dir()


def stale_reasons(
    instance: dg.DagsterInstance,
    asset: str,
    partition: str | None,
    op_config: Mapping[str, Any] | None,
    resources: Mapping[str, Any],
) -> list[str]:
    """Why ``asset[partition]`` would be re-made now (empty: it is current).

    ``op_config`` is the run config of its op (defaults fill the rest, as in a run), and
    ``resources`` those the run would use (the base model and the IO manager's layout count).
    """
    base_model = resources["base_model"]
    materialization = latest_materialization(instance, asset, partition)
    if materialization is None:
        return ["never materialised"]
    try:
        expected = EXPECTED[asset](instance, partition, dict(op_config or {}), base_model)
    except Exception as error:  # an unreadable export, an unknown base: the run says it well
        return [f"cannot tell ({type(error).__name__}: {str(error)[:200]})"]
    reasons = expected.changes_from(recorded_provenance(materialization))
    if output_missing(resources["io_manager"].layout(), asset, partition):
        reasons.append("output missing on disk")
    failed = failed_blocking_checks(instance, asset)
    if failed:
        reasons.append("blocking checks failed last time: " + ", ".join(failed))
    return reasons
