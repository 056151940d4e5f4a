"""The preference stage, start to finish: sampled pairs in, tracked DPO run, adapter out.

What the ``preference_pairs`` and ``preference_adapter`` assets run. The adapter written here is
an ordinary echo adapter directory (PEFT weights, tokenizer, ``echo_metadata.json``) whose
lineage names the supervised adapter it started from and the pairs it was trained on, so the
evaluation report, ``chat`` and ``export`` read it like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_pipeline.evaluation.feedback import adapter_partition
from echo_pipeline.infra import tracking
from echo_pipeline.infra.records import from_json_dict, to_json_dict
from echo_pipeline.preference.dpo import PreferenceConfig

logger = logging.getLogger(__name__)

OnProgress = Callable[[int, dict[str, float]], None]
ROUND_WEIGHTS = "adapter_model.safetensors"
PREFERENCE_SUFFIX = "+dpo"


def preference_experiment(experiment: str) -> str:
    """The ``experiment`` an adapter of the preference stage records: ``demo+dpo`` for a DPO
    stage on ``demo``'s supervised adapter (told apart from it in MLflow and the leaderboard)."""
    return experiment + PREFERENCE_SUFFIX


@dataclass
class PreferenceJob:
    """Everything that determines one preference adapter, and where its outputs go."""

    template: str
    experiment: str  # the supervised recipe whose adapter is the start and the reference
    dataset_path: Path
    pairs_path: Path  # conversation_pairs
    sft_adapter_dir: Path
    preference_pairs_path: Path  # self-sampled pairs (the preference_pairs asset)
    adapter_dir: Path
    work_dir: Path
    preference: PreferenceConfig
    human_pairs_paths: list[str] = field(default_factory=list)  # rating-page files
    tracking_uri: str = field(default_factory=tracking.default_tracking_uri)
    experiment_name: str = tracking.DEFAULT_EXPERIMENT
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for handing the job to another process (Dagster Pipes)."""
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreferenceJob:
        return from_json_dict(cls, data)


@dataclass
class PreferenceOutcome:
    adapter_dir: Path
    run_id: str
    run_url: str
    fingerprint: str
    pairs_digest: str
    metrics: dict[str, float]
    resumed_from_step: int | None


def _base_of(adapter_dir: Path) -> tuple[Any, Any]:
    """The adapter's metadata and its base model, resolved as recorded (same fingerprint)."""
    from echo_pipeline.infra.records import AdapterMetadata
    from echo_pipeline.training.base_model import resolve_base_model

    meta = AdapterMetadata.load(adapter_dir)
    recorded = meta.base_model
    base = resolve_base_model(recorded.source, revision=recorded.revision)
    if base.fingerprint != recorded.fingerprint:
        raise ValueError(
            f"{adapter_dir}: trained on base {recorded.fingerprint}, but {recorded.source!r} "
            f"now resolves to {base.fingerprint}"
        )
    return meta, base


def sample_pairs(
    sft_adapter_dir: Path,
    dataset_path: Path,
    pairs_path: Path,
    config: PreferenceConfig,
    *,
    adapter: str,
) -> tuple[Any, dict[str, int]]:
    """The self-sampled pairs of one supervised adapter on its dataset's train prompts."""
    import pyarrow.parquet as pq

    from echo_pipeline.infra.records import AdapterMetadata
    from echo_pipeline.preference.dpo import sample_preference_pairs, train_prompts
    from echo_pipeline.serving.chat import ChatSession
    from echo_pipeline.training.adapters import load_dataset
    from echo_pipeline.training.threads import torch_threads

    frame = load_dataset(dataset_path)
    pairs = pq.read_table(pairs_path).to_pandas()
    prompts = train_prompts(frame, pairs, config.max_prompts, config.seed)
    with torch_threads(config.torch_threads):
        session = ChatSession.from_adapter(sft_adapter_dir)
        calibrated = AdapterMetadata.load(sft_adapter_dir).calibrated_temperature
        return sample_preference_pairs(
            session, prompts, config, adapter=adapter, temperature=calibrated
        )


def _typed_prompts(job: Any, sft_meta: Any, tokenizer: Any) -> dict[str, Any]:
    """``preference_examples``' arguments for pairs rated on messages typed on the chat page:
    their prompt rendered as the chat rendered it (the adapter's prompt spec and reply memory),
    and the held-out prompts, which no typed message may train on."""
    import pyarrow.parquet as pq

    from echo_pipeline.serving.chat import adapter_memory, adapter_prompt

    memory = adapter_memory(job.sft_adapter_dir, sft_meta)
    spec = adapter_prompt(job.sft_adapter_dir, sft_meta)
    pairs = pq.read_table(job.pairs_path, columns=["prompt", "split"]).to_pandas()

    def render(row: Any) -> list[int]:
        examples = memory.examples_for([row["prompt"]])[0] if memory is not None else ()
        return spec.prompt_ids(
            tokenizer,
            row.get("context") or [],
            row["prompt"],
            prompt_author=row.get("prompt_author") or "",
            examples=examples,
        )

    return {
        "typed_prompt": render,
        "heldout_prompts": pairs.loc[pairs["split"] != "train", "prompt"].tolist(),
    }


@contextlib.contextmanager
def _weights(model: Any, state: dict[str, Any]) -> Iterator[None]:
    """``model``'s trainable weights replaced by ``state`` inside the block (the reference
    adapter, for reference log-probs of pairs sampled in a later round)."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    current = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for name, parameter in params.items():
            parameter.copy_(state[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, parameter in params.items():
                parameter.copy_(current[name])


def run_preference_job(
    job: PreferenceJob,
    on_progress: OnProgress | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> PreferenceOutcome:
    """Train the preference adapter, measure held-out reply loss, write it and log it all."""
    import mlflow
    import pyarrow.parquet as pq
    from safetensors.torch import load_file, save_file

    from echo_pipeline.datasets.render import dataset_digest
    from echo_pipeline.infra.records import METADATA_FILE, AdapterMetadata, TrackingRecord
    from echo_pipeline.infra.storage import atomic_path, write_parquet
    from echo_pipeline.pairs.conversations import heldout_split
    from echo_pipeline.preference import dpo as pref
    from echo_pipeline.serving.chat import ChatSession, adapter_memory, adapter_prompt
    from echo_pipeline.serving.generation import adapter_disabled
    from echo_pipeline.training.adapter_files import write_adapter_dir
    from echo_pipeline.training.adapters import (
        TrainingStopped,
        load_dataset,
        package_version,
        resolved_training_dtype,
        split_examples,
    )
    from echo_pipeline.training.base_model import load_tokenizer
    from echo_pipeline.training.losses import measure_temperature, reply_loss
    from echo_pipeline.training.threads import torch_threads

    config = job.preference
    experiment_id = tracking.ensure_experiment(job.tracking_uri, job.experiment_name)
    sft_meta, base = _base_of(job.sft_adapter_dir)
    frame = load_dataset(job.dataset_path)
    digest = dataset_digest(frame)
    if sft_meta.dataset.digest and sft_meta.dataset.digest != digest:
        raise ValueError(
            f"{job.dataset_path}: the dataset changed since {job.sft_adapter_dir} was trained; "
            "re-materialise lora_adapter first"
        )
    val, test = split_examples(frame, "val"), split_examples(frame, "test")
    heldout_name = heldout_split({"test": len(test), "val": len(val)})
    heldout = {"test": test, "val": val}[heldout_name]

    tables = [pq.read_table(job.preference_pairs_path)]
    tables += [pref.read_preference_file(path) for path in job.human_pairs_paths]
    pairs = pref.merge_pair_tables(tables)
    tokenizer = load_tokenizer(base)
    typed = _typed_prompts(job, sft_meta, tokenizer)
    examples, skipped = pref.preference_examples(pairs, frame, job.template, tokenizer, **typed)
    if not examples:
        raise ValueError(
            f"{job.preference_pairs_path}: no usable preference pair ({pref.describe_counts(skipped)})"
        )
    dtype = resolved_training_dtype("auto")
    # A round's weights do not depend on how many rounds follow it: raising ``rounds`` later
    # reuses the rounds already trained.
    per_round = dataclasses.replace(config, rounds=1)
    reference_key = f"{sft_meta.fingerprint}|{dtype}|{job.template}"
    first_round = pref.fingerprint_preference(per_round, examples, reference_key)
    fingerprint = hashlib.sha256(f"{first_round}|{config.rounds}".encode()).hexdigest()[:24]
    key = adapter_partition(job.template, job.experiment)  # as Dagster and the rating page spell it
    name = preference_experiment(job.experiment)

    mlflow.set_tracking_uri(job.tracking_uri)
    tags = {
        **job.tags,
        "echo.template": job.template,
        "echo.experiment": name,
        "echo.stage": "preference",
        "echo.fingerprint": fingerprint,
        "echo.dataset_digest": digest,
        "echo.base_model": base.source,
        "echo.sft_run_id": sft_meta.mlflow.run_id or "",
        "echo.sft_adapter": str(job.sft_adapter_dir),
        "echo.package_version": package_version(),
    }
    run = tracking.retry_when_locked(
        lambda: mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{job.template}/{name}", tags=tags
        )
    )
    with run, torch_threads(config.torch_threads):
        run_id = run.info.run_id
        mlflow.log_params({f"pref.{k}": str(v) for k, v in config.to_dict().items()})
        # What trained, per source (pairs_*), and what was left out and why (pairs_skipped_*).
        counts = pref.used_counts(examples)
        mlflow.log_metrics(
            {f"pairs_{k}": float(v) for k, v in counts.items()}
            | {f"pairs_skipped_{k}": float(v) for k, v in skipped.items()}
            | {"pairs_used": float(len(examples))}
        )
        _log_pairs_input(pairs, job.preference_pairs_path, f"{job.template}-preference-pairs")

        model = pref.load_trainable_adapter(job.sft_adapter_dir, base, dtype)
        reference_state = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }
        final: dict[str, float] = {}
        if heldout:
            final[f"sft_{heldout_name}_reply_loss"] = reply_loss(model, heldout)
            with adapter_disabled(model):
                final[f"base_{heldout_name}_reply_loss"] = reply_loss(model, heldout)
            mlflow.log_metrics(final)

        resumed_from = None
        result = None
        step_offset = 0
        previous = reference_key
        for round_number in range(1, config.rounds + 1):
            round_dir = job.work_dir / f"round-{round_number}"
            if round_number > 1:
                round_pairs_path = round_dir / f"pairs-{previous}.parquet"
                if round_pairs_path.is_file():
                    sampled = pq.read_table(round_pairs_path)
                else:
                    # prompted as the supervised adapter was trained: its memory, its naming
                    spec = adapter_prompt(job.sft_adapter_dir, sft_meta)
                    session = ChatSession(
                        model,
                        tokenizer,
                        spec,
                        me=spec.me_name or "me",
                        memory=adapter_memory(job.sft_adapter_dir, sft_meta),
                    )
                    prompts = pref.train_prompts(
                        frame,
                        pq.read_table(job.pairs_path).to_pandas(),
                        config.max_prompts,
                        config.seed,
                    )
                    sampled, _ = pref.sample_preference_pairs(
                        session,
                        prompts,
                        config,
                        adapter=f"{key}{PREFERENCE_SUFFIX}#round{round_number - 1}",
                        seed=config.seed + 1000 * round_number,
                        temperature=sft_meta.calibrated_temperature,
                    )
                    round_dir.mkdir(parents=True, exist_ok=True)
                    write_parquet(sampled, round_pairs_path)
                # Earlier rounds' rejected replies stay (DITTO's replay of earlier policies).
                pairs = pref.merge_pair_tables([pairs, sampled])
                examples, skipped = pref.preference_examples(
                    pairs, frame, job.template, tokenizer, **typed
                )
                mlflow.log_metric("pairs_used", float(len(examples)), step=round_number)
            # Each round's fingerprint chains the previous one's: its start weights and samples.
            round_fingerprint = pref.fingerprint_preference(
                per_round, examples, f"{previous}|round{round_number}"
            )
            previous = round_fingerprint
            done = round_dir / f"done-{round_fingerprint}.safetensors"
            if done.is_file():
                _load_trainable(model, load_file(done))
                final["rounds_reused"] = final.get("rounds_reused", 0.0) + 1
                logger.info("round %d already trained: its weights are reused", round_number)
                continue

            def progress(step: int, metrics: dict[str, float], offset: int = step_offset) -> None:
                tracking.retry_when_locked(lambda: mlflow.log_metrics(metrics, step=offset + step))
                if on_progress is not None:
                    on_progress(offset + step, metrics)

            with _weights(model, reference_state):  # the reference is the supervised adapter
                pref.cached_reference_logprobs(
                    model,
                    examples,
                    config.pack_tokens,
                    round_dir / pref.REFERENCE_FILE,
                    round_fingerprint,
                )
            result = pref.train_preference(
                model,
                examples,
                config,
                round_dir,
                fingerprint=round_fingerprint,
                on_log=progress,
                should_stop=should_stop,
            )
            if result.resumed_from_step is not None and resumed_from is None:
                resumed_from = step_offset + result.resumed_from_step
            if not result.completed:
                mlflow.set_tags({"echo.interrupted": "true"})
                mlflow.end_run(status="KILLED")
                raise TrainingStopped(
                    f"{job.adapter_dir}: preference training stopped on request in round "
                    f"{round_number} at step {result.steps}; rerun to resume from {round_dir}"
                )
            step_offset += result.steps
            trained = model.named_parameters()
            with atomic_path(done) as staging:
                weights = {n: p.detach().contiguous().cpu() for n, p in trained if p.requires_grad}
                save_file(weights, staging)
            final |= {f"round{round_number}_{k}": v for k, v in result.metrics().items()}

        if result is not None:
            final |= result.metrics()
        if heldout:
            final[f"adapter_{heldout_name}_reply_loss"] = reply_loss(model, heldout)
        # The preference-trained adapter's own temperature, as training measures a supervised
        # one's: on the validation replies (where there are none, the supervised adapter's).
        if val:
            final["calibrated_temperature"] = measure_temperature(model, val)
        elif sft_meta.calibrated_temperature is not None:
            final["calibrated_temperature"] = sft_meta.calibrated_temperature
        pairs_digest = pref.pairs_digest(pairs)
        training = dict(sft_meta.training) | {
            "preference": config.to_dict(),
            "sft_adapter": str(job.sft_adapter_dir),
            "sft_fingerprint": sft_meta.fingerprint,
            "sft_run_id": sft_meta.mlflow.run_id,
            "preference_pairs_digest": pairs_digest,
            "preference_pairs_paths": [str(job.preference_pairs_path), *job.human_pairs_paths],
            "preference_pairs": pref.used_counts(examples),
        }
        metadata = AdapterMetadata(
            template=job.template,
            base_model=sft_meta.base_model,
            experiment=name,
            system_prompt=sft_meta.system_prompt,
            me_names=sft_meta.me_names,
            prompt=dict(sft_meta.prompt),
            dataset=sft_meta.dataset,
            training=training,
            fingerprint=fingerprint,
            results=final,
            package_version=package_version(),
            git_commit=tracking.git_commit(),
            mlflow=TrackingRecord(
                tracking_uri=job.tracking_uri, experiment_id=experiment_id, run_id=run_id
            ),
        )
        with tempfile.TemporaryDirectory(dir=job.work_dir.parent) as trained_dir:
            model.save_pretrained(trained_dir)
            write_adapter_dir(job.adapter_dir, Path(trained_dir), tokenizer, metadata)
        mlflow.log_metrics(final)
        mlflow.log_dict(metadata.to_dict(), METADATA_FILE)
    return PreferenceOutcome(
        adapter_dir=job.adapter_dir,
        run_id=run_id,
        run_url=tracking.run_url(job.tracking_uri, experiment_id, run_id),
        fingerprint=fingerprint,
        pairs_digest=pairs_digest,
        metrics=final,
        resumed_from_step=resumed_from,
    )


def _load_trainable(model: Any, weights: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def _log_pairs_input(pairs: Any, source: Path, name: str) -> None:
    """The pairs as an MLflow dataset input: its digest and schema (MLflow keeps a profile,
    not the rows)."""
    import mlflow

    frame = pairs.drop_columns(["context"]).to_pandas()
    dataset = mlflow.data.from_pandas(frame, source=str(source), name=name)
    mlflow.log_input(dataset, context="training")
