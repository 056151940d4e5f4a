"""One adapter, start to finish: data in, tracked training run, self-describing adapter out.

This is what the ``lora_adapter`` asset runs, in process or out of process (Dagster Pipes):
it checks the tracking store before anything heavy, logs the exact data, template and code
to MLflow, measures the held-out reply loss of the base model and of the adapter, and writes
an adapter directory that any PEFT user can load and that says where it came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from echo_pipeline.datasets.render import dataset_digest
from echo_pipeline.infra import tracking
from echo_pipeline.infra.records import (
    METADATA_FILE,
    AdapterMetadata,
    BaseModelRecord,
    DatasetRecord,
    TrackingRecord,
    from_json_dict,
    to_json_dict,
)
from echo_pipeline.infra.schemas import TOKEN_COLUMNS
from echo_pipeline.pairs.conversations import heldout_split
from echo_pipeline.training import distributed
from echo_pipeline.training.adapter_files import write_adapter_dir
from echo_pipeline.training.base_model import ResolvedBaseModel
from echo_pipeline.training.config import TrainingConfig

logger = logging.getLogger(__name__)

OnProgress = Callable[[int, dict[str, float]], None]


@dataclass
class AdapterJob:
    """Everything that determines one adapter (and where its outputs go)."""

    template: str
    experiment: str
    dataset_path: Path  # template_dataset Parquet with token columns
    adapter_dir: Path  # the final, loadable adapter directory
    work_dir: Path  # checkpoints survive here between attempts
    base_model: ResolvedBaseModel
    training: TrainingConfig
    # the dataset manifest's PromptSpec.to_dict(): recorded with the adapter, how to prompt it
    prompt: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = field(default_factory=tracking.default_tracking_uri)
    experiment_name: str = tracking.DEFAULT_EXPERIMENT
    tags: dict[str, str] = field(default_factory=dict)
    register_model: bool = True

    @property
    def system_prompt(self) -> str:
        return str(self.prompt.get("system_prompt") or "")

    @property
    def me_names(self) -> list[str]:
        return [str(n) for n in self.prompt.get("me_names") or ()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for handing the job to another process (Dagster Pipes)."""
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterJob:
        return from_json_dict(cls, data)


@dataclass
class AdapterOutcome:
    adapter_dir: Path
    run_id: str
    experiment_id: str
    run_url: str
    dataset_digest: str
    fingerprint: str
    base_reply_loss: float | None
    adapter_reply_loss: float | None
    heldout_split: str
    metrics: dict[str, float]
    resumed_from_step: int | None
    interrupted_runs: list[str]
    model_uri: str | None


def adapter_job_for(
    layout: Any,
    template: str,
    experiment: str,
    base_model: ResolvedBaseModel,
    training: TrainingConfig,
    **tracking: Any,
) -> AdapterJob:
    """The job that trains ``template``'s dataset with recipe ``training``: where its data and
    outputs live (``layout``, an :class:`~echo_pipeline.infra.layout.Layout`) and how the adapter
    will be prompted (its dataset manifest's spec). ``tracking``: the MLflow fields and tags.
    Raises FileNotFoundError or ValueError, naming the file, where the dataset is missing."""
    from echo_pipeline.datasets.prompt import PromptSpec
    from echo_pipeline.infra.records import DatasetManifest

    data = layout.dataset_path(template)
    if not data.exists():
        raise FileNotFoundError(
            f"{data}: template_dataset[{template}] is not materialised; materialise it first"
        )
    manifest = DatasetManifest.load(layout.dataset_manifest_path(template))
    return AdapterJob(
        template=template,
        experiment=experiment,
        dataset_path=data,
        adapter_dir=layout.adapter_dir(template, experiment),
        work_dir=layout.training_work_dir(template, experiment),
        base_model=base_model,
        training=training,
        prompt=PromptSpec.from_manifest(manifest).to_dict(),
        **tracking,
    )


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("echo_pipeline")
    except PackageNotFoundError:
        return "unknown"


def load_dataset(path: Path) -> pd.DataFrame:
    frame = pq.read_table(path).to_pandas()
    missing = [c for c in ("split", *TOKEN_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a template dataset with tokens (missing columns {missing})")
    return frame


def split_examples(frame: pd.DataFrame, split: str) -> list[dict[str, list[int]]]:
    rows = frame[frame["split"] == split]
    return [
        {"input_ids": list(map(int, ids)), "labels": list(map(int, labels))}
        for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True)
    ]


def _flat_params(job: AdapterJob, rows: dict[str, int]) -> dict[str, Any]:
    params: dict[str, Any] = {f"train.{k}": v for k, v in job.training.to_dict().items()}
    params |= {
        "template": job.template,
        "experiment": job.experiment,
        "base_model.source": job.base_model.source,
        "base_model.fingerprint": job.base_model.fingerprint,
        "base_model.revision": job.base_model.revision,
        "system_prompt": job.system_prompt,
        **{f"rows.{k}": v for k, v in rows.items()},
    }
    return {k: ("" if v is None else str(v)[:500]) for k, v in params.items()}


def resolved_training_dtype(dtype: str) -> str:
    """What ``TrainingConfig.dtype`` means on this machine: ``auto`` is bf16 on a GPU that has
    it and on a CPU with native bf16 (``ECHO_CPU_BF16`` overrides), fp32 on other CPUs."""
    import torch

    from echo_pipeline.training.base_model import resolve_dtype

    return resolve_dtype(dtype, "cuda" if torch.cuda.is_available() else "cpu", "training")


class TrainingStopped(RuntimeError):
    """Training stopped on request (SIGINT/SIGTERM) after saving a checkpoint; rerun to resume."""


RESUMED_BY_TAG = "echo.resumed_by"


def _mark_interrupted_runs(client: Any, experiment_id: str, fingerprint: str) -> list[str]:
    """Earlier runs of the same job that never finished, which the new run continues.

    A run still RUNNING was killed outright (SIGKILL, OOM killer, power loss): it is marked
    KILLED here. A run stopped on request is already KILLED with ``echo.interrupted``. Either
    kind is listed once: the new run tags it ``echo.resumed_by`` (see :func:`_link_resumed`).
    """
    same_job = f"tags.`echo.fingerprint` = '{fingerprint}'"
    stale = client.search_runs(
        [experiment_id], filter_string=f"{same_job} and attributes.status = 'RUNNING'"
    )
    stopped = client.search_runs(
        [experiment_id],
        filter_string=f"{same_job} and attributes.status = 'KILLED' and tags.`echo.interrupted` = 'true'",
    )
    ids = []
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
        client.set_tag(run.info.run_id, "echo.interrupted", "true")
        ids.append(run.info.run_id)
    ids += [r.info.run_id for r in stopped if RESUMED_BY_TAG not in r.data.tags]
    return sorted(set(ids), key=ids.index)


def _link_resumed(client: Any, interrupted: list[str], run_id: str) -> None:
    for old in interrupted:
        client.set_tag(old, RESUMED_BY_TAG, run_id)


def run_adapter_job(
    job: AdapterJob,
    on_progress: OnProgress | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> AdapterOutcome | None:
    """Train, evaluate held-out reply loss, write the adapter and log it all to MLflow.

    ``should_stop(step)`` is asked after every optimizer step; when it says yes, a checkpoint is
    saved, the MLflow run ends KILLED (tagged ``echo.interrupted``) and :class:`TrainingStopped`
    is raised. The next run of the same job resumes from that checkpoint and references the run.

    Under torchrun every rank calls this: rank 0 does all of the above, the other ranks only
    train their share (:func:`_train_as_worker`) and return None.
    """
    ranks = distributed.current_ranks()
    if not ranks.is_main:
        _train_as_worker(job, ranks, should_stop)
        return None
    experiment_id = tracking.ensure_experiment(job.tracking_uri, job.experiment_name)

    import mlflow

    from echo_pipeline.training.base_model import load_tokenizer
    from echo_pipeline.training.loop import train_lora
    from echo_pipeline.training.losses import reply_loss

    dtype = resolved_training_dtype(job.training.dtype)

    frame, (train, val, test) = _job_splits(job)
    heldout_name = heldout_split({"test": len(test), "val": len(val)})
    heldout = {"test": test, "val": val}[heldout_name]
    digest = dataset_digest(frame)
    fingerprint = _job_fingerprint(job, train, val, dtype, ranks.world_size)
    rows = {"train": len(train), "val": len(val), "test": len(test)}

    mlflow.set_tracking_uri(job.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=job.tracking_uri)
    interrupted = tracking.retry_when_locked(
        lambda: _mark_interrupted_runs(client, experiment_id, fingerprint)
    )
    commit = tracking.git_commit()
    tags = {
        **job.tags,
        "echo.template": job.template,
        "echo.experiment": job.experiment,
        "echo.fingerprint": fingerprint,
        "echo.dataset_digest": digest,
        "echo.base_model": job.base_model.source,
        "echo.package_version": package_version(),
        "mlflow.source.git.commit": commit or "",
    }
    if interrupted:
        tags["echo.resumes_runs"] = ",".join(interrupted)

    run = tracking.retry_when_locked(
        lambda: mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{job.template}/{job.experiment}", tags=tags
        )
    )
    with run:
        run_id = run.info.run_id
        if interrupted:
            tracking.retry_when_locked(lambda: _link_resumed(client, interrupted, run_id))
        mlflow.log_params(
            _flat_params(job, rows)
            | {"train.resolved_dtype": dtype, "train.processes": ranks.world_size}
        )
        text_columns = [c for c in frame.columns if c not in TOKEN_COLUMNS]
        for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
            part = frame.loc[frame["split"] == split, text_columns].reset_index(drop=True)
            if len(part):
                dataset = mlflow.data.from_pandas(
                    part, source=str(job.dataset_path), name=f"{job.template}-{split}"
                )
                mlflow.log_input(dataset, context=context)

        tokenizer = load_tokenizer(job.base_model)
        model = _load_base_for(job, dtype, ranks)
        base_loss = reply_loss(model, heldout) if heldout else None
        if base_loss is not None:
            mlflow.log_metric(f"base_{heldout_name}_reply_loss", base_loss)

        server_lost_at: list[int] = []  # the step the server (or its DB) went: training goes on

        def log_progress(step: int, metrics: dict[str, float]) -> None:
            clean = {k: float(v) for k, v in metrics.items() if v is not None}
            try:
                if not server_lost_at:
                    tracking.retry_when_locked(lambda: mlflow.log_metrics(clean, step=step))
            except Exception:
                lost = tracking.server_lost(job.tracking_uri)
                if lost is None:
                    raise
                server_lost_at.append(step)
                logger.warning(
                    "MLflow server %s %s at step %d; training goes on and writes the adapter "
                    "locally",
                    job.tracking_uri,
                    lost,
                    step,
                )
            if on_progress is not None:
                on_progress(step, clean)

        result = train_lora(
            model,
            tokenizer,
            train,
            val,
            job.training,
            job.work_dir,
            run_fingerprint=fingerprint,
            on_log=log_progress,
            should_stop=should_stop,
        )
        if not result.completed:
            mlflow.set_tags({"echo.interrupted": "true", "echo.stopped_at_step": str(result.steps)})
            mlflow.end_run(status="KILLED")
            raise TrainingStopped(
                f"{job.adapter_dir}: training stopped on request at step {result.steps} of "
                f"{result.total_steps}; its checkpoint in {job.work_dir} is resumed by the next "
                "materialisation (nothing was published)"
            )
        adapter_loss = reply_loss(result.model, heldout) if heldout else None
        final = result.metrics()
        if adapter_loss is not None:
            final[f"adapter_{heldout_name}_reply_loss"] = adapter_loss
        if base_loss is not None:
            final[f"base_{heldout_name}_reply_loss"] = base_loss

        metadata = AdapterMetadata(
            template=job.template,
            base_model=base_model_record(job.base_model),
            experiment=job.experiment,
            system_prompt=job.system_prompt,
            me_names=tuple(job.me_names),
            prompt=dict(job.prompt),
            dataset=DatasetRecord(path=str(job.dataset_path), digest=digest, rows=rows),
            training=job.training.to_dict() | {"resolved_dtype": dtype},
            fingerprint=fingerprint,
            results=final,
            package_version=package_version(),
            git_commit=commit,
            mlflow=TrackingRecord(
                tracking_uri=job.tracking_uri, experiment_id=experiment_id, run_id=run_id
            ),
        )
        assert result.adapter_dir is not None
        write_adapter_dir(job.adapter_dir, Path(result.adapter_dir), tokenizer, metadata)
        # Written locally first: if the server is gone now, the step says so and nothing is lost.
        with tracking.report_server_loss(
            job.tracking_uri,
            run_id,
            safe=f"the adapter is safe in {job.adapter_dir}",
            rerun=f"once the server answers, re-materialise lora_adapter {job.template}/"
            f"{job.experiment} to log it (this run is then marked KILLED)",
        ):
            mlflow.log_metrics(final)
            mlflow.log_dict(metadata.to_dict(), METADATA_FILE)
            model_uri = _log_adapter_model(job, result.model, final) if job.register_model else None
        discard_trained_copy(job.work_dir, Path(result.adapter_dir))

    return AdapterOutcome(
        adapter_dir=job.adapter_dir,
        run_id=run_id,
        experiment_id=experiment_id,
        run_url=tracking.run_url(job.tracking_uri, experiment_id, run_id),
        dataset_digest=digest,
        fingerprint=fingerprint,
        base_reply_loss=base_loss,
        adapter_reply_loss=adapter_loss,
        heldout_split=heldout_name,
        metrics=final,
        resumed_from_step=result.resumed_from_step,
        interrupted_runs=interrupted,
        model_uri=model_uri,
    )


def _job_splits(job: AdapterJob) -> tuple[pd.DataFrame, tuple[list, list, list]]:
    """The dataset and its train, val and test examples; an empty train split is bad input."""
    frame = load_dataset(job.dataset_path)
    splits = tuple(split_examples(frame, s) for s in ("train", "val", "test"))
    if not splits[0]:
        raise ValueError(f"{job.dataset_path}: the train split is empty; nothing to learn from")
    return frame, splits


def _load_base_for(job: AdapterJob, dtype: str, ranks: distributed.Ranks) -> Any:
    """The base model on this rank's device, as the job's recipe loads it."""
    from echo_pipeline.training.base_model import load_causal_lm

    return load_causal_lm(
        job.base_model,
        dtype=dtype,
        quantization=job.training.quantization,
        device=distributed.device_for(ranks),
    )


def _job_fingerprint(
    job: AdapterJob, train: list[Any], val: list[Any], dtype: str, world_size: int
) -> str:
    """What a checkpoint must match to be resumed: recipe, data, base, template and dtype
    ("auto" trains in bf16 or fp32 depending on the CPU), with the rows of all processes."""
    from echo_pipeline.training.config import fingerprint_run

    fingerprint = fingerprint_run(
        job.training,
        train,
        val,
        base_model_id=job.base_model.fingerprint,
        world_size=world_size,
    )
    return hashlib.sha256(f"{fingerprint}|{job.template}|{dtype}".encode()).hexdigest()[:24]


def _train_as_worker(
    job: AdapterJob, ranks: distributed.Ranks, should_stop: Callable[[int], bool] | None
) -> None:
    """A rank other than 0: the same data, model and fingerprint, its share of every step, and
    nothing written (rank 0 writes checkpoints, the adapter and the MLflow run)."""
    from echo_pipeline.training.base_model import load_tokenizer
    from echo_pipeline.training.loop import train_lora

    dtype = resolved_training_dtype(job.training.dtype)
    _, (train, val, _) = _job_splits(job)
    result = train_lora(
        _load_base_for(job, dtype, ranks),
        load_tokenizer(job.base_model),
        train,
        val,
        job.training,
        job.work_dir,
        run_fingerprint=_job_fingerprint(job, train, val, dtype, ranks.world_size),
        should_stop=should_stop,
    )
    if not result.completed:
        raise TrainingStopped(f"rank {ranks.rank}: stopped on request at step {result.steps}")


def discard_trained_copy(work_dir: Path, trained_dir: Path) -> None:
    """Remove the trainer's copy of a published adapter, and the work dir if nothing else is left.

    Once ``write_adapter_dir`` has published it, ``trained_dir`` is a second copy without
    lineage that only invites loading the wrong one. Nothing needs it to resume: a finished run
    has removed its checkpoints already, and an interrupted run never gets here.
    """
    shutil.rmtree(trained_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty (a failure note, a later attempt): keep it
        work_dir.rmdir()


def _log_adapter_model(job: AdapterJob, model: Any, metrics: dict[str, float]) -> str:
    """Log the adapter as an MLflow model (LoggedModel) and register it as ``echo-<template>``."""
    import mlflow

    code = Path(__file__).parents[1] / "serving" / "mlflow_model.py"
    info = tracking.retry_when_locked(
        lambda: mlflow.pyfunc.log_model(
            name="adapter",
            python_model=str(code),
            artifacts={"adapter": str(job.adapter_dir)},
            registered_model_name=f"echo-{job.template}",
            pip_requirements=["transformers", "peft", "torch", "safetensors"],
            params={"template": job.template, "experiment": job.experiment},
            await_registration_for=0,
        )
    )
    return info.model_uri


def base_model_record(base: ResolvedBaseModel) -> BaseModelRecord:
    """What an adapter's metadata says about its base model."""
    return BaseModelRecord(
        source=base.source, path=base.path, fingerprint=base.fingerprint, revision=base.revision
    )
