"""A real ``mlflow server`` as the pipeline's tracking store: how it is started, what it serves,
and the one-line refusal when nothing answers. Training against it is in
defs/test_tracking_server_assets.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tracking_server import free_port

from echo_pipeline.infra import tracking
from echo_pipeline.infra.tracking import TrackingUnavailableError
from echo_pipeline.operations.servers import tracking_server_command


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


def test_the_server_command_binds_localhost_and_proxies_artifacts():
    command = tracking_server_command(5001, "sqlite:////srv/mlflow.db", "/srv/artifacts")
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "/srv/artifacts"
    assert command[command.index("--workers") + 1] == "1"


def test_a_run_logged_through_the_server_lands_in_its_store_and_artifact_folder(
    tracking_server, postgres, tmp_path
):
    """The server listens on 127.0.0.1 only; the run is a row of its Postgres database;
    artifacts go through it (mlflow-artifacts:/) into its --artifacts-destination, and come
    back through it byte for byte."""
    import mlflow

    assert _listening_addresses(tracking_server.port) == {"0100007F"}  # 127.0.0.1, nothing else
    experiment_id = tracking.ensure_experiment(tracking_server.uri, "server-smoke")
    client = mlflow.MlflowClient(tracking_uri=tracking_server.uri)
    run = client.create_run(experiment_id)
    payload = tmp_path / "notes.txt"
    payload.write_bytes(b"proxied through the server\n")
    client.log_artifact(run.info.run_id, str(payload))
    client.set_terminated(run.info.run_id)

    assert postgres.query(
        "mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run.info.run_id
    ) == [("FINISHED",)]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = list(tracking_server.artifacts.rglob("notes.txt"))
    assert len(stored) == 1 and stored[0].read_bytes() == payload.read_bytes()
    back = client.download_artifacts(run.info.run_id, "notes.txt", str(tmp_path / "back"))
    assert hashlib.sha256(Path(back).read_bytes()).hexdigest() == (
        hashlib.sha256(payload.read_bytes()).hexdigest()
    )


def test_a_closed_port_is_refused_in_one_line_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"  # the kernel's pick, nothing listens there now
    with pytest.raises(TrackingUnavailableError) as caught:
        tracking.ensure_experiment(uri)
    message = str(caught.value)
    assert message.startswith(f"MLflow tracking server {uri} is unreachable")
    assert "\n" not in message and "start it" in message


def test_server_lost_tells_a_lost_server_or_database_from_one_that_works(tracking_server, postgres):
    assert tracking.server_lost(tracking_server.uri) is None
    assert tracking.server_lost(f"http://127.0.0.1:{free_port()}", timeout_s=2) == "went away"
    assert tracking.server_lost("sqlite:////nowhere/mlflow.db") is None  # local stores never go
    postgres.shutdown()  # the server still answers /health, but cannot read its runs
    try:
        lost = tracking.server_lost(tracking_server.uri)
        assert lost == "cannot reach its database (HTTP 503)"  # MLflow: temporarily unavailable
    finally:
        postgres.start()
    assert tracking.server_lost(tracking_server.uri) is None  # it reconnects by itself


def test_echo_pipeline_ui_opens_a_tracking_server_rather_than_starting_mlflow_ui(
    monkeypatch, tmp_path
):
    """`mlflow ui --backend-store-uri http://…` cannot work: with a server configured, `ui`
    starts only Dagster and points at the server's own UI."""
    from echo_pipeline.operations.servers import tracking_ui

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5123/")
    assert tracking_ui(5000) == ("http://127.0.0.1:5123", None)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    address, command = tracking_ui(5000)
    assert address == "http://127.0.0.1:5000"
    assert command[1] == "ui" and command[command.index("--backend-store-uri") + 1] == store
