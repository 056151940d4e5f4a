"""Helpers for the browser tests: free ports, servers in their own process group, GraphQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from echo_pipeline.infra.paths import PROJECT_ROOT
from echo_pipeline.operations.servers import free_port as free_port  # the tests' one


def _default_sigint() -> None:
    # dagster maps SIGTERM onto its SIGINT handler; an inherited SIGINT=ignore would make it deaf.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@contextmanager
def server(
    command: Sequence[str],
    env: dict[str, str],
    ready_url: str,
    log: Path,
    timeout_s: float,
    *,
    term_group: bool = False,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own process group until ``ready_url`` answers; always stop it.

    Stopping sends SIGTERM to the server (``term_group``: to its whole process group at once,
    faster for servers whose workers each take seconds to stop), waits, then SIGKILLs whatever
    is left of the group.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            list(command),
            cwd=PROJECT_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_default_sigint,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"{command[0]} exited with {process.returncode} before answering:\n{log_tail(log)}"
                )
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{ready_url} did not answer within {timeout_s:.0f} s:\n{log_tail(log)}"
                    ) from None
                time.sleep(0.5)
        yield process
    finally:
        stop_group(process, term_group=term_group)


def stop_group(
    process: subprocess.Popen, timeout_s: float = 20.0, term_group: bool = False
) -> None:
    group = process.pid
    if process.poll() is None:
        if term_group:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGTERM)
        else:
            process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(group)
            process.wait(timeout=10)
    # Children that outlived the parent (workers, run subprocesses) get a short grace, then SIGKILL.
    deadline = time.monotonic() + 5
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    _kill_group(group)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill_group(group: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def post_json(url: str, payload: dict, timeout_s: float = 10.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())
