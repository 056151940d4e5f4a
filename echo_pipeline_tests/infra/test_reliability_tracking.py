"""MLflow under contention: concurrent processes on one fresh sqlite store, a locked store,
an unreachable server. Training must either be tracked whole or refused before it starts."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from echo_pipeline.infra import tracking
from echo_pipeline.infra.tracking import TrackingUnavailableError, retry_when_locked

RUNS_PER_WORKER = 3
STEPS = 4

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    uri, go, tag, runs, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    import mlflow
    from echo_pipeline.infra import tracking
    while not go.exists():  # both workers hit the fresh store at the same moment
        time.sleep(0.01)
    experiment = tracking.ensure_experiment(uri, "echo_pipeline")
    client = mlflow.MlflowClient(tracking_uri=uri)
    retry = tracking.retry_when_locked
    for i in range(runs):
        run = retry(lambda: client.create_run(experiment, run_name=f"{tag}-{i}", tags={"worker": tag}))
        run_id = run.info.run_id
        retry(lambda: client.log_param(run_id, "i", i))
        for step in range(steps):
            retry(lambda: client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step))
        retry(lambda: client.set_terminated(run_id, "FINISHED"))
    print("ok", tag)
    """
)


def test_two_processes_initialise_and_fill_one_fresh_sqlite_store_without_corrupting_it(tmp_path):
    """No ensure_experiment beforehand: both processes find an empty folder and race to create
    the schema. Without tracking.store_init_lock this fails (alembic "Online migration expected
    to match one row", "table ... already exists") in most trials on 2 cores."""
    db = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{db}"
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, str(go), tag, str(RUNS_PER_WORKER), str(STEPS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    time.sleep(0.5)
    go.touch()
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
        assert out.strip().startswith("ok")

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = [e for e in client.search_experiments() if e.name == "echo_pipeline"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id], max_results=100)
    assert len(runs) == 2 * RUNS_PER_WORKER
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"{tag}-{i}" for tag in "ab" for i in range(RUNS_PER_WORKER)
    )
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(STEPS))


@pytest.fixture(scope="module")
def initialised_store(tmp_path_factory):
    """A sqlite store with its schema and experiment created once (migrations take seconds)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking.ensure_experiment(f"sqlite:///{db}")
    return db


def test_a_briefly_locked_store_is_waited_for_not_failed(tmp_path, initialised_store):
    """Another process holds an exclusive sqlite lock for 2 s; creating a run waits it out."""
    shutil.copy2(initialised_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(2); c.execute('COMMIT')",
            str(tmp_path / "mlflow.db"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    started = time.monotonic()
    run = retry_when_locked(lambda: client.create_run(experiment))
    assert time.monotonic() - started >= 1.0  # it really had to wait
    holder.wait(timeout=30)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"


class FailingClient:
    """Stands in for mlflow.MlflowClient: every lookup fails with ``error``."""

    error: Exception
    calls: list[str]

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def get_experiment_by_name(self, name: str):
        type(self).calls.append(name)
        raise type(self).error


def failing_client(monkeypatch, message: str) -> type[FailingClient]:
    import mlflow

    client = type("Client", (FailingClient,), {"error": RuntimeError(message), "calls": []})
    monkeypatch.setattr(mlflow, "MlflowClient", client)
    return client


def test_a_store_that_stays_locked_fails_before_training_with_what_to_do(tmp_path, monkeypatch):
    client = failing_client(
        monkeypatch,
        "(sqlite3.OperationalError) database is locked\n[SQL: SELECT experiments.experiment_id ...]",
    )
    calls = client.calls
    monkeypatch.setattr(tracking, "LOCK_ATTEMPTS", 2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(TrackingUnavailableError) as caught:
        tracking.ensure_experiment(uri)
    message = str(caught.value)
    assert len(calls) == 2  # retried, then gave up
    assert message.startswith(f"MLflow store {uri} stays locked by another process")
    assert "stop whatever holds it" in message and "\n" not in message and "SQL" not in message


def test_other_store_errors_are_one_line(tmp_path, monkeypatch):
    failing_client(monkeypatch, "no such table: experiments\n[SQL: SELECT ...]")
    with pytest.raises(TrackingUnavailableError) as caught:
        tracking.ensure_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(caught.value).endswith("is not usable: no such table: experiments")


def test_retry_when_locked_retries_only_lock_errors():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "done"

    assert retry_when_locked(flaky, delay_s=0.001) == "done" and len(attempts) == 3

    def broken():
        attempts.append(1)
        raise ValueError("something else")

    attempts.clear()
    with pytest.raises(ValueError):
        retry_when_locked(broken, delay_s=0.001)
    assert len(attempts) == 1

    def always_locked():
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="locked"):
        retry_when_locked(always_locked, attempts=3, delay_s=0.001)


def test_an_unreachable_server_is_refused_within_seconds():
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match="unreachable"):
        tracking.check_tracking("http://127.0.0.1:9", timeout_s=2)
    assert time.monotonic() - started < 5


def test_an_unwritable_store_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking.os, "access", lambda path, mode: False)
    with pytest.raises(TrackingUnavailableError, match="not writable"):
        tracking.check_tracking(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def test_interrupted_runs_are_marked_and_listed_once(tmp_path, initialised_store):
    """What the next run of a job finds: a RUNNING run (killed outright) becomes KILLED; it and a
    run stopped on request are listed; one already resumed, a finished one and another job's
    run are not."""
    import mlflow

    from echo_pipeline.training.adapters import _link_resumed, _mark_interrupted_runs

    shutil.copy2(initialised_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)

    def run(fingerprint: str, status: str | None, **tags: str) -> str:
        created = client.create_run(experiment, tags={"echo.fingerprint": fingerprint, **tags})
        if status:
            client.set_terminated(created.info.run_id, status)
        return created.info.run_id

    killed_hard = run("job", None)
    stopped = run("job", "KILLED", **{"echo.interrupted": "true"})
    run("job", "KILLED", **{"echo.interrupted": "true", "echo.resumed_by": "earlier"})
    run("job", "FINISHED")
    other_job = run("other", None)

    found = _mark_interrupted_runs(client, experiment, "job")
    assert sorted(found) == sorted([killed_hard, stopped])
    assert client.get_run(killed_hard).info.status == "KILLED"
    assert client.get_run(killed_hard).data.tags["echo.interrupted"] == "true"
    assert client.get_run(other_job).info.status == "RUNNING"

    _link_resumed(client, found, "new-run")
    assert _mark_interrupted_runs(client, experiment, "job") == []  # listed once only
