"""The Kubernetes pod that runs one training job: a plain dict in the API's own (camelCase) shape.

Pure and dependency-free (no ``kubernetes``, no ``dagster-k8s``), so the spec can be built and
checked where no cluster and no extra is installed. ``PipesK8sClient.run(base_pod_spec=...)``
takes the dict as it is and adds the Dagster Pipes environment to the first container.

The pod sees the Dagster process's files only through the data volume: the job hands over
absolute paths (dataset, adapter, checkpoints, base model), so the volume must be mounted in
the pod at the path where the Dagster process sees it. :func:`unreachable_from_pod` says which
of the job's paths and URIs a pod could not reach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from echo_pipeline.infra.settings import setting

GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER_NAME = "echo-train"
DATA_VOLUME = "echo-data"
SHM_VOLUME = "dshm"  # torch.distributed and DataLoader workers share tensors through /dev/shm
TORCH_LAUNCHER = "torch.distributed.run"
POD_LABELS = {"app.kubernetes.io/name": "echo-pipeline", "app.kubernetes.io/component": "training"}


class PodSpecError(ValueError):
    """Settings or a command that cannot make a working training pod."""


@dataclass(frozen=True)
class PodSettings:
    """What the cluster side needs to know; everything else comes from the job and its command.

    ``gpus=None`` asks for one GPU per training process (``--nproc-per-node`` of a torchrun
    command, else 1); ``gpus=0`` makes a CPU pod (gloo). CPU and memory are requested per
    process, so a 4-process job asks for four times as much.
    """

    image: str = setting("", "k8s: image with echo_pipeline installed.")
    data_volume_claim: str = setting(
        "",
        "k8s: PersistentVolumeClaim holding the data dir (ReadWriteMany: the Dagster process "
        "reads what the pod writes).",
    )
    data_mount_path: str = setting(
        "/data",
        "k8s: where the claim is mounted, in the pod and in the Dagster process; ECHO_DATA_DIR "
        "must lie under it.",
    )
    gpus: int | None = setting(
        None, "k8s: nvidia.com/gpu limit (unset: one per training process; 0: CPU pod).", ge=0
    )
    cpu_per_process: int = setting(4, "k8s: CPUs requested per process.", ge=1)
    memory_gib_per_process: int = setting(
        16, "k8s: memory (GiB) requested and limited per process.", ge=1
    )
    shm_gib: int = setting(8, "k8s: size of /dev/shm (GiB).", ge=1)
    termination_grace_s: int = setting(
        300,
        "k8s: seconds between SIGTERM and SIGKILL when the run is stopped (training "
        "checkpoints after the step in flight).",
        ge=1,
    )
    service_account: str = setting("", "k8s: the pod's service account.")
    run_as_user: int = setting(1000, "k8s: non-root uid in the pod.", ge=1)
    run_as_group: int = setting(1000, "k8s: gid, also the volume's fsGroup.", ge=1)
    # the image's (the Dagster process's path means nothing in a pod)
    python: str = setting("python", "k8s: the image's Python interpreter.")
    node_selector: Mapping[str, str] = setting(
        default_factory=dict, description="k8s: node labels the pod must match (GPU type)."
    )
    env: Mapping[str, str] = setting(
        default_factory=dict, description="k8s: extra env for the training container."
    )

    def __post_init__(self) -> None:
        if not self.image.strip():
            raise PodSpecError("no image: the pod needs one with echo_pipeline installed")
        if not self.data_volume_claim.strip():
            raise PodSpecError(
                "no data volume claim: the pod reads the dataset and writes the adapter through it"
            )
        if not PurePosixPath(self.data_mount_path).is_absolute():
            raise PodSpecError(f"data mount path {self.data_mount_path!r} is not absolute")
        if self.gpus is not None and self.gpus < 0:
            raise PodSpecError(f"gpus={self.gpus}: must be 0 (CPU pod) or more")
        for name in ("cpu_per_process", "memory_gib_per_process", "shm_gib", "termination_grace_s"):
            if getattr(self, name) < 1:
                raise PodSpecError(f"{name}={getattr(self, name)}: must be at least 1")


def launcher_options(command: Sequence[str]) -> dict[str, str]:
    """torchrun's own options in ``python -m torch.distributed.run ... -m module`` (names with
    ``-``, flags as ``""``); empty for a plain ``python -m module``."""
    tokens = list(command)
    if tokens[1:3] != ["-m", TORCH_LAUNCHER]:
        return {}
    options: dict[str, str] = {}
    rest = tokens[3:]
    i = 0
    while i < len(rest) and rest[i].startswith("--"):
        name, has_value, value = rest[i][2:].partition("=")
        name = name.replace("_", "-")
        if has_value:
            options[name] = value
        elif i + 1 < len(rest) and not rest[i + 1].startswith("-"):
            options[name] = rest[i + 1]
            i += 1
        else:
            options[name] = ""
        i += 1
    return options


def processes_in(command: Sequence[str]) -> int:
    """How many training processes the command starts in one pod.

    Raises for several nodes: ``PipesK8sClient`` starts one pod, and a multi-node job needs one
    pod per node started together (an indexed Job or a PyTorchJob), which this does not build.
    """
    options = launcher_options(command)
    nnodes = options.get("nnodes", "1")
    if nnodes not in ("1", "1:1"):
        raise PodSpecError(
            f"--nnodes {nnodes}: PipesK8sClient starts a single pod; train on one node "
            "(up to its GPU count) or launch the nodes with a PyTorchJob"
        )
    nproc = options.get("nproc-per-node", "1")
    if not nproc.isdigit() or int(nproc) < 1:
        raise PodSpecError(
            f"--nproc-per-node {nproc}: give a process count, so the pod can ask for that many GPUs"
        )
    return int(nproc)


def pod_command(command: Sequence[str], python: str) -> list[str]:
    """The command with the image's interpreter in place of the Dagster process's."""
    tokens = [str(t) for t in command]
    if len(tokens) < 3 or tokens[1] != "-m":
        raise PodSpecError(f"expected `python -m module ...`, got {tokens}")
    return [python, *tokens[1:]]


def gpus_for(settings: PodSettings, processes: int) -> int:
    """GPUs the pod asks for: one per process unless set; fewer GPUs than processes is refused
    (each NCCL rank owns one device)."""
    if settings.gpus is None:
        return processes
    if 0 < settings.gpus < processes:
        raise PodSpecError(
            f"gpus={settings.gpus} for {processes} processes: each rank needs its own GPU "
            "(or gpus=0 for a CPU pod)"
        )
    return settings.gpus


def training_container(
    settings: PodSettings, command: Sequence[str], *, tracking_uri: str, data_dir: str
) -> dict[str, Any]:
    """The one container: image, command, resources, data and shm mounts, env, locked down."""
    processes = processes_in(command)
    gpus = gpus_for(settings, processes)
    memory = f"{settings.memory_gib_per_process * processes}Gi"
    limits: dict[str, str] = {"memory": memory}
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "ECHO_DATA_DIR": data_dir,
        "HF_HOME": str(PurePosixPath(data_dir) / "huggingface"),  # hub downloads land on the volume
        "PYTHONUNBUFFERED": "1",  # progress reaches the pod log, where Pipes reads it, as it happens
        "HOME": "/tmp",  # the uid may have no home in the image; torch and triton cache under it
        **settings.env,
    }
    return {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "command": pod_command(command, settings.python),
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "resources": {
            "requests": {"cpu": str(settings.cpu_per_process * processes), "memory": memory},
            "limits": limits,
        },
        "volumeMounts": [
            {"name": DATA_VOLUME, "mountPath": settings.data_mount_path},
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_group,
        },
    }


def training_pod_spec(
    settings: PodSettings, command: Sequence[str], *, tracking_uri: str, data_dir: str
) -> dict[str, Any]:
    """A PodSpec for ``PipesK8sClient.run(base_pod_spec=...)``: never restarted (Dagster's retry
    policy decides, and a rerun resumes from the last checkpoint on the volume)."""
    container = training_container(settings, command, tracking_uri=tracking_uri, data_dir=data_dir)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": settings.termination_grace_s,
        "automountServiceAccountToken": False,  # training never talks to the Kubernetes API
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": settings.run_as_group,  # the volume is writable by the training user
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": DATA_VOLUME,
                "persistentVolumeClaim": {"claimName": settings.data_volume_claim},
            },
            {
                "name": SHM_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": f"{settings.shm_gib}Gi"},
            },
        ],
    }
    if GPU_RESOURCE in container["resources"]["limits"]:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return spec


def unreachable_from_pod(job: Mapping[str, Any], data_dir: str, mount_path: str) -> list[str]:
    """One line per path or URI of an ``AdapterJob.to_dict()`` that a pod could not reach: files
    outside the data volume, and MLflow on this machine's loopback or local disk."""
    mount = PurePosixPath(mount_path)
    problems = []

    def check_path(what: str, path: str) -> None:
        if not PurePosixPath(path).is_relative_to(mount):
            problems.append(f"{what} {path} is outside the data volume mounted at {mount}")

    check_path("data dir", data_dir)
    for key in ("dataset_path", "adapter_dir", "work_dir"):
        check_path(key, str(job[key]))
    base_path = str(job["base_model"]["path"])
    if PurePosixPath(base_path).is_absolute():  # else a hub id, downloaded into HF_HOME
        check_path("base model", base_path)
    uri = str(job["tracking_uri"])
    parsed = urlparse(uri)
    if parsed.scheme in ("sqlite", "file"):
        local = parsed.path if parsed.scheme == "file" else uri.removeprefix("sqlite:///")
        check_path("MLflow store", "/" + local.lstrip("/"))
    elif parsed.scheme in ("http", "https") and _is_loopback(parsed.hostname or ""):
        problems.append(
            f"MLflow at {uri} is this machine's loopback, not reachable from a pod; "
            "set MLFLOW_TRACKING_URI to the server's cluster address"
        )
    return problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ip_address(host)
    except ValueError:
        return False  # a name: resolved by the cluster's DNS
    return address.is_loopback or address.is_unspecified
