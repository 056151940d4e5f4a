"""The pipeline against a real ``mlflow server``: what a teammate sees from another process, a
server that is not there when a step starts, one that goes away mid-run; the server's database
restarting mid-training.

The server (tracking_server.py) keeps its runs in a real Postgres database (postgres_server.py)
and its artifacts in a folder it proxies (``--serve-artifacts``), as a team's server does with
object storage.
Training is one or two 256-token steps; the evaluation generates 8 tokens for 2 prompts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from run_configs import QUICK_EVALUATION, SMALL_HELDOUT, TINY_TRAINING
from tracking_server import free_port, start_tracking_server

from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources
from echo_pipeline.defs.evaluation import evaluation_assets
from echo_pipeline.defs.partitions import adapter_key
from echo_pipeline.defs.resources import MlflowResource
from echo_pipeline.infra.layout import Layout
from echo_pipeline.operations.runner import which

ASSETS = [*ALL_ASSETS, *[a for a in evaluation_assets if a not in ALL_ASSETS], *ALL_CHECKS]
KEY = adapter_key("chatml", "demo")
ONE_STEP = {"lora_adapter": {"config": TINY_TRAINING["lora_adapter"]["config"] | {"max_steps": 1}}}
NO_MINILM = {
    "evaluation_report": {
        "config": QUICK_EVALUATION["evaluation_report"]["config"] | {"similarity": False}
    }
}


def materialize(selection, partition_key=None, ops=None, resources=None, raise_on_error=True):
    return dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition_key,
        resources=build_resources() | (resources or {}),
        run_config={"ops": {k: v for k, v in (ops or {}).items() if k in selection}},
        raise_on_error=raise_on_error,
    )


@pytest.fixture
def chatml_dataset(pipeline_env):
    assert materialize(
        ["raw_chat_export", "chat_messages", "conversation_pairs"], ops=SMALL_HELDOUT
    ).success
    assert materialize(["template_dataset"], "chatml").success
    return pipeline_env


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


#: A teammate's view: only the server's address and the run id, no access to our files or env.
TEAMMATE = textwrap.dedent(
    """
    import hashlib, json, sys, tempfile
    from pathlib import Path
    import mlflow

    uri, run_id = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    versions = client.search_model_versions("name='echo-chatml'")
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/echo-chatml/{versions[0].version}", dst_path=tmp + "/model"
        ))
        adapter = next(model.rglob("adapter_model.safetensors")).parent
        hashes = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(adapter.iterdir()) if p.is_file()
        }
        reports = [
            json.loads(Path(client.download_artifacts(c.info.run_id, "metrics.json", tmp)).read_text())
            for c in children
        ]
    print(json.dumps({
        "status": run.info.status,
        "artifact_uri": run.info.artifact_uri,
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": run.data.metrics,
        "inputs": [
            {
                "name": d.dataset.name,
                "digest": d.dataset.digest,
                "context": {t.key: t.value for t in d.tags}.get("mlflow.data.context"),
            }
            for d in run.inputs.dataset_inputs
        ],
        "versions": [
            {"version": v.version, "run_id": v.run_id, "status": v.status} for v in versions
        ],
        "adapter_files": hashes,
        "children": [
            {
                "run_id": c.info.run_id,
                "tags": c.data.tags,
                "artifacts": sorted(a.path for a in client.list_artifacts(c.info.run_id)),
                "report_training_run": r["lineage"]["training_run_id"],
            }
            for c, r in zip(children, reports)
        ],
    }))
    """
)


def teammate_view(uri: str, run_id: str, cwd: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "ECHO_", "DAGSTER_")) and k != "PYTHONPATH"
    }
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", TEAMMATE, uri, run_id],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def metadata_of(result: dg.ExecuteInProcessResult, node: str) -> dict:
    [materialization] = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in materialization.metadata.items()}


@contextlib.contextmanager
def database_restart_at_the_first_metric(postgres) -> Iterator[list[float]]:
    """Inside: the tracking server's Postgres is shut down as soon as a running run's first
    metric is in it (a training's base-model held-out loss, logged before training starts),
    kept down for 3 s, then started again. Yields the outage's epoch seconds: [down, up]."""
    import threading
    import time

    outage: list[float] = []
    done = threading.Event()
    running_metrics = (
        "SELECT count(*) FROM metrics JOIN runs ON metrics.run_uuid = runs.run_uuid "
        "WHERE runs.status = 'RUNNING'"
    )

    def restart_at_the_first_metric() -> None:
        while not done.is_set():
            with contextlib.suppress(Exception):
                if postgres.query("mlflow", running_metrics)[0][0]:
                    postgres.shutdown()
                    outage.append(time.time())
                    time.sleep(3)
                    postgres.start()
                    outage.append(time.time())
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=restart_at_the_first_metric, daemon=True)
    watcher.start()
    try:
        yield outage
    finally:
        done.set()
        watcher.join(timeout=30)
        if postgres.postmaster_pid() is None:
            postgres.start()


@pytest.mark.slow
def test_a_teammate_sees_the_run_the_model_and_its_evaluation_through_the_server(
    chatml_dataset, tracking_server, postgres, monkeypatch
):
    """Training reaches the server through the resource field (the env still names a local
    store, which stays empty); the evaluation through MLFLOW_TRACKING_URI. Both runs, the
    registered model and the adapter's files are then read back from another process.

    The server's database restarts in the middle of the training: the client retries what the
    server refuses meanwhile (503), so it costs nothing, not the adapter, not a metric. (A
    database down for longer than those retries is a lost server: training goes on and keeps
    the adapter, as in test_a_server_lost_mid_run_keeps_the_adapter...)"""
    local_store = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    with database_restart_at_the_first_metric(postgres) as outage:
        trained = materialize(
            ["lora_adapter"],
            KEY,
            ops=ONE_STEP,
            resources={"mlflow_tracking": MlflowResource(tracking_uri=tracking_server.uri)},
        )
    training = metadata_of(trained, "lora_adapter")
    assert training["mlflow_run"].startswith(f"{tracking_server.uri}/#/experiments/")
    assert not local_store.exists()  # the field wins over the environment
    [(started_ms, ended_ms)] = postgres.query(
        "mlflow",
        "SELECT start_time, end_time FROM runs WHERE run_uuid = %s",
        training["mlflow_run_id"],
    )
    down, up = outage
    assert started_ms / 1000 < down < up < ended_ms / 1000  # in the middle of the training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    evaluated = materialize(["evaluation_report"], KEY, ops=NO_MINILM)
    evaluation = metadata_of(evaluated, "evaluation_report")
    assert evaluation["training_run_id"] == training["mlflow_run_id"]

    # An upgrade's step on this store, made by the pinned MLflow: it must find nothing to
    # break (docs/scaling.md says when to run it), and the teammate below reads after it.
    upgraded = subprocess.run(
        [which("mlflow"), "db", "upgrade", tracking_server.store],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    seen = teammate_view(
        tracking_server.uri, training["mlflow_run_id"], chatml_dataset / "teammate"
    )

    assert seen["status"] == "FINISHED"
    assert seen["params"]["template"] == "chatml" and seen["params"]["train.max_steps"] == "1"
    assert seen["params"]["train.pack_tokens"] == "256"
    assert seen["metrics"]["adapter_test_reply_loss"] == training["adapter_test_reply_loss"]
    assert {"base_test_reply_loss", "loss", "grad_norm"} <= set(seen["metrics"])
    inputs = {d["name"]: d for d in seen["inputs"]}
    assert {name: d["context"] for name, d in inputs.items()} == {
        "chatml-train": "training",
        "chatml-val": "validation",
        "chatml-test": "test",
    }
    assert all(len(d["digest"]) >= 8 for d in inputs.values())
    tags = seen["tags"]
    assert tags["dagster.run_id"] == trained.run_id
    assert tags["dagster.asset_key"] == "lora_adapter"
    assert tags["dagster.partition_key"] == str(KEY)
    assert tags["dagster.code_version"] and "mlflow.source.git.commit" in tags
    assert tags["echo.dataset_digest"] == training["dataset_digest"]
    assert tags["echo.fingerprint"] == training["fingerprint"]

    # The registered model, downloaded through the server, is the adapter on our disk.
    assert [(v["run_id"], v["status"]) for v in seen["versions"]] == [
        (training["mlflow_run_id"], "READY")
    ]
    local_adapter = Layout.default().adapter_dir("chatml", "demo")
    assert seen["adapter_files"] == file_hashes(local_adapter)
    assert "adapter_model.safetensors" in seen["adapter_files"]
    # ... stored by the server in its own artifact folder, not written there by the pipeline.
    assert seen["artifact_uri"].startswith("mlflow-artifacts:/")
    [stored] = [
        p
        for p in tracking_server.artifacts.rglob("adapter_model.safetensors")
        if training["mlflow_run_id"] in str(p) or "models" in p.parts
    ]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == seen["adapter_files"][stored.name]

    [child] = seen["children"]
    assert child["run_id"] == evaluation["mlflow_run_id"]
    assert child["tags"]["echo.run_kind"] == "evaluation"
    assert child["tags"]["dagster.asset_key"] == "evaluation_report"
    assert child["report_training_run"] == training["mlflow_run_id"]
    assert {"report.html", "metrics.json", "samples.json"} <= set(child["artifacts"])


def test_a_server_that_is_not_there_fails_the_step_in_one_line_naming_it(
    chatml_dataset, monkeypatch
):
    """Through the resource field and through MLFLOW_TRACKING_URI alike: refused before any
    training starts, the message names the address, nothing is written."""
    closed = f"http://127.0.0.1:{free_port()}"
    by_field = materialize(
        ["lora_adapter"],
        KEY,
        resources={"mlflow_tracking": MlflowResource(tracking_uri=closed)},
        raise_on_error=False,
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed)
    by_env = materialize(["lora_adapter"], KEY, raise_on_error=False)

    for result in (by_field, by_env):
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.message.strip()
        assert f"MLflow tracking server {closed} is unreachable" in message
        assert "\n" not in message
    assert not Layout.default().adapter_dir("chatml", "demo").exists()
    assert not Layout.default().training_work_dir("chatml", "demo").exists()


@pytest.mark.slow
def test_a_server_lost_mid_run_keeps_the_adapter_and_fails_the_step_with_what_to_rerun(
    chatml_dataset, base_model, monkeypatch
):
    """Through Dagster and the Pipes child: the server's whole process group is SIGKILLed as
    soon as its store holds the run's first metric (the base model's held-out loss, logged
    before training starts). Training goes on without the server, publishes the adapter
    locally, then fails when it logs the results, in one line naming the server, the adapter
    and what to rerun."""
    import sqlite3
    import threading
    import time

    from echo_pipeline.training.adapter_files import base_model_config, validate_adapter_dir

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # inherited by the Pipes child
    layout = Layout.default()
    server_root = chatml_dataset / "doomed_server"
    server = start_tracking_server(server_root)
    killed = threading.Event()

    def metrics_logged() -> int:
        with contextlib.closing(sqlite3.connect(server_root / "mlflow.db", timeout=1)) as db:
            return db.execute("SELECT count(*) FROM metrics").fetchone()[0]

    def kill_at_the_first_metric() -> None:
        while not killed.is_set():
            with contextlib.suppress(sqlite3.Error):
                if metrics_logged():
                    server.kill()
                    killed.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_at_the_first_metric, daemon=True)
    watcher.start()
    try:
        result = materialize(
            ["lora_adapter"],
            KEY,
            ops=ONE_STEP,
            resources={"mlflow_tracking": MlflowResource(tracking_uri=server.uri)},
            raise_on_error=False,
        )
    finally:
        killed.set()
        watcher.join(timeout=10)
        server.stop(timeout_s=5)
    assert server.survivors() == []

    assert killed.is_set() and not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message.strip()
    adapter = layout.adapter_dir("chatml", "demo")
    assert (
        f"training subprocess failed: TrackingLostError: MLflow server {server.uri} went away"
        in message
    )
    assert f"the adapter is safe in {adapter}" in message
    assert "re-materialise lora_adapter chatml/demo" in message and "\n" not in message
    assert validate_adapter_dir(adapter, base_model_config(base_model))["r"] == 16
