"""The training pod, built exactly, for one process on one GPU and for torchrun on four."""

from __future__ import annotations

import pytest

from echo_pipeline.training.distributed import launch_command
from echo_pipeline.training.pod_spec import (
    PodSettings,
    PodSpecError,
    launcher_options,
    processes_in,
    training_pod_spec,
    unreachable_from_pod,
)

PLAIN = ["/home/me/.venv/bin/python", "-m", "echo_pipeline.training.job"]
TORCHRUN_4 = [  # launch_command(4) from the Dagster process's venv
    "/home/me/.venv/bin/python",
    "-m",
    "torch.distributed.run",
    "--nproc-per-node",
    "4",
    "--standalone",
    "--nnodes",
    "1",
    "--max-restarts",
    "0",
    "-m",
    "echo_pipeline.training.job",
]
SETTINGS = PodSettings(image="registry.example/echo:cuda", data_volume_claim="echo-data")
URI = "http://mlflow.ml.svc:5000"


def expected_spec(*, command: list[str], cpu: str, memory: str, gpus: str) -> dict:
    return {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 300,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "echo-train",
                "image": "registry.example/echo:cuda",
                "command": command,
                "env": [
                    {"name": "MLFLOW_TRACKING_URI", "value": URI},
                    {"name": "ECHO_DATA_DIR", "value": "/data/echo"},
                    {"name": "HF_HOME", "value": "/data/echo/huggingface"},
                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                    {"name": "HOME", "value": "/tmp"},
                ],
                "resources": {
                    "requests": {"cpu": cpu, "memory": memory},
                    "limits": {"memory": memory, "nvidia.com/gpu": gpus},
                },
                "volumeMounts": [
                    {"name": "echo-data", "mountPath": "/data"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "runAsGroup": 1000,
                },
            }
        ],
        "volumes": [
            {"name": "echo-data", "persistentVolumeClaim": {"claimName": "echo-data"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        ],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


def test_one_process_gets_one_gpu_and_the_images_python():
    spec = training_pod_spec(SETTINGS, PLAIN, tracking_uri=URI, data_dir="/data/echo")
    assert spec == expected_spec(
        command=["python", "-m", "echo_pipeline.training.job"], cpu="4", memory="16Gi", gpus="1"
    )


def test_torchrun_on_four_processes_gets_four_gpus_and_four_times_the_cpu_and_memory():
    spec = training_pod_spec(SETTINGS, TORCHRUN_4, tracking_uri=URI, data_dir="/data/echo")
    assert spec == expected_spec(
        command=["python", *TORCHRUN_4[1:]], cpu="16", memory="64Gi", gpus="4"
    )


def test_optional_fields_land_where_kubernetes_reads_them():
    settings = PodSettings(
        image="i",
        data_volume_claim="c",
        data_mount_path="/mnt/echo",
        service_account="echo-train",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        env={"ECHO_VERBOSE": "1"},
        python="/opt/venv/bin/python",
    )
    spec = training_pod_spec(settings, PLAIN, tracking_uri=URI, data_dir="/mnt/echo")
    container = spec["containers"][0]
    assert spec["serviceAccountName"] == "echo-train"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert container["env"][-1] == {"name": "ECHO_VERBOSE", "value": "1"}
    assert container["command"][0] == "/opt/venv/bin/python"
    assert container["volumeMounts"][0] == {"name": "echo-data", "mountPath": "/mnt/echo"}


def test_a_cpu_pod_asks_for_no_gpu_and_tolerates_no_gpu_taint():
    settings = PodSettings(image="i", data_volume_claim="c", gpus=0)
    spec = training_pod_spec(settings, TORCHRUN_4, tracking_uri=URI, data_dir="/data")
    assert spec["containers"][0]["resources"]["limits"] == {"memory": "64Gi"}
    assert "tolerations" not in spec


@pytest.mark.parametrize(
    ("command", "options", "processes"),
    [
        (PLAIN, {}, 1),
        (
            TORCHRUN_4,
            {"nproc-per-node": "4", "standalone": "", "nnodes": "1", "max-restarts": "0"},
            4,
        ),
        (["p", "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "m"], None, 2),
        (["p", "-m", "torch.distributed.run", "--nnodes=1:1", "-m", "m"], None, 1),
    ],
)
def test_the_process_count_is_read_from_torchruns_options(command, options, processes):
    if options is not None:
        assert launcher_options(command) == options
    assert processes_in(command) == processes


def test_the_commands_the_step_launches_are_the_shapes_tested_here():
    """The step builds its command with launch_command: the exact specs above use its shapes."""
    python = "/home/me/.venv/bin/python"
    assert launch_command(1, python=python) == PLAIN
    assert launch_command(4, python=python) == TORCHRUN_4
    with pytest.raises(PodSpecError, match="--nnodes 2: PipesK8sClient starts a single pod"):
        processes_in(launch_command(2, 2, rdzv_endpoint="head:29400", python=python))


@pytest.mark.parametrize(
    ("settings", "command", "message"),
    [
        (SETTINGS, ["p", "-m", "torch.distributed.run", "--nnodes", "2", "-m", "m"], "--nnodes 2"),
        (
            SETTINGS,
            ["p", "-m", "torch.distributed.run", "--nproc-per-node", "gpu", "-m", "m"],
            "--nproc-per-node gpu",
        ),
        (
            PodSettings(image="i", data_volume_claim="c", gpus=2),
            TORCHRUN_4,
            "gpus=2 for 4 processes",
        ),
        (SETTINGS, ["python", "train.py"], "python -m module"),
    ],
)
def test_commands_a_single_pod_cannot_run_are_refused(settings, command, message):
    with pytest.raises(PodSpecError, match=message):
        training_pod_spec(settings, command, tracking_uri=URI, data_dir="/data")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image": " ", "data_volume_claim": "c"}, "no image"),
        ({"image": "i", "data_volume_claim": ""}, "no data volume claim"),
        ({"image": "i", "data_volume_claim": "c", "data_mount_path": "data"}, "not absolute"),
        ({"image": "i", "data_volume_claim": "c", "gpus": -1}, "gpus=-1"),
    ],
)
def test_settings_that_cannot_work_are_refused(fields, message):
    with pytest.raises(PodSpecError, match=message):
        PodSettings(**fields)


def job(tracking_uri: str, base_path: str = "/data/echo/models/smollm2") -> dict:
    return {
        "dataset_path": "/data/echo/datasets/chatml.parquet",
        "adapter_dir": "/data/echo/adapters/chatml/baseline",
        "work_dir": "/data/echo/training_work/chatml/baseline",
        "base_model": {"path": base_path},
        "tracking_uri": tracking_uri,
    }


def test_a_job_on_the_volume_with_a_cluster_mlflow_is_reachable():
    assert unreachable_from_pod(job(URI), "/data/echo", "/data") == []
    hub_id = job(URI, base_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert unreachable_from_pod(hub_id, "/data/echo", "/data") == []
    on_volume = job("sqlite:////data/echo/mlruns/mlflow.db")
    assert unreachable_from_pod(on_volume, "/data/echo", "/data") == []


def test_what_a_pod_could_not_reach_is_named():
    problems = unreachable_from_pod(
        job("http://127.0.0.1:5000", base_path="/home/me/data/models/smollm2"),
        "/home/me/data",
        "/data",
    )
    assert problems == [
        "data dir /home/me/data is outside the data volume mounted at /data",
        "base model /home/me/data/models/smollm2 is outside the data volume mounted at /data",
        "MLflow at http://127.0.0.1:5000 is this machine's loopback, not reachable from a pod; "
        "set MLFLOW_TRACKING_URI to the server's cluster address",
    ]
    local_store = job("sqlite:////home/me/mlruns/mlflow.db")
    assert unreachable_from_pod(local_store, "/data/echo", "/data") == [
        "MLflow store /home/me/mlruns/mlflow.db is outside the data volume mounted at /data"
    ]
