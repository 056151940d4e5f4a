"""MLflow plumbing: where runs go, failing fast when the store is unusable, and lineage tags.

mlflow is imported inside functions: it costs seconds, and the Dagster code location must load
fast. The default store is a sqlite database under ``mlruns/`` with artifacts beside it,
because MLflow 3 refuses a bare file store.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from echo_pipeline.infra.paths import PROJECT_ROOT, mlruns_dir

DEFAULT_EXPERIMENT = "echo_pipeline"
#: Attempts of :func:`retry_when_locked` in :func:`ensure_experiment`. Each already waits out
#: MLflow's 20 s sqlite busy timeout, so a store held locked for good fails in about a minute.
LOCK_ATTEMPTS = 3
T = TypeVar("T")


class TrackingUnavailableError(RuntimeError):
    """The tracking server or store cannot be used; raised before any training starts."""


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs>/mlruns/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def artifact_location_for(tracking_uri: str) -> str | None:
    """Artifacts live under ``mlruns/artifacts`` for local sqlite stores; servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def retry_when_locked(fn: Callable[[], T], attempts: int = 10, delay_s: float = 0.5) -> T:
    """Run ``fn``, retrying while sqlite says "database is locked" (parallel partitions)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as error:
            if "locked" not in str(error).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay_s * (attempt + 1))
    raise AssertionError("unreachable")


class TrackingLostError(RuntimeError):
    """The tracking server, or the database behind it, went away mid-run, after the adapter
    was written locally.

    One line: the server, the run, where the adapter is and what to rerun.
    """


def is_server(tracking_uri: str) -> bool:
    """An MLflow tracking server (REST over HTTP), as opposed to a local database store."""
    return tracking_uri.startswith(("http://", "https://"))


def server_lost(tracking_uri: str, timeout_s: float = 5.0) -> str | None:
    """Why logging through ``tracking_uri`` cannot go on now, or None if it can (always None
    for local stores): the server no longer answers, or it answers but cannot read its own
    database (a team's Postgres restarting or down: its ``/health`` does not touch it).

    Asked after a logging call failed, to tell a lost server from an error worth raising as is.
    """
    if not is_server(tracking_uri):
        return None
    try:
        check_tracking(tracking_uri, timeout_s=timeout_s)
    except TrackingUnavailableError:
        return "went away"
    # A read that needs the database; any answer below 500 (even "not found") means it works.
    probe = tracking_uri.rstrip("/") + "/api/2.0/mlflow/experiments/get?experiment_id=0"
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s):  # the user's own server
            return None
    except urllib.error.HTTPError as error:
        return f"cannot reach its database (HTTP {error.code})" if error.code >= 500 else None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
        return "went away"


def end_run_without_server(status: str = "FAILED") -> None:
    """End the active run on this side only: the server is gone, so telling it would fail
    (after MLflow's retries, minutes by default). The run stays RUNNING on the server until the
    rerun of the same job marks it KILLED."""
    import mlflow

    previous = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        with contextlib.suppress(Exception):  # mlflow pops the run before calling the server
            mlflow.end_run(status)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = previous


@contextlib.contextmanager
def report_server_loss(tracking_uri: str, run_id: str, safe: str, rerun: str) -> Iterator[None]:
    """Inside: logging that must reach the server. If it fails because the server (or its
    database) went away, end the run locally and raise :class:`TrackingLostError` saying what
    is ``safe`` and what to ``rerun``; any other error (the server still works) propagates
    unchanged."""
    try:
        yield
    except Exception as error:
        lost = server_lost(tracking_uri)
        if lost is None:
            raise
        end_run_without_server()
        raise TrackingLostError(
            f"MLflow server {tracking_uri} {lost} during run {run_id} "
            f"({_first_line(error, 160)}); {safe}; {rerun}"
        ) from error


def check_tracking(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message if the store cannot be reached or written."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(
                url, timeout=timeout_s
            ) as response:  # the user's own server
                if response.status >= 400:
                    raise TrackingUnavailableError(
                        f"MLflow server {tracking_uri} answered {response.status}"
                    )
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            raise TrackingUnavailableError(
                f"MLflow tracking server {tracking_uri} is unreachable ({error}); start it, or "
                "unset MLFLOW_TRACKING_URI (and the mlflow_tracking resource's tracking_uri) to "
                "use the local store"
            ) from error
    elif tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingUnavailableError(
                f"{db.parent}: cannot create the MLflow store folder ({error})"
            ) from error
        if not os.access(db.parent, os.W_OK):
            raise TrackingUnavailableError(f"{db.parent}: the MLflow store folder is not writable")


def _sqlite_path(tracking_uri: str) -> Path | None:
    return (
        Path(tracking_uri.removeprefix("sqlite:///"))
        if tracking_uri.startswith("sqlite:///")
        else None
    )


@contextlib.contextmanager
def store_init_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise first use of a sqlite store across processes.

    MLflow creates and migrates the schema of a fresh sqlite store on first use; two processes
    doing that at once (parallel partitions on a new machine) corrupt its alembic version table
    ("Online migration expected to match one row"). An exclusive ``flock`` on ``<db>.lock``
    makes the first one create it and the others find it done. Servers need no lock.
    """
    db = _sqlite_path(tracking_uri)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; initialise once before fanning out
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment id, creating it (with artifacts under mlruns/) on first use.

    Safe to call from several processes at once on a fresh sqlite store (see
    :func:`store_init_lock`); raises :class:`TrackingUnavailableError` with one line saying what
    is wrong when the store cannot be used, before any training starts.
    """
    import mlflow

    check_tracking(tracking_uri)

    def get_or_create(client: mlflow.MlflowClient) -> str:
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location_for(tracking_uri)
            )
        except Exception:
            again = client.get_experiment_by_name(name)  # created by a parallel run meanwhile
            if again is None:
                raise
            return again.experiment_id

    try:
        with store_init_lock(tracking_uri):
            client = mlflow.MlflowClient(tracking_uri=tracking_uri)
            return retry_when_locked(lambda: get_or_create(client), attempts=LOCK_ATTEMPTS)
    except TrackingUnavailableError:
        raise
    except Exception as error:
        if "database is locked" in str(error).lower():
            raise TrackingUnavailableError(
                f"MLflow store {tracking_uri} stays locked by another process (database is "
                "locked); stop whatever holds it (a stuck run, a long MLflow UI query) and retry, "
                "or track to an MLflow server"
            ) from error
        raise TrackingUnavailableError(
            f"MLflow store {tracking_uri} is not usable: {_first_line(error)}"
        ) from error


def _first_line(error: BaseException, limit: int = 200) -> str:
    """The gist of an error: its first non-empty line (SQL errors append the statement)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True
    ).stdout.strip()


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``-dirty`` when uncommitted changes exist), if any."""
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def run_url(tracking_uri: str, experiment_id: str, run_id: str, ui_base: str | None = None) -> str:
    """Link to the run in the MLflow UI (``ECHO_MLFLOW_UI`` sets the UI address for local stores)."""
    if tracking_uri.startswith(("http://", "https://")) and not ui_base:
        ui_base = tracking_uri
    ui_base = (ui_base or os.environ.get("ECHO_MLFLOW_UI", "http://127.0.0.1:5000")).rstrip("/")
    return f"{ui_base}/#/experiments/{experiment_id}/runs/{run_id}"
