"""The Pipes client that runs training: a local subprocess, or a pod on Kubernetes.

Chosen by config (the launchpad's ``resources: pipes_client: config: backend: k8s``) or, for a
whole deployment, by env (``ECHO_PIPES=k8s`` and ``ECHO_K8S_*``, read by ``build_resources``).
``dagster-k8s`` is an optional extra, imported only when a k8s run starts: the code location
loads without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import dagster as dg
from pydantic import Field

PIPES_ENV = "ECHO_PIPES"
K8S_EXTRA = "pip install 'echo_pipeline[k8s]'"
#: Env vars that preset the k8s fields (the launchpad can still override each).
K8S_ENV_FIELDS = {
    "ECHO_K8S_IMAGE": "image",
    "ECHO_K8S_NAMESPACE": "namespace",
    "ECHO_K8S_GPUS": "gpus",
    "ECHO_K8S_DATA_CLAIM": "data_volume_claim",
    "ECHO_K8S_DATA_MOUNT": "data_mount_path",
    "ECHO_K8S_SERVICE_ACCOUNT": "service_account",
}
Backend = Literal["subprocess", "k8s"]
BACKENDS: tuple[str, ...] = ("subprocess", "k8s")


class TrainingPipesClient(dg.ConfigurableResource):
    """Starts the training child through Dagster Pipes and returns what it reported.

    ``subprocess`` runs the command on this machine (``PipesSubprocessClient``). ``k8s`` runs it
    in one pod (``PipesK8sClient``) built by :func:`echo_pipeline.training.pod_spec.training_pod_spec`:
    the data volume mounted where this process sees ``ECHO_DATA_DIR``, one GPU per process.
    """

    backend: Backend = Field(
        default="subprocess",
        description="'subprocess' (this machine) or 'k8s' (a pod; needs the k8s extra). "
        f"Env {PIPES_ENV} sets the default.",
    )
    image: str = Field(default="", description="k8s: image with echo_pipeline installed.")
    namespace: str = Field(
        default="", description="k8s: namespace (empty: the current one, else 'default')."
    )
    gpus: int | None = Field(
        default=None,
        ge=0,
        description="k8s: nvidia.com/gpu limit (unset: one per training process; 0: CPU pod).",
    )
    cpu_per_process: int = Field(default=4, ge=1, description="k8s: CPUs requested per process.")
    memory_gib_per_process: int = Field(
        default=16, ge=1, description="k8s: memory (GiB) requested and limited per process."
    )
    shm_gib: int = Field(default=8, ge=1, description="k8s: size of /dev/shm (GiB).")
    termination_grace_s: int = Field(
        default=300,
        ge=1,
        description="k8s: seconds between SIGTERM and SIGKILL when the run is stopped (training "
        "checkpoints after the step in flight).",
    )
    data_volume_claim: str = Field(
        default="",
        description="k8s: PersistentVolumeClaim holding the data dir (ReadWriteMany: the Dagster "
        "process reads what the pod writes).",
    )
    data_mount_path: str = Field(
        default="/data",
        description="k8s: where the claim is mounted, in the pod and in the Dagster process; "
        "ECHO_DATA_DIR must lie under it.",
    )
    service_account: str = Field(default="", description="k8s: the pod's service account.")
    run_as_user: int = Field(default=1000, ge=1, description="k8s: non-root uid in the pod.")
    run_as_group: int = Field(
        default=1000, ge=1, description="k8s: gid, also the volume's fsGroup."
    )
    python: str = Field(default="python", description="k8s: the image's Python interpreter.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="k8s: node labels the pod must match (GPU type)."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="k8s: extra env for the training container."
    )
    kubeconfig_file: str = Field(
        default="", description="k8s: kubeconfig (empty: in-cluster config, else ~/.kube/config)."
    )
    kube_context: str = Field(default="", description="k8s: kubeconfig context.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainingPipesClient:
        """The client ``ECHO_PIPES`` and ``ECHO_K8S_*`` ask for; subprocess when unset."""
        environ = os.environ if environ is None else environ
        backend = environ.get(PIPES_ENV, "").strip() or "subprocess"
        if backend not in BACKENDS:
            raise ValueError(f"{PIPES_ENV}={backend!r}: expected one of {', '.join(BACKENDS)}")
        fields: dict[str, Any] = {"backend": backend}
        for name, field_name in K8S_ENV_FIELDS.items():
            value = environ.get(name, "").strip()
            if not value:
                continue
            if field_name == "gpus":
                if not value.isdigit():
                    raise ValueError(f"{name}={value!r}: expected a GPU count (0 for a CPU pod)")
                fields[field_name] = int(value)
            else:
                fields[field_name] = value
        return cls(**fields)

    def run(
        self,
        *,
        context: dg.AssetExecutionContext,
        command: list[str],
        extras: dict[str, Any],
    ) -> dg.PipesClientCompletedInvocation:
        """Run ``command`` (``python -m ...`` or its torchrun form) with ``extras['job']``, an
        ``AdapterJob.to_dict()``, as the Pipes extras."""
        if self.backend == "subprocess":
            return dg.PipesSubprocessClient().run(command=command, context=context, extras=extras)
        return self._run_in_pod(context=context, command=command, extras=extras)

    def _run_in_pod(
        self, *, context: dg.AssetExecutionContext, command: list[str], extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        from echo_pipeline.infra.paths import data_dir
        from echo_pipeline.training.pod_spec import (
            POD_LABELS,
            PodSettings,
            PodSpecError,
            training_pod_spec,
            unreachable_from_pod,
        )

        job = extras["job"]
        try:
            settings = PodSettings(
                image=self.image,
                data_claim=self.data_volume_claim,
                data_mount_path=self.data_mount_path,
                gpus=self.gpus,
                cpu_per_process=self.cpu_per_process,
                memory_gib_per_process=self.memory_gib_per_process,
                shm_gib=self.shm_gib,
                termination_grace_s=self.termination_grace_s,
                service_account=self.service_account,
                run_as_user=self.run_as_user,
                run_as_group=self.run_as_group,
                python=self.python,
                node_selector=self.node_selector,
                env=self.env,
            )
            problems = unreachable_from_pod(job, str(data_dir()), settings.data_mount_path)
            if problems:
                raise PodSpecError("; ".join(problems))
            spec = training_pod_spec(
                settings, command, tracking_uri=job["tracking_uri"], data_dir=str(data_dir())
            )
        except PodSpecError as error:
            raise dg.Failure(description=f"k8s training: {error}", allow_retries=False) from error
        try:  # after the settings: their mistakes show even where the extra is missing
            from dagster_k8s import PipesK8sClient
        except ImportError as error:
            raise dg.Failure(
                description=f"backend 'k8s' needs dagster-k8s, which is not installed: {K8S_EXTRA}",
                allow_retries=False,
            ) from error
        client = PipesK8sClient(
            kubeconfig_file=self.kubeconfig_file or None, kube_context=self.kube_context or None
        )
        return client.run(
            context=context,
            extras=extras,
            namespace=self.namespace or None,
            base_pod_meta={"labels": dict(POD_LABELS)},
            base_pod_spec=spec,
        )
