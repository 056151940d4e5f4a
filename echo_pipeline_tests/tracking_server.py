"""A real ``mlflow server`` for tests: what a team runs, in a temporary folder.

A backend store (a Postgres database from postgres_server.py, as a team's; sqlite in the
folder by default) and proxied artifacts (``--serve-artifacts``) under one folder, one worker, bound
to 127.0.0.1 on a free port. It runs in its own process group, so stopping it reaches uvicorn's
workers too; :meth:`TrackingServer.survivors` shows whether any process of it outlived the stop.
MLflow's job runner (seven huey consumers, about 1 GB) is switched off: the pipeline submits no
server-side jobs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from echo_pipeline.operations.servers import free_port, tracking_server_command

#: The server imports MLflow and migrates a fresh store: 10-20 s on 2 busy cores.
START_TIMEOUT_S = 180.0


@dataclass
class TrackingServer:
    root: Path
    port: int
    process: subprocess.Popen
    store: str  # its --backend-store-uri

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def survivors(self) -> list[str]:
        """Live (not zombie) processes still in the server's process group: pid and command."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
            if int(fields[2]) == self.process.pid and fields[0] != "Z":
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"{stat.parent.name} {cmdline.decode(errors='replace').strip()}")
        return found

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL to the whole group: the server vanishes as in a crash or a lost machine."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._wait_for_group(10.0)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the group, SIGKILL to it if anything is left after ``timeout_s``."""
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout_s)
        if not self._wait_for_group(timeout_s):
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=30)
            self._wait_for_group(10.0)

    def _wait_for_group(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.survivors():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def start_tracking_server(
    root: Path, backend_store_uri: str | None = None, timeout_s: float = START_TIMEOUT_S
) -> TrackingServer:
    """Start ``mlflow server`` on ``backend_store_uri`` (default: sqlite in ``root``), its
    artifacts in ``root``, and wait until ``/health`` answers.

    Raises RuntimeError with the end of the server's log if it exits or does not answer in time.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    store = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    command = tracking_server_command(port, store, str(root / "artifacts"), workers=1)
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONUNBUFFERED": "1",
    }
    with open(root / "server.log", "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=root,  # nothing it writes by default (./mlartifacts, ./mlruns) lands elsewhere
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = TrackingServer(root=root, port=port, process=process, store=store)
    deadline = time.monotonic() + timeout_s
    while not server.answers():
        if process.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited with code {process.returncode}"
                if process.poll() is not None
                else f"did not answer {server.uri}/health within {timeout_s:.0f} s"
            )
            server.stop(timeout_s=5)
            raise RuntimeError(f"mlflow server {why}; its log ends:\n{server.log_tail()}")
        time.sleep(0.5)
    return server
