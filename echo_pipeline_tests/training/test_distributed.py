"""Data-parallel training through torchrun, for real: gloo on the CPU cores of this machine.

Two processes with ``grad_accum`` 1 must train what one process with ``grad_accum`` 2 trains:
the same rows in every optimizer step, gradients summed across the two by DDP. They are compared
step by step (the MLflow loss history) and weight by weight (the published adapters). A second
test SIGKILLs rank 1 under Dagster and re-materialises: the step fails naming the rank, and the
next run resumes from rank 0's checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from echo_pipeline.training.adapters import METADATA_FILE
from echo_pipeline.training.distributed import Ranks, launch_command, ranks_from_env
from echo_pipeline_tests.training.test_reliability_resume import make_job, small_template_dataset

STEPS = 4
LEARNING_RATE = 2e-3  # large, so 4 steps move the LoRA B weights far from their zero init
#: Largest difference allowed between the two runs' per-step losses and adapter weights. Both
#: sum the same two row gradients (one process accumulates them, DDP all-reduces them) and both
#: scale by exact powers of two, so on this machine they agree bit for bit (measured 0.0 on both,
#: 4 steps). 1e-5 leaves room for kernels that reduce in another order on other hardware, and is
#: 100 times smaller than what the 4 steps move the weights (asserted below).
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5


def test_launch_command_for_one_process_is_plain_python():
    assert launch_command(1, python="py") == ["py", "-m", "echo_pipeline.training.job"]


def test_launch_command_for_several_processes_is_torchrun():
    assert launch_command(4, python="py") == [
        *("py", "-m", "torch.distributed.run", "--nproc-per-node", "4"),
        *("--standalone", "--nnodes", "1", "--max-restarts", "0"),
        *("-m", "echo_pipeline.training.job"),
    ]
    several_nodes = launch_command(8, 2, rdzv_endpoint="head:29400", python="py")
    assert several_nodes[several_nodes.index("--nnodes") + 1] == "2"
    assert several_nodes[several_nodes.index("--rdzv-endpoint") + 1] == "head:29400"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        launch_command(1, 2)
    with pytest.raises(ValueError, match=">= 1"):
        launch_command(0)


def test_ranks_come_from_torchrun_environment():
    assert ranks_from_env({}) == Ranks()
    ranks = ranks_from_env(
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    )
    assert ranks == Ranks(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert ranks.is_distributed and not ranks.is_main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, smollm2_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("dataset")
    return small_template_dataset(folder / "dataset.parquet", smollm2_tokenizer)


def _train(job_file: Path, processes: int, log: Path) -> None:
    command = [*launch_command(processes), str(job_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=900)
    assert done.returncode == 0, log.read_text()[-4000:]


def _adapter_weights(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter_dir / "adapter_model.safetensors")


@pytest.mark.slow
def test_two_processes_train_what_one_process_with_twice_the_rows_does(
    tmp_path, base_model, dataset
):
    import mlflow

    runs = {}
    for processes, grad_accum in ((1, 2), (2, 1)):
        name = f"dp{processes}"
        job, job_file = make_job(tmp_path, dataset, base_model, name)
        job.training = replace(
            job.training,
            max_steps=STEPS,
            grad_accum=grad_accum,
            checkpoint_every=0,
            learning_rate=LEARNING_RATE,
        )
        job_file.write_text(json.dumps(job.to_dict()))
        _train(job_file, processes, tmp_path / f"{name}.log")
        runs[processes] = job

    client = mlflow.MlflowClient(tracking_uri=runs[1].tracking_uri)
    by_processes = {}
    for processes, job in runs.items():
        metadata = json.loads((job.adapter_dir / METADATA_FILE).read_text())
        run_id = metadata["mlflow"]["run_id"]
        run = client.get_run(run_id)
        assert run.data.params["train.processes"] == str(processes)
        losses = [m.value for m in client.get_metric_history(run_id, "loss")]
        by_processes[processes] = (run, losses, _adapter_weights(job.adapter_dir))

    (one_run, one_losses, one_weights), (two_run, two_losses, two_weights) = (
        by_processes[1],
        by_processes[2],
    )
    # The same run: one checkpoint would resume the other.
    assert one_run.data.tags["echo.fingerprint"] == two_run.data.tags["echo.fingerprint"]
    assert len(one_losses) == len(two_losses) == STEPS
    # Every step saw both rows: the same real tokens in all.
    assert one_run.data.metrics["real_tokens"] == two_run.data.metrics["real_tokens"]
    worst_loss = max(abs(a - b) for a, b in zip(one_losses, two_losses, strict=True))
    assert worst_loss < LOSS_TOLERANCE, (one_losses, two_losses)
    assert one_weights.keys() == two_weights.keys()
    worst_weight = max(float((one_weights[k] - two_weights[k]).abs().max()) for k in one_weights)
    assert worst_weight < WEIGHT_TOLERANCE
    # ...and the training moved the weights far more than that (the comparison can fail).
    moved = max(float(w.abs().max()) for k, w in one_weights.items() if "lora_B" in k)
    assert moved > 100 * WEIGHT_TOLERANCE


def _rank_process(rank: int, data_dir: Path) -> int | None:
    """The pid of the training process torchrun started as ``rank`` for this test's data."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"echo_pipeline.training.job" in cmdline
            and b"torch.distributed.run" not in cmdline
            and f"RANK={rank}".encode() in environ
            and f"ECHO_DATA_DIR={data_dir}".encode() in environ
        ):
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_fails_the_step_and_the_next_materialisation_resumes(pipeline_env):
    import threading

    import dagster as dg
    import mlflow
    from run_configs import SMALL_HELDOUT

    from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources
    from echo_pipeline.defs.partitions import adapter_key
    from echo_pipeline.infra.layout import Layout
    from echo_pipeline.infra.tracking import default_tracking_uri

    def materialize(selection, partition_key=None, ops=None):
        return dg.materialize(
            [*ALL_ASSETS, *ALL_CHECKS],
            selection=selection,
            partition_key=partition_key,
            resources=build_resources(),
            run_config={"ops": ops or {}},
            raise_on_error=False,
        )

    assert materialize(
        ["raw_chat_export", "chat_messages", "conversation_pairs"], ops=SMALL_HELDOUT
    ).success
    assert materialize(["template_dataset"], "chatml").success
    training = {
        "lora_adapter": {
            "config": {
                "processes": 2,
                "max_steps": 3,
                "pack_tokens": 512,
                "checkpoint_every": 1,
                "eval_every": 0,
                "torch_threads": 1,
            }
        }
    }
    key = adapter_key("chatml", "demo")
    data_dir = pipeline_env / "data"
    checkpoint = Layout(data_dir).training_work_dir("chatml", "demo") / "checkpoints"
    killed: list[int] = []

    def kill_rank_one_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if (checkpoint / "step-1" / "trainer_state.json").exists():
                pid = _rank_process(1, data_dir)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_one_after_a_checkpoint, daemon=True)
    killer.start()
    failed = materialize(["lora_adapter"], key, ops=training)
    killer.join(timeout=5)
    assert killed, "rank 1 was never seen"
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    # Rank 1 could say nothing (SIGKILL); rank 0 says it lost it, and that this is the cause.
    assert "rank 0 of 2: another rank stopped without a Python error" in message
    assert not Layout(data_dir).adapter_dir("chatml", "demo").exists()  # nothing half-published
    checkpoints = sorted(p.name for p in checkpoint.iterdir() if p.name.startswith("step-"))
    assert checkpoints, "rank 0's checkpoints are kept for the next run"

    resumed = materialize(["lora_adapter"], key, ops=training)
    assert resumed.success
    (materialization,) = resumed.asset_materializations_for_node("lora_adapter")
    resumed_from = materialization.metadata["resumed_from_step"].value
    assert resumed_from >= 1
    run = mlflow.MlflowClient(default_tracking_uri()).get_run(
        materialization.metadata["mlflow_run_id"].value
    )
    assert run.data.params["train.processes"] == "2"
    assert run.data.metrics["steps"] == 3
