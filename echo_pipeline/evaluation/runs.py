"""The MLflow side of evaluation: read the training run, log the evaluation run beside it.

An evaluation run is a child of the adapter's training run (``mlflow.parentRunId``), so the UI
shows it nested under the run that produced the adapter; its metrics are linked to the
adapter's LoggedModel and to the held-out dataset, so the model page lists them too. Every
evaluation run carries ``echo.run_kind=evaluation`` and the template/experiment tags, which is
what the leaderboard searches for.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echo_pipeline.evaluation.evaluate import EvaluationResult
from echo_pipeline.evaluation.report import ReportFiles
from echo_pipeline.infra import tracking

logger = logging.getLogger(__name__)

RUN_KIND_TAG = "echo.run_kind"
EVALUATION = "evaluation"
TRAINING_RUN_TAG = "echo.training_run_id"
HISTORY_KEYS = ("loss", "eval_loss")


@dataclass(frozen=True)
class EvaluationRun:
    run_id: str
    experiment_id: str
    run_url: str
    parent_run_id: str | None  # None when the training run is not in this store
    model_id: str | None  # the adapter's LoggedModel, when the training run logged one


def training_run(tracking_uri: str, run_id: str | None) -> Any | None:
    """The adapter's training run, or None when this store does not have it."""
    if not run_id:
        return None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        return tracking.retry_when_locked(lambda: client.get_run(run_id))
    except mlflow.exceptions.MlflowException as error:
        logger.warning("training run %s not found in %s: %s", run_id, tracking_uri, error)
        return None


def training_history(
    tracking_uri: str, run_id: str, keys: tuple[str, ...] = HISTORY_KEYS
) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` for the training curves (empty lists if not logged)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    history = {}
    for key in keys:
        points = tracking.retry_when_locked(lambda key=key: client.get_metric_history(run_id, key))
        history[key] = sorted((int(m.step), float(m.value)) for m in points)
    return history


def logged_model_id(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The newest LoggedModel the training run produced (``mlflow.pyfunc.log_model``), if any."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    models = tracking.retry_when_locked(
        lambda: mlflow.search_logged_models(
            experiment_ids=[experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
            output_format="list",
        )
    )
    if not models:
        return None
    return max(models, key=lambda m: m.creation_timestamp or 0).model_id


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(f"{prefix}{key}.", value)
        else:
            flat[f"{prefix}{key}"] = str(value)[:500]
    return flat


def _heldout_dataset(result: EvaluationResult) -> Any | None:
    """The held-out split as an MLflow dataset, built exactly as the training run logged it."""
    import mlflow
    import pyarrow.parquet as pq

    from echo_pipeline.infra.schemas import TOKEN_COLUMNS

    path, split = Path(result.lineage["dataset_path"]), result.lineage["heldout_split"]
    if not path.exists():
        return None
    frame = pq.read_table(path).to_pandas()
    text_columns = [c for c in frame.columns if c not in TOKEN_COLUMNS]
    part = frame.loc[frame["split"] == split, text_columns].reset_index(drop=True)
    return mlflow.data.from_pandas(part, source=str(path), name=f"{result.template}-{split}")


def log_evaluation_run(
    result: EvaluationResult,
    write_files: Any,
    *,
    tracking_uri: str,
    experiment_name: str = tracking.DEFAULT_EXPERIMENT,
    tags: dict[str, str] | None = None,
) -> tuple[EvaluationRun, ReportFiles]:
    """Log ``result`` as a child run of its training run; ``write_files(run_url)`` writes the report.

    The report is written inside the run, so it can link to the run it is logged in; the
    files it returns are logged as artifacts.
    """
    import mlflow

    experiment_id = tracking.ensure_experiment(tracking_uri, experiment_name)
    mlflow.set_tracking_uri(tracking_uri)
    parent_id = result.lineage.get("training_run_id")
    parent = training_run(tracking_uri, parent_id)
    model_id = (
        logged_model_id(tracking_uri, parent.info.experiment_id, parent_id) if parent else None
    )
    run_tags = {
        **(tags or {}),
        RUN_KIND_TAG: EVALUATION,
        "echo.template": result.template,
        "echo.experiment": result.experiment,
        "echo.dataset_digest": str(result.lineage.get("dataset_digest")),
        "echo.adapter_fingerprint": str(result.lineage.get("adapter_fingerprint")),
        "echo.base_model": str((result.lineage.get("base_model") or {}).get("source")),
        TRAINING_RUN_TAG: str(parent_id or ""),
        "echo.verdict": result.verdict,
        "echo.base_verdict": result.verdicts["base"].label if "base" in result.verdicts else "",
        **{
            f"echo.{side}_verdict": result.verdicts[side].label
            for side in result.baselines
            if side in result.verdicts
        },
    }
    if parent is not None:
        run_tags["mlflow.parentRunId"] = parent_id
    run = tracking.retry_when_locked(
        lambda: mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{result.template}/{result.experiment}/eval",
            tags=run_tags,
        )
    )
    with run:
        run_id = run.info.run_id
        url = tracking.run_url(tracking_uri, experiment_id, run_id)
        mlflow.log_params(_flat("eval.", result.config))
        dataset = _heldout_dataset(result)
        if dataset is not None:
            mlflow.log_input(dataset, context="evaluation")
        finite = {k: v for k, v in result.metrics.items() if math.isfinite(v)}
        tracking.retry_when_locked(
            lambda: mlflow.log_metrics(finite, model_id=model_id, dataset=dataset)
        )
        files = write_files(url)
        mlflow.log_artifact(str(files.html))
        mlflow.log_artifact(str(files.metrics))
        mlflow.log_table(result.samples, artifact_file="samples.json")
        mlflow.log_dict(json.loads(json.dumps(result.lineage, default=str)), "lineage.json")
    return EvaluationRun(run_id, experiment_id, url, parent_id if parent else None, model_id), files


def add_human_reader(result: EvaluationResult, root: Path, partition: str) -> None:
    """The report's "fooled a human reader: x of n", from the rounds of "which one is me?"
    played so far, beside the discriminator's verdict (metrics too once someone has played)."""
    from echo_pipeline.evaluation.feedback import (
        FOOLED,
        FOOLED_SHARE,
        ROUNDS,
        fooled_score,
        load_judgements,
    )

    score = fooled_score(load_judgements(root, partition))
    result.lineage["human_reader"] = score.as_dict() | {"sentence": score.sentence()}
    if score.rounds:  # the names human_judgements logs to the same run
        result.metrics |= {
            ROUNDS: float(score.rounds),
            FOOLED: float(score.fooled),
            FOOLED_SHARE: score.share,
        }


def report_adapter(
    layout: Any,
    template: str,
    experiment: str,
    config: Any,
    *,
    tracking_uri: str,
    experiment_name: str = tracking.DEFAULT_EXPERIMENT,
    tags: dict[str, str] | None = None,
    log: Any = None,
) -> tuple[EvaluationResult, EvaluationRun, ReportFiles]:
    """Evaluate the adapter ``template`` x ``experiment`` of ``layout`` (an
    :class:`~echo_pipeline.infra.layout.Layout`) with ``config`` (an EvaluationConfig), write
    its report and log it as a child of its training run, with the training's history.
    Raises FileNotFoundError where the adapter is not trained."""
    from echo_pipeline.evaluation.evaluate import evaluate_adapter
    from echo_pipeline.evaluation.feedback import adapter_partition
    from echo_pipeline.evaluation.report import write_report
    from echo_pipeline.infra.records import METADATA_FILE
    from echo_pipeline.training.base_choice import CHOICE_TAG

    adapter = layout.adapter_dir(template, experiment)
    partition = adapter_partition(template, experiment)
    if not (adapter / METADATA_FILE).exists():
        raise FileNotFoundError(
            f"{adapter}: lora_adapter[{partition}] is not materialised; materialise it first"
        )
    result = evaluate_adapter(
        adapter, layout.dataset_path(template), layout.pairs_path(), config=config, log=log
    )
    add_human_reader(result, layout.root, partition)
    parent = training_run(tracking_uri, result.lineage.get("training_run_id"))
    if parent is not None and CHOICE_TAG in parent.data.tags:  # trained with --base-model auto
        result.lineage["base_model_choice"] = parent.data.tags[CHOICE_TAG]
    history = training_history(tracking_uri, parent.info.run_id) if parent else {}
    parent_url = (
        tracking.run_url(tracking_uri, parent.info.experiment_id, parent.info.run_id)
        if parent
        else None
    )
    out = layout.report_dir(template, experiment)

    def write_files(evaluation_url: str) -> ReportFiles:
        return write_report(
            result, out, history, training_run_url=parent_url, evaluation_run_url=evaluation_url
        )

    run, files = log_evaluation_run(
        result, write_files, tracking_uri=tracking_uri, experiment_name=experiment_name, tags=tags
    )
    return result, run, files
