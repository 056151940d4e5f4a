"""Start the Dagster and MLflow UIs and the chat page together, bound to 127.0.0.1, and stop
them all cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from echo_pipeline.infra.paths import PROJECT_ROOT, mlruns_dir
from echo_pipeline.infra.tracking import artifact_location_for, default_tracking_uri, is_server
from echo_pipeline.operations.runner import ensure_dagster_home, which


def _default_sigint() -> None:
    # Background jobs inherit SIGINT=ignore from bash; dagster maps SIGTERM onto SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def dagster_command(port: int) -> list[str]:
    return [
        which("dagster"),
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(PROJECT_ROOT / "workspace.yaml"),
    ]


def mlflow_command(port: int) -> list[str]:
    uri = default_tracking_uri()
    command = [
        which("mlflow"),
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        uri,
    ]
    artifacts = artifact_location_for(uri)
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    return command


def chat_page_command(port: int) -> list[str]:
    """``echo-pipeline chat --web`` in its own process: the models it loads stay out of this one."""
    return [
        sys.executable,
        "-m",
        "echo_pipeline.operations.cli",
        "chat",
        "--web",
        "--port",
        str(port),
    ]


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on now (the chat page binds it a moment later)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tracking_server_command(
    port: int,
    backend_store_uri: str,
    artifacts_destination: str,
    workers: int = 1,
    host: str = "127.0.0.1",
) -> list[str]:
    """``mlflow server`` for a team: runs in a database, artifacts proxied by the server.

    With ``--serve-artifacts`` clients upload and download artifacts through the server's
    ``mlflow-artifacts:/`` API, so nobody needs access to ``artifacts_destination`` (a folder
    here, ``s3://…`` on a cluster). It binds ``host`` only; MLflow 3's own host-header and CORS
    checks allow localhost by default (``--allowed-hosts`` when it is exposed further).
    """
    return [
        which("mlflow"),
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
    ]


def start(command: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")  # noqa: SIM115 (lives as long as the child)
    return subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
        start_new_session=True,  # its own process group: stop() reaches the workers too
    )


def wait_until_up(url: str, timeout_s: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(1)
    return False


def stop(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to the group if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def tracking_ui(mlflow_port: int) -> tuple[str, list[str] | None]:
    """Where the MLflow UI is, and the command that starts it here (None: a tracking server in
    ``MLFLOW_TRACKING_URI`` is the UI already; an ``mlflow ui`` cannot open it as a store)."""
    uri = default_tracking_uri()
    if is_server(uri):
        return uri.rstrip("/"), None
    return f"http://127.0.0.1:{mlflow_port}", mlflow_command(mlflow_port)


def serve_ui(dagster_port: int = 3000, mlflow_port: int = 5000, chat_port: int = 0) -> int:
    home = ensure_dagster_home()
    chat_port = chat_port or free_port()
    logs = home / "logs"
    mlflow_ui, mlflow_start = tracking_ui(mlflow_port)
    if mlflow_start is not None:
        mlruns_dir().mkdir(parents=True, exist_ok=True)
    dagster = start(dagster_command(dagster_port), logs / "dagster.log")
    mlflow = start(mlflow_start, logs / "mlflow.log") if mlflow_start else None
    chat = start(chat_page_command(chat_port), logs / "chat.log")
    children = [p for p in (dagster, mlflow, chat) if p is not None]
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        dagster_up = wait_until_up(f"http://127.0.0.1:{dagster_port}/server_info")
        mlflow_up = wait_until_up(f"{mlflow_ui}/health", timeout_s=90.0 if mlflow else 5.0)
        print(
            f"Dagster UI  http://127.0.0.1:{dagster_port}  {'up' if dagster_up else 'NOT UP: see ' + str(logs)}"
        )
        where = str(logs) if mlflow else "MLFLOW_TRACKING_URI (the tracking server)"
        print(f"MLflow UI   {mlflow_ui}  {'up' if mlflow_up else 'NOT UP: see ' + where}")
        chat_url = f"http://127.0.0.1:{chat_port}"
        chat_up = wait_until_up(chat_url + "/", timeout_s=60.0)
        print(f"Chat page   {chat_url}  {'up' if chat_up else 'NOT UP: see ' + str(logs)}")
        print("Ctrl-C stops them all.", flush=True)
        while not stopping and all(p.poll() is None for p in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in children:
            stop(process)
    print("stopped", file=sys.stderr)
    return 0
