"""Preference stage: the supervised adapter's own replies as "rejected", my replies as "chosen".

preference_pairs -> preference_adapter -> preference_report, each partitioned like lora_adapter
(template x experiment): the experiment names the supervised adapter the stage starts from and
uses as its DPO reference.
"""

import dagster as dg
from pydantic import Field

from echo_pipeline.defs.conditions import REPORT_AUTOMATION
from echo_pipeline.defs.configs import derived_config
from echo_pipeline.defs.evaluation import HEADLINE_METRICS, EvaluationReportConfig
from echo_pipeline.defs.io_manager import ParquetIOManager
from echo_pipeline.defs.partitions import adapter_partitions
from echo_pipeline.defs.provenance import (
    CODE_VERSIONS,
    data_version,
    latest_data_version,
    provenance_metadata,
)
from echo_pipeline.defs.resources import MlflowResource, dagster_lineage_tags
from echo_pipeline.evaluation.feedback import adapter_partition
from echo_pipeline.infra.provenance import Provenance, digest_of, provenance_config
from echo_pipeline.infra.settings import speed_only
from echo_pipeline.preference.dpo import PreferenceConfig

PREFERENCE = "preference"
PAIRS_CODE_VERSION = CODE_VERSIONS["preference_pairs"]
ADAPTER_CODE_VERSION = CODE_VERSIONS["preference_adapter"]
REPORT_CODE_VERSION = CODE_VERSIONS["preference_report"]
#: What each asset's output depends on in the recipe (sampling for the pairs; all for the adapter).
_SAMPLING_FIELDS = (
    "samples_per_prompt",
    "max_prompts",
    "max_new_tokens",
    "temperature",
    "top_p",
    "repetition_penalty",
    "penalty_scope",
    "seed",
)


class _PreferenceStage(dg.Config):
    human_pairs: list[str] = Field(
        default_factory=list,
        description="Preference files (Parquet or JSONL, PREFERENCE_PAIRS columns) written by a "
        "person rating replies: trained on beside the sampled pairs (train-split prompts only).",
    )

    def recipe(self, experiment: str) -> PreferenceConfig:
        from echo_pipeline.preference.recipes import preference_config

        values = self.model_dump(exclude={"human_pairs"})
        return preference_config(experiment, values)


#: Every PreferenceConfig field, as an override of the recipe (unset: the recipe's).
PreferenceStageConfig = derived_config(
    "PreferenceStageConfig",
    PreferenceConfig,
    base=_PreferenceStage,
    overrides=True,
    doc="Overrides of the preference recipe (PREFERENCE_RECIPES in preference/recipes.py); unset "
    "fields keep the recipe's value. Give both steps the same values.",
)


def preference_paths(layout, template: str, experiment: str) -> dict:
    """Where the stage reads and writes, beside lora_adapter's folders: ``<asset>/<template>__
    <experiment>`` (the supervised adapter's own slug)."""
    from echo_pipeline.infra.layout import adapter_slug

    slug = adapter_slug(template, experiment)
    return {
        "sft_adapter": layout.adapter_dir(template, experiment),
        "dataset": layout.dataset_path(template),
        "pairs": layout.pairs_path(),
        "preference_pairs": layout.root / "preference_pairs" / f"{slug}.parquet",
        "adapter": layout.root / "preference_adapter" / slug,
        "work": layout.root / "preference_work" / slug,
        "report": layout.root / "preference_report" / slug,
        "sft_report": layout.report_dir(template, experiment),
    }


def _partition(
    context: dg.AssetExecutionContext, io_manager: ParquetIOManager
) -> tuple[str, str, str, dict]:
    """The partition key (as Dagster spells it), its template and experiment, and the paths."""
    keys = context.partition_key.keys_by_dimension
    template, experiment = keys["template"], keys["experiment"]
    paths = preference_paths(io_manager.layout(), template, experiment)
    return str(context.partition_key), template, experiment, paths


@dg.asset(
    group_name=PREFERENCE,
    kinds={"pytorch", "parquet"},
    partitions_def=adapter_partitions,
    deps=[dg.AssetDep("lora_adapter")],
    code_version=PAIRS_CODE_VERSION,
    pool="gpu",
    description="My real reply (chosen) beside the supervised adapter's own sampled replies "
    "(rejected) on the train prompts: the data of the preference stage.",
)
def preference_pairs(
    context: dg.AssetExecutionContext,
    config: PreferenceStageConfig,
    io_manager: dg.ResourceParam[ParquetIOManager],
) -> dg.MaterializeResult:
    """What the adapter still gets wrong, in its own words: each sampled reply that is not mine."""
    from echo_pipeline.infra.records import METADATA_FILE
    from echo_pipeline.infra.storage import write_parquet
    from echo_pipeline.preference.dpo import pairs_digest, source_counts
    from echo_pipeline.preference.job import sample_pairs

    partition, template, experiment, paths = _partition(context, io_manager)
    if not (paths["sft_adapter"] / METADATA_FILE).exists():
        raise dg.Failure(f"{paths['sft_adapter']}: lora_adapter[{partition}] is not materialised")
    recipe = config.recipe(experiment)
    table, counts = sample_pairs(
        paths["sft_adapter"],
        paths["dataset"],
        paths["pairs"],
        recipe,
        adapter=adapter_partition(template, experiment),
    )
    write_parquet(table, paths["preference_pairs"])
    context.log.info("preference pairs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    provenance = Provenance(
        PAIRS_CODE_VERSION,
        {"lora_adapter": latest_data_version(context.instance, "lora_adapter", partition) or ""},
        {k: v for k, v in recipe.to_dict().items() if k in _SAMPLING_FIELDS},
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(paths["preference_pairs"])),
            "rows": table.num_rows,
            "digest": pairs_digest(table),
            **{f"samples_{k}": v for k, v in counts.items()},
            **{f"source_{k}": v for k, v in source_counts(table).items()},
            **provenance_metadata(provenance),
        },
        data_version=data_version(provenance),
    )


def _page_ratings(io_manager: ParquetIOManager, partition: str, paths: dict) -> list[str]:
    """The chat page's ratings of this adapter's replies as one preference file in the work
    folder (none when nobody rated): trained on with no setting to give."""
    import pyarrow as pa

    from echo_pipeline.evaluation.feedback import load_ratings, preference_pairs
    from echo_pipeline.infra.schemas import PREFERENCE_PAIRS
    from echo_pipeline.infra.storage import write_parquet

    rows = preference_pairs(load_ratings(io_manager.layout().root, partition))
    if not rows:
        return []
    out = paths["work"] / "chat_page_ratings.parquet"
    write_parquet(pa.Table.from_pylist(rows, schema=PREFERENCE_PAIRS), out)
    return [str(out)]


@dg.asset(
    group_name=PREFERENCE,
    kinds={"pytorch", "mlflow"},
    partitions_def=adapter_partitions,
    deps=[dg.AssetDep("preference_pairs"), dg.AssetDep("lora_adapter")],
    code_version=ADAPTER_CODE_VERSION,
    pool="gpu",
    description="The supervised adapter trained further with DPO on the preference pairs (and "
    "any human ratings), the supervised adapter as reference; with its MLflow run.",
)
def preference_adapter(
    context: dg.AssetExecutionContext,
    config: PreferenceStageConfig,
    mlflow_tracking: MlflowResource,
    io_manager: dg.ResourceParam[ParquetIOManager],
) -> dg.MaterializeResult:
    """Resumable: checkpoints and the cached reference log-probs stay in the work folder."""
    from echo_pipeline.infra.storage import file_sha256
    from echo_pipeline.infra.tracking import TrackingUnavailableError
    from echo_pipeline.preference.job import PreferenceJob, run_preference_job

    partition, template, experiment, paths = _partition(context, io_manager)
    if not paths["preference_pairs"].exists():
        raise dg.Failure(f"{paths['preference_pairs']}: preference_pairs[{partition}] is missing")
    try:
        mlflow_tracking.ensure_experiment()
    except TrackingUnavailableError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    recipe = config.recipe(experiment)
    human = [*config.human_pairs, *_page_ratings(io_manager, partition, paths)]
    job = PreferenceJob(
        template=template,
        experiment=experiment,
        dataset_path=paths["dataset"],
        pairs_path=paths["pairs"],
        sft_adapter_dir=paths["sft_adapter"],
        preference_pairs_path=paths["preference_pairs"],
        adapter_dir=paths["adapter"],
        work_dir=paths["work"],
        preference=recipe,
        human_pairs_paths=human,
        tracking_uri=mlflow_tracking.uri(),
        experiment_name=mlflow_tracking.experiment_name,
        tags=dagster_lineage_tags(context, ADAPTER_CODE_VERSION),
    )

    def progress(step: int, metrics: dict[str, float]) -> None:
        context.log.info(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    try:
        outcome = run_preference_job(job, on_progress=progress)
    except (ValueError, FileNotFoundError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    instance = context.instance
    provenance = Provenance(
        ADAPTER_CODE_VERSION,
        {
            "preference_pairs": latest_data_version(instance, "preference_pairs", partition) or "",
            "lora_adapter": latest_data_version(instance, "lora_adapter", partition) or "",
            # what the ratings say, not where they are: a new rating on the page re-makes it
            "human_pairs": digest_of(sorted(file_sha256(path) for path in human)),
        },
        provenance_config(recipe.to_dict(), speed_only(PreferenceConfig)),
    )
    return dg.MaterializeResult(
        metadata={
            "adapter_path": dg.MetadataValue.path(str(outcome.adapter_dir)),
            "mlflow_run": dg.MetadataValue.url(outcome.run_url),
            "mlflow_run_id": outcome.run_id,
            "fingerprint": outcome.fingerprint,
            "pairs_digest": outcome.pairs_digest,
            "resumed_from_step": outcome.resumed_from_step
            if outcome.resumed_from_step is not None
            else -1,
            **{k: float(v) for k, v in outcome.metrics.items()},
            **provenance_metadata(provenance),
        },
        data_version=data_version(provenance),
    )


@dg.asset(
    group_name=PREFERENCE,
    kinds={"pytorch", "mlflow", "html"},
    partitions_def=adapter_partitions,
    deps=[dg.AssetDep("preference_adapter")],
    code_version=REPORT_CODE_VERSION,
    pool="gpu",
    automation_condition=REPORT_AUTOMATION,
    description="The evaluation report of the preference adapter, beside the supervised one's.",
)
def preference_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    mlflow_tracking: MlflowResource,
    io_manager: dg.ResourceParam[ParquetIOManager],
) -> dg.MaterializeResult:
    """The same evaluation as evaluation_report (same held-out prompts, seeds and gates), so
    the two verdicts and discriminator AUCs compare directly."""
    import json

    from echo_pipeline.evaluation.evaluate import evaluate_adapter
    from echo_pipeline.evaluation.report import write_report
    from echo_pipeline.evaluation.runs import log_evaluation_run

    partition, _, _, paths = _partition(context, io_manager)
    result = evaluate_adapter(
        paths["adapter"],
        paths["dataset"],
        paths["pairs"],
        config=config.evaluation_config(),
        log=context.log.info,
    )
    run, files = log_evaluation_run(
        result,
        lambda url: write_report(result, paths["report"], {}, evaluation_run_url=url),
        tracking_uri=mlflow_tracking.uri(),
        experiment_name=mlflow_tracking.experiment_name,
        tags=dagster_lineage_tags(context, REPORT_CODE_VERSION),
    )
    metrics = result.metrics
    metadata = {
        "verdict": result.verdicts["adapter"].label,
        "report_path": dg.MetadataValue.path(str(files.html)),
        "mlflow_run": dg.MetadataValue.url(run.run_url),
        "mlflow_run_id": run.run_id,
        **{name: float(metrics[name]) for name in HEADLINE_METRICS if name in metrics},
    }
    sft_metrics = paths["sft_report"] / "metrics.json"
    if sft_metrics.is_file():  # the supervised adapter's report, for the comparison at a glance
        sft = json.loads(sft_metrics.read_text(encoding="utf-8"))
        sft = sft.get("metrics", sft)
        for name in ("adapter_discriminator_auc", "adapter_reply_loss"):
            if name in sft and name in metrics:
                metadata[f"sft_{name}"] = float(sft[name])
    provenance = Provenance(
        REPORT_CODE_VERSION,
        {
            "preference_adapter": latest_data_version(
                context.instance, "preference_adapter", partition
            )
            or ""
        },
        provenance_config(config.model_dump(), {"torch_threads"}),
    )
    metadata.update(provenance_metadata(provenance))
    return dg.MaterializeResult(metadata=metadata, data_version=data_version(provenance))


preference_assets = [preference_pairs, preference_adapter, preference_report]
