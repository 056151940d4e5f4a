"""The team instance (deploy/dagster.yaml) on a real PostgreSQL server with a real
``dagster-daemon``: two adapter partitions queued at once train one after the other (pool
``gpu``, limit 1) and both succeed; a teammate's process reads it all back from the database.

The daemon, the launches and the run workers are real processes on a temporary
``DAGSTER_HOME`` that holds an unmodified copy of deploy/dagster.yaml, its database a fresh one
on the session's Postgres (conftest.py: ``team_database``), so the file the docs point to is
the file tested. Training is one 256-token step per run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources
from echo_pipeline.defs.partitions import adapter_key
from echo_pipeline.defs.provenance import CODE_VERSIONS
from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.paths import PROJECT_ROOT
from echo_pipeline.infra.provenance import PROVENANCE_METADATA_KEY, Provenance
from echo_pipeline.operations.pool import POOL, pool_limit, run_granularity
from echo_pipeline.operations.runner import ensure_dagster_home, which

TEAM_INSTANCE = PROJECT_ROOT / "deploy" / "dagster.yaml"
WORKSPACE = PROJECT_ROOT / "workspace.yaml"
PARTITIONS = [adapter_key("chatml", "demo"), adapter_key("chatml", "echo")]
ONE_STEP_RUN = {  # in process: the training is already a Pipes subprocess of the run worker
    "execution": {"config": {"in_process": {}}},
    "ops": {
        "lora_adapter": {
            "config": {
                "max_steps": 1,
                "pack_tokens": 256,
                "eval_every": 0,
                "checkpoint_every": 0,
                "torch_threads": 1,  # one training at a time: a core is enough, and no spinning
            }
        }
    },
}
# A dozen held-out pairs instead of 68: the end-of-training losses are most of a tiny run's CPU.
TINY_HELDOUT = {
    "conversation_pairs": {
        "config": {"val_fraction": 0.005, "test_fraction": 0.005, "test_min_pairs": 0}
    }
}
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _env() -> dict[str, str]:
    """This test's environment (pipeline_env's data, MLflow and Dagster home) for the daemon,
    its code server and its run workers, importing this checkout."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}


def _dagster(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [which("dagster"), *args], env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def team_instance(home: Path) -> dg.DagsterInstance:
    """deploy/dagster.yaml as is in ``home``, with the setup step it documents."""
    shutil.copy(TEAM_INSTANCE, home / "dagster.yaml")
    _dagster("instance", "concurrency", "set", POOL, "1")
    return dg.DagsterInstance.get()


def test_team_instance_queues_runs_and_limits_the_gpu_pool_per_run(pipeline_env, team_database):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresRunStorage

    instance = team_instance(pipeline_env / "dagster_home")
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert run_granularity(instance) and pool_limit(instance) == 1
    # The pool, not the run queue, keeps trainings apart: the queue admits more runs.
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs > 1
    assert instance.run_monitoring_enabled and instance.run_monitoring_start_timeout_seconds > 0
    assert Path(instance.storage_directory()).is_relative_to(pipeline_env / "dagster_home")


def launched_in_one_queue_pass(instance: dg.DagsterInstance) -> int:
    """How many of two queued trainings (pool ``gpu``, per run) one pass of the daemon's run
    queue launches: its own counter, fed as the daemon feeds it."""
    from dagster._core.instance.config import PoolGranularity
    from dagster._core.op_concurrency_limits_counter import GlobalOpConcurrencyLimitsCounter
    from dagster._core.storage.dagster_run import DagsterRun, RunOpConcurrency

    uses_gpu = RunOpConcurrency(
        all_pools={POOL}, root_key_counts={POOL: 1}, has_unconstrained_root_nodes=False
    )
    queued = [DagsterRun(job_name="training_job", run_op_concurrency=uses_gpu) for _ in "ab"]
    storage = instance.event_log_storage
    counter = GlobalOpConcurrencyLimitsCounter(
        instance,
        queued,
        [],
        concurrency_keys=storage.get_concurrency_keys(),  # read first, as the daemon does
        pool_limits=storage.get_pool_limits(),
        pool_granularity=PoolGranularity.RUN,
    )
    launched = 0
    for run in queued:
        if not counter.is_blocked(run):
            counter.update_counters_with_launched_item(run)
            launched += 1
    return launched


def test_a_pool_set_before_the_first_queue_pass_holds_back_the_second_run(
    pipeline_env, team_database
):
    """Why deploy/dagster.yaml asks for `dagster instance concurrency set gpu 1`: dagster
    1.13.27's first queue pass over a pool that only ``default_limit`` covers launches every
    run in it."""
    shutil.copy(TEAM_INSTANCE, pipeline_env / "dagster_home" / "dagster.yaml")
    instance = dg.DagsterInstance.get()
    # If this starts failing, dagster fixed it: the setup step may go (docs/scaling.md too).
    assert launched_in_one_queue_pass(instance) == 2
    _dagster("instance", "concurrency", "set", POOL, "1")  # the documented setup step
    assert launched_in_one_queue_pass(instance) == 1


def test_a_new_project_instance_has_the_gpu_pool_before_any_run(pipeline_env):
    """The project-local instance (`dagster dev`, `echo-pipeline ui`) gets the pool when it is
    created, so two trainings queued from the UI on a fresh one do not start together."""
    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    assert instance.event_log_storage.get_concurrency_info(POOL).slot_count == 1
    assert launched_in_one_queue_pass(instance) == 1


@contextlib.contextmanager
def running_daemon(log: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` in its own process group; the whole group is stopped on exit."""
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [which("dagster-daemon"), "run", "-w", str(WORKSPACE)],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            # bash starts background jobs with SIGINT ignored; dagster maps SIGTERM onto SIGINT
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            start_new_session=True,
        )
        try:
            yield daemon
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):  # stragglers of the group
                os.killpg(daemon.pid, signal.SIGKILL)


def _processes_using(home: Path) -> list[str]:
    """Processes (other than this one) whose environment names ``home`` as DAGSTER_HOME."""
    marker = f"DAGSTER_HOME={home}".encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def _launch(key: dg.MultiPartitionKey, run_id: str) -> subprocess.Popen:
    """`dagster job launch` of one lora_adapter partition, as a teammate would queue it."""
    tags = {"dagster/partition": str(key)}
    tags.update({f"dagster/partition/{d}": v for d, v in key.keys_by_dimension.items()})
    return subprocess.Popen(
        [
            *(which("dagster"), "job", "launch", "-w", str(WORKSPACE), "-j", "training_job"),
            *("--op-selection", "lora_adapter", "--run-id", run_id),
            *("--tags", json.dumps(tags), "--config-json", json.dumps(ONE_STEP_RUN)),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _times(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Epoch seconds of the run's queue and run events and of its lora_adapter step."""
    wanted = {
        dg.DagsterEventType.RUN_ENQUEUED,
        dg.DagsterEventType.RUN_STARTING,  # the daemon took it off the queue to launch it
        dg.DagsterEventType.RUN_SUCCESS,
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
    }
    times = {}
    for entry in instance.all_logs(run_id, of_type=wanted):
        assert entry.step_key in (None, "lora_adapter"), entry.step_key
        times[entry.dagster_event_type.name] = entry.timestamp
    return times


#: A teammate's view of the instance: a DAGSTER_HOME of their own holding only
#: deploy/dagster.yaml, and the database's address in DAGSTER_PG_*; none of our files.
TEAMMATE = textwrap.dedent(
    """
    import json, sys
    import dagster as dg

    instance = dg.DagsterInstance.get()
    runs = [instance.get_run_by_id(run_id) for run_id in sys.argv[1:]]

    def materialisations(asset):
        found = {}
        for record in instance.fetch_materializations(dg.AssetKey(asset), limit=50).records:
            event = record.asset_materialization  # newest first: keep each partition's latest
            found.setdefault(event.partition, {
                "run_id": record.run_id,
                "data_version": event.tags.get("dagster/data_version"),
                "metadata": {k: v.value for k, v in event.metadata.items()},
            })
        return found

    pool = instance.event_log_storage.get_concurrency_info("gpu")
    print(json.dumps({
        "run_storage": type(instance.run_storage).__name__,
        "runs": [
            {
                "run_id": run.run_id,
                "status": run.status.value,
                "partition": run.tags.get("dagster/partition"),
                "pools": sorted(run.run_op_concurrency.all_pools or []),
            }
            for run in runs
        ],
        "adapters": materialisations("lora_adapter"),
        "datasets": materialisations("template_dataset"),
        "pool": {
            "limit": pool.slot_count,
            "claimed": pool.active_slot_count,
            "pending": pool.pending_step_count,
        },
    }, default=str))
    """
)


def teammate_view(home: Path, run_ids: list[str]) -> dict:
    """TEAMMATE in a new process with a new DAGSTER_HOME: what the database alone holds."""
    home.mkdir()
    shutil.copy(TEAM_INSTANCE, home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "MLFLOW_"))}
    done = subprocess.run(
        [sys.executable, "-c", TEAMMATE, *run_ids],
        cwd=home,
        env=env | {"DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_daemon_trains_two_queued_partitions_one_after_the_other(pipeline_env, team_database):
    home = pipeline_env / "dagster_home"
    instance = team_instance(home)
    # The datasets first, in this instance, without training (as the ingest job makes them).
    for selection, partition, ops in (
        (["raw_chat_export", "chat_messages", "conversation_pairs"], None, TINY_HELDOUT),
        (["template_dataset"], "chatml", {}),
    ):
        assert dg.materialize(
            [*ALL_ASSETS, *ALL_CHECKS],
            selection=selection,
            partition_key=partition,
            resources=build_resources(),
            run_config={"ops": ops},
            instance=instance,
        ).success

    run_ids = [str(uuid.uuid4()) for _ in PARTITIONS]
    log = pipeline_env / "daemon.log"
    with running_daemon(log) as daemon:
        launches = [_launch(key, run_id) for key, run_id in zip(PARTITIONS, run_ids, strict=True)]
        for launch in launches:
            assert launch.wait(timeout=180) == 0, launch.stdout.read()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
            if all(run.status in FINISHED for run in runs):
                break
            assert daemon.poll() is None, log.read_text()
            time.sleep(2)
    daemon_log = log.read_text(errors="replace")

    for run in runs:
        failed = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
        failures = [e.message for e in instance.all_logs(run.run_id, of_type=failed)]
        assert run.status == dg.DagsterRunStatus.SUCCESS, (run.status, failures, daemon_log[-4000:])
    first, second = sorted(
        (_times(instance, run_id) | {"run_id": run_id} for run_id in run_ids),
        key=lambda times: times["STEP_START"],
    )
    # Queued together; the second left the queue only once the first had finished.
    assert max(first["RUN_ENQUEUED"], second["RUN_ENQUEUED"]) < first["STEP_SUCCESS"]
    assert first["STEP_SUCCESS"] <= first["RUN_SUCCESS"] <= second["RUN_STARTING"]
    assert first["STEP_SUCCESS"] < second["STEP_START"]  # the trainings never overlap
    # ...held back by the pool, not by the run queue (it admits more runs than this).
    assert f"Run {second['run_id']} is blocked by global concurrency limits" in daemon_log
    assert f'"{POOL}"' in daemon_log.split(f"Run {second['run_id']} is blocked", 1)[1][:300]

    layout = Layout.default()
    for key in PARTITIONS:
        keys = key.keys_by_dimension
        adapter = layout.adapter_dir(keys["template"], keys["experiment"])
        assert (adapter / "adapter_config.json").exists()
    materialised = instance.get_materialized_partitions(dg.AssetKey("lora_adapter"))
    assert {str(key) for key in PARTITIONS} <= materialised

    # An upgrade's step on this database, made by the pinned dagster: it must find nothing to
    # break (docs/scaling.md says when to run it), and the teammate below reads after it.
    migrated = _dagster("instance", "migrate")
    after = migrated.split("Storage schema state after migration", 1)[-1]
    states = re.findall(r"current: (\S+)\s+latest: (\S+)", after)
    assert len(states) == 3 and all(now == latest for now, latest in states), migrated
    seen = teammate_view(pipeline_env / "teammate_home", run_ids)
    assert seen["run_storage"] == "PostgresRunStorage"
    assert [(r["run_id"], r["status"], r["pools"]) for r in seen["runs"]] == [
        (run_id, "SUCCESS", [POOL]) for run_id in run_ids
    ]
    assert [r["partition"] for r in seen["runs"]] == [str(key) for key in PARTITIONS]
    # The pool: its limit, and no slot still held or step still waiting after both runs.
    assert seen["pool"] == {"limit": 1, "claimed": 0, "pending": 0}
    [dataset_version] = [d["data_version"] for d in seen["datasets"].values()]
    for key, run_id in zip(PARTITIONS, run_ids, strict=True):
        adapter = seen["adapters"][str(key)]
        assert adapter["run_id"] == run_id
        provenance = json.loads(adapter["metadata"][PROVENANCE_METADATA_KEY])
        # Lineage in the database: the adapter was made from the dataset version it names.
        assert provenance["inputs"]["template_dataset"] == dataset_version
        assert provenance["code_version"] == CODE_VERSIONS["lora_adapter"]
        assert (
            adapter["data_version"]
            == Provenance.from_json(adapter["metadata"][PROVENANCE_METADATA_KEY]).digest()
        )
        assert adapter["metadata"]["mlflow_run_id"] and adapter["metadata"]["dataset_digest"]

    deadline = time.monotonic() + 30  # the daemon's code server and run workers are gone too
    while _processes_using(home) and time.monotonic() < deadline:
        time.sleep(1)
    assert _processes_using(home) == []
