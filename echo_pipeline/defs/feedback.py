"""Human feedback stage: what people said in "which one is me?", per adapter.

The judgements are written by the chat page (echo_pipeline.operations.web), one atomic file each, and
read here through echo_pipeline.evaluation.feedback only: the code location never imports the page.
"""

import dagster as dg

from echo_pipeline.defs.io_manager import ParquetIOManager
from echo_pipeline.defs.partitions import adapter_partitions
from echo_pipeline.defs.provenance import CODE_VERSIONS
from echo_pipeline.defs.resources import MlflowResource
from echo_pipeline.evaluation.feedback import FOOLED, FOOLED_SHARE, ROUNDS

FEEDBACK = "feedback"


def latest_evaluation_run(tracking_uri: str, experiment_name: str, template: str, experiment: str):
    """The adapter's newest evaluation run in the store (None when it was never evaluated)."""
    import mlflow

    from echo_pipeline.evaluation.runs import EVALUATION, RUN_KIND_TAG
    from echo_pipeline.infra import tracking

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment_name)
    if found is None:
        return None
    runs = tracking.retry_when_locked(
        lambda: client.search_runs(
            [found.experiment_id],
            filter_string=(
                f"tags.`{RUN_KIND_TAG}` = '{EVALUATION}' and tags.`echo.template` = '{template}'"
                f" and tags.`echo.experiment` = '{experiment}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    return runs[0] if runs else None


@dg.asset(
    group_name=FEEDBACK,
    kinds={"mlflow"},
    partitions_def=adapter_partitions,
    deps=[dg.AssetDep("lora_adapter"), dg.AssetDep("evaluation_report")],
    code_version=CODE_VERSIONS["human_judgements"],
    description="'Which one is me?' judgements of one adapter: how often the clone fooled a "
    "human reader (95 % interval), added to its MLflow evaluation run.",
)
def human_judgements(
    context: dg.AssetExecutionContext,
    mlflow_tracking: MlflowResource,
    io_manager: dg.ResourceParam[ParquetIOManager],
) -> dg.MaterializeResult:
    """A person's verdict beside the discriminator's: the clone's replies that passed for mine.

    The count goes to the adapter's newest evaluation run as metrics (the report shows
    "fooled a human reader: x of n"); nothing of the judged text is read here.
    """
    import time

    import mlflow

    from echo_pipeline.evaluation.feedback import (
        fooled_score,
        load_judgements,
        load_ratings,
        one_sided_ratings,
        preference_pairs,
    )
    from echo_pipeline.infra import tracking

    keys = context.partition_key.keys_by_dimension
    template, experiment = keys["template"], keys["experiment"]
    root, partition = io_manager.layout().root, str(context.partition_key)
    score = fooled_score(load_judgements(root, partition))
    low, high = score.interval
    metadata: dict = {"rounds": score.rounds, "fooled": score.fooled, "summary": score.sentence()}
    # The ratings given on the page, as the preference trainer will count them.
    ratings = load_ratings(root, partition)
    pairs = preference_pairs(ratings)
    for source in ("human_choice", "human_rating"):
        metadata[f"preference_pairs_{source}"] = sum(p["source"] == source for p in pairs)
    metadata["one_sided_ratings"] = len(one_sided_ratings(ratings))
    if score.rounds:
        metadata |= {FOOLED_SHARE: score.share, "interval_low": low, "interval_high": high}
    uri = mlflow_tracking.uri()
    run = latest_evaluation_run(uri, mlflow_tracking.experiment_name, template, experiment)
    if run is None:
        context.log.warning(
            f"no evaluation run of {template}/{experiment} in MLflow: materialise evaluation_report "
            "to have the count logged there"
        )
    else:
        client = mlflow.MlflowClient(tracking_uri=uri)
        values = {ROUNDS: float(score.rounds), FOOLED: float(score.fooled)}
        if score.rounds:
            values |= {
                FOOLED_SHARE: score.share,
                f"{FOOLED_SHARE}_low": low,
                f"{FOOLED_SHARE}_high": high,
            }
        metrics = [
            mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in values.items()
        ]
        tracking.retry_when_locked(lambda: client.log_batch(run.info.run_id, metrics=metrics))
        metadata["mlflow_run_id"] = run.info.run_id
        metadata["mlflow_run"] = dg.MetadataValue.url(
            tracking.run_url(uri, run.info.experiment_id, run.info.run_id)
        )
    return dg.MaterializeResult(metadata=metadata)
