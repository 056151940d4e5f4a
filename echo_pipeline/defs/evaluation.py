"""Evaluation stage: does each adapter sound like me, and which one does best?"""

import dagster as dg

from echo_pipeline.defs.check_results import asset_check_results
from echo_pipeline.defs.conditions import REPORT_AUTOMATION
from echo_pipeline.defs.configs import core_values, derived_config
from echo_pipeline.defs.io_manager import ParquetIOManager
from echo_pipeline.defs.partitions import adapter_partitions
from echo_pipeline.defs.provenance import (
    CODE_VERSIONS,
    comparison_provenance,
    data_version,
    provenance_metadata,
    report_provenance,
)
from echo_pipeline.defs.resources import MlflowResource, dagster_lineage_tags
from echo_pipeline.evaluation.config import EvaluationConfig
from echo_pipeline.serving.generation import GenerationSettings

EVALUATION = "evaluation"
EVALUATION_CODE_VERSION = CODE_VERSIONS["evaluation_report"]
COMPARISON_CODE_VERSION = CODE_VERSIONS["model_comparison"]
HEADLINE_METRICS = (
    "base_reply_loss",
    "adapter_reply_loss",
    "base_stop_rate",
    "adapter_stop_rate",
    "real_distinct_2",
    "adapter_distinct_2",
    "real_top_reply_share",
    "adapter_top_reply_share",
    "adapter_loop_share",
    "real_known_word_rate",
    "adapter_known_word_rate",
    "adapter_relevance_gain",
    "adapter_relevance_gain_low",
    "base_discriminator_auc",
    "adapter_discriminator_auc",
    "base_hardest_discriminator_auc",
    "adapter_hardest_discriminator_auc",
    "replay_hardest_discriminator_auc",
    "real_known_bigram_rate",
    "adapter_known_bigram_rate",
    "real_memorised_share",
    "adapter_memorised_share",
    "replay_memorised_share",
    "real_in_context",
    "adapter_in_context",
    "replay_in_context",
    "real_attributed_share",
    "base_attributed_share",
    "adapter_attributed_share",
    "base_style_distance",
    "adapter_style_distance",
    "base_similarity_to_real",
    "adapter_similarity_to_real",
    "attribution_heldout_balanced_accuracy",
    "adapter_generations_per_s",
)


class _EvaluationSettings(dg.Config):
    def evaluation_config(self) -> EvaluationConfig:
        """The core config these fields make: :class:`EvaluationConfig` with its
        :class:`GenerationSettings`."""
        generation = GenerationSettings(**core_values(self, GenerationSettings))
        return EvaluationConfig(generation=generation, **core_values(self, EvaluationConfig))


#: Every EvaluationConfig and GenerationSettings setting, flat, as the launchpad shows them.
EvaluationReportConfig = derived_config(
    "EvaluationReportConfig",
    (EvaluationConfig, GenerationSettings),
    base=_EvaluationSettings,
    doc="What the report measures, and how the replies it shows are generated.",
)


def summary_markdown(metrics: dict, sides: tuple[str, ...] = ("real", "base", "adapter")) -> str:
    from echo_pipeline.evaluation.evaluate import SCORECARD
    from echo_pipeline.evaluation.report import direction_label, fmt, side_label

    lines = [
        "| metric | " + " | ".join(side_label(s) for s in sides) + " |",
        "|---|" + "---|" * len(sides),
    ]
    for label, name, better, shown in SCORECARD:
        cells = [
            fmt(metrics.get(f"{side}_{name}")) if side != "real" or side in shown else "–"
            for side in sides
        ]
        if any(cell != "–" for cell in cells):
            lines.append(f"| {label} ({direction_label(better)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dg.asset(
    group_name=EVALUATION,
    kinds={"pytorch", "mlflow", "html"},
    partitions_def=adapter_partitions,
    deps=[dg.AssetDep("lora_adapter")],
    code_version=EVALUATION_CODE_VERSION,
    pool="gpu",
    automation_condition=REPORT_AUTOMATION,
    check_specs=[
        dg.AssetCheckSpec(
            "beats_base",
            asset="evaluation_report",
            description="The adapter's verdict is 'sounds like you', or at least a better verdict "
            "than the base model's with a lower held-out reply loss.",
        )
    ],
    description="Base vs adapter on held-out pairs: loss, stop rate, style, attribution, relevance; HTML + JSON, logged to MLflow.",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    mlflow_tracking: MlflowResource,
    io_manager: dg.ResourceParam[ParquetIOManager],
) -> dg.MaterializeResult:
    """Answers "does it sound like me?" for one adapter, with numbers, plots and samples.

    Loss alone cannot: an adapter can predict my replies better and still write like nobody,
    or write like me and miss the point. The report sets the adapter's replies beside the base
    model's and my real ones on the same held-out prompts and the same template, and is logged
    as a child of the adapter's training run.
    """
    from echo_pipeline.evaluation.checks import check_beats_base
    from echo_pipeline.evaluation.runs import report_adapter
    from echo_pipeline.infra.tracking import TrackingUnavailableError

    keys = context.partition_key.keys_by_dimension
    try:
        mlflow_tracking.ensure_experiment()  # fail before minutes of generation, not after
        result, run, files = report_adapter(
            io_manager.layout(),
            keys["template"],
            keys["experiment"],
            config.evaluation_config(),
            tracking_uri=mlflow_tracking.uri(),
            experiment_name=mlflow_tracking.experiment_name,
            tags=dagster_lineage_tags(context, EVALUATION_CODE_VERSION),
            log=context.log.info,
        )
    except (FileNotFoundError, TrackingUnavailableError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error

    metrics = result.metrics
    adapter_verdict, base_verdict = result.verdicts["adapter"], result.verdicts["base"]
    metadata = {
        "verdict": adapter_verdict.label,
        "base_verdict": base_verdict.label,
        "verdict_reasons": dg.MetadataValue.md(
            "\n".join(f"- {r}" for r in adapter_verdict.reasons) or "every gate passed"
        ),
        "summary": dg.MetadataValue.md(summary_markdown(metrics, result.sides)),
        **{
            f"{side}_verdict": result.verdicts[side].label
            for side in result.baselines
            if side in result.verdicts
        },
        "report_path": dg.MetadataValue.path(str(files.html)),
        "metrics_path": dg.MetadataValue.path(str(files.metrics)),
        "mlflow_run": dg.MetadataValue.url(run.run_url),
        "mlflow_run_id": run.run_id,
        "training_run_id": str(result.lineage.get("training_run_id")),
        "dataset_digest": str(result.lineage["dataset_digest"]),
        "dataset_matches_adapter": bool(result.lineage["dataset_matches_adapter"]),
        **{name: float(metrics[name]) for name in HEADLINE_METRICS if name in metrics},
    }
    if run.model_id:
        metadata["mlflow_model_id"] = run.model_id
    provenance = report_provenance(context.instance, str(context.partition_key), config)
    metadata.update(provenance_metadata(provenance))
    check = check_beats_base(result.verdicts, metrics, HEADLINE_METRICS)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=list(asset_check_results([check])),
        data_version=data_version(provenance),
    )


@dg.asset(
    group_name=EVALUATION,
    kinds={"mlflow", "html", "csv"},
    deps=[dg.AssetDep("evaluation_report", partition_mapping=dg.AllPartitionMapping())],
    code_version=COMPARISON_CODE_VERSION,
    description="Leaderboard over every adapter (template x experiment) from MLflow: one table, one plot.",
)
def model_comparison(
    context: dg.AssetExecutionContext,
    mlflow_tracking: MlflowResource,
    io_manager: dg.ResourceParam[ParquetIOManager],
) -> dg.MaterializeResult:
    """Which template and recipe sounds most like me, at a glance.

    Read from MLflow rather than from the report files, so runs made outside Dagster (the CLI,
    a notebook, another machine sharing the tracking server) are on the board too.
    """
    from echo_pipeline.evaluation.comparison import (
        leaderboard,
        leaderboard_markdown,
        write_leaderboard,
    )

    provenance = comparison_provenance(context.instance)
    frame = leaderboard(mlflow_tracking.uri(), mlflow_tracking.experiment_name)
    files = write_leaderboard(frame, io_manager.layout().comparison_dir())
    metadata = {
        "leaderboard": dg.MetadataValue.md(leaderboard_markdown(frame)),
        "html_path": dg.MetadataValue.path(str(files.html)),
        "csv_path": dg.MetadataValue.path(str(files.csv)),
        "adapters": len(frame),
        "evaluated": int((~frame["stale"].astype(bool)).sum()) if len(frame) else 0,
        **provenance_metadata(provenance),
    }
    if len(frame):
        best = frame.iloc[0]
        metadata["best"] = f"{best['template']}/{best['experiment']}"
    else:
        context.log.warning(
            "no adapter runs in MLflow yet: materialise lora_adapter and evaluation_report"
        )
    return dg.MaterializeResult(metadata=metadata, data_version=data_version(provenance))


evaluation_assets = [evaluation_report, model_comparison]
