"""SIGKILL during training: the next run resumes from the checkpoint and MLflow tells the story.

The real out-of-process entry point (``python -m echo_pipeline.training.job job.json``, what the
``lora_adapter`` asset runs through Dagster Pipes) trains SmolLM2 for 6 steps of 128 tokens,
checkpointing every 2. It is killed with SIGKILL as soon as the first checkpoint is on disk,
then started again with the same job. About a minute on 2 CPU cores, most of it imports and
model loading in the two processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echo_pipeline.training.adapters import METADATA_FILE, AdapterJob
from echo_pipeline.training.checkpoints import CHECKPOINTS_DIR
from echo_pipeline.training.config import TrainingConfig

MAX_STEPS = 6
CHECKPOINT_EVERY = 2


def small_template_dataset(path: Path, tokenizer) -> Path:
    """16 train, 2 val and 2 test pairs of the bundled sample, rendered in ChatML."""
    from echo_pipeline.datasets.tokenization import build_template_dataset
    from echo_pipeline.exports import read_exports
    from echo_pipeline.infra.paths import sample_export_dir
    from echo_pipeline.pairs import conversations

    messages = read_exports([sample_export_dir()]).to_pandas()
    pairs, _ = conversations.build_pairs(messages, conversations.PairingConfig(me=("alex",)))
    df = pairs.to_pandas()
    short = df[(df["prompt"].str.len() < 80) & (df["reply"].str.len() < 80)]
    pick = pd.concat(
        [short[short["split"] == s].head(n) for s, n in (("train", 16), ("val", 2), ("test", 2))]
    )
    frame, examples = build_template_dataset(pick, "chatml", tokenizer, max_tokens=128)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name in ("input_ids", "labels"):
        values = [getattr(e, name) for e in examples]
        table = table.append_column(name, pa.array(values, pa.list_(pa.int32())))
    pq.write_table(table, path)
    return path


def run_job(job_file: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "echo_pipeline.training.job", str(job_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def outcome(log: Path) -> dict:
    """The metadata JSON that train_job prints last."""
    text = log.read_text()
    return json.loads(text[text.rindex("\n{") :])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, smollm2_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("dataset")
    return small_template_dataset(folder / "dataset.parquet", smollm2_tokenizer)


def make_job(tmp_path: Path, dataset: Path, base_model, name: str) -> tuple[AdapterJob, Path]:
    """The job and its JSON file: 6 steps of 128 tokens, a checkpoint every 2, no registry."""
    job = AdapterJob(
        template="chatml",
        experiment=name,
        dataset_path=dataset,
        adapter_dir=tmp_path / "data" / "lora_adapter" / f"chatml__{name}",
        work_dir=tmp_path / "data" / "training_work" / f"chatml__{name}",
        base_model=base_model,
        training=TrainingConfig(
            max_steps=MAX_STEPS,
            pack_tokens=128,
            checkpoint_every=CHECKPOINT_EVERY,
            eval_every=0,
            log_every=1,
            lora_r=4,
            lora_alpha=8,
            warmup_steps=1,
            quantization="none",
            dtype="float32",
            torch_threads=1,
        ),
        tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        register_model=False,
    )
    job_file = tmp_path / f"{name}.json"
    job_file.write_text(json.dumps(job.to_dict()))
    return job, job_file


def wait_for(predicate, process: subprocess.Popen, log: Path, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out; log: {log.read_text()[-2000:]}"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_training_resumes_from_the_checkpoint_and_marks_the_run_killed(
    tmp_path, base_model, dataset
):
    import mlflow

    from echo_pipeline.infra import tracking

    job, job_file = make_job(tmp_path, dataset, base_model, "sigkill")
    uri = job.tracking_uri
    experiment_id = tracking.ensure_experiment(uri)  # as the asset does before launching

    # 1. Train, and SIGKILL the process as soon as the first checkpoint is complete.
    first_checkpoint = job.work_dir / CHECKPOINTS_DIR / f"step-{CHECKPOINT_EVERY}"
    killed = run_job(job_file, tmp_path / "killed.log")
    wait_for((first_checkpoint / "trainer_state.json").exists, killed, tmp_path / "killed.log")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert not job.adapter_dir.exists()  # nothing half-published

    client = mlflow.MlflowClient(tracking_uri=uri)
    (interrupted,) = client.search_runs([experiment_id])
    assert interrupted.info.status == "RUNNING"  # a killed process cannot say otherwise

    # 2. The same job again: resumes, finishes, and records what happened.
    resumed = run_job(job_file, tmp_path / "resumed.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    meta = outcome(tmp_path / "resumed.log")
    assert meta["resumed_from_step"] >= CHECKPOINT_EVERY
    assert meta["steps"] == MAX_STEPS  # as many optimizer steps as an uninterrupted run
    assert meta["resumes_interrupted_runs"] == interrupted.info.run_id

    old = client.get_run(interrupted.info.run_id)
    assert old.info.status == "KILLED" and old.data.tags["echo.interrupted"] == "true"
    new = client.get_run(meta["mlflow_run_id"])
    assert new.info.status == "FINISHED"
    assert old.data.tags["echo.resumed_by"] == new.info.run_id
    assert new.data.tags["echo.resumes_runs"] == interrupted.info.run_id
    assert new.data.tags["echo.fingerprint"] == old.data.tags["echo.fingerprint"]
    assert new.data.metrics["steps"] == MAX_STEPS

    # Every step after the checkpoint trained exactly once, in the new run.
    resume_step = meta["resumed_from_step"]
    new_steps = sorted(m.step for m in client.get_metric_history(new.info.run_id, "loss"))
    old_steps = sorted(m.step for m in client.get_metric_history(old.info.run_id, "loss"))
    assert new_steps == list(range(resume_step + 1, MAX_STEPS + 1))
    assert old_steps[:resume_step] == list(range(1, resume_step + 1))
    resumed_marker = client.get_metric_history(new.info.run_id, "resumed_from_step")
    assert [(m.step, m.value) for m in resumed_marker] == [(resume_step, float(resume_step))]

    # The adapter is whole, says where it came from, and nothing is left beside it.
    for name in ("adapter_model.safetensors", "adapter_config.json", METADATA_FILE):
        assert (job.adapter_dir / name).is_file(), name
    lineage = json.loads((job.adapter_dir / METADATA_FILE).read_text())
    assert lineage["mlflow"]["run_id"] == new.info.run_id
    assert sorted(p.name for p in job.adapter_dir.parent.iterdir()) == [job.adapter_dir.name]
    # One copy only: the trainer's own (no lineage) and the spent work dir are gone.
    assert not job.work_dir.exists(), sorted(job.work_dir.rglob("*"))


@pytest.mark.slow
def test_sigterm_stops_at_the_next_step_with_a_checkpoint_and_a_killed_run(
    tmp_path, base_model, dataset
):
    """What Dagster's "terminate run" (SIGINT to the Pipes subprocess) or ``kill`` does: the
    step in flight finishes, is checkpointed, and the MLflow run ends KILLED right away."""
    import mlflow

    from echo_pipeline.infra import tracking

    job, job_file = make_job(tmp_path, dataset, base_model, "sigterm")
    experiment_id = tracking.ensure_experiment(job.tracking_uri)
    log = tmp_path / "stopped.log"
    process = run_job(job_file, log)
    wait_for(lambda: "\nstep 1: {'loss'" in "\n" + log.read_text(), process, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 128 + signal.SIGTERM, log.read_text()[-3000:]

    text = log.read_text()
    assert "SIGTERM: stopping after this step" in text
    assert f"{job.adapter_dir}: training stopped on request at step " in text
    (run,) = mlflow.MlflowClient(tracking_uri=job.tracking_uri).search_runs([experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["echo.interrupted"] == "true"
    stopped_at = int(run.data.tags["echo.stopped_at_step"])
    assert 1 <= stopped_at < MAX_STEPS
    checkpoint = job.work_dir / CHECKPOINTS_DIR / f"step-{stopped_at}"
    assert (checkpoint / "trainer_state.json").is_file()  # the step in flight was kept
    assert not job.adapter_dir.exists()
