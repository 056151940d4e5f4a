"""The training Pipes client: a real subprocess by default, a pod when config or env says k8s.

No cluster here: the k8s path is run as far as it goes without one (settings, the missing extra,
and, where dagster-k8s is installed, the exact pod posted to a loopback API recorder).
"""

import importlib.util
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from echo_pipeline.defs.pipes_client import TrainingPipesClient
from echo_pipeline.defs.resources import build_resources
from echo_pipeline.infra.paths import PROJECT_ROOT
from echo_pipeline.training.distributed import launch_command

CHILD = """
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    job = pipes.get_extra("job")
    pipes.log.info("child started")
    pipes.report_asset_materialization(metadata={"template": job["template"]})
"""
JOB = {
    "template": "chatml",
    "dataset_path": "/data/echo/datasets/chatml.parquet",
    "adapter_dir": "/data/echo/adapters/chatml/baseline",
    "work_dir": "/data/echo/training_work/chatml/baseline",
    "base_model": {"path": "/data/echo/models/smollm2"},
    "tracking_uri": "http://mlflow.ml.svc:5000",
}
TORCHRUN_2 = launch_command(2)
K8S_CONFIG = {"backend": "k8s", "image": "registry.example/echo:cuda"}
K8S_CONFIG |= {"data_volume_claim": "echo-data", "namespace": "ml"}


def probe_asset(command: list[str]) -> dg.AssetsDefinition:
    @dg.asset
    def probe(context: dg.AssetExecutionContext, pipes_client: TrainingPipesClient):
        return pipes_client.run(
            context=context, command=command, extras={"job": JOB}
        ).get_materialize_result()

    return probe


def step_failure(result) -> str:
    """What the UI shows first: a dg.Failure's description, else the error's first line."""
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = failure.step_failure_data
    if data.user_failure_data is not None:
        return data.user_failure_data.description
    error = data.error.cause or data.error
    return error.message.splitlines()[0]


@pytest.fixture
def without_k8s_extra(monkeypatch):
    """The extra as it is on the shared venv: absent (blocked, where someone installed it)."""
    if importlib.util.find_spec("dagster_k8s") is not None:
        monkeypatch.setitem(sys.modules, "dagster_k8s", None)


def test_subprocess_is_the_default_and_runs_a_real_pipes_child(monkeypatch):
    monkeypatch.delenv("ECHO_PIPES", raising=False)
    client = build_resources()["pipes_client"]
    assert client.backend == "subprocess"
    result = dg.materialize(
        [probe_asset([sys.executable, "-c", CHILD])], resources={"pipes_client": client}
    )
    [materialization] = result.asset_materializations_for_node("probe")
    assert materialization.metadata["template"].value == "chatml"


def test_env_presets_the_k8s_fields(monkeypatch):
    monkeypatch.setenv("ECHO_PIPES", "k8s")
    monkeypatch.setenv("ECHO_K8S_IMAGE", "registry.example/echo:cuda")
    monkeypatch.setenv("ECHO_K8S_GPUS", "0")
    monkeypatch.setenv("ECHO_K8S_DATA_CLAIM", "echo-data")
    monkeypatch.setenv("ECHO_K8S_DATA_MOUNT", "/mnt/echo")
    client = build_resources()["pipes_client"]
    assert (client.backend, client.image, client.gpus) == ("k8s", "registry.example/echo:cuda", 0)
    assert (client.data_volume_claim, client.data_mount_path) == ("echo-data", "/mnt/echo")
    assert (client.namespace, client.service_account) == ("", "")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ECHO_PIPES": "slurm"}, "ECHO_PIPES='slurm': expected one of subprocess, k8s"),
        ({"ECHO_PIPES": "k8s", "ECHO_K8S_GPUS": "two"}, "ECHO_K8S_GPUS='two': expected a GPU"),
    ],
)
def test_bad_env_is_refused_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        TrainingPipesClient.from_env(env)


def test_launchpad_config_picks_k8s_and_a_missing_extra_is_named(monkeypatch, without_k8s_extra):
    monkeypatch.setenv("ECHO_DATA_DIR", "/data/echo")
    result = dg.materialize(
        [probe_asset(TORCHRUN_2)],
        resources={"pipes_client": TrainingPipesClient()},  # the subprocess default...
        run_config={"resources": {"pipes_client": {"config": K8S_CONFIG}}},  # ...overridden
        raise_on_error=False,
    )
    assert not result.success
    assert step_failure(result) == (
        "backend 'k8s' needs dagster-k8s, which is not installed: pip install 'echo_pipeline[k8s]'"
    )


@pytest.mark.parametrize(
    ("config", "data_dir", "message"),
    [
        (
            {"image": ""},
            "/data/echo",
            "k8s training: no image: the pod needs one with echo_pipeline installed",
        ),
        (
            {"gpus": 1},
            "/data/echo",
            "k8s training: gpus=1 for 2 processes: each rank needs its own GPU "
            "(or gpus=0 for a CPU pod)",
        ),
        (
            {},
            "/home/me/data",
            "k8s training: data dir /home/me/data is outside the data volume mounted at /data",
        ),
    ],
)
def test_k8s_settings_that_cannot_work_fail_the_step_in_one_line(
    monkeypatch, without_k8s_extra, config, data_dir, message
):
    monkeypatch.setenv("ECHO_DATA_DIR", data_dir)
    result = dg.materialize(
        [probe_asset(TORCHRUN_2)],
        resources={"pipes_client": TrainingPipesClient(**(K8S_CONFIG | config))},
        raise_on_error=False,
    )
    assert step_failure(result) == message


def test_the_code_location_loads_without_importing_dagster_k8s(tmp_path):
    """Importable tripwires named dagster_k8s and kubernetes: an eager or guarded import at
    module level would put them in sys.modules, even where the extra is not installed."""
    for name in ("dagster_k8s", "kubernetes"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    code = (
        "import sys, echo_pipeline.definitions as d; "
        "assert d.defs.resources['pipes_client'].backend == 'k8s'; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster_k8s', 'kubernetes')))"
    )
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)]),
        "ECHO_PIPES": "k8s",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


class _ApiRecorder(BaseHTTPRequestHandler):
    """Answers every request 403 after keeping it: enough to see the pod a client would create."""

    seen: list[tuple[str, str, dict | None]]

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, json.loads(body) if body else None))
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403}
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(status | {"reason": "Forbidden"}).encode())

    do_GET = do_POST = do_DELETE = _record

    def log_message(self, *args) -> None:
        pass


def test_pipes_k8s_client_posts_the_pod_that_was_built(tmp_path, monkeypatch):
    """Where the extra is installed: the real PipesK8sClient.run takes the spec as built and
    POSTs it, Pipes env added, to the API server named in the kubeconfig (a loopback recorder)."""
    pytest.importorskip("dagster_k8s")
    from echo_pipeline.training.pod_spec import PodSettings, training_pod_spec

    _ApiRecorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), _ApiRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "r", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "r", "context": {"cluster": "r", "user": "u"}}],
                "current-context": "r",
            }
        )
    )
    monkeypatch.setenv("ECHO_DATA_DIR", "/data/echo")
    try:
        result = dg.materialize(
            [probe_asset(TORCHRUN_2)],
            resources={
                "pipes_client": TrainingPipesClient(**K8S_CONFIG, kubeconfig_file=str(kubeconfig))
            },
            raise_on_error=False,
        )
    finally:
        server.shutdown()
    assert "Forbidden" in step_failure(result)
    [(method, path, pod)] = _ApiRecorder.seen
    assert (method, path) == ("POST", "/api/v1/namespaces/ml/pods")
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "training"
    container = pod["spec"]["containers"][0]
    pipes_env = [e for e in container["env"] if e["name"].startswith("DAGSTER_PIPES_")]
    assert [e["name"] for e in pipes_env] == ["DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"]
    container["env"] = [e for e in container["env"] if e not in pipes_env]
    settings = PodSettings(image=K8S_CONFIG["image"], data_volume_claim="echo-data")
    built = training_pod_spec(
        settings, TORCHRUN_2, tracking_uri=JOB["tracking_uri"], data_dir="/data/echo"
    )
    assert pod["spec"] == built
